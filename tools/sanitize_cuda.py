"""Runs one launch of each hand-written CUDA kernel on small odd shapes, for `compute-sanitizer` (memcheck,
racecheck): every W8A8 GEMM tile config with and without split-K (partial tiles in M, N and K; the sm_90a configs'
split-K in clusters of up to 8; their float8_e4m3fn form too; their fixed-epilogue kernels where N % 4 == 0), the
LayerNorm+quantize kernel in every dtype, with and without the LayerNorm, on a row-strided view too.

    compute-sanitizer --tool memcheck --error-exitcode 9 python tools/sanitize_cuda.py [lnq]

`lnq`: the LayerNorm+quantize launches only. `configs=16,17`: the GEMM launches of those tile configs only (and
no LayerNorm+quantize).
"""
import sys

import torch


def main() -> int:
    from qvit import _ext
    from qvit.kernels import quant as Q
    from qvit.kernels.layernorm_quant import layernorm_quant_cuda
    from qvit.kernels.w8a8_cuda import (FIXED_EPI_CONFIGS, WGMMA_CONFIGS, _normalize_splits, configs_for,
                                        fixed_epilogue, w8a8_linear_cuda)
    if _ext.load_error():
        print(f"sanitize_cuda: {_ext.load_error()}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    n_launch = 0
    args = sys.argv[1:]
    only = None
    if args and args[0].startswith("configs="):
        only = {int(c) for c in args[0].split("=", 1)[1].split(",")}
        unknown = only - set(configs_for())
        if unknown:
            print(f"sanitize_cuda: configs {sorted(unknown)} do not run on this device", file=sys.stderr)
            return 2
    gemm_shapes = () if args == ["lnq"] else ((37, 1040, 200), (1, 64, 24), (70, 256, 130), (5, 48, 33),
                                            (213, 160, 72))  # M = 213: two row tiles of the 208- and 112-token configs
    for m, k, n in gemm_shapes:
        xq, xs = Q.quantize_int8_per_token(torch.randn(m, k, device="cuda"))
        wq, ws = Q.quantize_int8_per_channel(torch.randn(n, k, device="cuda"))
        xf, xfs = Q.quantize_fp8_per_token(torch.randn(m, k, device="cuda"))
        wf, wfs = Q.quantize_fp8_per_channel(torch.randn(n, k, device="cuda"))
        b = torch.randn(n, device="cuda")
        r = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        for cfg in (c for c in configs_for() if only is None or c in only):
            top = 8 if cfg in WGMMA_CONFIGS else 16  # split-K in a cluster: at most 8 slices
            for s in sorted({1, _normalize_splits(k, 2), _normalize_splits(k, top)}):
                w8a8_linear_cuda(xq, xs, wq, ws, b, r, True, torch.bfloat16, cfg, s)
                n_launch += 1
                if cfg in WGMMA_CONFIGS:  # and its float8_e4m3fn form
                    w8a8_linear_cuda(xf, xfs, wf, wfs, b, r, True, torch.bfloat16, cfg, s)
                    n_launch += 1
            if cfg in FIXED_EPI_CONFIGS and n % 4 == 0:  # its fixed-epilogue kernels: bias; + residual; + GELU;
                s2 = _normalize_splits(k, 2)  # + residual with split-K in a cluster
                plans = ((None, False, 1), (r, False, 1), (None, True, 1)) + (((r, False, s2),) if s2 > 1 else ())
                for rr, gelu, s in plans:
                    for a in ((xq, xs, wq, ws), (xf, xfs, wf, wfs)):
                        assert fixed_epilogue(m, n, cfg, s, torch.bfloat16, True, rr is not None, gelu)
                        w8a8_linear_cuda(*a, b, rr, gelu, torch.bfloat16, cfg, s)
                        n_launch += 1
    for d in (torch.float16, torch.bfloat16, torch.float32) if only is None else ():
        for m, k in ((197, 1024 if d != torch.float32 else 512), (77, 4096 if d != torch.float32 else 2048),
                     (5, 72), (3, 8)):
            x = torch.randn(m, 2 * k, device="cuda", dtype=d)
            w, b = torch.randn(k, device="cuda", dtype=d), torch.randn(k, device="cuda", dtype=d)
            layernorm_quant_cuda(x[:, :k], w, b)  # rows of k inside rows of 2k
            layernorm_quant_cuda(x[:, :k].contiguous())
            n_launch += 2
    torch.cuda.synchronize()
    print(f"sanitize_cuda: {n_launch} launches ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
