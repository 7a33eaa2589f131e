"""Compile qvit's attention kernel for sm_90 without a GPU and report, per autotuner config, what ptxas made
of it: registers, local-memory stack (spills), shared memory and the SASS instruction mix (tensor-core,
exp2, float ALU, memory, total) -- the static side of "count, predict, change, measure" for sessions with no
device time. Numbers depend on the Triton version: run it with the device's (e.g. a `pip install --target
DIR triton==3.6.0` first on PYTHONPATH).

    python tools/triton_sass.py [--mode fp16|onchip|qout|int8] [--d 64] [--match REGEX] [--sass DIR]

Instruction counts are static (each instruction once, loops not unrolled by count); `loops` gives each loop
body's size as instructions (tensor-core / MUFU / fp32 ALU). Compare configs and versions of the same kernel
with them, not against measured times.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qvit.kernels import attention as A

MODES = {"fp16": dict(INT8=False, QUANT_QK=False, SMOOTH_K=False, QOUT=False),
         "onchip": dict(INT8=False, QUANT_QK=True, SMOOTH_K=True, QOUT=False),
         "qout": dict(INT8=False, QUANT_QK=False, SMOOTH_K=False, QOUT=True),
         "int8": dict(INT8=True, QUANT_QK=False, SMOOTH_K=False, QOUT=False)}
# opcode -> class, by prefix (SASS opcodes carry suffixes: HGMMA.64x64x16.F32, MUFU.EX2, ...)
CLASSES = (("HGMMA", "tensor"), ("IGMMA", "tensor"), ("HMMA", "tensor"), ("IMMA", "tensor"),
           ("MUFU", "mufu"), ("FFMA", "fp32"), ("FMUL", "fp32"), ("FADD", "fp32"), ("FMNMX", "fp32"),
           ("FSETP", "fp32"), ("FSEL", "fp32"), ("F2FP", "convert"), ("F2F", "convert"), ("I2F", "convert"),
           ("F2I", "convert"), ("LDG", "global"), ("STG", "global"), ("LDGSTS", "global"), ("UTMALDG", "global"),
           ("LDS", "shared"), ("STS", "shared"), ("LDSM", "shared"), ("SHFL", "shuffle"), ("BAR", "sync"),
           ("WARPGROUP", "sync"), ("LDL", "local"), ("STL", "local"))


def cuobjdump() -> str:
    """triton's bundled cuobjdump (any Triton install on this machine has one)."""
    for root in [os.path.dirname(triton.__file__)] + [p for p in sys.path if "site-packages" in p]:
        for cand in (os.path.join(root, "backends/nvidia/bin/cuobjdump"),
                     os.path.join(root, "triton/backends/nvidia/bin/cuobjdump")):
            if os.path.exists(cand):
                return cand
    raise FileNotFoundError("cuobjdump: not found beside the installed triton")


def signature(fn, mode: str) -> dict:
    const = set(MODES["fp16"]) | {"D", "BLOCK_M", "BLOCK_N", "TAIL_M", "TAIL_N"}
    sig = {}
    for n in fn.arg_names:
        if n in const:
            sig[n] = "constexpr"
        elif n == "qk_scale":
            sig[n] = "fp32"
        elif n in ("qs_ptr", "ks_ptr", "lse_ptr", "os_ptr"):
            sig[n] = "*fp32"
        elif n in ("q_ptr", "k_ptr"):
            sig[n] = "*i8" if mode == "int8" else "*fp16"
        elif n == "o_ptr":
            sig[n] = "*i8" if mode == "qout" else "*fp16"
        elif n.endswith("_ptr"):
            sig[n] = "*fp16"
        else:
            sig[n] = "i32"
    return sig


# what Triton's launcher would specialize at ViT-L shapes (B, 197, 3, 16, 64 views): every pointer and every
# stride divisible by 16 (S = 197 is not), so the loads vectorize as they do on the device
DIVISIBLE = ("sqb", "sqs", "sqh", "skb", "sks", "skh", "svb", "svs", "svh", "sob", "sos", "soh", "H")


def compile_config(fn, cfg, mode: str, d: int, arch: int = 90):
    consts = {"D": d, **MODES[mode], **cfg.kwargs}
    sig = signature(fn, mode)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n in DIVISIBLE or sig[n].startswith("*")}
    src = ASTSource(fn, sig, {(fn.arg_names.index(k),): v for k, v in consts.items()}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


def analyse(kernel, tool: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res)
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)", sass)
    mix = collections.Counter()
    for op in ops:
        mix[next((c for p, c in CLASSES if op.startswith(p)), "other")] += 1
    return {"regs": int(m.group(1)) if m else None, "stack": int(m.group(2)) if m else None,
            "smem": kernel.metadata.shared, "instructions": len(ops), **mix, "loops": loops(sass), "sass": sass}


def loops(sass: str) -> list[str]:
    """Each loop's body (a backward branch back to its target): 'instructions (tensor/mufu/fp32)'."""
    lines = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", sass)
    addr = [int(a, 16) for a, _, _ in lines]
    out = []
    for i, (a, op, rest) in enumerate(lines):
        t = re.match(r"\s*(0x[0-9a-f]+)", rest)
        if op.startswith("BRA") and t and int(t.group(1), 16) < addr[i]:
            body = [o for (x, o, _), ad in zip(lines, addr) if int(t.group(1), 16) <= ad <= addr[i]]
            c = collections.Counter(next((k for p, k in CLASSES if o.startswith(p)), "other") for o in body)
            out.append(f"{len(body)} ({c['tensor']}/{c['mufu']}/{c['fp32']})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="fp16")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--match", default="", help="only configs whose description matches this regular expression")
    ap.add_argument("--sass", default=None, help="write each config's SASS into this folder")
    args = ap.parse_args(argv)
    tool = cuobjdump()
    fn = A._attn_fwd.fn
    cols = ("regs", "stack", "smem", "instructions", "tensor", "mufu", "fp32", "convert", "global", "shared",
            "local", "sync", "loops")
    print(f"# _attn_fwd, mode {args.mode}, D = {args.d}, sm_90, Triton {triton.__version__}\n")
    print("| config | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for cfg in A._attn_fwd.configs:
        kw = cfg.kwargs
        name = (f"BM={kw['BLOCK_M']} BN={kw['BLOCK_N']} TM={kw['TAIL_M']} TN={kw['TAIL_N']} "
                f"w={cfg.num_warps} st={cfg.num_stages}")
        if not re.search(args.match, name):
            continue
        try:
            info = analyse(compile_config(fn, cfg, args.mode, args.d), tool)
        except Exception as ex:  # a config this Triton cannot build is a finding, not a crash of the report
            print(f"| {name} | failed: {type(ex).__name__}: {str(ex)[:120]} |" + " |" * (len(cols) - 1))
            continue
        if args.sass:
            os.makedirs(args.sass, exist_ok=True)
            with open(os.path.join(args.sass, re.sub(r"[^\w=]+", "_", name) + f"_{args.mode}.sass"), "w") as f:
                f.write(info["sass"])
        info["loops"] = ", ".join(info["loops"]) or "-"
        print(f"| {name} | " + " | ".join(str(info.get(c, 0)) for c in cols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
