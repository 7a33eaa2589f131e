"""Driver for Nsight Compute: qvit's main kernels on ViT-L/16 shapes, each launched once inside an NVTX
range `profile` after warm-up (Triton autotuning happens outside it), so that

    ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --csv \\
        python -m qvit.profiling.ncu_kernels

profiles exactly one launch of each: W8A8 fc1 (M = 12608; plain, + GELU, + GELU + group-quantized output), fc2
on per-token and on group-wise (128) input scales, W4A8 fc1, W4A16 fc1 (M = 197), fused attention
(B = 64, S = 197, bf16 and fp16) beside SDPA's cuDNN and FLASH kernels on the same fp16 inputs, LayerNorm +
quantize. `--only REGEX` keeps the kernels whose name matches. `--clock-control none` leaves the card's clocks
alone.
tools/gpu_run.sh (step `ncu`) runs it and keeps the CSV.
"""
from __future__ import annotations

import argparse
import re
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, metavar="REGEX", help="profile only the kernels whose name matches")
    ap.add_argument("--pin", action="append", default=[], metavar="CONFIG",
                    help="also profile fc2 + residual at M = 197 with this W8A8 config pinned, e.g. "
                         "'BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,SPLIT_K=4,warps=4,stages=4' (repeatable)")
    args = ap.parse_args(argv)
    pins = [parse_pin(p) for p in args.pin]  # bad specs fail before any GPU work
    if not torch.cuda.is_available():
        print("ncu_kernels: needs a CUDA GPU", file=sys.stderr)
        return 2
    from qvit.kernels import quant as Q
    from qvit.kernels.attention import attention
    from qvit.kernels.layernorm_quant import layernorm_quant, layernorm_quant_cuda
    from qvit.kernels.w4a8_linear import w4a8_linear
    from qvit.kernels.w4a16_linear import w4a16_linear
    from qvit.kernels.w8a8_linear import (w8a8_linear, w8a8_linear_fp8_fast_accum, w8a8_linear_fp8_static_out,
                                          w8a8_linear_quant_out)
    from qvit.kernels.w8a8_persistent import w8a8_linear_persistent, w8a8_linear_persistent_fp8_static_out
    dev = "cuda"
    torch.manual_seed(0)
    m, k, n = 197 * 64, 1024, 4096
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev) * 0.02
    wq, ws = Q.quantize_int8_per_channel(w)
    p4, s4, _ = Q.quantize_int4(w, 128, True)
    b = torch.randn(n, device=dev)
    xq, xs = Q.quantize_int8_per_token(x)
    fq, fs = Q.quantize_fp8_per_token(x)
    f8w, f8s = Q.quantize_fp8_per_channel(w)
    one = torch.ones((), device=dev)
    s_out = torch.tensor(0.01, device=dev)  # a static fp8 output scale (fp8s)
    x1 = x[:197].contiguous()
    q, kk, v = torch.randn(64, 197, 3, 16, 64, device=dev, dtype=torch.bfloat16).unbind(2)
    qh, kh, vh = (t.half() for t in (q, kk, v))
    lw, lb = torch.ones(k, device=dev, dtype=torch.bfloat16), torch.zeros(k, device=dev, dtype=torch.bfloat16)
    # fc2 (4096 -> 1024) on fc1's group-quantized output, against the per-token-scaled GEMM
    h = torch.nn.functional.gelu(torch.randn(m, n, device=dev, dtype=torch.bfloat16))
    hq, hs = Q.quantize_int8_per_token(h)
    hqg, hsg = Q.quantize_int8_per_group(h, 128)
    w2 = torch.randn(k, n, device=dev) * 0.02
    w2q, w2s = Q.quantize_int8_per_channel(w2)
    # batch 1: 197 tokens
    fq1, fs1 = fq[:197].contiguous(), fs[:197].contiguous()
    hf1, hfs1 = Q.quantize_fp8_per_token(h[:197].float())
    f8w2, f8s2 = Q.quantize_fp8_per_channel(w2)
    w2_bf16 = w2.to(torch.bfloat16)
    fq_qkv, fs_qkv = Q.quantize_fp8_per_channel(torch.randn(3 * k, k, device=dev) * 0.02)
    fq_proj, fs_proj = Q.quantize_fp8_per_channel(torch.randn(k, k, device=dev) * 0.02)
    b_qkv, b1k = torch.randn(3 * k, device=dev), torch.randn(k, device=dev)
    r1 = torch.randn(197, k, device=dev, dtype=torch.bfloat16)
    calls = {
        "w8a8_fc1_M12608": lambda: w8a8_linear(xq, xs, wq, ws, b, None, False, torch.bfloat16),
        "w8a8_fc1_gelu_M12608": lambda: w8a8_linear(xq, xs, wq, ws, b, None, True, torch.bfloat16),
        "w8a8_fc1_gelu_qout128_M12608": lambda: w8a8_linear_quant_out(xq, xs, wq, ws, b, True, 128),
        "w8a8_fp8fast_fc1_M12608": lambda: w8a8_linear_fp8_fast_accum(fq, fs, f8w, f8s, b, None, False, torch.bfloat16),
        "w8a8_fp8fast_fc1_gelu_M12608": lambda: w8a8_linear_fp8_fast_accum(fq, fs, f8w, f8s, b, None, True,
                                                                            torch.bfloat16),
        "scaled_mm_fp8fast_fc1_M12608": lambda: torch._scaled_mm(fq, f8w.t(), one, one, out_dtype=torch.bfloat16,
                                                                 use_fast_accum=True),
        # the persistent TMA kernel (the model's GEMM from 4,096 tokens on): plain, + GELU (the epilogue that
        # costs it 22 us at this shape), and fp8s's fc1 (GELU + fp8 static output)
        "w8a8p_fp8_fc1_M12608": lambda: w8a8_linear_persistent(fq, fs, f8w, f8s, b, None, False, torch.bfloat16),
        "w8a8p_fp8_fc1_gelu_M12608": lambda: w8a8_linear_persistent(fq, fs, f8w, f8s, b, None, True, torch.bfloat16),
        "w8a8p_fp8_fc1_gelu_fp8out_M12608": lambda: w8a8_linear_persistent_fp8_static_out(fq, fs, f8w, f8s, b, True,
                                                                                           s_out),
        "w8a8_fc2_M12608": lambda: w8a8_linear(hq, hs, w2q, w2s, None, None, False, torch.bfloat16),
        "w8a8_fc2_g128_M12608": lambda: w8a8_linear(hqg, hsg, w2q, w2s, None, None, False, torch.bfloat16),
        "w4a8_fc1_M12608": lambda: w4a8_linear(xq, xs, p4, s4, b, 128, torch.bfloat16),
        "w4a16_fc1_M197": lambda: w4a16_linear(x1, p4, s4, None, b, 128, "int4-sym"),
        "attention_B64_S197": lambda: attention(q, kk, v),
        "attention_fp16_B64_S197": lambda: attention(qh, kh, vh),
        "sdpa_cudnn_fp16_B64_S197": lambda: _sdpa(qh, kh, vh, "CUDNN_ATTENTION"),
        "sdpa_flash_fp16_B64_S197": lambda: _sdpa(qh, kh, vh, "FLASH_ATTENTION"),
        "layernorm_quant_M12608": lambda: layernorm_quant(x, lw, lb),
        # batch 1 (M = 197) on the fp8 rows' GEMMs (fast accumulation) beside cuBLAS bf16: what bounds them
        "fp8fast_qkv_M197": lambda: w8a8_linear_fp8_fast_accum(fq1, fs1, fq_qkv, fs_qkv, b_qkv, None, False,
                                                                torch.bfloat16),
        "fp8fast_proj_res_M197": lambda: w8a8_linear_fp8_fast_accum(fq1, fs1, fq_proj, fs_proj, b1k, r1, False,
                                                                     torch.bfloat16),
        "fp8_fc1_gelu_fp8out_M197": lambda: w8a8_linear_fp8_static_out(fq1, fs1, f8w, f8s, b, True, s_out, True),
        "fp8fast_fc2_res_M197": lambda: w8a8_linear_fp8_fast_accum(hf1, hfs1, f8w2, f8s2, b1k, r1, False,
                                                                    torch.bfloat16),
        "cublas_bf16_fc2_M197": lambda: torch.nn.functional.linear(h[:197], w2_bf16),
        "attention_B1_S197": lambda: attention(q[:1], kk[:1], v[:1]),
    }
    from qvit.kernels import w8a8_linear as L
    for spec, cfg in zip(args.pin, pins):
        calls[f"fp8fast_fc2_res_M197@{spec}"] = (lambda c: lambda: _pinned(
            L._w8a8_kernel, c, lambda: w8a8_linear_fp8_fast_accum(hf1, hfs1, f8w2, f8s2, b1k, r1, False,
                                                                  torch.bfloat16)))(cfg)
    try:  # the hand-written CUDA kernel, where the extension is built
        layernorm_quant_cuda(x, lw, lb)
        calls["layernorm_quant_cuda_M12608"] = lambda: layernorm_quant_cuda(x, lw, lb)
    except Exception as e:  # noqa: BLE001 - reported, the other kernels still run
        print(f"ncu_kernels: no CUDA layernorm_quant ({e})", file=sys.stderr)
    if args.only:
        calls = {name: fn for name, fn in calls.items() if re.search(args.only, name)}
        if not calls:
            print(f"ncu_kernels: no kernel matches --only {args.only!r}", file=sys.stderr)
            return 2
    profile_launches(calls)
    return 0


