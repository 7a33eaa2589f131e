"""Kernel benchmarks on one GPU, every qvit kernel beside its baselines in the same run.

    python -m qvit.profiling.bench_kernels --out DIR [--quick] [--only linear,attention,lnq,ceilings]

Writes DIR/bench_kernels.json (card, versions, commit, every measurement with its correctness
check) and DIR/bench_kernels.md (the tables). Times are medians of triton.testing.do_bench
(CUDA events) after warm-up; the ceilings (copy bandwidth, cuBLAS bf16 and int8 8192^3) are
measured in the same run so every ratio compares numbers from one card at one time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import platform
import sys
import time
import traceback

import torch

VIT_L_LINEARS = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}


def bench(fn, warmup=25, rep=100):
    """Median ms per call, eager (launch overhead included when it exceeds the GPU time)."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def bench_graph(fn, rep=100):
    """Median ms per call replayed from a CUDA graph: the GPU time, launch overhead removed.
    None if the provider cannot be captured."""
    import triton.testing
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    except Exception:
        torch.cuda.synchronize()
        return None


def rnd(*shape, dtype=torch.float32):
    """Random CUDA tensor drawn on the CPU: the CUDA RNG is left alone, so a provider whose graph capture
    fails cannot poison the generator for the inputs that follow."""
    return torch.randn(*shape).to(device="cuda", dtype=dtype)


# --warm-shard (qvit.profiling.warm): one of n processes that only compile their share of the autotuner configs:
# each qvit kernel runs once per shape (its autotuner compiles and tunes the share), peers and timing skipped
_WARM = False


def _runs(pname: str) -> bool:
    """Whether this process runs a provider: all of them, except in a warm copy only the Triton kernels."""
    return not _WARM or (pname.startswith("qvit") and not pname.startswith("qvit-cuda")
                         and "cuBLAS" not in pname)


def _select(provs: dict, providers: str | None = None, baselines: tuple = ()) -> dict:
    """The providers this run measures: the baselines and those matching the `providers` regular expression
    (all when None), less what a warm copy skips (`_runs`)."""
    keep = re.compile(providers) if providers else None
    return {p: f for p, f in provs.items()
            if (keep is None or p in baselines or keep.search(p)) and _runs(p)}


def timed(fn, graph=True):
    """{'ms': graphed time if capturable else eager, 'ms_eager': eager, 'graphed': bool}"""
    if _WARM:
        return {"ms": float("nan"), "ms_eager": float("nan"), "graphed": False}
    eager = bench(fn)
    g = bench_graph(fn) if graph else None
    return {"ms": g if g is not None else eager, "ms_eager": eager, "graphed": g is not None}


def rel_err(y, ref):
    y, ref = y.float(), ref.float()
    if not torch.isfinite(y).all():
        return float("nan")
    return float((y - ref).norm() / ref.norm().clamp(min=1e-30))


