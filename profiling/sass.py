"""Compile qvit's Triton kernels for sm_90 without a GPU and report, per autotuner config, what ptxas made of
them: registers, local-memory stack (spills), shared memory and the SASS instruction mix of the whole kernel
and of each loop body -- the static side of "count, predict, change, measure" when there is no device time,
and a compile check of code paths the interpreter accepts but the compiler might not. Numbers depend on the
Triton version: run it with the device's (e.g. `pip install --target DIR triton==3.6.0`, DIR first on
PYTHONPATH).

    python -m qvit.profiling.sass [--kernel attention|w8a8|w8a8p|w4a16|w4a8|lnq] [--mode ...] [--match REGEX] [--sass DIR]

Modes: attention fp16 | onchip | qout | int8 | fp8_static; w8a8 plain | gelu_res | qout | fp8 | fp8_fast | fp8_static
| fp8_static_tanh | fp8_splitk_res | w4f8_res | w4f8_static_tanh
| fp8_res_norm;
w8a8p (persistent) plain | gelu_res | fp8 | fp8_gelu | fp8_res | fp8_static; w4a16 int4 | nf4_gelu_res;
w4a8 gelu_res | plain | prog; lnq int8 | fp8 | fp8_static (LayerNorm + quantize, K = 1024).
Instruction counts are static (each instruction once, loops not unrolled by count); `loops` gives each loop
body's size as instructions (tensor-core / MUFU / fp32 ALU). Compare configs and versions of the same kernel
with them, not against measured times.
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# opcode -> class, by prefix (SASS opcodes carry suffixes: HGMMA.64x64x16.F32, MUFU.EX2, ...)
CLASSES = (("HGMMA", "tensor"), ("IGMMA", "tensor"), ("QGMMA", "tensor"), ("HMMA", "tensor"), ("IMMA", "tensor"),
           ("MUFU", "mufu"), ("FFMA", "fp32"), ("FMUL", "fp32"), ("FADD", "fp32"), ("FMNMX", "fp32"),
           ("FSETP", "fp32"), ("FSEL", "fp32"), ("F2FP", "convert"), ("F2F", "convert"), ("I2F", "convert"),
           ("F2I", "convert"), ("LDG", "global"), ("STG", "global"), ("LDGSTS", "global"), ("UTMALDG", "global"),
           ("LDS", "shared"), ("STS", "shared"), ("LDSM", "shared"), ("SHFL", "shuffle"), ("BAR", "sync"),
           ("WARPGROUP", "sync"), ("LDL", "local"), ("STL", "local"))


def _attention():
    from qvit.kernels import attention as A
    modes = {"fp16": dict(INT8=False, QUANT_QK=False, SMOOTH_K=False, QOUT=False),
             "onchip": dict(INT8=False, QUANT_QK=True, SMOOTH_K=True, QOUT=False),
             "qout": dict(INT8=False, QUANT_QK=False, SMOOTH_K=False, QOUT=True),
             "int8": dict(INT8=True, QUANT_QK=False, SMOOTH_K=False, QOUT=False),
             "fp8_static": dict(INT8=False, QUANT_QK=False, SMOOTH_K=False, QOUT=2)}
    ptrs = {m: {"q_ptr": "*i8" if m == "int8" else "*fp16", "k_ptr": "*i8" if m == "int8" else "*fp16",
                "v_ptr": "*fp16", "qs_ptr": "*fp32", "ks_ptr": "*fp32",
                "o_ptr": {"qout": "*i8", "fp8_static": "*fp8e4nv"}.get(m, "*fp16"),
                "lse_ptr": "*fp32", "os_ptr": "*fp32", "sv_ptr": "*fp32"} for m in modes}
    return A._attn_fwd, {m: ({"D": 64, **c}, ptrs[m]) for m, c in modes.items()}, {"qk_scale"}


def _w8a8():
    from qvit.kernels import w8a8_linear as W
    base = dict(HAS_BIAS=True, GELU=False, HAS_RES=False, FP8=0, XG=0, QOUT=0, GROUP_M=8)
    ptrs = {"x_ptr": "*i8", "xs_ptr": "*fp32", "w_ptr": "*i8", "ws_ptr": "*fp32", "b_ptr": "*fp32",
            "r_ptr": "*bf16", "y_ptr": "*bf16", "ys_ptr": "*fp32", "sv_ptr": "*fp32",
            "part_ptr": "*fp32", "cnt_ptr": "*i32", "we_ptr": "*u8"}
    return W._w8a8_kernel, {"plain": (base, ptrs), "gelu_res": ({**base, "GELU": True, "HAS_RES": True}, ptrs),
                            "qout": ({**base, "GELU": True, "QOUT": 128}, {**ptrs, "y_ptr": "*i8"}),
                            "fp8": ({**base, "FP8": 1}, {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv"}),
                            "fp8_fast": ({**base, "FP8": 2}, {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv"}),
                            "fp8_static": ({**base, "FP8": 2, "GELU": True, "QOUT": -1},
                                           {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv", "y_ptr": "*fp8e4nv"}),
                            "fp8_static_tanh": ({**base, "FP8": 2, "GELU": 2, "QOUT": -1},
                                                {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv",
                                                 "y_ptr": "*fp8e4nv"}),
                            # split-K over 4 programs per tile (QVIT_SPLITK): proj / fc2 at batch 1
                            "fp8_splitk_res": ({**base, "FP8": 2, "HAS_RES": True, "SPLIT_K": 4, "HAS_PART": True},
                                               {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv"}),
                            # the 4-bit power-of-two weight expanded in the GEMM (w4f8_linear_*, QVIT_W4_FUSED)
                            "w4f8_res": ({**base, "FP8": 2, "HAS_RES": True, "W4": 32},
                                         {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*u8"}),
                            "w4f8_static_tanh": ({**base, "FP8": 2, "GELU": 2, "QOUT": -1, "W4": 32},
                                                 {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*u8", "y_ptr": "*fp8e4nv"}),
                            # proj / fc2 writing the next LayerNorm from the epilogue, with the row-block barrier
                            "fp8_res_norm": ({**base, "FP8": 2, "HAS_RES": True, "LN_OUT": 2, "LN_NT": 32,
                                              "HAS_LB": True},
                                             {**ptrs, "x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv", "lw_ptr": "*bf16",
                                              "lb_ptr": "*bf16", "q_ptr": "*fp8e4nv"})}, set()


def _w4a16():
    from qvit.kernels import w4a16_linear as W
    ptrs = {"x_ptr": "*fp16", "p_ptr": "*u8", "s_ptr": "*fp16", "z_ptr": "*u8", "code_ptr": "*fp32",
            "b_ptr": "*fp16", "r_ptr": "*fp16", "y_ptr": "*fp16"}
    return W._w4a16_kernel, {
        "int4": (dict(GROUP=128, MODE=0, HAS_BIAS=True, GELU=False, HAS_RES=False), ptrs),
        "nf4_gelu_res": (dict(GROUP=64, MODE=2, HAS_BIAS=True, GELU=True, HAS_RES=True), {**ptrs, "s_ptr": "*fp32"}),
    }, set()


def _w4a8():
    from qvit.kernels import w4a8_linear as W
    ptrs = {"x_ptr": "*i8", "xs_ptr": "*fp32", "p_ptr": "*u8", "s_ptr": "*fp16", "b_ptr": "*fp32",
            "r_ptr": "*bf16", "y_ptr": "*bf16"}
    return W._w4a8_kernel, {"gelu_res": (dict(GROUP=128, HAS_BIAS=True, GELU=True, HAS_RES=True), ptrs),
                            "plain": (dict(GROUP=128, HAS_BIAS=True, GELU=False, HAS_RES=False), ptrs),
                            "prog": (dict(GROUP=128, HAS_BIAS=True, GELU=False, HAS_RES=False, PROG=True),
                                     {**ptrs, "s_ptr": "*u8", "s1_ptr": "*fp32"})}, set()


def _lnq():
    from qvit.kernels import layernorm_quant as L
    ptrs = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "q_ptr": "*i8", "s_ptr": "*fp32", "st_ptr": "*fp32"}
    base = dict(NORM=True, HAS_BIAS=True, BLOCK_K=1024, FP8=False)
    return L._ln_quant_kernel, {"int8": (base, ptrs),
                                "fp8": ({**base, "FP8": True}, {**ptrs, "q_ptr": "*fp8e4nv"}),
                                "fp8_static": ({**base, "NORM": False, "HAS_BIAS": False, "FP8": True, "STATIC": True},
                                               {**ptrs, "q_ptr": "*fp8e4nv"})}, set()


def _w8a8p():
    from qvit.kernels import w8a8_persistent as P
    base = dict(HAS_BIAS=True, GELU=False, HAS_RES=False, FP8=False, QSTATIC=False, TMA_OUT=True, NUM_PROGRAMS=132)

    def ptrs(dt, out="bf16"):  # the descriptors' box shapes are the config's tiles
        return lambda c: {"x_desc": f"tensordesc<{dt}[{c['BLOCK_M']}, {c['BLOCK_K']}]>",
                          "w_desc": f"tensordesc<{dt}[{c['BLOCK_N']}, {c['BLOCK_K']}]>",
                          "xs_ptr": "*fp32", "ws_ptr": "*fp32", "b_ptr": "*fp32", "r_ptr": "*bf16", "y_ptr": f"*{out}",
                          "qs_ptr": "*fp32", "sv_ptr": "*fp32", "y_desc": f"tensordesc<{out}[{c['BLOCK_M']}, {c['BLOCK_N']}]>"}
    return P._w8a8_persistent_kernel, {
        "plain": (base, ptrs("i8")), "gelu_res": ({**base, "GELU": True, "HAS_RES": True}, ptrs("i8")),
        "fp8": ({**base, "FP8": True}, ptrs("fp8e4nv")),
        "fp8_gelu": ({**base, "FP8": True, "GELU": True}, ptrs("fp8e4nv")),
        "fp8_res": ({**base, "FP8": True, "HAS_RES": True}, ptrs("fp8e4nv")),
        "fp8_static": ({**base, "FP8": True, "GELU": True, "QSTATIC": True}, ptrs("fp8e4nv", "fp8e4nv")),
        "fp8_static_tanh": ({**base, "FP8": True, "GELU": 2, "QSTATIC": True}, ptrs("fp8e4nv", "fp8e4nv"))}, set()


KERNELS = {"attention": _attention, "w8a8": _w8a8, "w4a16": _w4a16, "w4a8": _w4a8, "lnq": _lnq, "w8a8p": _w8a8p}


def compile_config(kernel: str, mode: str, cfg, arch: int = 90):
    """Compile one autotuner config of `kernel` in `mode` for sm_`arch` (no GPU needed); returns the
    CompiledKernel. Every pointer and every integer argument that is a stride, K, N or H is specialised as
    divisible by 16 -- what Triton's launcher does at ViT-L shapes -- so that loads vectorise as on the device
    (without it every K/V load compiles to 2-byte LDG + STS)."""
    autotuned, modes, floats = KERNELS[kernel]()
    fn = autotuned.fn
    consts, ptrs = modes[mode]
    consts = {**consts, **cfg.kwargs}
    if callable(ptrs):  # argument types that depend on the config (tensor descriptors' box shapes)
        ptrs = ptrs(consts)
    sig, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name in ptrs:
            sig[p.name] = ptrs[p.name]
            if ptrs[p.name].startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[p.name] = "fp32" if p.name in floats or p.name == "eps" else "i32"
            if p.name.startswith("stride") or p.name in ("K", "N", "H") or re.fullmatch(r"s[a-z]{2}", p.name):
                attrs[(i,)] = [["tt.divisibility", 16]]
    for p in fn.params:  # constexprs a config leaves out take the kernel's default
        if p.is_constexpr and p.name not in consts and p.default is not inspect.Parameter.empty:
            consts[p.name] = p.default
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in consts]
    if missing:
        raise ValueError(f"{kernel}/{mode}: no value for constexpr {missing}")
    src = ASTSource(fn, sig, {(fn.arg_names.index(k),): v for k, v in consts.items() if k in fn.arg_names}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


def configs(kernel: str):
    return KERNELS[kernel]()[0].configs


def describe(cfg) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.kwargs.items()) + f" w={cfg.num_warps} st={cfg.num_stages}"


def cuobjdump() -> str:
    """triton's bundled cuobjdump (any Triton install on this machine has one)."""
    for root in [os.path.dirname(triton.__file__)] + [p for p in sys.path if "site-packages" in p]:
        for cand in (os.path.join(root, "backends/nvidia/bin/cuobjdump"),
                     os.path.join(root, "triton/backends/nvidia/bin/cuobjdump")):
            if os.path.exists(cand):
                return cand
    raise FileNotFoundError("cuobjdump: not found beside the installed triton")


