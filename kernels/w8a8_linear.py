"""W8A8 linear: int8 activations x int8 weights on the int8 tensor cores, fused epilogue.

    y[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n]  (+ bias[n])  (-> gelu)  (+ residual[m, n])

Shapes: xq int8 (M, K) row-major; x_scale float32 (M,); wq int8 (N, K) row-major (nn.Linear
layout, K-contiguous, which is the K-major B operand the int8 MMA wants); w_scale float32 (N,);
bias float (N,) or None; residual (M, N) in the output dtype or None; y (M, N) float16 / bfloat16 /
float32. The dot product accumulates in int32 (exact: |acc| <= K * 127^2 < 2^31 for K < 133,000);
the epilogue runs in float32 and rounds once to the output dtype. GELU is the erf form (nn.GELU()), or its tanh
form in the fp8 static-output epilogue when asked (`gelu_tanh`, QuantConfig.gelu_tanh).

FP8: xq and wq both float8_e4m3fn (per-token / per-channel scales as above, `quantize_fp8_per_token`):
the same kernel on the fp8 tensor cores with a float32 accumulator (cuBLAS fp8 measured 1.38x cuBLAS int8
on the H200, ANCHORS.md), same epilogue; the kernel's FP8 constexpr is 1 there (promoted into float32 every
BLOCK_K products) and 2 in `w8a8_linear_fp8_fast_accum` (in place over all of K).

Reference: `qvit.kernels.quant.int8_matmul_ref` (exact integer dot in float64), `fp8_matmul_ref`.
"""
from __future__ import annotations

import math
import os

import torch

from qvit.backend import interpreting, pdl_kwargs, tune_bench, tune_shard
from qvit.kernels._op import fast_custom_op
from qvit.kernels.quant import check_gemm_operands

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch backend still works; the launcher raises with the reason
    triton = None

_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# split-K (QVIT_SPLITK=1, fp8 fast accumulation): offered up to this many tokens, at most this many splits and
# output tiles (the per-tile arrival counters)
SPLITK_MAX_M, SPLITK_MAX, SPLITK_TILES = 512, 8, 4096


