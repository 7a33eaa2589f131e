"""Fused FlashAttention-2-style attention for ViT sequence lengths, fp16/bf16 or int8 Q/K.

    O[b, i, h, :] = sum_j softmax_j(Q[b, i, h] . K[b, j, h] * sm_scale) V[b, j, h, :]

Shapes: q, k, v (batch, seq, heads, head_dim), any strides with head_dim contiguous, so the
three can be views into the qkv GEMM's (batch, seq, 3, heads, head_dim) output with no copy;
o (batch, seq, heads, head_dim) contiguous, which is the (batch * seq, heads * head_dim) matrix
the proj GEMM reads, again with no transpose. No mask (ViT attention is dense).

Algorithm (FA2): one program per (query block, batch x head); K/V tiles are streamed with an
online softmax in base 2 (exp2 with log2(e) folded into the scale), the output is normalized once
at the end. Short-sequence path: the autotuner may pick BLOCK_N = 256, so that for S <= 256 (197 tokens at
224 px / patch 16) one key tile covers the whole sequence and the loop runs once (the rescale of
an all-zero accumulator is then a single multiply); small BLOCK_M keeps batch-1 grids wide.

int8 path: q8, k8 int8 with float32 scales per (batch, token, head); K is smoothed first by
subtracting its mean over tokens (per batch, head, channel; softmax is invariant to it, as
SageAttention observed) so its int8 range is spent on the part that matters. QK^T runs on the
int8 tensor cores (exact int32), is rescaled by q_scale[i] * k_scale[j] * sm_scale, and P.V runs
in fp16/bf16 like the float path.

Reference: `attention_ref` (upcast=True is the truth; upcast=False is what plain PyTorch gets
in low precision). Backward: `attention` is differentiable; the backward is FA2's (two kernels:
dK/dV streaming query blocks, dQ streaming key blocks, P rebuilt from the forward's log-sum-exp),
checked against `attention_bwd_ref` (the same math in float32) and against autograd of the reference.
"""
from __future__ import annotations

import math

import torch

from qvit.backend import interpreting, pdl_kwargs, tune_bench, tune_shard
from qvit.kernels._op import fast_custom_op

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def attention_ref(q, k, v, sm_scale=None, upcast=True):
    """(B, S, H, D) x3 -> (B, S, H, D). upcast=True computes in float32."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    sm_scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
    s = torch.einsum("bihd,bjhd->bhij", q, k) * sm_scale
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhij,bjhd->bihd", p.to(v.dtype), v).to(dtype)


def quantize_qk_ref(q, k, smooth_k: bool = True):
    """Per-(batch, token, head) int8 Q and K (smooth_k: K minus its mean over tokens first): returns q8,
    q_scale, k8, k_scale (float32)."""
    from qvit.kernels.quant import quantize_int8_per_token
    q8, qs = quantize_int8_per_token(q)
    if smooth_k:
        km = k.float().mean(dim=1, keepdim=True)  # (B, 1, H, D): softmax is invariant to a per-query shift
        k8, ks = quantize_int8_per_token(k.float() - km)
    else:
        k8, ks = quantize_int8_per_token(k)
    return q8, qs, k8, ks


def attention_int8_ref(q8, q_scale, k8, k_scale, v, sm_scale=None):
    """The int8 path's math in float32: dequantized Q and K, softmax, P.V in float32."""
    sm_scale = sm_scale if sm_scale is not None else q8.shape[-1] ** -0.5
    qf = q8.float() * q_scale[..., None]
    kf = k8.float() * k_scale[..., None]
    return attention_ref(qf, kf, v.float(), sm_scale).to(v.dtype)