def _klass(op: str) -> str:
    return next((c for p, c in CLASSES if op.startswith(p)), "other")


def instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode with its suffixes, operands) of each instruction in a cuobjdump -sass listing."""
    return [(int(a, 16), op, rest) for a, op, rest in
            re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);", sass)]


def analyse(kernel, tool: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res)
    ins = instructions(sass)
    mix = collections.Counter(_klass(op) for _, op, _ in ins)
    return {"regs": int(m.group(1)) if m else None, "stack": int(m.group(2)) if m else None,
            "smem": kernel.metadata.shared, "instructions": len(ins), **mix, "loops": loops(ins), "sass": sass}


def loops(ins: list[tuple[int, str, str]]) -> list[str]:
    """Each loop's body (a backward branch back to its target): 'instructions (tensor/mufu/fp32)'."""
    out = []
    for addr, op, rest in ins:
        t = re.match(r"\s*(0x[0-9a-f]+)", rest)
        if op.startswith("BRA") and t and int(t.group(1), 16) < addr:
            c = collections.Counter(_klass(o) for a, o, _ in ins if int(t.group(1), 16) <= a <= addr)
            out.append(f"{sum(c.values())} ({c['tensor']}/{c['mufu']}/{c['fp32']})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", choices=sorted(KERNELS), default="attention")
    ap.add_argument("--mode", default=None, help="the kernel's mode (default: its first)")
    ap.add_argument("--match", default="", help="only configs whose description matches this regular expression")
    ap.add_argument("--sass", default=None, help="write each config's SASS into this folder")
    args = ap.parse_args(argv)
    modes = KERNELS[args.kernel]()[1]
    mode = args.mode or next(iter(modes))
    if mode not in modes:
        print(f"sass: {args.kernel} has modes {', '.join(modes)}, not {mode!r}", file=sys.stderr)
        return 2
    tool = cuobjdump()
    cols = ("regs", "stack", "smem", "instructions", "tensor", "mufu", "fp32", "convert", "global", "shared",
            "local", "sync", "loops")
    print(f"# {args.kernel}, mode {mode}, sm_90, Triton {triton.__version__}\n")
    print("| config | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for cfg in configs(args.kernel):
        name = describe(cfg)
        if not re.search(args.match, name):
            continue
        try:
            info = analyse(compile_config(args.kernel, mode, cfg), tool)
        except Exception as ex:  # a config this Triton cannot build is a finding, not a crash of the report
            print(f"| {name} | failed: {type(ex).__name__}: {str(ex)[:120]} |" + " |" * (len(cols) - 1))
            continue
        if args.sass:
            os.makedirs(args.sass, exist_ok=True)
            with open(os.path.join(args.sass, re.sub(r"[^\w=]+", "_", name) + f"_{mode}.sass"), "w") as f:
                f.write(info["sass"])
        info["loops"] = ", ".join(info["loops"]) or "-"
        print(f"| {name} | " + " | ".join(str(info.get(c, 0)) for c in cols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