def source_commit() -> str | None:
    """The commit the numbers belong to: $QVIT_COMMIT (tools/gpu_run.sh sets it from .gpu/commit: the device
    machine's copy of .git can be older than the tree it runs), else the checkout's HEAD (with "+dirty" when
    tracked files differ from it), else .gpu/commit."""
    import subprocess
    if os.environ.get("QVIT_COMMIT"):
        return os.environ["QVIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=10).stdout.strip()
            return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return open(".gpu/commit").read().strip() if os.path.exists(".gpu/commit") else None


def env_info():
    import importlib.metadata as md

    def v(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None
    commit = source_commit()
    p = torch.cuda.get_device_properties(0)
    return {"card": torch.cuda.get_device_name(0), "sm_count": p.multi_processor_count,
            "capability": f"{p.major}.{p.minor}", "memory_gb": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": v("triton"),
            "bitsandbytes": v("bitsandbytes"), "torchao": v("torchao"), "python": platform.python_version(),
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


# ----------------------------------------------------------------------------- ceilings
_OUT = None  # the JSON file main() writes; sections checkpoint into it after every row


def write_json(path, obj):
    """JSON written atomically (qvit.vit.checkpoint.atomic_write): a run killed mid-write keeps the last file."""
    from qvit.vit.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    atomic_write(path, write)


def _checkpoint(res):
    """Write what has been measured so far: a run stopped mid-section keeps its finished rows."""
    if _OUT is not None:
        write_json(_OUT, res)


def ceilings(res):
    n = 1 << 28  # 256M bf16 = 512 MB each way
    a = rnd(n, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    res["copy_TBps"] = 2 * a.numel() * 2 / ms / 1e9
    a = b = None  # free the 1 GB before the GEMMs
    s = 8192
    x = rnd(s, s, dtype=torch.bfloat16)
    w = rnd(s, s, dtype=torch.bfloat16)
    ms = bench(lambda: x @ w)
    res["bf16_mm_TFLOPs"] = 2 * s**3 / ms / 1e9
    xi = torch.randint(-127, 128, (s, s), dtype=torch.int8).cuda()
    wi = torch.randint(-127, 128, (s, s), dtype=torch.int8).cuda()
    ms = bench(lambda: torch._int_mm(xi, wi.t()))
    res["int8_mm_TOPs"] = 2 * s**3 / ms / 1e9
    print(f"ceilings: copy {res['copy_TBps']:.2f} TB/s, bf16 {res['bf16_mm_TFLOPs']:.0f} TFLOP/s, "
          f"int8 {res['int8_mm_TOPs']:.0f} TOP/s", flush=True)


# ----------------------------------------------------------------------------- linears
def linear_providers(x, lin, k, n):
    """name -> (callable, output-for-check or None, reference or None). x bf16 (M, K)."""
    from qvit.kernels import quant as Q
    from qvit.kernels.layernorm_quant import layernorm_quant, layernorm_quant_fp8
    from qvit.kernels.w4a8_linear import expand_int4_progressive, w4a8_linear, w4a8p_linear
    from qvit.kernels.w4a16_linear import w4a16_linear, w4a16_linear_dequant
    from qvit.kernels.w8a8_linear import w8a8_linear, w8a8_linear_fp8_fast_accum, w8a8_linear_quant_out
    from qvit.kernels.w8a8_persistent import w8a8_linear_persistent
    w = lin.weight.detach()
    bias = lin.bias.detach().float()
    P = {}
    P["torch bf16 (cuBLAS)"] = lambda: torch.nn.functional.linear(x, w, lin.bias)
    wq, ws = Q.quantize_int8_per_channel(w)
    xq, xs = Q.quantize_int8_per_token(x)
    if x.shape[0] > 16:
        P["torch._int_mm (raw int32)"] = lambda: torch._int_mm(xq, wq.t())
    try:
        w8 = w.to(torch.float8_e4m3fn)
        x8 = x.to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        if x.shape[0] % 16 == 0:
            P["torch._scaled_mm fp8 (raw)"] = lambda: torch._scaled_mm(x8, w8.t(), one, one, out_dtype=torch.bfloat16)
            P["torch._scaled_mm fp8 (raw, fast accum)"] = lambda: torch._scaled_mm(
                x8, w8.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=True)
    except Exception:
        pass
    P["qvit w8a8 (int8 in)"] = lambda: w8a8_linear(xq, xs, wq, ws, bias, None, False, torch.bfloat16)
    # the epilogue-fused forms the model runs: fc1 with GELU, proj/fc2 with the residual added
    if n == 4 * k:
        P["qvit w8a8 (+gelu)"] = lambda: w8a8_linear(xq, xs, wq, ws, bias, None, True, torch.bfloat16)
    if n == 1024:
        res_in = rnd(x.shape[0], n, dtype=torch.bfloat16)
        P["qvit w8a8 (+residual)"] = lambda: w8a8_linear(xq, xs, wq, ws, bias, res_in, False, torch.bfloat16)
    P["qvit w8a8 (+act quant)"] = lambda: w8a8_linear(*layernorm_quant(x), wq, ws, bias, None, False, torch.bfloat16)
    from qvit import _ext
    if _ext.load_error() is None:  # the hand-written CUDA GEMM (csrc/w8a8_gemm.cu), tuned per shape at its first call
        from qvit.kernels.w8a8_cuda import runtime_epilogue, w8a8_linear_cuda

        def cuda_rt(*a):  # the kernel that reads its epilogue's choices at run time (no fixed-epilogue instantiation)
            with runtime_epilogue():
                return w8a8_linear_cuda(*a)
        P["qvit-cuda w8a8 (int8 in)"] = lambda: w8a8_linear_cuda(xq, xs, wq, ws, bias, None, False, torch.bfloat16)
        P["qvit-cuda w8a8 (int8 in, run-time epilogue)"] = lambda: cuda_rt(xq, xs, wq, ws, bias, None, False,
                                                                           torch.bfloat16)
        if n == 4 * k:
            P["qvit-cuda w8a8 (+gelu)"] = lambda: w8a8_linear_cuda(xq, xs, wq, ws, bias, None, True, torch.bfloat16)
            P["qvit-cuda w8a8 (+gelu, run-time epilogue)"] = lambda: cuda_rt(xq, xs, wq, ws, bias, None, True,
                                                                             torch.bfloat16)
        if n == 1024:
            P["qvit-cuda w8a8 (+residual)"] = lambda: w8a8_linear_cuda(xq, xs, wq, ws, bias, res_in, False,
                                                                       torch.bfloat16)
            P["qvit-cuda w8a8 (+residual, run-time epilogue)"] = lambda: cuda_rt(xq, xs, wq, ws, bias, res_in, False,
                                                                                 torch.bfloat16)
    fq, fs = Q.quantize_fp8_per_channel(w)
    xf, xfs = Q.quantize_fp8_per_token(x)
    if "qvit-cuda w8a8 (int8 in)" in P and torch.cuda.get_device_capability() == (9, 0):  # its e4m3 form: sm_90
        P["qvit-cuda w8a8 fp8 (fp8 in)"] = lambda: w8a8_linear_cuda(xf, xfs, fq, fs, bias, None, False, torch.bfloat16)
    P["qvit w8a8 fp8 (fp8 in)"] = lambda: w8a8_linear(xf, xfs, fq, fs, bias, None, False, torch.bfloat16)
    P["qvit w8a8 fp8 fast accum (fp8 in)"] = lambda: w8a8_linear_fp8_fast_accum(xf, xfs, fq, fs, bias, None, False,
                                                                             torch.bfloat16)
    if n == 4 * k:
        P["qvit w8a8 fp8 fast accum (+gelu)"] = lambda: w8a8_linear_fp8_fast_accum(xf, xfs, fq, fs, bias, None, True,
                                                                                 torch.bfloat16)
    if n == 1024:
        P["qvit w8a8 fp8 fast accum (+residual)"] = lambda: w8a8_linear_fp8_fast_accum(
            xf, xfs, fq, fs, bias, res_in, False, torch.bfloat16)
    # the persistent TMA kernel (one program per SM, tile and K loops flattened), int8 and fp8 fast accumulation
    P["qvit w8a8 persistent (int8 in)"] = lambda: w8a8_linear_persistent(xq, xs, wq, ws, bias, None, False,
                                                                        torch.bfloat16)
    P["qvit w8a8 fp8 fast accum persistent (fp8 in)"] = lambda: w8a8_linear_persistent(xf, xfs, fq, fs, bias, None,
                                                                                      False, torch.bfloat16)
    if n == 4 * k:
        P["qvit w8a8 persistent (+gelu)"] = lambda: w8a8_linear_persistent(xq, xs, wq, ws, bias, None, True,
                                                                          torch.bfloat16)
        P["qvit w8a8 fp8 fast accum persistent (+gelu)"] = lambda: w8a8_linear_persistent(
            xf, xfs, fq, fs, bias, None, True, torch.bfloat16)
        # fp8s's fc1: GELU then fc2's fp8 input at a static scale, written by the epilogue (half the bytes of
        # bf16; correctness: the GPU tests test_fp8_static_out_real_shapes)
        from qvit.kernels.w8a8_linear import w8a8_linear_fp8_static_out
        from qvit.kernels.w8a8_persistent import w8a8_linear_persistent_fp8_static_out
        s_out = torch.tensor(0.01, device=x.device)
        P["qvit w8a8 fp8 fast accum (+gelu, fp8 static out)"] = lambda: w8a8_linear_fp8_static_out(
            xf, xfs, fq, fs, bias, True, s_out)
        P["qvit w8a8 fp8 fast accum persistent (+gelu, fp8 static out)"] = lambda: (
            w8a8_linear_persistent_fp8_static_out(xf, xfs, fq, fs, bias, True, s_out))
        # fp8s2t's fc1: the same with GELU's tanh form (QuantConfig.gelu_tanh; test_fp8_static_out_gelu_tanh_*)
        P["qvit w8a8 fp8 fast accum (+gelu tanh, fp8 static out)"] = lambda: w8a8_linear_fp8_static_out(
            xf, xfs, fq, fs, bias, True, s_out, True)
        P["qvit w8a8 fp8 fast accum persistent (+gelu tanh, fp8 static out)"] = lambda: (
            w8a8_linear_persistent_fp8_static_out(xf, xfs, fq, fs, bias, True, s_out, True))
    if n == 1024:
        P["qvit w8a8 persistent (+residual)"] = lambda: w8a8_linear_persistent(xq, xs, wq, ws, bias, res_in, False,
                                                                              torch.bfloat16)
        P["qvit w8a8 fp8 fast accum persistent (+residual)"] = lambda: w8a8_linear_persistent(
            xf, xfs, fq, fs, bias, res_in, False, torch.bfloat16)
    P["qvit w8a8 fp8 (+act quant)"] = lambda: w8a8_linear(*layernorm_quant_fp8(x), fq, fs, bias, None, False,
                                                          torch.bfloat16)
    p4, s4, _ = Q.quantize_int4(w, 128, True)
    P["qvit w4a8 g128 (int8 in)"] = lambda: w4a8_linear(xq, xs, p4, s4, bias, 128, torch.bfloat16)
    pp, g2, s1 = Q.quantize_int4_progressive(w, 128)
    P["qvit w4a8p g128 (expand + w8a8, int8 in)"] = lambda: w8a8_linear(
        xq, xs, expand_int4_progressive(pp, g2, 128), s1, bias, None, False, torch.bfloat16)
    P["qvit w4a8p g128 (fused, int8 in)"] = lambda: w4a8p_linear(xq, xs, pp, g2, s1, bias, 128, torch.bfloat16)
    # fc1 -> fc2 without the quantize kernel between them: fc1's epilogue writes int8 + scales per 128
    # channels (GELU first), fc2 reads group-scaled int8 (QuantConfig.act_group)
    if n % 128 == 0:
        P["qvit w8a8 (+gelu, int8 out g128)"] = lambda: w8a8_linear_quant_out(xq, xs, wq, ws, bias, True, 128)
    if k % 128 == 0:
        xgq, xgs = Q.quantize_int8_per_group(x, 128)
        P["qvit w8a8 (int8 in, g128 scales)"] = lambda: w8a8_linear(xgq, xgs, wq, ws, bias, None, False,
                                                                     torch.bfloat16)
    P["qvit w4a16 int4 g128"] = lambda: w4a16_linear(x, p4, s4, None, bias, 128, "int4-sym")
    pn, an = Q.quantize_nf4(w, 64)
    pn, an = pn.view(n, k // 2), an.view(n, k // 64)
    P["qvit w4a16 nf4"] = lambda: w4a16_linear(x, pn, an, None, bias, 64, "nf4")
    P["qvit w4a16 int4 (dequant + cuBLAS)"] = lambda: w4a16_linear_dequant(x, p4, s4, None, bias, 128, "int4-sym")
    P["qvit w4a16 nf4 (dequant + cuBLAS)"] = lambda: w4a16_linear_dequant(x, pn, an, None, bias, 64, "nf4")
    refs = {
        "qvit w8a8 (int8 in)": (lambda: Q.int8_matmul_ref(xq, xs, wq, ws, bias, torch.float32)),
        "qvit w4a8 g128 (int8 in)": (lambda: Q.w4a8_linear_ref(x.float(), p4, s4, 128, bias)),
        "qvit w4a16 int4 g128": (lambda: Q.w4a16_linear_ref(x.float(), p4, s4, None, 128, bias)),
        "qvit w4a16 nf4": (lambda: Q.nf4_linear_ref(x.float(), pn.reshape(-1), an.reshape(-1), (n, k), 64, bias)),
    }
    if n == 4 * k:
        refs["qvit w8a8 (+gelu)"] = lambda: Q.int8_matmul_ref(xq, xs, wq, ws, bias, torch.float32, gelu=True)
    if n == 1024:
        refs["qvit w8a8 (+residual)"] = lambda: Q.int8_matmul_ref(xq, xs, wq, ws, bias, torch.float32,
                                                                  residual=res_in)
    refs["qvit w4a16 int4 (dequant + cuBLAS)"] = refs["qvit w4a16 int4 g128"]
    refs["qvit w4a8p g128 (expand + w8a8, int8 in)"] = lambda: Q.int8_matmul_ref(
        xq, xs, Q.expand_int4_progressive(pp, g2, 128), s1, bias, torch.float32)
    refs["qvit w4a8p g128 (fused, int8 in)"] = refs["qvit w4a8p g128 (expand + w8a8, int8 in)"]
    refs["qvit-cuda w8a8 (int8 in)"] = refs["qvit w8a8 (int8 in)"]
    refs["qvit-cuda w8a8 (int8 in, run-time epilogue)"] = refs["qvit w8a8 (int8 in)"]
    for ep in ("+gelu", "+residual"):
        if f"qvit w8a8 ({ep})" in refs:
            ref_ep = refs[f"qvit w8a8 ({ep})"]
            refs[f"qvit-cuda w8a8 ({ep})"] = refs[f"qvit-cuda w8a8 ({ep}, run-time epilogue)"] = ref_ep
    refs["qvit-cuda w8a8 fp8 (fp8 in)"] = lambda: Q.fp8_matmul_ref(xf, xfs, fq, fs, bias, torch.float32)
    refs["qvit w8a8 fp8 (fp8 in)"] = lambda: Q.fp8_matmul_ref(xf, xfs, fq, fs, bias, torch.float32)
    refs["qvit w8a8 fp8 fast accum (fp8 in)"] = refs["qvit w8a8 fp8 (fp8 in)"]
    refs["qvit w8a8 persistent (int8 in)"] = refs["qvit w8a8 (int8 in)"]
    refs["qvit w8a8 fp8 fast accum persistent (fp8 in)"] = refs["qvit w8a8 fp8 (fp8 in)"]
    if n == 4 * k:
        refs["qvit w8a8 persistent (+gelu)"] = refs["qvit w8a8 (+gelu)"]
        refs["qvit w8a8 fp8 fast accum persistent (+gelu)"] = lambda: Q.fp8_matmul_ref(
            xf, xfs, fq, fs, bias, torch.float32, gelu=True)
    if n == 1024:
        refs["qvit w8a8 persistent (+residual)"] = refs["qvit w8a8 (+residual)"]
        refs["qvit w8a8 fp8 fast accum persistent (+residual)"] = lambda: Q.fp8_matmul_ref(
            xf, xfs, fq, fs, bias, torch.float32, residual=res_in)
    if n == 4 * k:
        refs["qvit w8a8 fp8 fast accum (+gelu)"] = lambda: Q.fp8_matmul_ref(xf, xfs, fq, fs, bias, torch.float32,
                                                                           gelu=True)
    if n == 1024:
        refs["qvit w8a8 fp8 fast accum (+residual)"] = lambda: Q.fp8_matmul_ref(xf, xfs, fq, fs, bias, torch.float32,
                                                                               residual=res_in)
    if k % 128 == 0:
        refs["qvit w8a8 (int8 in, g128 scales)"] = lambda: Q.int8_group_matmul_ref(xgq, xgs, wq, ws, bias,
                                                                                    torch.float32)
    refs["qvit w4a16 nf4 (dequant + cuBLAS)"] = refs["qvit w4a16 nf4"]
    # peers
    try:
        import bitsandbytes as bnb
        l4 = bnb.nn.Linear4bit(k, n, bias=True, compute_dtype=torch.bfloat16, quant_type="nf4")
        l4.load_state_dict(lin.state_dict())
        l4 = l4.cuda()
        P["bnb NF4 Linear4bit"] = lambda: l4(x)
        l8 = bnb.nn.Linear8bitLt(k, n, bias=True, has_fp16_weights=False, threshold=6.0)
        l8.load_state_dict({kk: v.half() for kk, v in lin.state_dict().items()})
        l8 = l8.cuda()
        xh = x.half()
        P["bnb LLM.int8 Linear8bitLt"] = lambda: l8(xh)
    except Exception as e:
        print(f"  bitsandbytes unavailable: {type(e).__name__}: {e}", flush=True)
    return P, refs


def bench_linears(res, quick, providers=None, layers=None, ms=None):
    """providers: a regular expression; only matching providers run (the cuBLAS bf16 baseline always does).
    layers: a subset of VIT_L_LINEARS' names. ms: the token counts (default 197 and 12,608, and 50,432 unless
    quick)."""
    ms_list = ms or ([197, 12608] if quick else [197, 12608, 50432])
    out = res["linears"] = []
    for name, (k, n) in VIT_L_LINEARS.items():
        if layers and name not in layers:
            continue
        lin = torch.nn.Linear(k, n).to("cuda", torch.bfloat16)
        for m in ms_list:
            x = rnd(m, k, dtype=torch.bfloat16)
            P, refs = linear_providers(x, lin, k, n)
            P = _select(P, providers, ("torch bf16 (cuBLAS)",))
            row = {"layer": name, "M": m, "K": k, "N": n, "flops": 2 * m * k * n, "providers": {}}
            for pname, fn in P.items():
                try:
                    y = fn()
                    torch.cuda.synchronize()
                    entry = timed(fn, graph=not pname.startswith("bnb"))
                    if pname in refs:
                        entry["rel_err"] = rel_err(y, refs[pname]())
                    if pname.startswith("qvit-cuda w8a8"):  # the tuner's pick: (tile config, K splits)
                        from qvit.kernels import w8a8_cuda
                        gelu, res, fixed = "+gelu" in pname, "+residual" in pname, "run-time epilogue" not in pname
                        qd = torch.float8_e4m3fn if "fp8" in pname else torch.int8
                        want = w8a8_cuda.shape_key(m, n, k, torch.bfloat16, gelu, res, True,
                                                   torch.cuda.current_device(), qd, fixed)
                        pick = w8a8_cuda._choice.get(want)
                        entry["cuda_config"] = None if pick is None else {
                            "config": pick[0], "tile": w8a8_cuda.CONFIGS[pick[0]], "splits": pick[1],
                            "fixed_epilogue": fixed and w8a8_cuda.fixed_epilogue(m, n, pick[0], pick[1],
                                                                                 torch.bfloat16, True, res, gelu)}
                        table = [w8a8_cuda._tune_times[want]] if want in w8a8_cuda._tune_times else []
                        if table:  # the tuner's ten fastest (config, splits), us per launch; "retimed": the
                            # entry is the second pass's (the first pass's fastest, re-timed in alternation)
                            top = sorted(table[-1].items(), key=lambda kv: kv[1])[:10]
                            again = w8a8_cuda._tune_retimed.get(want, set())
                            entry["cuda_tuner_top"] = [{"config": c, "tile": w8a8_cuda.CONFIGS[c], "splits": sp,
                                                        "us": ms * 1e3 / w8a8_cuda._TUNE_REPS,
                                                        "retimed": (c, sp) in again} for (c, sp), ms in top]
                    if "persistent" in pname:  # the autotuner's pick for this call (re-tuned per process: no disk cache)
                        from qvit.kernels.w8a8_persistent import _w8a8_persistent_kernel
                        entry["config"] = _config_str(getattr(_w8a8_persistent_kernel, "best_config", None))
                    row["providers"][pname] = entry
                except Exception as e:
                    row["providers"][pname] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            base = row["providers"].get("torch bf16 (cuBLAS)", {}).get("ms")
            for entry in row["providers"].values():
                if "ms" in entry:
                    entry["TFLOPs"] = row["flops"] / entry["ms"] / 1e9
                    if base:
                        entry["speedup_vs_bf16"] = base / entry["ms"]
            out.append(row)
            _checkpoint(res)
            best = ", ".join(f"{p}={e['ms'] * 1e3:.1f}us" for p, e in row["providers"].items() if "ms" in e)
            print(f"linear {name} M={m}: {best}", flush=True)
            del x


# ----------------------------------------------------------------------------- layernorm + quant
def bench_lnq(res):
    from qvit import _ext
    from qvit.kernels.layernorm_quant import layernorm_quant, layernorm_quant_fp8, layernorm_quant_ref
    out = res["layernorm_quant"] = []
    for m, k in [(12608, 1024), (50432, 1024), (12608, 4096)]:
        x, w, b = rnd(m, k, dtype=torch.float16), rnd(k, dtype=torch.float16), rnd(k, dtype=torch.float16)
        refs = {False: layernorm_quant_ref(x, w, b), True: layernorm_quant_ref(x, w, b, fp8=True)}
        nbytes = m * k * 2 + m * k + m * 4
        row = {"M": m, "K": k, "bytes": nbytes, "providers": {}}
        provs = {"qvit triton": lambda: layernorm_quant(x, w, b),
                 "qvit triton fp8": lambda: layernorm_quant_fp8(x, w, b),
                 "torch (layer_norm + quantize, eager)": lambda: layernorm_quant_ref(x, w, b)}
        if _ext.load_error() is None:
            from qvit.kernels.layernorm_quant import layernorm_quant_cuda
            provs["qvit cuda"] = lambda: layernorm_quant_cuda(x, w, b)
        for pname, fn in _select(provs).items():
            try:
                q, s = fn()
                qr, sr = refs[q.dtype == torch.float8_e4m3fn]
                if q.dtype == torch.float8_e4m3fn:  # codes compared as e4m3 ordinals (steps on the grid)
                    from qvit.kernels.quant import e4m3_ordinal
                    d = (e4m3_ordinal(q) - e4m3_ordinal(qr)).abs()
                else:
                    d = (q.int() - qr.int()).abs()
                mism, maxdiff = int(d.gt(0).sum()), int(d.max())
                t = timed(fn)
                ms = t["ms"]
                row["providers"][pname] = {**t, "TBps": nbytes / ms / 1e9, "q_mismatch": mism, "q_maxdiff": maxdiff,
                                           "scale_rel_err": float(((s - sr).abs() / sr).max())}
            except Exception as e:
                row["providers"][pname] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        if "copy_TBps" in res:
            for e in row["providers"].values():
                if "TBps" in e:
                    e["frac_of_copy"] = e["TBps"] / res["copy_TBps"]
        out.append(row)
        _checkpoint(res)
        print(f"lnq M={m} K={k}: " + ", ".join(f"{p}={e.get('TBps', float('nan')):.2f}TB/s" for p, e in
                                               row["providers"].items()), flush=True)


# ----------------------------------------------------------------------------- attention
def _config_str(c) -> str | None:
    """A Triton autotuner config as one short string: its block sizes, warps and stages."""
    if c is None:
        return None
    return " ".join(f"{k}={v}" for k, v in c.kwargs.items()) + f" w={c.num_warps} st={c.num_stages}"


def bench_attention(res, quick, providers=None):
    """providers: a regular expression; only matching providers run (SDPA FLASH and cuDNN always do)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from qvit.kernels.attention import (_attn_fwd, attention_fwd, attention_int8, attention_qk_int8,
                                        attention_quant_out, attention_ref, quantize_qk, quantize_qk_ref)
    shapes = [(1, 197), (64, 197), (64, 577)] if quick else [(1, 197), (64, 197), (256, 197), (64, 257), (64, 577), (1, 577)]
    h, d = 16, 64
    out = res["attention"] = []
    try:
        from sageattention import sageattn
    except Exception:
        sageattn = None
    for b, s in shapes:
        qkv = rnd(b, s, 3, h, d, dtype=torch.float16)
        q, k, v = qkv.unbind(2)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ref = attention_ref(q, k, v, upcast=True)
        flops = 4 * b * h * s * s * d
        row = {"B": b, "S": s, "H": h, "D": d, "flops": flops, "providers": {}}
        provs = {}
        for nm, be in [("SDPA FLASH (FA2)", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION),
                       ("SDPA efficient", SDPBackend.EFFICIENT_ATTENTION), ("SDPA math", SDPBackend.MATH)]:
            def f(be=be):
                with sdpa_kernel([be]):
                    return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
            provs[nm] = f
        if sageattn is not None:
            provs["SageAttention 1.0.6"] = lambda: sageattn(qt, kt, vt, tensor_layout="HND", is_causal=False).transpose(1, 2)
        provs["qvit fp16"] = lambda: attention_fwd(q, k, v, d ** -0.5)[0]
        q8, qs, k8, ks = quantize_qk(q, k)
        provs["qvit int8 QK (pre-quantized)"] = lambda: attention_int8(q8, qs, k8, ks, v, d ** -0.5)
        provs["qvit int8 QK (+quantize kernel)"] = lambda: attention_int8(*quantize_qk(q, k), v, d ** -0.5)
        provs["qvit int8 QK (quantized on chip)"] = lambda: attention_qk_int8(q, k, v, d ** -0.5)
        provs["qvit int8 QK (on chip, K unsmoothed)"] = lambda: attention_qk_int8(q, k, v, d ** -0.5, False)
        provs["qvit int8 QK (+quantize in torch)"] = lambda: attention_int8(*quantize_qk_ref(q, k), v, d ** -0.5)
        # the output quantized for proj in the epilogue (int8 + a scale per token and head): what the model
        # runs with QuantConfig.act_group instead of attention -> separate quantize kernel
        provs["qvit fp16 (+int8 out for proj)"] = lambda: attention_quant_out(q, k, v, d ** -0.5)
        provs["qvit int8 QK (on chip, +int8 out)"] = lambda: attention_quant_out(q, k, v, d ** -0.5, True)
        for pname, fn in _select(provs, providers, ("SDPA FLASH (FA2)", "SDPA cuDNN")).items():
            if pname == "SDPA math" and b * s * s > 64 * 577 * 577:
                continue
            try:
                y = fn()
                if isinstance(y, tuple):  # (int8, scale per token and head): its error as dequantized
                    y = y[0].float() * y[1][..., None]
                torch.cuda.synchronize()
                e = {**timed(fn, graph=not pname.startswith("Sage")), "rel_err": rel_err(y, ref)}
                e["TFLOPs"] = flops / e["ms"] / 1e9
                if pname.startswith("qvit"):  # the tile the autotuner chose for this shape (the last call's)
                    e["config"] = _config_str(getattr(_attn_fwd, "best_config", None))
                row["providers"][pname] = e
            except Exception as ex:
                row["providers"][pname] = {"error": f"{type(ex).__name__}: {str(ex)[:200]}"}
        row["fp16_sdpa_rel_err"] = rel_err(attention_ref(q, k, v, upcast=False), ref)
        out.append(row)
        _checkpoint(res)
        print(f"attn B={b} S={s}: " + ", ".join(f"{p}={e['ms'] * 1e3:.1f}us" for p, e in row["providers"].items()
                                               if "ms" in e), flush=True)


def bench_attention_bwd(res, quick):
    """Backward only (dQ, dK, dV from a given dO): qvit's fused FA2 backward vs SDPA's backends through
    autograd (the forward graph is kept, only the backward is timed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from qvit.kernels.attention import attention_bwd, attention_fwd
    shapes = [(64, 197)] if quick else [(1, 197), (64, 197), (64, 577)]
    h, d = 16, 64
    out = res["attention_bwd"] = []
    for b, s in shapes:
        qkv = rnd(b, s, 3, h, d, dtype=torch.float16)
        q, k, v = qkv.unbind(2)
        do = rnd(b, s, h, d, dtype=torch.float16)
        qf, kf, vf = (t.detach().float().transpose(1, 2).requires_grad_() for t in (q, k, v))
        torch.nn.functional.scaled_dot_product_attention(qf, kf, vf).backward(do.float().transpose(1, 2))
        ref = torch.stack([qf.grad.transpose(1, 2), kf.grad.transpose(1, 2), vf.grad.transpose(1, 2)], 2)
        row = {"B": b, "S": s, "H": h, "D": d, "flops": 10 * b * h * s * s * d, "providers": {}}
        o, lse = attention_fwd(q, k, v, d ** -0.5)
        provs = {"qvit FA2 bwd": lambda: torch.stack(attention_bwd(q, k, v, o, lse, do, d ** -0.5), 2)}
        for nm, be in [("SDPA FLASH (FA2)", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION),
                       ("SDPA efficient", SDPBackend.EFFICIENT_ATTENTION)]:
            qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
            try:
                with sdpa_kernel([be]):
                    ot = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
            except Exception as ex:
                row["providers"][nm] = {"error": f"{type(ex).__name__}: {str(ex)[:200]}"}
                continue

            def f(ot=ot, qt=qt, kt=kt, vt=vt):
                g = torch.autograd.grad(ot, (qt, kt, vt), do.transpose(1, 2), retain_graph=True)
                return torch.stack([t.transpose(1, 2) for t in g], 2)
            provs[nm] = f
        for pname, fn in _select(provs).items():
            try:
                y = fn()
                torch.cuda.synchronize()
                e = {**timed(fn), "rel_err": rel_err(y, ref)}
                e["TFLOPs"] = row["flops"] / e["ms"] / 1e9
                row["providers"][pname] = e
            except Exception as ex:
                row["providers"][pname] = {"error": f"{type(ex).__name__}: {str(ex)[:200]}"}
        out.append(row)
        _checkpoint(res)
        print(f"attn bwd B={b} S={s}: " + ", ".join(f"{p}={e['ms'] * 1e3:.1f}us" for p, e in row["providers"].items()
                                                   if "ms" in e), flush=True)


# ----------------------------------------------------------------------------- report
# a provider's kind: (kind, regular expression of qvit's providers, of the peers' providers). The raw
# `_int_mm` / `_scaled_mm` rows leave out the scaling and bias a full linear needs: a lower bound on that peer.
KINDS = (("int8 W8A8", r"^qvit(-cuda)? w8a8( persistent)? \((int8 in|\+act quant)\)$", r"_int_mm|LLM\.int8|torchao int8"),
         ("fp8 W8A8", r"^qvit w8a8 fp8 \(", r"_scaled_mm fp8 \(raw\)"),
         # accumulated in place over K (Hopper's reduced-precision accumulator) against cuBLAS doing the same
         ("fp8 W8A8, fast accumulation", r"^qvit w8a8 fp8 fast accum( persistent)? \(fp8 in\)$", r"_scaled_mm fp8 \(raw, fast accum\)"),
         ("4-bit weight-only", r"^qvit w4a16", r"bnb NF4|torchao int4"))


def peer_summary(res) -> list[dict]:
    """Per linear shape and kind: qvit's fastest provider of that kind against the fastest peer of that kind,
    both measured in this run (speed-up > 1: qvit faster). The issue's bar is every row >= 1."""
    rows = []
    for r in res.get("linears", []):
        timed = {p: e["ms"] for p, e in r["providers"].items() if "ms" in e}
        for kind, ours, theirs in KINDS:
            q = {p: t for p, t in timed.items() if re.search(ours, p)}
            o = {p: t for p, t in timed.items() if re.search(theirs, p) and not p.startswith("qvit")}
            if q and o:
                qp, pp = min(q, key=q.get), min(o, key=o.get)
                rows.append({"layer": r["layer"], "M": r["M"], "kind": kind, "qvit": qp, "qvit_ms": q[qp],
                             "peer": pp, "peer_ms": o[pp], "speedup": o[pp] / q[qp]})
    return rows


def markdown(res) -> str:
    e = res["env"]
    L = [f"# Kernel benchmarks: {e['card']}", "",
         f"torch {e['torch']} (CUDA {e['cuda']}), Triton {e['triton']}, bitsandbytes {e['bitsandbytes']}; "
         f"commit `{e['commit']}`; {e['date']}. Times are medians of CUDA-graph replays "
         "(`triton.testing.do_bench_cudagraph`: GPU time without launch overhead) where the provider can be "
         "captured, marked `*` where it could not and the eager `do_bench` median is shown; the eager medians "
         "are all in the JSON (`ms_eager`). Every ratio is against a baseline measured in the same run.", ""]
    if "copy_TBps" in res:
        L += [f"Ceilings measured in this run: copy {res['copy_TBps']:.2f} TB/s (read+write), cuBLAS bf16 8192^3 "
              f"{res['bf16_mm_TFLOPs']:.0f} TFLOP/s, `torch._int_mm` 8192^3 {res['int8_mm_TOPs']:.0f} TOP/s.", ""]
    if res.get("linears"):
        L += ["## ViT-L/16 linears (bf16 in/out unless noted; time in us; x = speed-up over cuBLAS bf16)", ""]
        provs = []
        for r in res["linears"]:
            for p in r["providers"]:
                if p not in provs:
                    provs.append(p)
        L += ["| layer | M | " + " | ".join(provs) + " |", "|---|---|" + "---|" * len(provs)]
        for r in res["linears"]:
            cells = []
            for p in provs:
                en = r["providers"].get(p, {})
                if "ms" in en:
                    star = "" if en.get("graphed") else "*"
                    cells.append(f"{en['ms'] * 1e3:.1f}{star} ({en.get('speedup_vs_bf16', 0):.2f}x)")
                else:
                    cells.append("err" if "error" in en else "-")
            L.append(f"| {r['layer']} {r['K']}->{r['N']} | {r['M']} | " + " | ".join(cells) + " |")
        summary = peer_summary(res)
        if summary:
            L += ["", "qvit against the fastest peer of the same kind (speed-up > 1: qvit faster; **bold** where a "
                  "peer is faster; `_int_mm` / `_scaled_mm` are raw products without scales or bias):", "",
                  "| layer | M | kind | fastest qvit | us | fastest peer | us | speed-up |", "|---|---|---|---|---|---|---|---|"]
            for e in summary:
                sp = f"{e['speedup']:.2f}x"
                L.append(f"| {e['layer']} | {e['M']} | {e['kind']} | {e['qvit']} | {e['qvit_ms'] * 1e3:.1f} | "
                         f"{e['peer']} | {e['peer_ms'] * 1e3:.1f} | {sp if e['speedup'] >= 1 else f'**{sp}**'} |")
        L += ["", "Relative error of each qvit kernel against its plain-PyTorch reference (same quantized operands):", ""]
        for r in res["linears"]:
            errs = ", ".join(f"{p}: {en['rel_err']:.1e}" for p, en in r["providers"].items() if "rel_err" in en)
            L.append(f"- {r['layer']} M={r['M']}: {errs}")
        picks = [f"- {r['layer']} M={r['M']} {p}: {en['config']}" for r in res["linears"]
                 for p, en in r["providers"].items() if en.get("config")]
        if picks:
            L += ["", "Configs the persistent kernel's autotuner chose:", ""] + picks
        L.append("")
    if res.get("layernorm_quant"):
        L += ["## LayerNorm + per-token int8 quantization (fp16 in)", "",
              "| M | K | provider | us | TB/s | of copy | q mismatches vs ref (max diff) |", "|---|---|---|---|---|---|---|"]
        for r in res["layernorm_quant"]:
            for p, en in r["providers"].items():
                if "ms" in en:
                    L.append(f"| {r['M']} | {r['K']} | {p} | {en['ms'] * 1e3:.1f} | {en['TBps']:.2f} | "
                             f"{en.get('frac_of_copy', float('nan')):.0%} | {en['q_mismatch']} ({en['q_maxdiff']}) |")
        L.append("")
    for sec, title in (("attention", "Attention forward"), ("attention_bwd", "Attention backward (dQ, dK, dV)")):
        if not res.get(sec):
            continue
        L += [f"## {title}, H=16, D=64, fp16 (time in us; relative error vs fp32 reference)", ""]
        provs = []
        for r in res[sec]:
            for p in r["providers"]:
                if p not in provs:
                    provs.append(p)
        L += ["| B | S | " + " | ".join(provs) + " |", "|---|---|" + "---|" * len(provs)]
        for r in res[sec]:
            cells = []
            for p in provs:
                en = r["providers"].get(p, {})
                star = "" if en.get("graphed") else "*"
                cells.append(f"{en['ms'] * 1e3:.1f}{star} ({en['rel_err']:.1e})" if "ms" in en else ("err" if "error" in en else "-"))
            L.append(f"| {r['B']} | {r['S']} | " + " | ".join(cells) + " |")
        L.append("")
        tiles = [f"- B={r['B']} S={r['S']}: " + "; ".join(f"{p}: {en['config']}" for p, en in r["providers"].items()
                                                          if en.get("config"))
                 for r in res[sec] if any(en.get("config") for en in r["providers"].values())]
        if tiles:
            L += ["Tiles the autotuner chose (TAIL_M/TAIL_N > 0: full blocks unmasked, the remainder in narrower "
                  "blocks):", ""] + tiles + [""]
    errs = []
    for sec in ("linears", "layernorm_quant", "attention", "attention_bwd"):
        for r in res.get(sec, []):
            for p, en in r["providers"].items():
                if "error" in en:
                    errs.append(f"- {sec} {p} ({ {k: v for k, v in r.items() if k in ('layer', 'M', 'B', 'S', 'K')} }): {en['error']}")
    if errs:
        L += ["## Providers that failed to run", ""] + errs + [""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="ceilings,linear,lnq,attention,attention_bwd")
    ap.add_argument("--providers", default=None,
                    help="linear and attention sections: a regular expression of the providers to run (the baselines "
                         "cuBLAS bf16, SDPA FLASH and SDPA cuDNN always run)")
    ap.add_argument("--layers", default=None, help="linear section: comma-separated subset of qkv,proj,fc1,fc2")
    ap.add_argument("--ms", default=None, help="linear section: comma-separated token counts M (default 197,12608 "
                                               "and 50432 unless --quick)")
    ap.add_argument("--warm", type=int, default=0, metavar="N",
                    help="first compile every Triton autotuner config this run will tune, in N parallel processes "
                         "(qvit.profiling.warm; their timings are thrown away): a cold machine's tuning is "
                         "compile-bound")
    ap.add_argument("--warm-shard", default=None, help=argparse.SUPPRESS)  # internal: one of the N processes
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    global _OUT, _WARM
    if args.warm_shard:
        _WARM = True
        names = [s for s in args.only.split(",") if s != "ceilings"]
    else:
        names = args.only.split(",")
        os.makedirs(args.out, exist_ok=True)
        _OUT = os.path.join(args.out, "bench_kernels.json")
    warmed = None
    if args.warm > 1 and not args.warm_shard:
        from qvit.profiling.warm import strip_warm_args, warm
        warmed = warm("qvit.profiling.bench_kernels", strip_warm_args(argv), args.warm)
    res = {"env": env_info()}
    if warmed:
        res["warm"] = warmed
    print(json.dumps(res["env"]), flush=True)
    torch.manual_seed(0)
    sections = {"ceilings": lambda: ceilings(res), "linear": lambda: bench_linears(res, args.quick, args.providers,
                                                     args.layers.split(",") if args.layers else None,
                                                     [int(m) for m in args.ms.split(",")] if args.ms else None),
                "lnq": lambda: bench_lnq(res), "attention": lambda: bench_attention(res, args.quick, args.providers),
                "attention_bwd": lambda: bench_attention_bwd(res, args.quick)}
    for name in names:
        t0 = time.time()
        try:
            sections[name]()
        except Exception:
            res.setdefault("section_errors", {})[name] = traceback.format_exc()[-2000:]
            traceback.print_exc()
        print(f"[{name}: {time.time() - t0:.0f} s]", flush=True)
        _checkpoint(res)  # also after a section that failed or has no rows
    if _WARM:
        return 0
    with open(os.path.join(args.out, "bench_kernels.md"), "w") as f:
        f.write(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