if triton is not None:
    # one rounding rule for every quantizer
    from qvit.kernels.layernorm_quant import _fp8_static_codes, _int8_rn, _pdl_enter, _store_static_scale

    _INTERP = tl.constexpr(interpreting())

    def _configs():
        if interpreting():
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "TAIL_M": 0, "TAIL_N": 0}, num_warps=4, num_stages=1)]
        plain = [(64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3),
                 (128, 128, 8, 3), (64, 256, 4, 2), (64, 256, 8, 2), (128, 256, 8, 2),
                 (32, 256, 4, 2), (16, 256, 4, 2),
                 # one key tile covers S <= 256: nothing to pipeline across iterations,
                 # so single-stage variants free shared memory for more CTAs per SM
                 (64, 256, 4, 1), (64, 256, 8, 1), (128, 256, 8, 1), (32, 256, 4, 1),
                 (64, 128, 4, 2), (128, 128, 8, 2),
                 # narrower key tiles: 197 keys pad to 224 instead of 256 (the H200
                 # record had BLOCK_N = 64 pipelined tiles win at batch >= 4), deeper pipes
                 (128, 32, 4, 3), (128, 32, 8, 4), (64, 32, 4, 4), (128, 64, 8, 4)]
        # tails: full query blocks and key tiles run unmasked and the remainder (197 = 3 x 64 + 5) runs as
        # 16- or 32-wide blocks, so S = 197 computes 208 x 208 scores instead of 256 x 256 (0.66x the
        # tensor-core work and exponentials); S = 257: 272 x 272 instead of 320 x 320
        tails = [(64, 64, 4, 3, 16, 16), (64, 64, 4, 2, 16, 16), (128, 64, 8, 3, 16, 16),
                 (128, 64, 4, 2, 16, 16), (64, 32, 4, 4, 16, 16), (64, 128, 4, 2, 16, 32),
                 # one program per (batch, head) at S <= 256: K and V cross from L2 once instead of once per
                 # query block (4x at S = 197 with 64-row blocks), at the price of 256 padded query rows
                 (256, 64, 8, 2, 0, 16), (256, 64, 16, 2, 0, 16), (256, 32, 8, 3, 0, 16)]
        return ([triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "TAIL_M": 0, "TAIL_N": 0}, num_warps=w, num_stages=st)
                 for bm, bn, w, st in plain]
                + [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "TAIL_M": tm, "TAIL_N": tn}, num_warps=w,
                                 num_stages=st) for bm, bn, w, st, tm, tn in tails])

    def _prune(configs, named_args, **kwargs):
        s = named_args["S"]
        out = []
        for c in configs:
            bm, bn, tm, tn = (c.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "TAIL_M", "TAIL_N"))
            if bn > max(64, triton.next_power_of_2(s)):
                continue
            # a tail needs a full block before it (else every block is a narrow tail), and a tail config is
            # the plain one where the blocks divide S
            if (tm and bm > s) or (tn and bn > s) or ((tm or tn) and s % bm == 0 and s % bn == 0):
                continue
            out.append(c)
        return out or configs

    def _grid_m(s: int, meta) -> int:
        """Programs along the queries: S // BLOCK_M full blocks plus the remainder in TAIL_M-row blocks."""
        bm, tm = meta["BLOCK_M"], meta["TAIL_M"]
        return s // bm + triton.cdiv(s % bm, tm) if tm else triton.cdiv(s, bm)

    @triton.jit
    def _quant_tile(x, AXIS: tl.constexpr):
        """int8 of a float32 tile along AXIS (1: per row, 0: per column) with scale = amax / 127 and
        q = round(x / scale), exactly as `quantize_int8_per_token`; returns (int8 tile, scales)."""
        scale = tl.maximum(tl.max(tl.abs(x), axis=AXIS) / 127.0, 1.1754943508222875e-38)
        sc = scale[:, None] if AXIS == 1 else scale[None, :]
        return _int8_rn(tl.math.div_rn(x, sc)), scale

    @triton.jit
    def _quant_tile_fast(x, AXIS: tl.constexpr):
        """`_quant_tile` with one division per row/column instead of one per element: q = round(x * (127 /
        amax)). x * (127 / amax) and x / (amax / 127) differ by a few ulp, so an element within ~1e-5 of a
        rounding tie may land one int8 step away from the reference quantizer: the on-chip path's results are
        checked against the reference within the output's rounding (tests), not bit for bit."""
        amax = tl.max(tl.abs(x), axis=AXIS)
        scale = tl.maximum(amax / 127.0, 1.1754943508222875e-38)
        inv = 1.0 / scale
        iv = inv[:, None] if AXIS == 1 else inv[None, :]
        return _int8_rn(x * iv), scale

    @triton.jit
    def _dequant_dot(acc, ksc):
        """An int32 Q.K^T tile (|x| <= D * 127 * 127 < 2^22 for D <= 128) times K's per-token scales, without
        the int32 -> float32 conversion instruction (I2F: 16 per clock per SM, a quarter of the FP32 rate, on
        the scores' critical path beside the exponentials): x added to the bits of 1.5 * 2^23 is the float
        1.5 * 2^23 + x exactly, and x * ksc = f * ksc - 1.5 * 2^23 * ksc, one FFMA with a per-column constant
        (its rounding: under one integer step of the dot product, far below the int8 quantization error)."""
        f = (acc + 0x4B400000).to(tl.float32, bitcast=True)
        return f * ksc[None, :] + (ksc * -12582912.0)[None, :]

    @triton.jit
    def _attn_tile(q, qsc, k_base, v_base, ks_ptr, kmean, n0, S, b, h, H, sks, svs, m_i, l_i, acc,
                   D: tl.constexpr, BN: tl.constexpr, INT8: tl.constexpr, QUANT_QK: tl.constexpr,
                   SMOOTH_K: tl.constexpr, MASKED: tl.constexpr):
        """Keys n0 .. n0 + BN through the online softmax: returns the updated (m_i, l_i, acc). MASKED: keys
        past S are masked (a last tile); a full tile loads and scores without masks."""
        cols = n0 + tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        mask_n = cols < S
        k_ptrs = k_base + cols[None, :].to(tl.int64) * sks + offs_d[:, None]
        v_ptrs = v_base + cols[:, None].to(tl.int64) * svs + offs_d[None, :]
        if MASKED:
            kt = tl.load(k_ptrs, mask=mask_n[None, :], other=0)
        else:
            kt = tl.load(k_ptrs)
        # s holds the scores up to a positive per-row factor qsc (sm_scale * log2(e), times Q's scale on the
        # int8 paths), applied inside exp2's argument as one FFMA per element: max(s * c) = c * max(s) for c > 0
        if INT8:
            if MASKED:
                ksc = tl.load(ks_ptr + (b * S + cols) * H + h, mask=mask_n, other=0.0)
            else:
                ksc = tl.load(ks_ptr + (b * S + cols) * H + h)
            s = _dequant_dot(tl.dot(q, kt, out_dtype=tl.int32), ksc)
        elif QUANT_QK:
            if SMOOTH_K:
                k8, ksc = _quant_tile_fast(kt.to(tl.float32) - kmean[:, None], 0)  # per token = column of K^T
            else:
                k8, ksc = _quant_tile_fast(kt.to(tl.float32), 0)
            s = _dequant_dot(tl.dot(q, k8, out_dtype=tl.int32), ksc)
        else:
            s = tl.dot(q, kt)
        if MASKED:
            s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qsc)
        p = tl.math.exp2(s * qsc[:, None] - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if MASKED:
            v = tl.load(v_ptrs, mask=mask_n[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v_base.dtype.element_ty), v, acc)
        return m_new, l_i, acc

    @triton.jit
    def _attn_rows(row0, b, h, bh, q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, o_ptr, lse_ptr, os_ptr, sv_ptr,
                   sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh, H, S, qk_scale,
                   D: tl.constexpr, INT8: tl.constexpr, QUANT_QK: tl.constexpr, SMOOTH_K: tl.constexpr,
                   QOUT: tl.constexpr, BM: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr):
        """Queries row0 .. row0 + BM of one (batch, head) against all S keys: the whole forward for one program."""
        offs_m = row0 + tl.arange(0, BM)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        mask_m = offs_m < S
        q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqs + offs_d[None, :],
                    mask=mask_m[:, None], other=0)
        k_base = k_ptr + b * skb + h * skh
        v_base = v_ptr + b * svb + h * svh
        # the row factor of the scores: sm_scale * log2(e), times Q's per-token scale on the int8 paths (padded
        # rows read 1, so that no 0 * -inf appears in them)
        qsc = tl.full((BM,), 1.0, tl.float32) * qk_scale
        if INT8:
            qsc = tl.load(qs_ptr + (b * S + offs_m) * H + h, mask=mask_m, other=1.0) * qk_scale
        if QUANT_QK:
            q8, qsc = _quant_tile_fast(q.to(tl.float32), 1)
            q = q8
            qsc = qsc * qk_scale
        # kept a normal float: an all-zero Q row's scale (FLT_MIN) times sm_scale is subnormal, which the GPU
        # flushes to 0, and 0 * -inf (a masked key) would be NaN where the reference gives a uniform softmax
        qsc = tl.maximum(qsc, 1.1754943508222875e-38)
        kmean = tl.zeros((D,), tl.float32)
        if QUANT_QK and SMOOTH_K:
            # K's mean over the head's tokens (one tile when S <= BLOCK_N; the tile is read again below,
            # from L1/L2), as a (D, 1) column to subtract from the transposed K tiles
            ksum = tl.zeros((D,), tl.float32)
            for n0 in range(0, S, BLOCK_N):
                cols = n0 + offs_n
                kt = tl.load(k_base + cols[None, :].to(tl.int64) * sks + offs_d[:, None], mask=(cols < S)[None, :],
                             other=0.0)
                ksum += tl.sum(kt.to(tl.float32), axis=1)
            kmean = ksum / S
        m_i = tl.full((BM,), float("-inf"), tl.float32)
        l_i = tl.zeros((BM,), tl.float32)
        acc = tl.zeros((BM, D), tl.float32)
        if TAIL_N > 0:
            # full key tiles unmasked, then the remainder in TAIL_N-wide masked tiles
            s_full = S // BLOCK_N * BLOCK_N
            for n0 in range(0, s_full, BLOCK_N):
                m_i, l_i, acc = _attn_tile(q, qsc, k_base, v_base, ks_ptr, kmean, n0, S, b, h, H, sks, svs,
                                           m_i, l_i, acc, D, BLOCK_N, INT8, QUANT_QK, SMOOTH_K, False)
            for n0 in range(s_full, S, TAIL_N):
                m_i, l_i, acc = _attn_tile(q, qsc, k_base, v_base, ks_ptr, kmean, n0, S, b, h, H, sks, svs,
                                           m_i, l_i, acc, D, TAIL_N, INT8, QUANT_QK, SMOOTH_K, True)
        else:
            for n0 in range(0, S, BLOCK_N):
                m_i, l_i, acc = _attn_tile(q, qsc, k_base, v_base, ks_ptr, kmean, n0, S, b, h, H, sks, svs,
                                           m_i, l_i, acc, D, BLOCK_N, INT8, QUANT_QK, SMOOTH_K, True)
        acc = acc / l_i[:, None]
        if QOUT == 2:
            # the proj GEMM's fp8 input at its static, calibrated scale (os_ptr[0]): quantize_fp8_static(o, scale)
            v8 = _fp8_static_codes(acc, os_ptr)
            if h == 0:  # and the scale vector (B * S,) proj reads: os_ptr[0] per token
                _store_static_scale(sv_ptr, os_ptr, b * S + offs_m, mask_m)
            tl.store(o_ptr + b * sob + h * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :],
                     v8.to(o_ptr.dtype.element_ty), mask=mask_m[:, None])
        elif QOUT == 1:
            # the proj GEMM's input: int8 per (token, head) -- a group of D of proj's K channels -- with the
            # scale beside it in (B, S, H), as `quantize_int8_per_group(o, D)` does with the float32 output
            oq, osc = _quant_tile(acc, 1)
            tl.store(o_ptr + b * sob + h * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :], oq,
                     mask=mask_m[:, None])
            tl.store(os_ptr + (b * S + offs_m) * H + h, osc, mask=mask_m)
        else:
            tl.store(o_ptr + b * sob + h * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :],
                     acc.to(o_ptr.dtype.element_ty), mask=mask_m[:, None])
        # log-sum-exp (natural log) per row, kept for a backward pass
        tl.store(lse_ptr + bh.to(tl.int64) * S + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=mask_m)

    # BATCH_TUNE (the batch rounded to a power of two, at most 64; unused by the kernel) is in every
    # attention key: the grid is batch x heads x query blocks, so the best tile at batch 1 is not the best at
    # batch 64. Without it the first call's batch chose the tile for all (the H200 autotuning record showed
    # the S = 197 decision taken at batch 1-2 and then reused by the batch-64 benchmark)
    @triton.autotune(configs=tune_shard(_configs()), key=["S", "H", "D", "INT8", "QUANT_QK", "SMOOTH_K", "QOUT", "BATCH_TUNE"],
                     prune_configs_by={"early_config_prune": _prune}, do_bench=tune_bench)
    @triton.jit
    def _attn_fwd(q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, o_ptr, lse_ptr, os_ptr, sv_ptr,
                  sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
                  H, S, qk_scale, BATCH_TUNE,
                  D: tl.constexpr, INT8: tl.constexpr, QUANT_QK: tl.constexpr, SMOOTH_K: tl.constexpr,
                  QOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_M: tl.constexpr,
                  TAIL_N: tl.constexpr, PDL: tl.constexpr = False):
        """INT8: q, k are int8 with per-token scales (qs, ks). QUANT_QK: q, k are fp16/bf16 and quantized
        here, on chip, as `quantize_qk_ref` does (Q per token; K per token, minus its mean over all tokens
        when SMOOTH_K: an extra pass over the head's K in every program), so that no int8 copy of Q/K goes
        through memory; QK^T then runs on the int8 tensor cores. TAIL_M > 0: programs past the S // BLOCK_M
        full query blocks take TAIL_M rows each (`_grid_m`); TAIL_N > 0: the keys past the last full BLOCK_N
        tile run as TAIL_N-wide tiles."""
        _pdl_enter(PDL)
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        row0 = pid_m * BLOCK_M
        if TAIL_M > 0:
            n_full = S // BLOCK_M
            if pid_m >= n_full:
                _attn_rows(n_full * BLOCK_M + (pid_m - n_full) * TAIL_M, b, h, bh, q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, o_ptr, lse_ptr, os_ptr, sv_ptr,
                           sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh, H, S, qk_scale,
                           D, INT8, QUANT_QK, SMOOTH_K, QOUT, TAIL_M, BLOCK_N, TAIL_N)
            else:
                _attn_rows(row0, b, h, bh, q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, o_ptr, lse_ptr, os_ptr, sv_ptr,
                           sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh, H, S, qk_scale,
                           D, INT8, QUANT_QK, SMOOTH_K, QOUT, BLOCK_M, BLOCK_N, TAIL_N)
        else:
            _attn_rows(row0, b, h, bh, q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, o_ptr, lse_ptr, os_ptr, sv_ptr,
                       sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh, H, S, qk_scale,
                       D, INT8, QUANT_QK, SMOOTH_K, QOUT, BLOCK_M, BLOCK_N, TAIL_N)


