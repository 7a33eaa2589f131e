"""One launch of the CUDA W8A8 GEMM (csrc/w8a8_gemm.cu) per pinned (tile config, splits) at ViT-L proj, qkv,
fc1 (without its GELU) and fc2, M = 197, inside NVTX ranges `profile/<name>`, for Nsight Compute:

    ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section WarpStateStats \\
        --csv python tools/ncu_cuda_gemm.py [--pinned 16:1,17:4]

--pinned: the (config:splits) pairs to launch instead of the default set. A launch that runs a fixed-epilogue kernel
(bias only here: csrc/w8a8_gemm_epi.inc) is followed by the run-time-epilogue kernel of the same config (`..._rt`).
"""
import sys

import torch


PINNED = ((6, 1), (10, 1), (10, 2), (7, 1), (11, 1), (12, 1), (12, 2), (13, 1), (14, 1), (15, 1), (15, 2))


def main() -> int:
    global PINNED
    if sys.argv[1:2] == ["--pinned"]:  # e.g. --pinned 16:2,17:4 (config:splits)
        PINNED = tuple(tuple(int(v) for v in p.split(":")) for p in sys.argv[2].split(","))
    from qvit.kernels import quant as Q
    from qvit.kernels.w8a8_cuda import fixed_epilogue, runtime_epilogue, w8a8_linear_cuda
    from qvit.kernels.w8a8_linear import w8a8_linear
    from qvit.profiling.ncu_kernels import profile_launches
    torch.manual_seed(0)
    calls = {}
    for name, k, n in (("proj", 1024, 1024), ("qkv", 1024, 3072), ("fc1", 1024, 4096), ("fc2", 4096, 1024)):
        xq, xs = Q.quantize_int8_per_token(torch.randn(197, k, device="cuda"))
        wq, ws = Q.quantize_int8_per_channel(torch.randn(n, k, device="cuda"))
        b = torch.randn(n, device="cuda")
        for cfg, s in PINNED:
            calls[f"{name}_cfg{cfg}_s{s}"] = (lambda xq=xq, xs=xs, wq=wq, ws=ws, b=b, cfg=cfg, s=s:
                                              w8a8_linear_cuda(xq, xs, wq, ws, b, None, False, torch.bfloat16, cfg, s))
            if fixed_epilogue(197, n, cfg, s, torch.bfloat16, True, False, False):  # the above ran a fixed epilogue:
                def rt(xq=xq, xs=xs, wq=wq, ws=ws, b=b, cfg=cfg, s=s):  # the run-time-epilogue kernel beside it
                    with runtime_epilogue():
                        return w8a8_linear_cuda(xq, xs, wq, ws, b, None, False, torch.bfloat16, cfg, s)
                calls[f"{name}_cfg{cfg}_s{s}_rt"] = rt
        # the Triton kernel on the same operands (its autotuned config), for comparison
        calls[f"{name}_triton"] = (lambda xq=xq, xs=xs, wq=wq, ws=ws, b=b:
                                   w8a8_linear(xq, xs, wq, ws, b, None, False, torch.bfloat16))
    profile_launches(calls, warmup=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
