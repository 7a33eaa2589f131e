"""W8A8 linear as a persistent kernel: one program per SM walks its share of the output tiles, operands loaded
by TMA (tensor descriptors), the tile loop and the K loop flattened into one software-pipelined loop, so the
loads of a program's next tile are in flight while it runs the current tile's epilogue.

    y[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n]  (+ bias[n])  (-> gelu)  (+ residual[m, n])

Same operands, epilogue and error as `w8a8_linear` (int8: exact int32 accumulation; float8_e4m3fn: the fp8
tensor cores accumulating in place over K, as `w8a8_linear_fp8_fast_accum`). Per-token activation scales only
(no group scales, no quantized output); K a multiple of 16 (TMA's 16-byte row alignment).

Why (H200, results/h200-gpu-10): at fc1, M = 12,608, the one-tile-per-CTA fp8 kernel took 115 us under
Nsight Compute against cuBLAS's 85 us (`nvjet ... 256x128 ... coopA`: a persistent, warp-specialized
kernel, 132 CTAs): 186 K active cycles per SM against 133 K. With K = 1024 a tile is only 8 K steps of
128, so each CTA's pipeline fill and its unoverlapped epilogue (128 x 256 bf16 stores, GELU) are a large
share of its time: what persistence and the flattened loop hide. Not measured yet: the autotuner
compares it, and `bench_kernels` places it beside the other providers.

Reference: `qvit.kernels.quant.int8_matmul_ref`, `fp8_matmul_ref`.
"""
from __future__ import annotations

import functools

import torch

from qvit.backend import interpreting, tune_shard
from qvit.kernels._op import fast_custom_op

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # the launcher raises with the reason
    triton = None


if triton is not None:
    from qvit.kernels.w8a8_linear import _epilogue

    def _set_blocks(nargs):
        """Autotuner pre-hook: the descriptors' box shapes follow the config's tiles."""
        nargs["x_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
        nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]

    def _configs():
        if interpreting():
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2},
                                  num_warps=4, num_stages=1, pre_hook=_set_blocks)]
        cfgs = []
        for bm, bn, bk, w, s in [(128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (128, 256, 64, 8, 4),
                                 (256, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 128, 128, 4, 4),
                                 (64, 128, 128, 4, 4)]:
            for epi_split in (False, True):
                cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                           "EPI_SPLIT": epi_split}, num_warps=w, num_stages=s, pre_hook=_set_blocks))
        return cfgs

    def _prune(configs, named_args, **kwargs):
        m, n, k = named_args["M"], named_args["N"], named_args["K"]
        gelu = named_args.get("GELU", kwargs.get("GELU", False))
        out = [c for c in configs
               if not (c.kwargs.get("EPI_SPLIT") and not gelu)  # the same kernel as its unsplit twin there
               and not (c.kwargs["BLOCK_M"] > 2 * max(m, 16) or c.kwargs["BLOCK_N"] > 2 * max(n, 16)
                        or c.kwargs["BLOCK_K"] > 2 * max(k, 32))]
        return out or configs[-1:]

    @triton.autotune(configs=tune_shard(_configs()), key=["M", "N", "K", "HAS_RES", "GELU", "FP8"],
                     prune_configs_by={"early_config_prune": _prune})
    @triton.jit
    def _w8a8_persistent_kernel(
        x_desc, w_desc, xs_ptr, ws_ptr, b_ptr, r_ptr, y_ptr,
        M, N, K, stride_rm, stride_ym,
        HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr, FP8: tl.constexpr,
        NUM_PROGRAMS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        EPI_SPLIT: tl.constexpr = False,
    ):
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_tiles = num_pid_m * num_pid_n
        k_tiles = tl.cdiv(K, BLOCK_K)
        group = GROUP_M * num_pid_n
        # tiles start, start + P, start + 2P, ...: consecutive programs take neighbouring tiles of one grouped
        # sweep (GROUP_M row tiles across N), so the weight tiles they share stay in L2
        for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=True):
            first_m = (tile // group) * GROUP_M
            gm = min(num_pid_m - first_m, GROUP_M)
            pid_m = first_m + (tile % group) % gm
            pid_n = (tile % group) // gm
            if FP8:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            else:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            for ki in range(k_tiles):
                # out-of-range rows and columns of a box read as zeros (TMA), so the edges need no masks
                a = x_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
                b = w_desc.load([pid_n * BLOCK_N, ki * BLOCK_K])
                if FP8:  # in place over all of K, as w8a8_linear_fp8_fast_accum
                    acc = tl.dot(a, b.T, acc)
                else:
                    acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_m = offs_m < M
            mask_n = offs_n < N
            xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
            ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
            y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
            _epilogue(y, offs_m, offs_n, mask_m, mask_n, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                      HAS_BIAS, GELU, HAS_RES, False, EPI_SPLIT)


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _fake(xq, x_scale, wq, w_scale, bias=None, residual=None, gelu=False, out_dtype=torch.float16):
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


@fast_custom_op("qvit::w8a8_linear_persistent", _fake)
def w8a8_linear_persistent(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                           bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                           gelu: bool = False, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """`w8a8_linear` (int8) / `w8a8_linear_fp8_fast_accum` (float8_e4m3fn) as a persistent TMA kernel; see the
    module docstring. x_scale per token (M,) only; K a multiple of 16; contiguous xq and wq."""
    from qvit.kernels.w8a8_linear import _validate
    _validate(xq, x_scale, wq, w_scale, bias, residual, out_dtype)
    m, k = xq.shape
    n = wq.shape[0]
    if x_scale.ndim != 1:
        raise ValueError("w8a8_linear_persistent: per-token activation scales (M,) only, got "
                         f"{tuple(x_scale.shape)}; group scales run on w8a8_linear")
    if k % 16:
        raise ValueError(f"w8a8_linear_persistent: K={k} must be a multiple of 16 (TMA needs 16-byte rows)")
    if not (xq.is_contiguous() and wq.is_contiguous()):
        raise ValueError("w8a8_linear_persistent: xq and wq must be contiguous")
    if xq.data_ptr() % 16 or wq.data_ptr() % 16:
        raise ValueError("w8a8_linear_persistent: xq and wq must start at 16-byte aligned addresses (TMA), got "
                         f"offsets {xq.data_ptr() % 16} and {wq.data_ptr() % 16}")
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return y
    # box shapes are placeholders until the autotuner's pre-hook sets the chosen config's tiles
    x_desc = TensorDescriptor.from_tensor(xq, [16, 16])
    w_desc = TensorDescriptor.from_tensor(wq, [16, 16])
    # the interpreter: 2 programs, so that each walks several tiles
    programs = 2 if interpreting() else _num_sms(xq.device.index if xq.device.index is not None
                                                 else torch.cuda.current_device())
    grid = lambda meta: (min(programs, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)  # noqa: E731
    _w8a8_persistent_kernel[grid](
        x_desc, w_desc, x_scale, w_scale, bias if bias is not None else w_scale,
        residual if residual is not None else y, y,
        m, n, k, residual.stride(0) if residual is not None else 0, y.stride(0),
        HAS_BIAS=bias is not None, GELU=gelu, HAS_RES=residual is not None,
        FP8=xq.dtype == torch.float8_e4m3fn, NUM_PROGRAMS=programs,
    )
    return y