if triton is not None:

    @triton.jit
    def _quant_rows(x, q8_ptr, s_ptr, rows, mask, stride_q8, offs_d, H):
        """Per-row int8 of a (BLOCK_S, D) float32 tile, stored with its scales."""
        q, scale = _quant_tile(x, 1)
        tl.store(q8_ptr + rows[:, None].to(tl.int64) * stride_q8 + offs_d[None, :], q, mask=mask[:, None])
        tl.store(s_ptr + rows.to(tl.int64) * H, scale, mask=mask)

    @triton.jit
    def _qk_quant_kernel(q_ptr, k_ptr, q8_ptr, qs_ptr, k8_ptr, ks_ptr,
                         sqb, sqs, sqh, skb, sks, skh, H, S,
                         D: tl.constexpr, BLOCK_S: tl.constexpr):
        """One program per (batch, head): K's mean over tokens (pass 1), then int8 rows of Q and of
        K - mean (pass 2). Reads Q once and K twice (the second time mostly from L2), writes int8 + scales;
        replaces the ~15 PyTorch kernels of `quantize_qk_ref`."""
        bh = tl.program_id(0)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, D)
        k_base = k_ptr + b * skb + h * skh
        q_base = q_ptr + b * sqb + h * sqh
        ksum = tl.zeros((D,), tl.float32)
        for s0 in range(0, S, BLOCK_S):
            rows = s0 + offs_s
            kt = tl.load(k_base + rows[:, None].to(tl.int64) * sks + offs_d[None, :], mask=(rows < S)[:, None], other=0.0)
            ksum += tl.sum(kt.to(tl.float32), axis=0)
        kmean = ksum / S
        out = b * S * H * D + h * D  # (B, S, H, D) contiguous outputs; scales (B, S, H)
        sc = b * S * H + h
        for s0 in range(0, S, BLOCK_S):
            rows = s0 + offs_s
            mask = rows < S
            qt = tl.load(q_base + rows[:, None].to(tl.int64) * sqs + offs_d[None, :], mask=mask[:, None], other=0.0)
            _quant_rows(qt.to(tl.float32), q8_ptr + out, qs_ptr + sc, rows, mask, H * D, offs_d, H)
            kt = tl.load(k_base + rows[:, None].to(tl.int64) * sks + offs_d[None, :], mask=mask[:, None], other=0.0)
            _quant_rows(kt.to(tl.float32) - kmean[None, :], k8_ptr + out, ks_ptr + sc, rows, mask, H * D, offs_d, H)


