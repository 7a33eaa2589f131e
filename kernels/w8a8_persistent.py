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
share of its time: what persistence and the flattened loop hide. Measured (results/h200-gpu-11, M = 12,608,
fp8): qkv 81.8, proj 28.1, fc1 108.8, fc2 87.1 us against 93.2 / 30.7 / 123.7 / 92.0 for the one-tile kernel;
slower at M = 197, hence QVIT_PERSISTENT_GEMM=auto (vit/quantize.py). With the two-CTA and TMA-store configs in
the list (results/h200-gpu-12 call 4): 77.8 / 26.9 / 103.2 / 84.6 us (0.93-1.00x cuBLAS fp8), and the fused
epilogues 2-5 us faster than before (fc1 + GELU 126.8, proj + residual 37.7, fc2 + residual 102.8): still
+11 / +24 / +18 us over the plain GEMMs.

Reference: `qvit.kernels.quant.int8_matmul_ref`, `fp8_matmul_ref`.
"""
from __future__ import annotations

import functools

import torch

from qvit.backend import interpreting, pdl_kwargs, tune_bench, tune_shard
from qvit.kernels._op import fast_custom_op

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # the launcher raises with the reason
    triton = None


if triton is not None:
    from qvit.kernels.layernorm_quant import _fp8_static_codes, _pdl_enter, _store_static_scale
    from qvit.kernels.w8a8_linear import (_bias_gelu, _epilogue, _epilogue_fp8_static,
                                          _epilogue_fp8_static_gelu_tanh, _fp8_gelu_tanh_values)

    def _set_blocks(nargs):
        """Autotuner pre-hook: the descriptors' box shapes follow the config's tiles."""
        nargs["x_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
        nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]
        if nargs.get("EPI_TMA") and nargs["TMA_OUT"]:  # (else y_desc is a placeholder: x_desc itself)
            nargs["y_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_N"]]

    def _configs():
        if interpreting():
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2},
                                  num_warps=4, num_stages=1, pre_hook=_set_blocks)]
        cfgs = []
        # (BM, BN, BK, warps, stages, CTAs per SM). Two CTAs per SM: while one runs its epilogue (GELU's two
        # MUFU operations per element, the residual's loads, the stores) the other's MMAs keep the tensor
        # cores busy -- the overlap that cuBLAS gets from warp specialization. They need <= ~113 KB of shared
        # memory and <= 32 K registers each: 4 warps (255 registers x 128 threads), 128 x 128 tiles with 3
        # stages of 128-deep K or 4 of 64 (sm_90, Triton 3.6: 106,520 / 98,336 bytes with fp8 + GELU; with 8
        # warps the same tiles took 182-218 registers a thread, over the 128 that two 256-thread CTAs allow).
        for bm, bn, bk, w, s, ctas in [(128, 256, 128, 8, 3, 1), (128, 256, 128, 8, 4, 1), (128, 256, 64, 8, 4, 1),
                                       (256, 128, 128, 8, 3, 1), (128, 128, 128, 8, 4, 1), (128, 128, 128, 4, 4, 1),
                                       (64, 128, 128, 4, 4, 1), (128, 128, 128, 4, 3, 2), (128, 128, 64, 4, 4, 2),
                                       (64, 128, 128, 4, 4, 2)]:
            for epi_split in (False, True):
                cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                           "EPI_SPLIT": epi_split, "CTAS_PER_SM": ctas},
                                          num_warps=w, num_stages=s, pre_hook=_set_blocks))
        # TMA-store epilogue (EPI_TMA): the tile goes to shared memory and one asynchronous bulk store writes it,
        # so the warps start the next tile's MMAs while it drains. Costs a BM x BN staging tile of shared memory,
        # hence the shallower K for the two-CTA one (sm_90, Triton 3.6, fp8: 98,848 bytes, 208 registers). The
        # residual is read as in the plain epilogue: through TMA it needed a second staging tile (278,568 bytes
        # at 128 x 256 x 128 / 3 stages, 131,112 for the two-CTA config: one CTA per SM).
        for bm, bn, bk, w, s, ctas in [(128, 256, 128, 8, 3, 1), (256, 128, 128, 8, 3, 1), (128, 256, 64, 8, 4, 1),
                                       (128, 128, 64, 4, 4, 2)]:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                       "EPI_SPLIT": False, "CTAS_PER_SM": ctas, "EPI_TMA": True},
                                      num_warps=w, num_stages=s, pre_hook=_set_blocks))
        return cfgs

    def _prune(configs, named_args, **kwargs):
        m, n, k = named_args["M"], named_args["N"], named_args["K"]
        gelu = named_args.get("GELU", kwargs.get("GELU", False))
        qstatic = named_args.get("QSTATIC", kwargs.get("QSTATIC", False))
        tma_out = named_args.get("TMA_OUT", kwargs.get("TMA_OUT", False))
        out = [c for c in configs
               # the same kernel as its unsplit twin without GELU, and with the fp8 epilogue (never split)
               if not (c.kwargs.get("EPI_SPLIT") and (not gelu or qstatic))
               and not (c.kwargs.get("EPI_TMA") and not tma_out)  # the plain epilogue then: a duplicate
               and not (c.kwargs["BLOCK_M"] > 2 * max(m, 16) or c.kwargs["BLOCK_N"] > 2 * max(n, 16)
                        or c.kwargs["BLOCK_K"] > 2 * max(k, 32))]
        # nothing left (tiny shapes): the smallest config with the plain epilogue, which runs everywhere
        return out or [c for c in configs if not c.kwargs.get("EPI_TMA")][-1:]

    @triton.autotune(configs=tune_shard(_configs()), key=["M", "N", "K", "HAS_RES", "GELU", "FP8", "QSTATIC", "TMA_OUT"],
                     prune_configs_by={"early_config_prune": _prune}, do_bench=tune_bench)
    @triton.jit
    def _w8a8_persistent_kernel(
        x_desc, w_desc, xs_ptr, ws_ptr, b_ptr, r_ptr, y_ptr, qs_ptr, sv_ptr, y_desc,
        M, N, K, stride_rm, stride_ym,
        HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr, FP8: tl.constexpr,
        QSTATIC: tl.constexpr, TMA_OUT: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        EPI_SPLIT: tl.constexpr = False, CTAS_PER_SM: tl.constexpr = 1, EPI_TMA: tl.constexpr = False,
        PDL: tl.constexpr = False,
    ):
        # NUM_PROGRAMS = the SM count (2 under the interpreter); the grid is NUM_PROGRAMS x CTAS_PER_SM programs
        # (fewer when there are fewer tiles: then each takes one)
        STEP: tl.constexpr = NUM_PROGRAMS * CTAS_PER_SM
        _pdl_enter(PDL)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_tiles = num_pid_m * num_pid_n
        k_tiles = tl.cdiv(K, BLOCK_K)
        group = GROUP_M * num_pid_n
        # tiles start, start + P, start + 2P, ...: consecutive programs take neighbouring tiles of one grouped
        # sweep (GROUP_M row tiles across N), so the weight tiles they share stay in L2
        for tile in tl.range(tl.program_id(0), num_tiles, STEP, flatten=True):
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
            if QSTATIC and pid_n == 0:  # the scale vector (M,) the next GEMM reads: qs[0] per row
                _store_static_scale(sv_ptr, qs_ptr, offs_m, mask_m)
            # the same values as below; boxes past M / N are clipped by the TMA unit. Without TMA_OUT (rows not
            # 16-byte aligned: y_desc is a placeholder) an EPI_TMA config runs the plain epilogue
            if EPI_TMA and TMA_OUT:
                if QSTATIC and GELU == 2:  # GELU's tanh form into fp8 (QuantConfig.gelu_tanh)
                    y = _fp8_gelu_tanh_values(y, offs_n, mask_n, b_ptr, qs_ptr, HAS_BIAS)
                elif QSTATIC:
                    y = _fp8_static_codes(_bias_gelu(y, offs_n, mask_n, b_ptr, HAS_BIAS, GELU), qs_ptr)
                else:
                    y = _bias_gelu(y, offs_n, mask_n, b_ptr, HAS_BIAS, GELU)
                if HAS_RES:
                    y += tl.load(r_ptr + offs_m[:, None].to(tl.int64) * stride_rm + offs_n[None, :],
                                 mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
                y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], y.to(y_desc.dtype))
            elif QSTATIC and GELU == 2:
                _epilogue_fp8_static_gelu_tanh(y, offs_m, offs_n, mask_m, mask_n, b_ptr, y_ptr, qs_ptr, stride_ym,
                                               HAS_BIAS)
            elif QSTATIC:  # fp8 output at one static scale (qs_ptr[0]), as w8a8_linear_fp8_static_out
                _epilogue_fp8_static(y, offs_m, offs_n, mask_m, mask_n, b_ptr, y_ptr, qs_ptr, stride_ym,
                                     HAS_BIAS, GELU)
            else:
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
    _check_operands("w8a8_linear_persistent", xq, x_scale, wq)
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    y = torch.empty((xq.shape[0], wq.shape[0]), dtype=out_dtype, device=xq.device)
    _launch(xq, x_scale, wq, w_scale, bias, residual, gelu, y, None)
    return y


def _fake_fp8_static(xq, x_scale, wq, w_scale, bias, gelu, out_scale, gelu_tanh=False):
    m, n = xq.shape[0], wq.shape[0]
    return xq.new_empty((m, n), dtype=torch.float8_e4m3fn), x_scale.new_empty((m,), dtype=torch.float32)


@fast_custom_op("qvit::w8a8_linear_persistent_fp8_static_out", _fake_fp8_static)
def w8a8_linear_persistent_fp8_static_out(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor,
                                          w_scale: torch.Tensor, bias: torch.Tensor | None, gelu: bool,
                                          out_scale: torch.Tensor,
                                          gelu_tanh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`w8a8_linear_fp8_static_out` (fp8 in, + bias -> GELU -> fp8 out at one static scale; gelu_tanh: GELU's
    tanh form) as the persistent TMA kernel: (q (M, N) float8_e4m3fn, scale float32 (M,) filled with
    out_scale)."""
    from qvit.kernels.quant import check_static_scale
    from qvit.kernels.w8a8_linear import _gelu_mode, _validate
    _validate(xq, x_scale, wq, w_scale, bias, None, torch.float32)
    if xq.dtype != torch.float8_e4m3fn:
        raise TypeError(f"w8a8_linear_persistent_fp8_static_out: float8_e4m3fn operands only, got {xq.dtype}")
    _check_operands("w8a8_linear_persistent_fp8_static_out", xq, x_scale, wq)
    check_static_scale("w8a8_linear_persistent_fp8_static_out", out_scale, xq.device)
    m = xq.shape[0]
    q = torch.empty((m, wq.shape[0]), dtype=torch.float8_e4m3fn, device=xq.device)
    mode = _gelu_mode("w8a8_linear_persistent_fp8_static_out", gelu, gelu_tanh)
    sv = torch.empty((m,), dtype=torch.float32, device=xq.device)  # written by the kernel
    _launch(xq, x_scale, wq, w_scale, bias, None, mode, q, out_scale.reshape(1), sv)
    return q, sv