if triton is not None:
    # one rounding rule for every quantizer
    from qvit.kernels.layernorm_quant import (_div_rn_fast, _fp8_static_codes, _int8_rn, _pdl_enter,
                                              _prefetch_rows_l2, _round_e4m3, _store_static_scale)

    # narrow K tiles, offered only for inputs with 32- or 64-channel scale groups (proj after the quantizing
    # attention epilogue: one group per head); the other calls are tuned over the same tiles as before
    _GROUP_ONLY = ((128, 128, 64), (64, 128, 64), (128, 128, 32), (64, 64, 32))
    # narrow N tiles, offered only up to SPLITK_MAX_M tokens: at batch 1 (M = 197) the 64 x 64 tiles that the
    # autotuner picked (timed in CUDA graphs, session 15) give proj / fc2 64 programs for 132 SMs, one 4-warp
    # CTA on each busy SM: Nsight Compute measured proj 6.2 us and fc2 11.9 us at 6% achieved occupancy,
    # SM / DRAM / L2 throughput all <= 15% (results/h200-gpu-15 call 4): latency with half the SMs idle.
    # 32-wide N tiles double the programs (weights 64 rows x K per program stream from DRAM, activations
    # re-read from L2)
    _SMALL_M_ONLY = ((64, 32, 128, 4, 4), (64, 32, 256, 4, 3), (32, 32, 256, 4, 3))

    def _configs():
        if interpreting():
            # 32-wide N tiles: whole 32-channel output groups (the quantizing epilogue) fit one tile
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)]
        cfgs = []
        for bm, bn, bk, w, s in [
            (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 4, 4), (128, 128, 128, 8, 4),
            (128, 64, 128, 4, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (128, 256, 64, 8, 4),
            (64, 256, 128, 8, 3), (32, 64, 256, 4, 3),
            # 4 stages of the 128 x 256 tile (192 KB of operands): the fp8 fast-accumulation GEMM's winners were
            # 128 x 256 at 3 stages (K tile 128) and 4 stages (K tile 64) at M = 12,608 (session 10)
            (128, 256, 128, 8, 4),
        ] + [c + (4, 4) for c in _GROUP_ONLY] + list(_SMALL_M_ONLY):
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                      num_warps=w, num_stages=s))
        # the large tiles again with GELU's epilogue run on one half of the columns after the other (EPI_SPLIT):
        # Triton 3.6 then keeps it in registers (336-392 spilled bytes -> 0 on sm_90), Triton 3.8 spills more
        # (344 -> 672 at 128 x 256): which is faster is measured by the autotuner, not assumed
        for bm, bn, bk, w, s in [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 4, 4),
                                 (128, 256, 64, 8, 4)]:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": True},
                                      num_warps=w, num_stages=s))
        # with a residual: its tile prefetched into L2 before the main loop (PREFETCH_RES), so that the epilogue,
        # which no other work overlaps at one CTA per SM, waits on L2 instead of DRAM. Session 9 measured
        # proj at M = 12,608: 36.3 us plain, 48.4 with the residual (+12 us for 26 MB, 6 us of copy bandwidth)
        for bm, bn, bk, w, s in [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 4, 4),
                                 (128, 128, 128, 8, 4), (64, 128, 128, 4, 4)]:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                       "PREFETCH_RES": True}, num_warps=w, num_stages=s))
        if os.environ.get("QVIT_SPLITK", "0") == "1":
            # split-K (fp8 fast accumulation, M <= SPLITK_MAX_M): at batch 1 (M = 197) a 128 x 128 tile grid has
            # 16-64 programs for 132 SMs and each walks all of K; SPLIT_K programs per tile walk K / SPLIT_K each
            # (128 x 128 left out: its reduction spilled 392 bytes, sm_90 Triton 3.6, `sass --mode fp8_splitk_res`)
            # Tall narrow tiles (256 / 128 x 32, 256 x 64): all of M = 197 in one or two row tiles, so that each
            # program streams weight rows no other program reads. profiling/weight_stream (session 16 call 3):
            # fc2's 4 MiB take 10.6 us from 64 reading programs and 4.0 us from 256; with 64-row tiles 4 row
            # tiles read every weight tile, so split-K 4's 256 CTAs are 64 distinct weight streams (fc2 pinned
            # 64 x 64 split 4: 11.8 us, unsplit 11.9, Nsight Compute call 2). Measured slower still (call 4:
            # 256 x 32 split 4 / 8 13.3 / 18.6 us, 128 x 32 split 4 12.3): the split reduction is serial
            for bm, bn, bk, w, s in [(64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (128, 64, 128, 4, 4),
                                     (256, 32, 128, 4, 3), (128, 32, 128, 4, 4), (256, 64, 128, 8, 3)]:
                for sk in (2, 4, 8):
                    cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                               "SPLIT_K": sk}, num_warps=w, num_stages=s))
        return cfgs

    def _prune(configs, named_args, **kwargs):
        m, n, k = named_args["M"], named_args["N"], named_args["K"]
        xg = named_args.get("XG", kwargs.get("XG", 0))
        qout = named_args.get("QOUT", kwargs.get("QOUT", 0))
        gelu = named_args.get("GELU", kwargs.get("GELU", False))
        has_res = named_args.get("HAS_RES", kwargs.get("HAS_RES", False))
        w4 = named_args.get("W4", kwargs.get("W4", 0))
        out = []
        fp8 = named_args.get("FP8", kwargs.get("FP8", 0))
        ln_out = named_args.get("LN_OUT", kwargs.get("LN_OUT", 0))
        for c in configs:
            bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
            if c.kwargs.get("EPI_SPLIT") and (not gelu or qout):  # the same kernel as its unsplit twin there
                continue
            sk = c.kwargs.get("SPLIT_K", 1)
            if sk > 1 and (fp8 != 2 or m > SPLITK_MAX_M or k < sk * bk
                           or triton.cdiv(m, bm) * triton.cdiv(n, bn) > SPLITK_TILES):
                continue
            if c.kwargs.get("PREFETCH_RES") and not has_res:
                continue
            # the LayerNorm epilogue: whole-K tiles; with its barrier, at most one program per SM (co-resident)
            if (ln_out and sk > 1) or (ln_out == 2 and triton.cdiv(m, bm) * triton.cdiv(n, bn) > _resident_limit()):
                continue
            # drop tiles far larger than the problem (they only add padding work)
            if bm > 2 * max(m, 16) or bn > 2 * max(n, 16) or bk > 2 * max(k, 32):
                continue
            # group-scaled input: a K tile within one group; group-quantized output: whole groups per N tile
            if (xg and (bk > xg or xg % bk)) or (qout and bn % qout):
                continue
            if not xg and (bm, bn, bk) in _GROUP_ONLY:  # the narrow-K tiles are for group-scaled inputs
                continue
            if m > SPLITK_MAX_M and (bm, bn, bk, c.num_warps, c.num_stages) in _SMALL_M_ONLY:
                continue
            if w4 and bk % w4:  # the 4-bit weight's K tiles hold whole exponent groups
                continue
            out.append(c)
        if not out and ln_out == 2:
            raise ValueError(f"w8a8_linear_res_norm_fp8: no tile grid of ({m}, {n}) fits {_resident_limit()} "
                             "co-resident programs")
        if not out and (xg or qout):
            raise ValueError(f"w8a8_linear: no tile fits input group {xg} / output group {qout}")
        if not out and w4 and not any(c.kwargs["BLOCK_K"] % w4 == 0 for c in configs):
            raise ValueError(f"w4f8_linear: no K tile holds whole {w4}-weight groups")
        return out or [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"])
                       not in _GROUP_ONLY and not c.kwargs.get("EPI_SPLIT") and not (w4 and c.kwargs["BLOCK_K"] % w4)
                       and not c.kwargs.get("PREFETCH_RES") and c.kwargs.get("SPLIT_K", 1) == 1][-1:]

    _INTERP = tl.constexpr(interpreting())  # the interpreter cannot run inline PTX

    def _resident_limit() -> int:
        """The programs the LayerNorm epilogue's barrier lets a grid have: one per SM of the current GPU."""
        dev = torch.cuda.current_device()
        if dev not in _SMS:
            _SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
        return _SMS[dev]

    @triton.jit
    def _gelu_erf(x):
        """GELU's erf form, 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x + 0.5 |x| erf(|x| / sqrt 2), with erf of the
        non-negative argument by Abramowitz & Stegun 7.1.26: erf(z) = 1 - t (a1 + t (a2 + ... + t a5)) e^(-z^2),
        t = 1 / (1 + p z), |error| <= 1.5e-7; the reciprocal and exp2 are single MUFU instructions. On the
        128 x 256 fc1 tile (sm_90, Triton 3.6) GELU + residual added 4,848 SASS instructions per thread to the
        plain epilogue's 1,392 with libdevice's erff (~38 per element), 2,400 with this (~19), in an epilogue
        that runs after the main loop and is not overlapped with it (one CTA per SM). Worst case against
        float64 erf-GELU over [-12, 12]: 6.9e-7 absolute (4.7e-7 under the interpreter), below float32
        torch.nn.functional.gelu's 1.2e-6 on the AVX-512 host of session 9, above its 3.7e-7 on the AVX2 /
        default CPU kernels of session 12's host (same torch 2.14.1)."""
        z = tl.abs(x) * 0.7071067811865476
        t = _rcp_approx(1.0 + 0.3275911 * z)
        p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        erf_z = 1.0 - p * _exp2_approx(z * (z * -1.4426950408889634))
        h = 0.5 * x
        return h + tl.abs(h) * erf_z

    @triton.jit
    def _prefetch_res_l2(r_ptr, offs_m, pid_n, M, N, stride_rm, BLOCK_N: tl.constexpr):
        """prefetch.global.L2 of every 128-byte line of the residual's (rows offs_m, BLOCK_N) tile: a hint with no
        result; lines outside (M, N) are replaced by the residual's first element. Nothing under the interpreter."""
        if not _INTERP:
            EB: tl.constexpr = r_ptr.dtype.element_ty.primitive_bitwidth // 8
            PER: tl.constexpr = 128 // EB  # elements per line
            LINES: tl.constexpr = (BLOCK_N + PER - 1) // PER
            cols = pid_n * BLOCK_N + tl.arange(0, LINES) * PER
            ok = (offs_m < M)[:, None] & (cols < N)[None, :]
            off = tl.where(ok, offs_m[:, None].to(tl.int64) * stride_rm + cols[None, :], 0)
            tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [r_ptr + off],
                                      dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _rcp_approx(y):
        """1 / y by the MUFU reciprocal alone (rcp.approx.ftz, <= 1 ulp): for 1 <= y < inf, where IEEE division
        (div.rn) or div.full would add range checks and rescaling around it. Exact division under the
        interpreter."""
        if _INTERP:
            return 1.0 / y
        else:
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [y], dtype=tl.float32,
                                             is_pure=True, pack=1)

    @triton.jit
    def _exp2_approx(y):
        """2^y by MUFU.EX2 alone (ex2.approx.ftz: a result below 2^-126 flushes to 0), for y <= 0."""
        if _INTERP:
            return tl.math.exp2(y)
        else:
            return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [y], dtype=tl.float32,
                                             is_pure=True, pack=1)

    @triton.jit
    def _halves_1d(v):
        """(first half, second half) of a 1-D tile."""
        return tl.split(tl.permute(tl.reshape(v, (2, v.shape[0] // 2)), (1, 0)))

    @triton.jit
    def _halves_cols(v):
        """A 2-D tile's first and second half of its columns."""
        return tl.split(tl.permute(tl.reshape(v, (v.shape[0], 2, v.shape[1] // 2)), (0, 2, 1)))

    @triton.jit
    def _epilogue(y, offs_m, offs_n, mask_m, mask_n, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                  HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr, TRANSPOSED: tl.constexpr,
                  SPLIT: tl.constexpr):
        """The GEMMs' shared epilogue on a float32 tile holding output rows m and columns n ((BM, BN), or
        (BN, BM) when TRANSPOSED): + bias[n] -> GELU -> + residual[m, n], rounded once to y_ptr's dtype.
        SPLIT (with GELU): one half of the tile's columns after the other. erf's temporaries for a whole large
        tile on top of a 128-register accumulator make ptxas spill (Triton 3.6, sm_90: 328-392 bytes per
        thread at 128 x 256 / 8 warps, 464-832 in the swapped W4A16 tiles; 0 with SPLIT; python -m
        qvit.profiling.sass --kernel w8a8 --mode gelu_res); the autotuner offers both. Same values."""
        if GELU and SPLIT:
            # cut along the tile's columns (n, or m when TRANSPOSED): cutting along rows still spilled
            y0, y1 = _halves_cols(y)
            if TRANSPOSED:  # the columns are m
                m0, m1 = _halves_1d(offs_m)
                km0, km1 = _halves_1d(mask_m)
                n0, n1, kn0, kn1 = offs_n, offs_n, mask_n, mask_n
            else:
                n0, n1 = _halves_1d(offs_n)
                kn0, kn1 = _halves_1d(mask_n)
                m0, m1, km0, km1 = offs_m, offs_m, mask_m, mask_m
            _epilogue_tile(y0, m0, n0, km0, kn0, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                           HAS_BIAS, GELU, HAS_RES, TRANSPOSED)
            _epilogue_tile(y1, m1, n1, km1, kn1, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                           HAS_BIAS, GELU, HAS_RES, TRANSPOSED)
        else:
            _epilogue_tile(y, offs_m, offs_n, mask_m, mask_n, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                           HAS_BIAS, GELU, HAS_RES, TRANSPOSED)

    @triton.jit
    def _epilogue_tile(y, offs_m, offs_n, mask_m, mask_n, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                       HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr, TRANSPOSED: tl.constexpr):
        if TRANSPOSED:
            m2, n2 = offs_m[None, :].to(tl.int64), offs_n[:, None]
            mm2, mn2 = mask_m[None, :], mask_n[:, None]
        else:
            m2, n2 = offs_m[:, None].to(tl.int64), offs_n[None, :]
            mm2, mn2 = mask_m[:, None], mask_n[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + n2, mask=mn2, other=0.0).to(tl.float32)
        if GELU:
            y = _gelu_erf(y)
        mask = mm2 & mn2
        if HAS_RES:
            y += tl.load(r_ptr + m2 * stride_rm + n2, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + m2 * stride_ym + n2, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bias_gelu(y, offs_n, mask_n, b_ptr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr):
        """(BM, BN) float32 tile with output columns offs_n: + bias[n], then GELU."""
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GELU:
            y = _gelu_erf(y)
        return y

    @triton.jit
    def _epilogue_fp8_static(y, offs_m, offs_n, mask_m, mask_n, b_ptr, q_ptr, s_ptr, stride_qm,
                             HAS_BIAS: tl.constexpr, GELU: tl.constexpr):
        """+ bias -> GELU on the float32 tile, then float8_e4m3fn with one static scale (s_ptr[0], calibrated):
        q = y / scale rounded to nearest even, saturated at +-448, as `quantize_fp8_static` does."""
        y = _bias_gelu(y, offs_n, mask_n, b_ptr, HAS_BIAS, GELU)
        m2 = offs_m[:, None].to(tl.int64)
        tl.store(q_ptr + m2 * stride_qm + offs_n[None, :], _fp8_static_codes(y, s_ptr).to(q_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _tanh_approx(u):
        """tanh(u) by MUFU.TANH alone (tanh.approx.f32; PTX gives its maximum error as 2^-10.987, absolute,
        over the whole range: the GPU test's bracket allows that much and no more). Exact (1 - 2 / (e^2u + 1))
        under the interpreter."""
        if _INTERP:  # |u| <= 15: tanh is +-1 in float32 beyond, and e^2u stays finite
            return 1.0 - 2.0 / (tl.exp(2.0 * tl.clamp(u, -15.0, 15.0)) + 1.0)
        else:
            return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [u], dtype=tl.float32,
                                             is_pure=True, pack=1)

    @triton.jit
    def _fp8_gelu_tanh_values(y, offs_n, mask_n, b_ptr, s_ptr, HAS_BIAS: tl.constexpr):
        """`_epilogue_fp8_static_gelu_tanh`'s values before the cast (float32; on the e4m3 grid and clamped
        under the interpreter, whose cast rounds wrongly)."""
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        half_inv = 0.5 * tl.math.div_rn(1.0, tl.load(s_ptr))
        t = _tanh_approx(y * (0.7978845608028654 + 0.035677408136300125 * (y * y)))
        h = y * half_inv
        v = h + h * t
        if _INTERP:
            v = _round_e4m3(tl.clamp(v, -448.0, 448.0))
        return v

    @triton.jit
    def _epilogue_fp8_static_gelu_tanh(y, offs_m, offs_n, mask_m, mask_n, b_ptr, q_ptr, s_ptr, stride_qm,
                                       HAS_BIAS: tl.constexpr):
        """+ bias -> GELU in its tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (torch's
        approximate='tanh'), -> float8_e4m3fn at the static scale s_ptr[0]: `QuantConfig.gelu_tanh`, fc1 -> fc2.
        One MUFU (tanh.approx) and ~7 FP32 instructions per element where the erf form with the correctly
        rounded quotient takes 2 MUFU and ~19 (sm_90 SASS, Triton 3.6: 902 + 131 against 2,437 + 259 per 128 x
        256 tile and thread; the epilogue is not overlapped with the MMAs). Measured on the H200 (fp8 persistent
        fc1, M = 12,608): 109.5 us against 126.6 with the erf form, 103.5 for the plain GEMM (results/h200-gpu-13).
        The scale's reciprocal is folded into GELU's 0.5 (one rounding of y / scale more than
        `quantize_fp8_static`: <= 1.5 float32 ulps before the e4m3 rounding, whose half step is 2^-4 of the
        value); the cast saturates at +-448 (cvt.rn.satfinite; clamped first under the interpreter). Its
        error against the erf form is tanh-GELU's own (<= 4.8e-4 absolute, tests) plus |x| / 2 times the
        MUFU's: both well under half an e4m3 step except near zero, where they are absolute."""
        v = _fp8_gelu_tanh_values(y, offs_n, mask_n, b_ptr, s_ptr, HAS_BIAS)
        m2 = offs_m[:, None].to(tl.int64)
        tl.store(q_ptr + m2 * stride_qm + offs_n[None, :], v.to(q_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _epilogue_quant(y, offs_m, offs_n, mask_m, mask_n, pid_n, b_ptr, q_ptr, s_ptr, N, stride_qm,
                        HAS_BIAS: tl.constexpr, GELU: tl.constexpr, G: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """+ bias -> GELU on the float32 tile, then int8 per token and per group of G columns, as
        `quantize_int8_per_group` does (scale = amax / 127, q = round(y / scale)): q (M, N) int8, s (M, N // G)."""
        tl.static_assert(BLOCK_N % G == 0, "an N tile must hold whole output groups")
        y = _bias_gelu(y, offs_n, mask_n, b_ptr, HAS_BIAS, GELU)
        y3 = tl.reshape(y, (BLOCK_M, BLOCK_N // G, G))
        scale = tl.maximum(tl.max(tl.abs(y3), axis=2) / 127.0, 1.1754943508222875e-38)
        inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)  # one division per group
        q3 = _int8_rn(_div_rn_fast(y3, scale[:, :, None], inv[:, :, None]))
        q = tl.reshape(q3, (BLOCK_M, BLOCK_N))
        m2 = offs_m[:, None].to(tl.int64)
        tl.store(q_ptr + m2 * stride_qm + offs_n[None, :], q, mask=mask_m[:, None] & mask_n[None, :])
        offs_g = pid_n * (BLOCK_N // G) + tl.arange(0, BLOCK_N // G)
        tl.store(s_ptr + m2 * (N // G) + offs_g[None, :], scale,
                 mask=mask_m[:, None] & (offs_g < N // G)[None, :])

    @triton.autotune(configs=tune_shard(_configs()),
                     key=["M", "N", "K", "HAS_RES", "GELU", "FP8", "XG", "QOUT", "W4", "NORM", "LN_OUT"],
                     prune_configs_by={"early_config_prune": _prune}, do_bench=tune_bench)
    @triton.jit
    def _w8a8_kernel(
        x_ptr, xs_ptr, w_ptr, ws_ptr, b_ptr, r_ptr, y_ptr, ys_ptr, sv_ptr, part_ptr, cnt_ptr, we_ptr, lw_ptr, lb_ptr,
        q_ptr, M, N, K,
        stride_xm, stride_wn, stride_rm, stride_ym, eps,
        HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr, FP8: tl.constexpr,
        XG: tl.constexpr, QOUT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        EPI_SPLIT: tl.constexpr = False, PREFETCH_RES: tl.constexpr = False, PDL: tl.constexpr = False,
        SPLIT_K: tl.constexpr = 1, HAS_PART: tl.constexpr = False, SPLIT_REV: tl.constexpr = False,
        W4: tl.constexpr = 0, NORM: tl.constexpr = False, HAS_LB: tl.constexpr = False,
        LN_OUT: tl.constexpr = 0, LN_NT: tl.constexpr = 1,
    ):
        """XG > 0: x's scales are per token and per group of XG channels, xs (M, K // XG): each K tile's
        int32 product is scaled by its group's scale into a float32 accumulator. QOUT > 0: the output is
        quantized in the epilogue, per token and per group of QOUT output channels: int8 into y, scales
        (M, N // QOUT) into ys (the next GEMM's XG input; no residual then). QOUT < 0: float8 out with the
        static scale ys[0], and ys[0] into sv[m] (the scale vector (M,) the next GEMM reads) from the first
        column of tiles. SPLIT_K > 1 (fp8 fast accumulation): SPLIT_K programs per output tile, each over its
        share of K; each stores its float32 partial tile into part (SPLIT_K, M, N) and takes a ticket from the
        tile's counter (cnt, zero between calls); the last to arrive sums the partials in split order, resets the
        counter and runs the epilogue. W4 > 0 (fp8 only): the weight is the power-of-two 4-bit format
        (`quantize_int4_pow2`, groups of W4 along K): w_ptr its nibbles (N, K // 2), we_ptr its group exponents
        (N, K // W4); each K tile of it is expanded to e4m3 in registers (q4 * 2^(6 - e): exact, a conversion) and
        fed to the same MMA, so the values are those of `expand_int4_pow2` + the plain fp8 GEMM, bit for bit.
        NORM (fp8 only): x is the float input of a LayerNorm (M, K) (fp16 / bf16 / fp32) with weight lw, bias lb
        (HAS_LB) and eps, and xs_ptr[0] the static scale of its fp8 output: each program computes its rows' mean and
        variance in a pass over them, then normalizes and quantizes each A tile as it loads it
        (`layernorm_quant_fp8_static`'s arithmetic) -- the LayerNorm kernel before the GEMM disappears.
        LN_OUT (fp8 with a residual): the epilogue also computes the LayerNorm (weight lw, bias lb, eps) of the rows
        it writes (y, the residual stream) and quantizes it at the static scale ys[0] into q, with ys[0] into
        sv[m]: `_res_norm_epilogue`. 1: only the statistics' partials (part) here, `_res_norm_apply_kernel` after;
        2: the programs of a row block meet at a barrier (cnt) and each normalizes its own tile."""
        tl.static_assert(LN_OUT == 0 or (FP8 > 0 and HAS_RES and SPLIT_K == 1 and QOUT == 0 and not GELU
                                         and not NORM), "LayerNorm epilogue: fp8 GEMM + residual, nothing else")
        # grouped tile order: GROUP_M row-tiles share one sweep over N, so W tiles stay in L2
        pid = tl.program_id(0)
        split = 0
        tl.static_assert(SPLIT_K == 1 or (FP8 == 2 and HAS_PART), "split-K: fp8 fast accumulation with a workspace")
        tl.static_assert(W4 == 0 or (FP8 > 0 and BLOCK_K % W4 == 0), "4-bit weight: fp8 GEMM, whole groups per K tile")
        if SPLIT_K > 1:
            split = pid % SPLIT_K
            if SPLIT_REV:  # splits in the opposite program order (tests: the interpreter runs programs in order,
                split = SPLIT_K - 1 - split  # so without it the last to arrive would always be split SPLIT_K - 1)
            pid = pid // SPLIT_K
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        gm = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % gm
        pid_n = (pid % group) // gm

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        if HAS_RES and PREFETCH_RES:
            _prefetch_res_l2(r_ptr, offs_m, pid_n, M, N, stride_rm, BLOCK_N)
        k_lo = 0
        k_hi = K
        if SPLIT_K > 1:  # whole K tiles per split
            k_share = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
            k_lo = split * k_share
            k_hi = tl.minimum(K, k_lo + k_share)
        # PDL: the weight rows this program reads (constants: its share of K) into L2 while the previous kernel
        # finishes, then wait for it
        if W4 > 0:  # the nibbles: K // 2 bytes a row (the exponents, 1/16 of that, are left to the loads)
            _prefetch_rows_l2(w_ptr + k_lo // 2, offs_n, mask_n, K // 2, (k_hi - k_lo) // 2, PDL)
        else:
            _prefetch_rows_l2(w_ptr + k_lo, offs_n, mask_n, stride_wn, k_hi - k_lo, PDL)
        _pdl_enter(PDL)
        # 64-bit row offsets: M * K overflows int32 beyond 2^31 elements
        x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + (k_lo + offs_k)[None, :]
        if NORM:
            tl.static_assert(FP8 > 0, "the LayerNorm prologue writes e4m3: fp8 GEMMs only")
            mean, rstd = _norm_row_stats(x_ptr, offs_m, mask_m, stride_xm, K, eps, BLOCK_M, BLOCK_K)
            s_in = tl.load(xs_ptr)
            inv_in = tl.math.div_rn(1.0, s_in)
        if W4 > 0:  # nibbles (BN, BK / 2) and group exponents (BN, BK / W4) of the 4-bit weight
            w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * (K // 2) + (k_lo // 2 + tl.arange(0, BLOCK_K // 2))[None, :]
            e_ptrs = we_ptr + offs_n[:, None].to(tl.int64) * (K // W4) + (k_lo // W4
                                                                         + tl.arange(0, BLOCK_K // W4))[None, :]
        else:
            w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn + (k_lo + offs_k)[:, None]
        if FP8 or XG > 0:  # e4m3 operands (fp8 tensor cores) or group-scaled int8 partial products
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        if XG > 0:
            tl.static_assert(XG % BLOCK_K == 0, "a K tile must lie within one activation group")
            xs_row = xs_ptr + offs_m.to(tl.int64) * (K // XG)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kmask = (k0 + offs_k) < K
            a = tl.load(x_ptrs, mask=mask_m[:, None] & kmask[None, :], other=0.0 if FP8 else 0)
            if NORM:
                a = _norm_quant_tile(a, mean, rstd, lw_ptr, lb_ptr, k0 + offs_k, kmask, s_in, inv_in, HAS_LB)
            if W4 > 0:
                b = _w4_pow2_tile(w_ptrs, e_ptrs, mask_n, k0, K, BLOCK_N, BLOCK_K, W4)
            else:
                b = tl.load(w_ptrs, mask=kmask[:, None] & mask_n[None, :], other=0.0 if FP8 else 0)
            if FP8 == 2:
                # the tensor cores' own accumulation, in place across the whole K (`w8a8_linear_fp8_fast_accum`)
                acc = tl.dot(a, b, acc)
            elif FP8:
                # Hopper's fp8 MMA keeps only ~14 mantissa bits in its accumulator and Triton's sm_90 default
                # never promotes it (max_num_imprecise_acc = 2^30; DeepSeek-V3 measured ~2% error at K = 4096
                # that way). Promote into the fp32 accumulator after every BLOCK_K products (DeepSeek-V3: 128).
                # The price (sm_90 SASS, Triton 3.6): a second accumulator and an FADD per element and K tile,
                # the loop body 136 -> 332 instructions at 128 x 256, 152 bytes spilled; and each tile's MMAs
                # must finish before the FADDs
                acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)
            elif XG > 0:
                xsg = tl.load(xs_row + k0 // XG, mask=mask_m, other=0.0)
                acc += tl.dot(a, b, out_dtype=tl.int32).to(tl.float32) * xsg[:, None]
            else:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            x_ptrs += BLOCK_K
            if W4 > 0:
                w_ptrs += BLOCK_K // 2
                e_ptrs += BLOCK_K // W4
            else:
                w_ptrs += BLOCK_K

        if SPLIT_K > 1:
            m2 = offs_m[:, None].to(tl.int64)
            n2 = offs_n[None, :]
            tmask = mask_m[:, None] & mask_n[None, :]
            tl.store(part_ptr + split.to(tl.int64) * M * N + m2 * N + n2, acc, mask=tmask)
            _fence_gpu()  # every thread's partial out to the GPU's view before the ticket (one thread takes it)
            tl.debug_barrier()
            ticket = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel", scope="gpu")
            if ticket == SPLIT_K - 1:
                _fence_gpu()
                # every partial, this program's own included, summed in split order, past L1 (.cg: other SMs
                # wrote them): the same float32 sum whichever program arrives last, so the output is
                # bit-reproducible (adding the others onto its own accumulator made the order, and the last bits
                # of near-cancelling sums, depend on which split finished last)
                acc = tl.load(part_ptr + m2 * N + n2, mask=tmask, other=0.0, cache_modifier=".cg")
                for s in range(1, SPLIT_K):  # a loop, not unrolled: one partial tile in registers at a time
                    acc += tl.load(part_ptr + s * M * N + m2 * N + n2, mask=tmask, other=0.0, cache_modifier=".cg")
                tl.atomic_xchg(cnt_ptr + pid, 0)
                _w8a8_finish(acc, offs_m, offs_n, mask_m, mask_n, pid_n, xs_ptr, ws_ptr, b_ptr, r_ptr, y_ptr, ys_ptr,
                             sv_ptr, N, K, stride_rm, stride_ym, HAS_BIAS, GELU, HAS_RES, XG, QOUT, BLOCK_M, BLOCK_N,
                             EPI_SPLIT, NORM)
        elif LN_OUT:
            _res_norm_epilogue(acc, offs_m, offs_n, mask_m, mask_n, pid_m, pid_n, num_pid_n, xs_ptr, ws_ptr, b_ptr,
                               r_ptr, y_ptr, q_ptr, ys_ptr, sv_ptr, part_ptr, cnt_ptr, lw_ptr, lb_ptr, M, N,
                               stride_rm, stride_ym, eps, HAS_BIAS, HAS_LB, LN_OUT, LN_NT, BLOCK_M, BLOCK_N)
        else:
            _w8a8_finish(acc, offs_m, offs_n, mask_m, mask_n, pid_n, xs_ptr, ws_ptr, b_ptr, r_ptr, y_ptr, ys_ptr,
                         sv_ptr, N, K, stride_rm, stride_ym, HAS_BIAS, GELU, HAS_RES, XG, QOUT, BLOCK_M, BLOCK_N,
                         EPI_SPLIT, NORM)

    # the LayerNorm epilogue's statistics: per token and chunk of LN_CHUNK output columns, the chunk's sum and its
    # sum of squared deviations from the chunk's mean (part (2, LN_NT, M)), combined by Chan et al.'s pairwise
    # formula: no chunk's squares carry the residual stream's common offset, and no program needs another's
    # tile width to read them
    LN_CHUNK = tl.constexpr(32)

    @triton.jit
    def _res_norm_partials(yr, offs_m, offs_n, mask_m, part_ptr, M, N, LN_NT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Store the (sum, M2) partials of the (BM, BN) float32 tile yr (0 outside (M, N)) whose columns are offs_n
        (whole chunks)."""
        C: tl.constexpr = BLOCK_N // LN_CHUNK
        y3 = tl.reshape(yr, (BLOCK_M, C, LN_CHUNK))
        c3 = tl.reshape(offs_n, (C, LN_CHUNK))
        chunk = tl.max(c3, axis=1) // LN_CHUNK
        cnt = tl.minimum(tl.maximum(N - chunk * LN_CHUNK, 0), LN_CHUNK).to(tl.float32)
        s = tl.sum(y3, axis=2)
        mu = s / tl.maximum(cnt, 1.0)[None, :]
        d = tl.where((c3 < N)[None, :, :], y3 - mu[:, :, None], 0.0)
        m2 = tl.sum(d * d, axis=2)
        ok = mask_m[:, None] & (cnt > 0)[None, :]
        at = part_ptr + chunk[None, :] * M + offs_m[:, None]
        tl.store(at, s, mask=ok)
        tl.store(at + LN_NT * M, m2, mask=ok)

    @triton.jit
    def _res_norm_stats(part_ptr, offs_m, mask_m, M, N, eps, LN_NT: tl.constexpr):
        """(mean, 1 / sqrt(var + eps)) of rows offs_m from every chunk's partials (read past L1: other programs
        wrote them)."""
        c = tl.arange(0, LN_NT)
        cnt = tl.minimum(tl.maximum(N - c * LN_CHUNK, 0), LN_CHUNK).to(tl.float32)
        ok = mask_m[:, None] & (cnt > 0)[None, :]
        at = part_ptr + c[None, :] * M + offs_m[:, None]
        s = tl.load(at, mask=ok, other=0.0, cache_modifier=".cg")
        m2 = tl.load(at + LN_NT * M, mask=ok, other=0.0, cache_modifier=".cg")
        mean = tl.sum(s, axis=1) / N
        d = tl.where(ok, s / tl.maximum(cnt, 1.0)[None, :] - mean[:, None], 0.0)
        var = tl.maximum((tl.sum(m2, axis=1) + tl.sum(cnt[None, :] * d * d, axis=1)) / N, 0.0)
        return mean, 1.0 / tl.sqrt(var + eps)

    @triton.jit
    def _row_block_barrier(cnt_ptr, pid_m, n_arrive):
        """Wait until all n_arrive programs of row block pid_m have arrived, their earlier stores visible: a
        sense-reversing barrier on cnt[2 pid_m] (arrivals, back to 0 by the last to arrive) and cnt[2 pid_m + 1]
        (the generation it then advances). Every program of the grid must be resident at once (the launcher allows
        it only for grids of at most one program per SM). Returns False where the wait gave up after 2^22 polls
        (seconds: a grid that was not co-resident), so that the caller poisons its output instead of hanging."""
        arrive = cnt_ptr + 2 * pid_m
        gen = arrive + 1
        g0 = tl.atomic_add(gen, 0, sem="relaxed", scope="gpu")
        _fence_gpu()  # every thread's stores out to the GPU's view before the arrival (one thread takes it)
        tl.debug_barrier()
        ticket = tl.atomic_add(arrive, 1, sem="acq_rel", scope="gpu")
        ok = g0 == g0
        if ticket == n_arrive - 1:
            tl.atomic_xchg(arrive, 0, sem="relaxed", scope="gpu")
            tl.atomic_add(gen, 1, sem="release", scope="gpu")
        else:
            g = g0
            polls = tl.full((), 0, tl.int32)
            while (g == g0) & (polls < 4194304):
                g = tl.atomic_add(gen, 0, sem="acquire", scope="gpu")
                polls += 1
            ok = g != g0
        _fence_gpu()
        return ok

    @triton.jit
    def _res_norm_epilogue(acc, offs_m, offs_n, mask_m, mask_n, pid_m, pid_n, num_pid_n, xs_ptr, ws_ptr, b_ptr,
                           r_ptr, y_ptr, q_ptr, s_ptr, sv_ptr, part_ptr, cnt_ptr, lw_ptr, lb_ptr, M, N,
                           stride_rm, stride_ym, eps, HAS_BIAS: tl.constexpr, HAS_LB: tl.constexpr,
                           LN_OUT: tl.constexpr, LN_NT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """y = acc * x_scale[m] * w_scale[n] (+ bias) + residual, stored in y's dtype (the residual stream); then the
        LayerNorm of those stored values, e4m3 at the static scale s[0] into q (the next fp8 GEMM's input, as
        `layernorm_quant_fp8_static` writes it from y), and s[0] into sv[m]."""
        xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
        ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
        y = acc * xs[:, None] * ws[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        m2 = offs_m[:, None].to(tl.int64)
        y += tl.load(r_ptr + m2 * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        yo = y.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + m2 * stride_ym + offs_n[None, :], yo, mask=mask)
        yr = tl.where(mask, yo.to(tl.float32), 0.0)  # the statistics of the values as stored
        _res_norm_partials(yr, offs_m, offs_n, mask_m, part_ptr, M, N, LN_NT, BLOCK_M, BLOCK_N)
        if pid_n == 0:
            _store_static_scale(sv_ptr, s_ptr, offs_m, mask_m)
        if LN_OUT == 2:
            ok = _row_block_barrier(cnt_ptr, pid_m, num_pid_n)
            mean, rstd = _res_norm_stats(part_ptr, offs_m, mask_m, M, N, eps, LN_NT)
            rstd = tl.where(ok, rstd, float("nan"))  # the barrier gave up: NaN codes, not partial statistics
            s = tl.load(s_ptr)
            q = _norm_quant_tile(yr, mean, rstd, lw_ptr, lb_ptr, offs_n, mask_n, s, tl.math.div_rn(1.0, s), HAS_LB)
            tl.store(q_ptr + m2 * stride_ym + offs_n[None, :], q, mask=mask)

    @triton.jit
    def _res_norm_apply_kernel(y_ptr, part_ptr, lw_ptr, lb_ptr, q_ptr, s_ptr, M, N, stride_ym, eps,
                               HAS_LB: tl.constexpr, LN_NT: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr):
        """LN_OUT = 1's second launch: the LayerNorm of y's (BM, BN) tile from the GEMM's partials, into q."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        mask = mask_m[:, None] & mask_n[None, :]
        at = offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
        yr = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32)
        mean, rstd = _res_norm_stats(part_ptr, offs_m, mask_m, M, N, eps, LN_NT)
        s = tl.load(s_ptr)
        q = _norm_quant_tile(yr, mean, rstd, lw_ptr, lb_ptr, offs_n, mask_n, s, tl.math.div_rn(1.0, s), HAS_LB)
        tl.store(q_ptr + at, q, mask=mask)

    @triton.jit
    def _norm_row_stats(x_ptr, offs_m, mask_m, stride_xm, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        """(mean, 1 / sqrt(var + eps)) of rows offs_m of x (M, K), float32, in one pass of BLOCK_K-wide tiles: sums
        of x - c and (x - c)^2 with c the row's first element (the shift keeps a large common offset, the residual
        stream's, out of the squares). Rows past M: mean 0, var 0."""
        rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
        c = tl.load(rows + tl.zeros((BLOCK_M, 1), tl.int32), mask=mask_m[:, None], other=0.0).to(tl.float32)
        s1 = tl.zeros((BLOCK_M,), tl.float32)
        s2 = tl.zeros((BLOCK_M,), tl.float32)
        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            ok = mask_m[:, None] & ((k0 + offs_k) < K)[None, :]
            d = tl.where(ok, tl.load(rows + (k0 + offs_k)[None, :], mask=ok, other=0.0).to(tl.float32) - c, 0.0)
            s1 += tl.sum(d, axis=1)
            s2 += tl.sum(d * d, axis=1)
        md = s1 / K
        var = tl.maximum(s2 / K - md * md, 0.0)
        return tl.reshape(c, (BLOCK_M,)) + md, 1.0 / tl.sqrt(var + eps)

    @triton.jit
    def _norm_quant_tile(a, mean, rstd, lw_ptr, lb_ptr, offs_k, kmask, s_in, inv_in, HAS_LB: tl.constexpr):
        """One (BM, BK) tile of x through the LayerNorm (row statistics given, columns offs_k of its weight and
        bias) and the static-scale e4m3 quantization: `layernorm_quant_fp8_static`'s arithmetic in its order.
        Columns past K come out 0 (their weight and bias load as 0)."""
        g = tl.load(lw_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)
        h = (a.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :]
        if HAS_LB:
            h += tl.load(lb_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)[None, :]
        v = tl.clamp(_div_rn_fast(h, s_in, inv_in), -448.0, 448.0)
        if _INTERP:
            v = _round_e4m3(v)
        return v.to(tl.float8e4nv)

    @triton.jit
    def _unpack_tile(p, NIBBLE_HI_FIRST: tl.constexpr):
        """(BN, BK // 2) uint8 -> (BN, BK) nibbles as int32, in k order."""
        lo = (p & 0xF).to(tl.int32)
        hi = (p >> 4).to(tl.int32)
        if NIBBLE_HI_FIRST:
            return tl.interleave(hi, lo)
        return tl.interleave(lo, hi)

    @triton.jit
    def _w4_pow2_tile(w_ptrs, e_ptrs, mask_n, k0, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP: tl.constexpr):
        """The (BK, BN) e4m3 operand of one K tile from the power-of-two 4-bit weight (`_expand_pow2_kernel`'s
        arithmetic: q4 * 2^(6 - e), the power of two built from its exponent bits, so the cast is exact).
        Columns past K (a partial last tile) are zero, as the plain load's mask makes them."""
        kh = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        p = tl.load(w_ptrs, mask=mask_n[:, None] & (kh < K // 2)[None, :], other=0x88)  # nibbles 8: q4 = 0
        kg = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        e = tl.load(e_ptrs, mask=mask_n[:, None] & (kg < K // GROUP)[None, :], other=0)
        return tl.trans(_pow2_values(p, e, BLOCK_N, BLOCK_K, GROUP).to(tl.float8e4nv))

    @triton.jit
    def _pow2_values(p, e, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
        """(BN, BK) float32 values q4 * 2^(6 - e) of the power-of-two 4-bit format from its nibbles p (BN, BK // 2)
        and group exponents e (BN, BK // GROUP): the power of two built from its exponent bits, so every value lies
        on the e4m3 grid and the cast that follows is a conversion."""
        f = ((133 - e.to(tl.int32)) << 23).to(tl.float32, bitcast=True)  # 2^(6 - e): biased exponent 127 + 6 - e
        q = (_unpack_tile(p, False) - 8).to(tl.float32)
        w = tl.reshape(tl.reshape(q, (BLOCK_N, BLOCK_K // GROUP, GROUP)) * f[:, :, None], (BLOCK_N, BLOCK_K))
        if _INTERP:  # the interpreter's cast rounds wrongly at binade edges: on the grid first (a no-op here)
            w = _round_e4m3(w)
        return w

    @triton.jit
    def _fence_gpu():
        """fence.acq_rel.gpu (nothing under the interpreter, which runs programs one after another)."""
        if not _INTERP:
            tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.u32 $0, 0;", "=r", [], dtype=tl.int32,
                                      is_pure=False, pack=1)

    @triton.jit
    def _w8a8_finish(acc, offs_m, offs_n, mask_m, mask_n, pid_n, xs_ptr, ws_ptr, b_ptr, r_ptr, y_ptr, ys_ptr, sv_ptr,
                     N, K, stride_rm, stride_ym, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr,
                     XG: tl.constexpr, QOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     EPI_SPLIT: tl.constexpr, XS_SCALAR: tl.constexpr = False):
        """`_w8a8_kernel`'s scaling and epilogue on the whole-K accumulator of one output tile. XS_SCALAR: one
        (static) input scale xs_ptr[0] for every row."""
        ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
        if XG > 0:
            y = acc * ws[None, :]
        elif XS_SCALAR:
            y = acc * tl.load(xs_ptr) * ws[None, :]
        else:
            xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
            y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
        if QOUT < 0 and pid_n == 0:
            _store_static_scale(sv_ptr, ys_ptr, offs_m, mask_m)
        if QOUT < 0 and GELU == 2:  # the same with GELU's tanh form (QuantConfig.gelu_tanh)
            _epilogue_fp8_static_gelu_tanh(y, offs_m, offs_n, mask_m, mask_n, b_ptr, y_ptr, ys_ptr, stride_ym,
                                           HAS_BIAS)
        elif QOUT < 0:  # float8 out with one static scale (ys_ptr[0]): the next fp8 GEMM's input
            _epilogue_fp8_static(y, offs_m, offs_n, mask_m, mask_n, b_ptr, y_ptr, ys_ptr, stride_ym, HAS_BIAS, GELU)
        elif QOUT > 0:
            _epilogue_quant(y, offs_m, offs_n, mask_m, mask_n, pid_n, b_ptr, y_ptr, ys_ptr, N, stride_ym,
                            HAS_BIAS, GELU, QOUT, BLOCK_M, BLOCK_N)
        else:
            _epilogue(y, offs_m, offs_n, mask_m, mask_n, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                      HAS_BIAS, GELU, HAS_RES, False, EPI_SPLIT)


def _validate(xq, x_scale, wq, w_scale, bias, residual, out_dtype, w4: bool = False):
    """w4: wq is the 4-bit weight's nibbles (N, K // 2), which `_validate_w4` checked."""
    if triton is None:
        raise RuntimeError("w8a8_linear: triton is not installed")
    qdt = torch.float8_e4m3fn if isinstance(xq, torch.Tensor) and xq.dtype == torch.float8_e4m3fn else torch.int8
    if w4:
        for name, t in (("x_scale", x_scale), ("w_scale", w_scale)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
                raise TypeError(f"w8a8_linear: {name} must be a torch.float32 tensor, got {getattr(t, 'dtype', t)}")
        (m, k), n = xq.shape, wq.shape[0]
    else:
        m, k, n = check_gemm_operands("w8a8_linear", xq, x_scale, wq, w_scale, qdt)
    if w_scale.shape != (n,):
        raise ValueError(f"w8a8_linear: w_scale must be ({n},), got {tuple(w_scale.shape)}")
    if x_scale.ndim == 2:  # group-wise activation scales (M, K // g)
        g = k // max(x_scale.shape[1], 1)
        if x_scale.shape[0] != m or x_scale.shape[1] == 0 or g * x_scale.shape[1] != k or g % 32:
            raise ValueError(f"w8a8_linear: group scales must be ({m}, K // g) with g a multiple of 32 dividing "
                             f"K={k}, got {tuple(x_scale.shape)}")
        if qdt != torch.int8:
            raise TypeError("w8a8_linear: group-wise activation scales are an int8 path (not fp8)")
        if not x_scale.is_contiguous():
            raise ValueError("w8a8_linear: group scales must be contiguous")
    elif x_scale.shape != (m,):
        raise ValueError(f"w8a8_linear: x_scale must be ({m},) or ({m}, K // group), got {tuple(x_scale.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"w8a8_linear: bias must be ({n},), got {tuple(bias.shape)}")
    if residual is not None and residual.shape != (m, n):
        raise ValueError(f"w8a8_linear: residual must be ({m}, {n}), got {tuple(residual.shape)}")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"w8a8_linear: out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    devs = {t.device for t in (xq, x_scale, wq, w_scale, bias, residual) if t is not None}
    if len(devs) != 1:
        raise ValueError(f"w8a8_linear: all tensors must be on one device, got {sorted(map(str, devs))}")
    if xq.device.type == "cpu" and not interpreting():
        raise ValueError("w8a8_linear: CPU tensors need TRITON_INTERPRET=1 (or use the torch backend)")
    if xq.stride(1) != 1 or wq.stride(1) != 1:
        raise ValueError("w8a8_linear: xq and wq must be contiguous along K")
    if qdt == torch.int8 and k > 133_000:
        raise ValueError(f"w8a8_linear: K={k} could overflow the int32 accumulator")


def _fake(xq, x_scale, wq, w_scale, bias=None, residual=None, gelu=False, out_dtype=torch.float16):
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_COUNTERS = {}
_SMS = {}
_SPLIT_SEEN = [None, False]  # (the autotuner's config list, whether it holds a split-K config)


def _has_split_configs() -> bool:
    """Whether the W8A8 kernel may run a split-K config (QVIT_SPLITK=1, or a test pinned one): only then does a
    launch get the partial-sum workspace and counters the split configs write."""
    cfgs = _w8a8_kernel.configs
    if _SPLIT_SEEN[0] is not cfgs:
        _SPLIT_SEEN[:] = [cfgs, any(c.kwargs.get("SPLIT_K", 1) > 1 for c in cfgs)]
    return _SPLIT_SEEN[1]


def _split_counters(device, what: str = "split-K") -> torch.Tensor:
    """The split-K arrival counters (SPLITK_TILES int32, zero between calls: each tile's last program resets its
    own), one buffer per (device, stream, what): GEMMs on one stream run one after another, on two streams they may
    overlap. Allocated (a memset) on a stream's first such call only. what="barrier": the LayerNorm epilogue's
    (arrivals, generation) pairs, whose generations never go back to zero."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream, what)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(SPLITK_TILES, dtype=torch.int32, device=device)
    return _COUNTERS[key]


def _launch(xq, x_scale, wq, w_scale, bias, residual, gelu, y, ys, qout, fp8_fast_accum=False, sv=None, we=None,
            w4=0, norm=None, res_norm=None):
    """qout < 0 (fp8 out at the static scale ys (1,)): sv (M,) float32 receives ys[0] per row. w4 > 0: wq is the
    power-of-two 4-bit weight's nibbles (N, K // 2) and we its group exponents (N, K // w4). norm = (weight, bias or
    None, eps): xq is the float input of that LayerNorm and x_scale (1,) the static scale of its fp8 output.
    res_norm = (weight, bias or None, eps, q, part, cnt, mode): the LayerNorm epilogue (LN_OUT = mode) of y into q at
    the static scale ys, sv filled with it."""
    if qout < 0 and sv is None:
        raise ValueError("w8a8_linear: the fp8 static output needs its scale vector")
    m, k = xq.shape
    n = wq.shape[0]
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    xg = k // x_scale.shape[1] if x_scale.ndim == 2 and norm is None else 0
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])  # noqa: E731
                         * meta.get("SPLIT_K", 1),)
    part, cnt = w_scale, w_scale  # placeholders: only the split-K configs touch them
    lnorm, q, ln_out = norm, w_scale, 0
    if res_norm is not None:
        lnorm, (q, part, cnt, ln_out) = res_norm[:3], res_norm[3:]
    elif fp8_fast_accum and m <= SPLITK_MAX_M and _has_split_configs():
        part = torch.empty((SPLITK_MAX, m, n), dtype=torch.float32, device=xq.device)
        cnt = _split_counters(xq.device)
    _w8a8_kernel[grid](
        xq, x_scale, wq, w_scale, bias if bias is not None else w_scale,
        residual if residual is not None else y, y, ys if ys is not None else w_scale,
        sv if sv is not None else w_scale, part, cnt, we if we is not None else w_scale,
        lnorm[0] if lnorm is not None else w_scale,
        lnorm[1] if lnorm is not None and lnorm[1] is not None else w_scale, q, m, n, k, xq.stride(0),
        wq.stride(0),
        residual.stride(0) if residual is not None else 0, y.stride(0), float(lnorm[2]) if lnorm is not None else 0.0,
        HAS_BIAS=bias is not None, GELU=gelu, HAS_RES=residual is not None,
        FP8=(2 if fp8_fast_accum else 1) if xq.dtype == torch.float8_e4m3fn or norm is not None else 0,
        XG=xg, QOUT=qout, HAS_PART=part is not w_scale and ln_out == 0, W4=w4, NORM=norm is not None,
        HAS_LB=lnorm is not None and lnorm[1] is not None, LN_OUT=ln_out,
        LN_NT=part.shape[1] if ln_out else 1, **pdl_kwargs(xq.device),
    )


@fast_custom_op("qvit::w8a8_linear", _fake)
def w8a8_linear(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                gelu: bool = False, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """y = epilogue(xq @ wq^T); see the module docstring. x_scale (M,) per token, or (M, K // g) per token
    and group of g input channels (what `w8a8_linear_quant_out` of the previous layer writes)."""
    _validate(xq, x_scale, wq, w_scale, bias, residual, out_dtype)
    y = torch.empty((xq.shape[0], wq.shape[0]), dtype=out_dtype, device=xq.device)
    _launch(xq, x_scale, wq, w_scale, bias, residual, gelu, y, None, 0)
    return y


@fast_custom_op("qvit::w8a8_linear_fp8_fast_accum", _fake)
def w8a8_linear_fp8_fast_accum(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor,
                               w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                               residual: torch.Tensor | None = None, gelu: bool = False,
                               out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """`w8a8_linear` on float8_e4m3fn operands with the fp8 tensor cores accumulating in place over all of K
    (no promotion into a float32 accumulator every BLOCK_K products): one accumulator, no FADDs in the main
    loop, the MMAs of consecutive K tiles overlapped -- and Hopper's reduced accumulation precision over the
    whole K (what cuBLAS calls fast accumulation). The fp8 preset's GEMM (`Fp8Linear.fp8_fast_accum`).
    Measured on the H200 (session 10, M = 12,608): 1.37-1.77x cuBLAS bf16, the promoted kernel 1.00-1.22x; its
    error against `fp8_matmul_ref` added 5e-4 (K = 1024) and 1.3e-3 (K = 4096) in quadrature to the bf16
    output rounding's 1.66e-3 (relative Frobenius), i.e. less than that rounding."""
    if xq.dtype != torch.float8_e4m3fn:
        raise TypeError(f"w8a8_linear_fp8_fast_accum: float8_e4m3fn operands only, got {xq.dtype}")
    _validate(xq, x_scale, wq, w_scale, bias, residual, out_dtype)
    y = torch.empty((xq.shape[0], wq.shape[0]), dtype=out_dtype, device=xq.device)
    _launch(xq, x_scale, wq, w_scale, bias, residual, gelu, y, None, 0, fp8_fast_accum=True)
    return y


def _gelu_mode(name, gelu, gelu_tanh):
    """The kernels' GELU constexpr: 0 none, 1 erf form, 2 tanh form (fp8 static-output epilogues only)."""
    if gelu_tanh and not gelu:
        raise ValueError(f"{name}: gelu_tanh=True selects GELU's tanh form and needs gelu=True")
    return 2 if gelu_tanh else bool(gelu)


def _fake_fp8_static(xq, x_scale, wq, w_scale, bias=None, gelu=False, out_scale=None, gelu_tanh=False):
    m = xq.shape[0]
    return xq.new_empty((m, wq.shape[0]), dtype=torch.float8_e4m3fn), xq.new_empty((m,), dtype=torch.float32)


@fast_custom_op("qvit::w8a8_linear_fp8_static_out", _fake_fp8_static)
def w8a8_linear_fp8_static_out(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                               bias: torch.Tensor | None, gelu: bool,
                               out_scale: torch.Tensor, gelu_tanh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp8 GEMM (in-place accumulation) with its output (after bias and GELU) quantized in the epilogue to
    float8_e4m3fn with one static, calibrated scale: (q (M, N), scale float32 (M,) filled with out_scale),
    exactly what `quantize_fp8_static` makes of the float32 epilogue result and what the next fp8 GEMM takes
    as input (QuantConfig.fp8_static_mlp: fc1 -> fc2 without a bf16 round trip or a quantize kernel).
    gelu_tanh: GELU in its tanh form with the MUFU's tanh (`_epilogue_fp8_static_gelu_tanh`; QuantConfig.gelu_tanh):
    torch's gelu(approximate='tanh') up to that tanh's error and one more rounding before the e4m3 one."""
    _validate(xq, x_scale, wq, w_scale, bias, None, torch.float32)
    if xq.dtype != torch.float8_e4m3fn:
        raise TypeError(f"w8a8_linear_fp8_static_out: float8_e4m3fn operands only, got {xq.dtype}")
    from qvit.kernels.quant import check_static_scale
    check_static_scale("w8a8_linear_fp8_static_out", out_scale, xq.device)
    m, n = xq.shape[0], wq.shape[0]
    q = torch.empty((m, n), dtype=torch.float8_e4m3fn, device=xq.device)
    mode = _gelu_mode("w8a8_linear_fp8_static_out", gelu, gelu_tanh)
    sv = torch.empty((m,), dtype=torch.float32, device=xq.device)  # written by the kernel
    _launch(xq, x_scale, wq, w_scale, bias, None, mode, q, out_scale.reshape(1), -1, fp8_fast_accum=True, sv=sv)
    return q, sv


def _validate_norm(name, x, ln_weight, ln_bias, in_scale, wq, w_scale, bias):
    """The LayerNorm-prologue GEMMs' checks: x (M, K) float, K-contiguous; the LayerNorm's weight (and bias) (K,) on
    x's device; a one-element float32 static input scale; an fp8 weight (N, K) with its (N,) float32 scales."""
    if triton is None:
        raise RuntimeError(f"{name}: triton is not installed")
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.dtype not in _OUT_DTYPES:
        raise TypeError(f"{name}: x must be a 2-D float16 / bfloat16 / float32 tensor (M, K), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if x.stride(1) != 1:
        raise ValueError(f"{name}: x must be contiguous along K")
    k = x.shape[1]
    for what, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is None and what == "ln_bias":
            continue
        if not isinstance(t, torch.Tensor) or t.shape != (k,) or t.device != x.device:
            raise ValueError(f"{name}: {what} must be a ({k},) tensor on {x.device}, got "
                             f"{tuple(getattr(t, 'shape', ()))} on {getattr(t, 'device', None)}")
    from qvit.kernels.quant import check_static_scale
    check_static_scale(name, in_scale, x.device)
    if not isinstance(wq, torch.Tensor) or wq.dtype != torch.float8_e4m3fn or wq.ndim != 2 or wq.shape[1] != k:
        raise TypeError(f"{name}: wq must be a float8_e4m3fn (N, {k}) tensor, got "
                        f"{getattr(wq, 'dtype', type(wq).__name__)} {tuple(getattr(wq, 'shape', ()))}")
    n = wq.shape[0]
    if not isinstance(w_scale, torch.Tensor) or w_scale.dtype != torch.float32 or w_scale.shape != (n,):
        raise TypeError(f"{name}: w_scale must be a float32 ({n},) tensor, got "
                        f"{getattr(w_scale, 'dtype', type(w_scale).__name__)} {tuple(getattr(w_scale, 'shape', ()))}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"{name}: bias must be ({n},), got {tuple(bias.shape)}")
    from qvit.kernels.quant import check_kernel_device
    check_kernel_device(name, x, wq, w_scale, bias)
    if wq.stride(1) != 1:
        raise ValueError(f"{name}: wq must be contiguous along K")


def _fake_norm(x, ln_weight, ln_bias, eps, in_scale, wq, w_scale, bias=None, gelu=False):
    return x.new_empty((x.shape[0], wq.shape[0]))


@fast_custom_op("qvit::w8a8_linear_norm_fp8", _fake_norm)
def w8a8_linear_norm_fp8(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor | None, eps: float,
                         in_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                         bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """The fp8 GEMM (in-place accumulation) on the LayerNorm of x, computed inside it: each program takes its rows'
    mean and variance in one pass over them, then normalizes and quantizes every A tile at the static scale
    in_scale as it loads it (QuantConfig.fp8_static_norm: qkv after norm1). The same values as
    `layernorm_quant_fp8_static` + `w8a8_linear_fp8_fast_accum`, up to the row statistics' summation order (a code
    may move by one e4m3 step at a near-tie). Output in x's dtype. Measured slower than those two launches (H100,
    results/h200-gpu-27: qkv 19.9 against 8.0 us at M = 197, 3.0x at 12,608): every N tile normalizes the same rows
    again, so the model uses it only with QVIT_NORM_FUSED=1."""
    _validate_norm("w8a8_linear_norm_fp8", x, ln_weight, ln_bias, in_scale, wq, w_scale, bias)
    y = torch.empty((x.shape[0], wq.shape[0]), dtype=x.dtype, device=x.device)
    _launch(x, in_scale.reshape(1), wq, w_scale, bias, None, gelu, y, None, 0, fp8_fast_accum=True,
            norm=(ln_weight, ln_bias, eps))
    return y


def _fake_norm_static(x, ln_weight, ln_bias, eps, in_scale, wq, w_scale, bias, gelu, out_scale, gelu_tanh=False):
    m = x.shape[0]
    return x.new_empty((m, wq.shape[0]), dtype=torch.float8_e4m3fn), x.new_empty((m,), dtype=torch.float32)


@fast_custom_op("qvit::w8a8_linear_norm_fp8_static_out", _fake_norm_static)
def w8a8_linear_norm_fp8_static_out(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor | None,
                                    eps: float, in_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                                    bias: torch.Tensor | None, gelu: bool, out_scale: torch.Tensor,
                                    gelu_tanh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`w8a8_linear_norm_fp8` with `w8a8_linear_fp8_static_out`'s epilogue (bias, GELU or its tanh form, e4m3 at
    the static scale out_scale, and the (M,) scale vector): fc1 after norm2, writing fc2's input."""
    name = "w8a8_linear_norm_fp8_static_out"
    _validate_norm(name, x, ln_weight, ln_bias, in_scale, wq, w_scale, bias)
    from qvit.kernels.quant import check_static_scale
    check_static_scale(name, out_scale, x.device)
    m, n = x.shape[0], wq.shape[0]
    q = torch.empty((m, n), dtype=torch.float8_e4m3fn, device=x.device)
    sv = torch.empty((m,), dtype=torch.float32, device=x.device)
    _launch(x, in_scale.reshape(1), wq, w_scale, bias, None, _gelu_mode(name, gelu, gelu_tanh), q,
            out_scale.reshape(1), -1, fp8_fast_accum=True, sv=sv, norm=(ln_weight, ln_bias, eps))
    return q, sv


_FITS = {}  # (m, n, k, device) -> (the config list asked, whether a grid fits): the model asks every forward


def _res_norm_fits(m: int, n: int, k: int) -> bool:
    """Whether the LayerNorm epilogue can run with its barrier (LN_OUT = 2): some tile config of the fp8 GEMM puts
    at most one program per SM on the grid of (m, n). On a CUDA device, not under the interpreter. The model's
    check and the op's launch both ask, every forward: the prune over the configs runs once per shape."""
    if interpreting() or not torch.cuda.is_available():
        return False
    cfgs = _w8a8_kernel.configs  # a test may pin others: the answer is kept per config list
    key = (m, n, k, torch.cuda.current_device())
    hit = _FITS.get(key)
    if hit is None or hit[0] is not cfgs:
        try:
            _prune(cfgs, {"M": m, "N": n, "K": k, "HAS_RES": True, "FP8": 2, "LN_OUT": 2})
            hit = (cfgs, True)
        except ValueError:
            hit = (cfgs, False)
        _FITS[key] = hit
    return hit[1]


def _fake_res_norm(xq, x_scale, wq, w_scale, bias, residual, ln_weight, ln_bias, eps, out_scale, barrier=True):
    m, n = residual.shape
    return (residual.new_empty((m, n)), residual.new_empty((m, n), dtype=torch.float8_e4m3fn),
            residual.new_empty((m,), dtype=torch.float32))


@fast_custom_op("qvit::w8a8_linear_res_norm_fp8", _fake_res_norm)
def w8a8_linear_res_norm_fp8(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                             bias: torch.Tensor | None, residual: torch.Tensor, ln_weight: torch.Tensor,
                             ln_bias: torch.Tensor | None, eps: float, out_scale: torch.Tensor,
                             barrier: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fp8 GEMM (in-place accumulation) + bias + residual, and the LayerNorm of its output quantized to e4m3 at
    the static scale out_scale, in its epilogue (QuantConfig.fp8_static_norm: proj -> norm2 -> fc1, fc2 -> the next
    block's norm1 -> qkv): (y (M, N) in the residual's dtype, q (M, N) float8_e4m3fn, scale (M,) filled with
    out_scale). y is `w8a8_linear_fp8_fast_accum`'s output; q what `layernorm_quant_fp8_static` makes of y, up to
    the statistics' summation order (a code may move by one e4m3 step at a near-tie). Each program sums its
    tile's rows per 32-column chunk; with `barrier` (on a GPU, where a grid of at most one program per SM fits the
    shape) the programs of a row block then wait for each other and normalize their own tiles in registers, one
    launch; otherwise a second, elementwise launch normalizes y."""
    name = "w8a8_linear_res_norm_fp8"
    if not isinstance(xq, torch.Tensor) or xq.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{name}: float8_e4m3fn operands only, got {getattr(xq, 'dtype', type(xq).__name__)}")
    if not isinstance(residual, torch.Tensor) or residual.dtype not in _OUT_DTYPES:
        raise TypeError(f"{name}: residual must be a float16 / bfloat16 / float32 tensor, got "
                        f"{getattr(residual, 'dtype', type(residual).__name__)}")
    _validate(xq, x_scale, wq, w_scale, bias, residual, residual.dtype)
    m, k = xq.shape
    n = wq.shape[0]
    for what, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is None and what == "ln_bias":
            continue
        if not isinstance(t, torch.Tensor) or t.shape != (n,) or t.device != xq.device or not t.is_floating_point():
            raise ValueError(f"{name}: {what} must be a float ({n},) tensor on {xq.device}, got "
                             f"{getattr(t, 'dtype', None)} {tuple(getattr(t, 'shape', ()))} on "
                             f"{getattr(t, 'device', None)}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{name}: eps must be finite and >= 0, got {eps}")
    from qvit.kernels.quant import check_static_scale
    s = check_static_scale(name, out_scale, xq.device)
    y = torch.empty((m, n), dtype=residual.dtype, device=xq.device)
    q = torch.empty((m, n), dtype=torch.float8_e4m3fn, device=xq.device)
    sv = torch.empty((m,), dtype=torch.float32, device=xq.device)
    nt = triton.next_power_of_2(triton.cdiv(n, 32))  # the statistics' 32-column chunks
    part = torch.empty((2, nt, m), dtype=torch.float32, device=xq.device)
    mode = 2 if barrier and xq.is_cuda and _res_norm_fits(m, n, k) else 1
    cnt = _split_counters(xq.device, "barrier") if mode == 2 else w_scale
    _launch(xq, x_scale, wq, w_scale, bias, residual, False, y, s, 0, fp8_fast_accum=True, sv=sv,
            res_norm=(ln_weight.contiguous(), None if ln_bias is None else ln_bias.contiguous(), eps, q, part, cnt,
                      mode))
    if mode == 1:
        bm, bn = (16, 32) if interpreting() else (32, 128)
        _res_norm_apply_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
            y, part, ln_weight, ln_bias if ln_bias is not None else ln_weight, q, s, m, n, y.stride(0), float(eps),
            HAS_LB=ln_bias is not None, LN_NT=nt, BLOCK_M=bm, BLOCK_N=bn)
    return y, q, sv


def _validate_w4(name, xq, x_scale, packed, gexp, w_scale, group_size, bias, residual, out_dtype):
    """The fused 4-bit fp8 GEMMs' checks: fp8 activations (M, K), the power-of-two 4-bit weight (nibbles (N, K // 2),
    group exponents (N, K // g), g dividing 128 and a multiple of 16), then the fp8 GEMM's own checks."""
    if triton is None:
        raise RuntimeError(f"{name}: triton is not installed")
    if not isinstance(xq, torch.Tensor) or xq.dtype != torch.float8_e4m3fn or xq.ndim != 2:
        raise TypeError(f"{name}: xq must be 2-D float8_e4m3fn, got "
                        f"{getattr(xq, 'dtype', type(xq).__name__)} {tuple(getattr(xq, 'shape', ()))}")
    if group_size <= 0 or group_size % 16 or 128 % group_size:
        raise ValueError(f"{name}: group_size={group_size} must divide 128 and be a multiple of 16")
    if isinstance(packed, torch.Tensor) and packed.ndim == 2 and packed.shape[1] * 2 != xq.shape[1]:
        raise ValueError(f"{name}: packed {tuple(packed.shape)} holds K={packed.shape[1] * 2} weights per row, "
                         f"xq has K={xq.shape[1]}")
    from qvit.kernels.w4a8_linear import _check_expand  # (w4a8_linear imports this module)
    _check_expand(name, packed, gexp, group_size, "group exponents")
    _validate(xq, x_scale, packed, w_scale, bias, residual, out_dtype, w4=True)  # the rest as for the fp8 GEMM


def _fake_w4(xq, x_scale, packed, gexp, w_scale, group_size, bias=None, residual=None, gelu=False,
             out_dtype=torch.float16):
    return xq.new_empty((xq.shape[0], packed.shape[0]), dtype=out_dtype)


@fast_custom_op("qvit::w4f8_linear_fast_accum", _fake_w4)
def w4f8_linear_fast_accum(xq: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, gexp: torch.Tensor,
                           w_scale: torch.Tensor, group_size: int, bias: torch.Tensor | None = None,
                           residual: torch.Tensor | None = None, gelu: bool = False,
                           out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """`w8a8_linear_fp8_fast_accum` on the power-of-two 4-bit weight (`quantize_int4_pow2`: nibbles + a group
    exponent, `Fp8W4Linear`) expanded to e4m3 inside the GEMM, tile by tile, instead of by `expand_int4_pow2`
    into a (N, K) fp8 matrix first: the weight is read at 4.25 bits and never written out. Bit-identical to the
    expansion followed by the fp8 GEMM with the same config (the same e4m3 operand, the same MMAs)."""
    _validate_w4("w4f8_linear_fast_accum", xq, x_scale, packed, gexp, w_scale, group_size, bias, residual, out_dtype)
    y = torch.empty((xq.shape[0], packed.shape[0]), dtype=out_dtype, device=xq.device)
    _launch(xq, x_scale, packed, w_scale, bias, residual, gelu, y, None, 0, fp8_fast_accum=True, we=gexp,
            w4=group_size)
    return y


def _fake_w4_static(xq, x_scale, packed, gexp, w_scale, group_size, bias, gelu, out_scale, gelu_tanh=False):
    m, n = xq.shape[0], packed.shape[0]
    return xq.new_empty((m, n), dtype=torch.float8_e4m3fn), xq.new_empty((m,), dtype=torch.float32)


@fast_custom_op("qvit::w4f8_linear_fp8_static_out", _fake_w4_static)
def w4f8_linear_fp8_static_out(xq: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, gexp: torch.Tensor,
                               w_scale: torch.Tensor, group_size: int, bias: torch.Tensor | None, gelu: bool,
                               out_scale: torch.Tensor, gelu_tanh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`w8a8_linear_fp8_static_out` on the power-of-two 4-bit weight expanded inside the GEMM (see
    `w4f8_linear_fast_accum`): fc1 of the 4-bit fp8 rows."""
    name = "w4f8_linear_fp8_static_out"
    _validate_w4(name, xq, x_scale, packed, gexp, w_scale, group_size, bias, None, torch.float32)
    from qvit.kernels.quant import check_static_scale
    check_static_scale(name, out_scale, xq.device)
    m, n = xq.shape[0], packed.shape[0]
    q = torch.empty((m, n), dtype=torch.float8_e4m3fn, device=xq.device)
    sv = torch.empty((m,), dtype=torch.float32, device=xq.device)  # written by the kernel
    _launch(xq, x_scale, packed, w_scale, bias, None, _gelu_mode(name, gelu, gelu_tanh), q, out_scale.reshape(1), -1,
            fp8_fast_accum=True, sv=sv, we=gexp, w4=group_size)
    return q, sv


def _fake_quant_out(xq, x_scale, wq, w_scale, bias=None, gelu=False, group=128):
    m, n = xq.shape[0], wq.shape[0]
    return xq.new_empty((m, n), dtype=torch.int8), xq.new_empty((m, n // group), dtype=torch.float32)


@fast_custom_op("qvit::w8a8_linear_quant_out", _fake_quant_out)
def w8a8_linear_quant_out(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                          bias: torch.Tensor | None = None, gelu: bool = False,
                          group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The W8A8 GEMM with its output quantized in the epilogue (after bias and GELU), per token and per group
    of `group` output channels: (q int8 (M, N), scale float32 (M, N // group)), exactly what
    `quantize_int8_per_group` makes of the float32 epilogue result, and what the next W8A8 GEMM takes as its
    input with group-wise scales. Replaces GEMM -> bf16 -> separate quantize kernel (fc1 -> fc2)."""
    _validate(xq, x_scale, wq, w_scale, bias, None, torch.float32)
    n = wq.shape[0]
    if xq.dtype != torch.int8:
        raise TypeError("w8a8_linear_quant_out: int8 operands only")
    if group <= 0 or group % 16 or n % group:
        raise ValueError(f"w8a8_linear_quant_out: group={group} must be a multiple of 16 dividing N={n}")
    q = torch.empty((xq.shape[0], n), dtype=torch.int8, device=xq.device)
    s = torch.empty((xq.shape[0], n // group), dtype=torch.float32, device=xq.device)
    _launch(xq, x_scale, wq, w_scale, bias, None, gelu, q, s, group)
    return q, s