def _fake_qk(q, k):
    b, s, h, d = q.shape
    f = q.new_empty((b, s, h), dtype=torch.float32)
    return q.new_empty(q.shape, dtype=torch.int8), f, k.new_empty(k.shape, dtype=torch.int8), f.clone()


@fast_custom_op("qvit::quantize_qk", _fake_qk)
def quantize_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The int8 attention path's input, in one Triton kernel: q8, q_scale, k8, k_scale as `quantize_qk_ref`
    (int8 (B, S, H, D) contiguous, float32 (B, S, H) scales). K's mean is summed in a different order than
    torch.mean, so a K element may land one int8 step away from the reference where it sits on a rounding
    edge; Q matches exactly."""
    _check_qkv(q, k, k, int8=False)
    b, s, h, d = q.shape
    q8, k8 = (torch.empty((b, s, h, d), dtype=torch.int8, device=q.device) for _ in range(2))
    qs, ks = (torch.empty((b, s, h), dtype=torch.float32, device=q.device) for _ in range(2))
    if b * s * h:
        block = 16 if interpreting() else max(16, min(128, 8192 // d))
        _qk_quant_kernel[(b * h,)](q, k, q8, qs, k8, ks, q.stride(0), q.stride(1), q.stride(2),
                                   k.stride(0), k.stride(1), k.stride(2), h, s, D=d, BLOCK_S=block)
    return q8, qs, k8, ks


if triton is not None:

    def _bwd_configs():
        if interpreting():
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                for bm, bn, w, st in [(64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2)]]

    @triton.jit
    def _rows(ptr, base, offs, mask, stride_s, offs_d):
        """A (len(offs), D) tile of rows `offs` of one (batch, head) slice; masked rows read as 0."""
        return tl.load(ptr + base + offs[:, None].to(tl.int64) * stride_s + offs_d[None, :], mask=mask[:, None], other=0.0)

    @triton.autotune(configs=tune_shard(_bwd_configs()), key=["S", "H", "D", "BATCH_TUNE"],
                     do_bench=tune_bench)
    @triton.jit
    def _attn_bwd_dkdv(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                       sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdb, sds, sdh, sgb, sgs, sgh,
                       H, S, sm_scale, BATCH_TUNE,
                       D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """One program per (key block, batch x head): dV = P^T dO and dK = dS^T Q * scale, streaming the
        query blocks; P is rebuilt from the forward's log-sum-exp, dS = P * (dO V^T - delta)."""
        pid_n = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        mask_n = offs_n < S
        k = _rows(k_ptr, b * skb + h * skh, offs_n, mask_n, sks, offs_d)
        v = _rows(v_ptr, b * svb + h * svh, offs_n, mask_n, svs, offs_d)
        dk = tl.zeros((BLOCK_N, D), tl.float32)
        dv = tl.zeros((BLOCK_N, D), tl.float32)
        for m0 in range(0, S, BLOCK_M):
            offs_m = m0 + offs_m0
            mask_m = offs_m < S
            q = _rows(q_ptr, b * sqb + h * sqh, offs_m, mask_m, sqs, offs_d)
            do = _rows(do_ptr, b * sdb + h * sdh, offs_m, mask_m, sds, offs_d)
            lse = tl.load(lse_ptr + bh.to(tl.int64) * S + offs_m, mask=mask_m, other=0.0)
            delta = tl.load(delta_ptr + bh.to(tl.int64) * S + offs_m, mask=mask_m, other=0.0)
            st = tl.dot(k, tl.trans(q)) * sm_scale  # (BN, BM): S^T
            pt = tl.exp(st - lse[None, :])
            pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0.0)
            dv = tl.dot(pt.to(do.dtype), do, dv)
            dpt = tl.dot(v, tl.trans(do))  # (BN, BM): (dO V^T)^T
            dst = pt * (dpt - delta[None, :])
            dk = tl.dot(dst.to(q.dtype), q, dk)
        dk = dk * sm_scale
        tl.store(dk_ptr + b * sgb + h * sgh + offs_n[:, None].to(tl.int64) * sgs + offs_d[None, :],
                 dk.to(dk_ptr.dtype.element_ty), mask=mask_n[:, None])
        tl.store(dv_ptr + b * sgb + h * sgh + offs_n[:, None].to(tl.int64) * sgs + offs_d[None, :],
                 dv.to(dv_ptr.dtype.element_ty), mask=mask_n[:, None])

    @triton.autotune(configs=tune_shard(_bwd_configs()), key=["S", "H", "D", "BATCH_TUNE"],
                     do_bench=tune_bench)
    @triton.jit
    def _attn_bwd_dq(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                     sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdb, sds, sdh, sgb, sgs, sgh,
                     H, S, sm_scale, BATCH_TUNE,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """One program per (query block, batch x head): dQ = dS K * scale, streaming the key blocks."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        mask_m = offs_m < S
        q = _rows(q_ptr, b * sqb + h * sqh, offs_m, mask_m, sqs, offs_d)
        do = _rows(do_ptr, b * sdb + h * sdh, offs_m, mask_m, sds, offs_d)
        lse = tl.load(lse_ptr + bh.to(tl.int64) * S + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(delta_ptr + bh.to(tl.int64) * S + offs_m, mask=mask_m, other=0.0)
        dq = tl.zeros((BLOCK_M, D), tl.float32)
        for n0 in range(0, S, BLOCK_N):
            offs_n = n0 + offs_n0
            mask_n = offs_n < S
            k = _rows(k_ptr, b * skb + h * skh, offs_n, mask_n, sks, offs_d)
            v = _rows(v_ptr, b * svb + h * svh, offs_n, mask_n, svs, offs_d)
            s = tl.dot(q, tl.trans(k)) * sm_scale
            p = tl.exp(s - lse[:, None])
            p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq)
        dq = dq * sm_scale
        tl.store(dq_ptr + b * sgb + h * sgh + offs_m[:, None].to(tl.int64) * sgs + offs_d[None, :],
                 dq.to(dq_ptr.dtype.element_ty), mask=mask_m[:, None])


def batch_tune(b: int) -> int:
    """The batch as the attention autotuner sees it: the next power of two, at most 64 (beyond that the
    grid already fills the GPU many times over, and the cache stays small)."""
    return min(1 << max(b - 1, 0).bit_length(), 64)


def _check_qkv(q, k, v, int8):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"attention: {name} must be 4-D (batch, seq, heads, head_dim), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.stride(-1) != 1:
            raise ValueError(f"attention: {name} must be contiguous along head_dim")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    d = q.shape[-1]
    if d not in (16, 32, 64, 128):
        raise ValueError(f"attention: head_dim={d} is not supported (16, 32, 64 or 128)")
    if v.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"attention: v must be float16 or bfloat16, got {v.dtype}")
    if int8:
        if q.dtype != torch.int8 or k.dtype != torch.int8:
            raise TypeError(f"attention (int8): q and k must be int8, got {q.dtype}, {k.dtype}")
    elif not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if len({q.device, k.device, v.device}) != 1:
        raise ValueError("attention: q, k, v are on different devices")
    if q.device.type == "cpu" and not interpreting():
        raise ValueError("attention: CPU tensors need TRITON_INTERPRET=1 (or use the torch/sdpa backends)")
    if triton is None:
        raise RuntimeError("attention: triton is not installed")


def _launch(q, k, v, qs, ks, sm_scale, int8, quant_qk=False, smooth_k=True, quant_out=False, out_scale=None,
            sv=None):
    """(o, lse), or with quant_out (o int8, o_scale float32 (B, S, H), lse), or with out_scale (a one-element
    float32 tensor) (o float8_e4m3fn at that static scale, lse; sv (B * S,) float32 receives out_scale per token)."""
    if out_scale is not None and sv is None:
        raise ValueError("attention: the fp8 static output needs its scale vector")
    b, s, h, d = q.shape
    odt = torch.int8 if quant_out else torch.float8_e4m3fn if out_scale is not None else v.dtype
    o = torch.empty((b, s, h, d), dtype=odt, device=v.device)
    lse = torch.empty((b * h, s), dtype=torch.float32, device=v.device)
    osc = torch.empty((b, s, h), dtype=torch.float32, device=v.device) if quant_out else out_scale
    if b * s * h == 0:
        return (o, osc, lse) if quant_out else (o, lse)
    qk_scale = sm_scale * 1.4426950408889634
    grid = lambda meta: (_grid_m(s, meta), b * h)  # noqa: E731
    dummy = lse
    _attn_fwd[grid](q, k, v, qs if qs is not None else dummy, ks if ks is not None else dummy, o, lse,
                    osc if osc is not None else dummy, sv if sv is not None else dummy,
                    q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
                    h, s, qk_scale, batch_tune(b), D=d, INT8=int8, QUANT_QK=quant_qk, SMOOTH_K=quant_qk and smooth_k,
                    QOUT=1 if quant_out else 2 if out_scale is not None else 0, **pdl_kwargs(q.device))
    return (o, osc, lse) if quant_out else (o, lse)


def _fake_fwd(q, k, v, sm_scale):
    b, s, h, d = q.shape
    return q.new_empty((b, s, h, d)), q.new_empty((b * h, s), dtype=torch.float32)


@fast_custom_op("qvit::attention_fwd", _fake_fwd)
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16/bf16 forward: returns (o (B, S, H, D), lse float32 (B*H, S))."""
    _check_qkv(q, k, v, int8=False)
    return _launch(q, k, v, None, None, sm_scale, False)


def _fake_int8(q8, q_scale, k8, k_scale, v, sm_scale):
    return v.new_empty(q8.shape)


@fast_custom_op("qvit::attention_int8", _fake_int8)
def attention_int8(q8: torch.Tensor, q_scale: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor,
                   v: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """int8 Q/K path (inference only): q8, k8 int8 (B, S, H, D), scales float32 (B, S, H), v fp16/bf16."""
    _check_qkv(q8, k8, v, int8=True)
    want = q8.shape[:3]
    for name, t in (("q_scale", q_scale), ("k_scale", k_scale)):
        if t.dtype != torch.float32 or t.shape != want or not t.is_contiguous():
            raise ValueError(f"attention (int8): {name} must be contiguous float32 {tuple(want)}, got "
                             f"{t.dtype} {tuple(t.shape)}")
    return _launch(q8, k8, v, q_scale, k_scale, sm_scale, True)[0]


def _fake_qk_int8(q, k, v, sm_scale, smooth_k=True):
    return v.new_empty(q.shape)


@fast_custom_op("qvit::attention_qk_int8", _fake_qk_int8)
def attention_qk_int8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float,
                      smooth_k: bool = True) -> torch.Tensor:
    """The int8 Q/K path from fp16/bf16 q, k, v (B, S, H, D) in one kernel (inference only): Q and K (minus
    its mean over tokens when smooth_k) are quantized on chip, as `quantize_qk_ref(q, k, smooth_k)` (K's mean
    summed in another order, and the scale applied as a multiplication by its reciprocal: an element on a
    rounding edge may land one int8 step away), QK^T on the int8 tensor cores, P.V in v's dtype.
    Same result as `attention_int8(*quantize_qk(q, k), v, sm_scale)` without the int8 round trip through
    memory and without the quantization kernel (which ran one program per (batch, head): 16 at batch 1)."""
    _check_qkv(q, k, v, int8=False)
    return _launch(q, k, v, None, None, sm_scale, False, quant_qk=True, smooth_k=smooth_k)[0]


def _fake_quant_out(q, k, v, sm_scale, int8_qk=False, smooth_k=False):
    b, s, h, _ = q.shape
    return q.new_empty(q.shape, dtype=torch.int8), q.new_empty((b, s, h), dtype=torch.float32)


@fast_custom_op("qvit::attention_quant_out", _fake_quant_out)
def attention_quant_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, int8_qk: bool = False,
                        smooth_k: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention (fp16/bf16 q, k, v (B, S, H, D); int8_qk: Q/K quantized on chip as `attention_qk_int8`) with
    its output quantized in the epilogue for the proj GEMM: (o int8 (B, S, H, D), scale float32 (B, S, H)),
    one scale per token and head -- `quantize_int8_per_group(o, D)` of the float32 output -- so that o
    reshaped to (B * S, H * D) is proj's int8 input with group-wise scales (B * S, H). Inference only."""
    _check_qkv(q, k, v, int8=False)
    o, osc, _ = _launch(q, k, v, None, None, sm_scale, False, quant_qk=int8_qk, smooth_k=smooth_k, quant_out=True)
    return o, osc


def _fake_fp8_static(q, k, v, sm_scale, out_scale, int8_qk=False, smooth_k=False):
    b, s, _, _ = q.shape
    return q.new_empty(q.shape, dtype=torch.float8_e4m3fn), q.new_empty((b * s,), dtype=torch.float32)


@fast_custom_op("qvit::attention_fp8_static_out", _fake_fp8_static)
def attention_fp8_static_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float,
                             out_scale: torch.Tensor, int8_qk: bool = False,
                             smooth_k: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with its output written in float8_e4m3fn at one static, calibrated scale (the proj layer's,
    QuantConfig.fp8_static_proj): (o fp8 (B, S, H, D), scale float32 (B * S,) filled with out_scale), what
    `quantize_fp8_static` makes of the float32 output; o reshaped to (B * S, H * D) is proj's fp8 input.
    Inference only."""
    _check_qkv(q, k, v, int8=False)
    from qvit.kernels.quant import check_static_scale
    check_static_scale("attention_fp8_static_out", out_scale, q.device)
    b, s = q.shape[:2]
    sv = torch.empty((b * s,), dtype=torch.float32, device=q.device)  # written by the kernel
    o, _ = _launch(q, k, v, None, None, sm_scale, False, quant_qk=int8_qk, smooth_k=smooth_k,
                   out_scale=out_scale.reshape(1), sv=sv)
    return o, sv


def attention_bwd_ref(q, k, v, o, lse, do, sm_scale):
    """The backward's math in float32 (P rebuilt from the log-sum-exp), beside the kernels it checks."""
    b, s, h, d = q.shape
    qf, kf, vf, of, dof = (t.float() for t in (q, k, v, o, do))
    scores = torch.einsum("bihd,bjhd->bhij", qf, kf) * sm_scale
    p = torch.exp(scores - lse.view(b, h, s, 1))
    dv = torch.einsum("bhij,bihd->bjhd", p, dof)
    dp = torch.einsum("bihd,bjhd->bhij", dof, vf)
    delta = (dof * of).sum(-1).permute(0, 2, 1).unsqueeze(-1)  # (B, H, S, 1)
    ds = p * (dp - delta) * sm_scale
    dq = torch.einsum("bhij,bjhd->bihd", ds, kf)
    dk = torch.einsum("bhij,bihd->bjhd", ds, qf)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _fake_bwd(q, k, v, o, lse, do, sm_scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@fast_custom_op("qvit::attention_bwd", _fake_bwd)
def attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                  do: torch.Tensor, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FA2 backward on two fused kernels (dK/dV over key blocks, dQ over query blocks); delta = rowsum(dO * O)
    is one elementwise pass in PyTorch. Returns (dq, dk, dv), contiguous (B, S, H, D)."""
    _check_qkv(q, k, v, int8=False)
    b, s, h, d = q.shape
    do = do.contiguous() if do.stride(-1) != 1 else do
    dq, dk, dv = (torch.empty((b, s, h, d), dtype=t.dtype, device=t.device) for t in (q, k, v))
    if b * s * h == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = (do.float() * o.float()).sum(-1).permute(0, 2, 1).reshape(b * h, s).contiguous()
    args = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2), h, s, sm_scale, batch_tune(b))
    _attn_bwd_dkdv[lambda meta: (triton.cdiv(s, meta["BLOCK_N"]), b * h)](
        q, k, v, do, lse, delta, dk, dv, *args, D=d)
    _attn_bwd_dq[lambda meta: (triton.cdiv(s, meta["BLOCK_M"]), b * h)](
        q, k, v, do, lse, delta, dq, *args, D=d)
    return dq, dk, dv


class _AttentionFn(torch.autograd.Function):
    """Forward and backward on the fused kernels (`attention_fwd`, `attention_bwd`)."""

    @staticmethod
    def forward(ctx, q, k, v, sm_scale):
        o, lse = attention_fwd(q, k, v, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_bwd(q, k, v, o, lse, do, ctx.sm_scale)
        return dq, dk, dv, None


def attention(q, k, v, sm_scale=None):
    """Differentiable fused attention, (B, S, H, D) x3 -> (B, S, H, D)."""
    sm_scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _AttentionFn.apply(q, k, v, sm_scale)