def _check_operands(name, xq, x_scale, wq):
    k = xq.shape[1]
    if x_scale.ndim != 1:
        raise ValueError(f"{name}: per-token activation scales (M,) only, got "
                         f"{tuple(x_scale.shape)}; group scales run on w8a8_linear")
    if k % 16:
        raise ValueError(f"{name}: K={k} must be a multiple of 16 (TMA needs 16-byte rows)")
    if not (xq.is_contiguous() and wq.is_contiguous()):
        raise ValueError(f"{name}: xq and wq must be contiguous")
    if xq.data_ptr() % 16 or wq.data_ptr() % 16:
        raise ValueError(f"{name}: xq and wq must start at 16-byte aligned addresses (TMA), got "
                         f"offsets {xq.data_ptr() % 16} and {wq.data_ptr() % 16}")


def _launch(xq, x_scale, wq, w_scale, bias, residual, gelu, y, q_scale, sv=None):
    """y = the epilogue's output (out_dtype, or float8_e4m3fn at the static scale q_scale (1,) when given; then sv
    (M,) float32 receives q_scale[0] per row)."""
    if q_scale is not None and sv is None:
        raise ValueError("w8a8_linear_persistent: the fp8 static output needs its scale vector")
    m, n = y.shape
    if m == 0:
        return
    # box shapes are placeholders until the autotuner's pre-hook sets the chosen config's tiles
    x_desc = TensorDescriptor.from_tensor(xq, [16, 16])
    w_desc = TensorDescriptor.from_tensor(wq, [16, 16])
    # the TMA-store epilogue needs a 16-byte aligned start and rows for the output
    tma_out = y.data_ptr() % 16 == 0 and (y.stride(0) * y.element_size()) % 16 == 0
    y_desc = TensorDescriptor.from_tensor(y, [16, 16]) if tma_out else x_desc
    # the interpreter: 2 programs, so that each walks several tiles
    programs = 2 if interpreting() else _num_sms(xq.device.index if xq.device.index is not None
                                                 else torch.cuda.current_device())
    grid = lambda meta: (min(programs * meta.get("CTAS_PER_SM", 1),  # noqa: E731
                             triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)
    _w8a8_persistent_kernel[grid](
        x_desc, w_desc, x_scale, w_scale, bias if bias is not None else w_scale,
        residual if residual is not None else y, y, q_scale if q_scale is not None else w_scale,
        sv if sv is not None else w_scale, y_desc,
        m, n, xq.shape[1], residual.stride(0) if residual is not None else 0, y.stride(0),
        HAS_BIAS=bias is not None, GELU=gelu, HAS_RES=residual is not None,
        FP8=xq.dtype == torch.float8_e4m3fn, QSTATIC=q_scale is not None, TMA_OUT=tma_out, NUM_PROGRAMS=programs,
        **pdl_kwargs(xq.device),
    )