def parse_pin(spec: str):
    """'BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,SPLIT_K=4,warps=4,stages=4' -> a triton.Config (GROUP_M 8 unless
    given); a clear error for a malformed spec."""
    import triton
    kw, warps, stages = {"GROUP_M": 8}, 4, 4
    for item in spec.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep or not val.strip().isdigit():
            raise ValueError(f"ncu_kernels --pin {spec!r}: expected KEY=INT items separated by commas, got {item!r}")
        if key == "warps":
            warps = int(val)
        elif key == "stages":
            stages = int(val)
        elif key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "SPLIT_K"):
            kw[key] = int(val)
        else:
            raise ValueError(f"ncu_kernels --pin {spec!r}: unknown key {key!r} (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, "
                             f"SPLIT_K, warps, stages)")
    missing = {"BLOCK_M", "BLOCK_N", "BLOCK_K"} - kw.keys()
    if missing:
        raise ValueError(f"ncu_kernels --pin {spec!r}: missing {', '.join(sorted(missing))}")
    return triton.Config(kw, num_warps=warps, num_stages=stages)


def _pinned(kernel, cfg, fn):
    """fn() with the autotuned `kernel` running only `cfg` (its config list, tuning cache and pruning restored
    afterwards)."""
    saved = kernel.configs, kernel.cache, getattr(kernel, "early_config_prune", None)
    kernel.configs, kernel.cache = [cfg], {}
    if saved[2] is not None:
        kernel.early_config_prune = None
    try:
        return fn()
    finally:
        kernel.configs, kernel.cache = saved[0], saved[1]
        if saved[2] is not None:
            kernel.early_config_prune = saved[2]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """PyTorch SDPA pinned to one backend, on qvit's (B, S, H, D) layout (SDPA wants (B, H, S, D))."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(getattr(SDPBackend, backend)):
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def profile_launches(calls: dict, warmup: int = 3) -> None:
    """Each callable `warmup` times (autotuning, first launches), then once inside NVTX ranges profile/<name>:
    what `ncu --nvtx --nvtx-include "profile/"` profiles."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    for name, fn in calls.items():
        torch.cuda.nvtx.range_push("profile")
        torch.cuda.nvtx.range_push(name)
        fn()
        torch.cuda.nvtx.range_pop()
        torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        print(f"ncu: launched {name}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
