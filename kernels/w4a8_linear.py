"""W4A8 linear: symmetric int4 weights expanded to int8 in registers, int8 tensor cores.

    y[m, n] = x_scale[m] * sum_g scales[n, g] * (sum_{k in g} xq[m, k] * (u[n, k] - 8))  (+ bias[n])
              (-> gelu) (+ residual[m, n])      (the W8A8 kernel's epilogue)

The inner sums are exact int32 MMAs over one group; each group's partial sum is scaled by its
fp16 scale and accumulated in float32 (QServe-style "expand to int8, keep the tensor cores").
With group_size = K the weight is per-channel and the whole dot stays in int32.

Shapes: xq int8 (M, K), x_scale float32 (M,) (from qvit.kernels.layernorm_quant or
quantize_int8_per_token); packed uint8 (N, K // 2) (int4 format of qvit.kernels.quant: k even in
the low nibble); scales fp16 (N, K // g); bias (N,); y (M, N) float16/bfloat16/float32.

Reference: `w4a8_linear_ref` in qvit.kernels.quant (and int8_matmul_ref on the expanded weight).
"""
from __future__ import annotations

import torch

from qvit.backend import interpreting, pdl_kwargs, tune_bench, tune_shard
from qvit.kernels import quant as Q
from qvit.kernels._op import fast_custom_op

try:
    import triton
    import triton.language as tl
    from qvit.kernels.w4a16_linear import _unpack_tile, check_packed_int4, group_prune
    from qvit.kernels.w8a8_linear import _epilogue
except ImportError:
    triton = None


if triton is not None:

    def _configs():
        if interpreting():
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 4, "SWAP_AB": False},
                                  num_warps=4, num_stages=1)]
        cfgs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SWAP_AB": False},
                              num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in [(128, 256, 128, 8, 3), (128, 128, 128, 8, 4), (128, 128, 128, 4, 4),
                                         (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 64, 128, 4, 4),
                                         (128, 256, 64, 8, 4), (32, 64, 128, 4, 4), (128, 128, 64, 4, 4),
                                         (256, 128, 64, 8, 3), (64, 256, 128, 8, 3)]]
        # swapped: the expanded int8 weight tile is the MMA's register operand (A), the activations are
        # streamed as B; BLOCK_N is then the MMA's M side (multiple of 64 for wgmma)
        cfgs += [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SWAP_AB": True},
                               num_warps=w, num_stages=s)
                 for bm, bn, bk, w, s in [(128, 128, 128, 4, 4), (256, 128, 128, 8, 3), (128, 256, 128, 8, 3),
                                          (64, 128, 128, 4, 4), (32, 128, 128, 4, 4), (128, 64, 128, 4, 4),
                                          (256, 64, 128, 4, 3)]]
        # the same large tiles with twice the warps: the int32 group accumulator and the float32 total are
        # both live through the K loop (2 x 128 registers per thread at 128 x 128 / 4 warps), so the 4- and
        # 8-warp large tiles above spill 160-656 bytes per thread (python -m qvit.profiling.sass --kernel w4a8,
        # Triton 3.6, sm_90); these hold them in registers (16 warps do not: Triton caps them at 128 registers)
        cfgs += [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SWAP_AB": sw},
                               num_warps=w, num_stages=s)
                 for bm, bn, bk, w, s, sw in [(128, 128, 128, 8, 4, True), (256, 64, 128, 8, 3, True)]]
        # GELU's epilogue in two halves on the large tiles (EPI_SPLIT, see w8a8_linear._epilogue)
        cfgs += [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SWAP_AB": sw,
                                "EPI_SPLIT": True}, num_warps=w, num_stages=s)
                 for bm, bn, bk, w, s, sw in [(128, 128, 128, 8, 4, True), (256, 64, 128, 8, 3, True)]]
        return cfgs

    _prune = group_prune(triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "SWAP_AB": False},
                                       num_warps=4))

    @triton.autotune(configs=tune_shard(_configs()), key=["M", "N", "K", "GROUP", "GELU", "HAS_RES", "PROG"],
                     prune_configs_by={"early_config_prune": _prune}, do_bench=tune_bench)
    @triton.jit
    def _w4a8_kernel(x_ptr, xs_ptr, p_ptr, s_ptr, b_ptr, r_ptr, y_ptr, M, N, K,
                     stride_xm, stride_pn, stride_sn, stride_rm, stride_ym,
                     GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                     SWAP_AB: tl.constexpr, EPI_SPLIT: tl.constexpr = False, PROG: tl.constexpr = False,
                     s1_ptr=None):
        """SWAP_AB=False: acc (BM, BN) = x (BM, BK) @ w^T. SWAP_AB=True: acc (BN, BM) = w (BN, BK) @ x^T, so
        the weight expanded in registers feeds the MMA directly instead of being staged through shared
        memory; the epilogue stores the transposed tile. Same integer sums, same float32 epilogue.
        PROG: the progressive format (`w4a8p_linear`): s_ptr holds integer group scales s2 (uint8) that
        expand each nibble to the int8 q4 * s2 before the MMA, so one int32 accumulator runs over all of K
        (no per-group float promotion) and the per-channel float scale s1 is applied in the epilogue."""
        tl.static_assert(GROUP % BLOCK_K == 0)
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        width = GROUP_M * num_pid_n
        first_m = (pid // width) * GROUP_M
        gm = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % gm
        pid_n = (pid % width) // gm
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        offs_kh = tl.arange(0, BLOCK_K // 2)
        mask_m = offs_m < M
        mask_n = offs_n < N
        p_ptrs = p_ptr + offs_n[:, None].to(tl.int64) * stride_pn + offs_kh[None, :]
        if SWAP_AB:
            x_ptrs = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm + offs_k[:, None]  # x^T tile (BK, BM)
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            iacc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
        else:
            x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            iacc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            p = tl.load(p_ptrs, mask=mask_n[:, None], other=0)
            if PROG:  # |q4 * s2| <= 119 by construction (quantize_int4_progressive): exact in int8
                s2 = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + k0 // GROUP, mask=mask_n, other=0)
                w = ((_unpack_tile(p, False) - 8) * s2.to(tl.int32)[:, None]).to(tl.int8)
            else:
                w = (_unpack_tile(p, False) - 8).to(tl.int8)
            if SWAP_AB:
                a = tl.load(x_ptrs, mask=mask_m[None, :], other=0)
                iacc = tl.dot(w, a, iacc, out_dtype=tl.int32)
            else:
                a = tl.load(x_ptrs, mask=mask_m[:, None], other=0)
                iacc = tl.dot(a, tl.trans(w), iacc, out_dtype=tl.int32)
            if not PROG and (k0 + BLOCK_K) % GROUP == 0:
                s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + k0 // GROUP, mask=mask_n, other=0.0)
                if SWAP_AB:
                    acc += iacc.to(tl.float32) * s.to(tl.float32)[:, None]
                    iacc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
                else:
                    acc += iacc.to(tl.float32) * s.to(tl.float32)[None, :]
                    iacc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            x_ptrs += BLOCK_K
            p_ptrs += BLOCK_K // 2
        xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
        if PROG:
            s1 = tl.load(s1_ptr + offs_n, mask=mask_n, other=0.0)
            if SWAP_AB:
                y = iacc.to(tl.float32) * s1[:, None] * xs[None, :]
            else:
                y = iacc.to(tl.float32) * xs[:, None] * s1[None, :]
        elif SWAP_AB:  # tile (BN, BM): element [j, i] is y[m_i, n_j]
            y = acc * xs[None, :]
        else:
            y = acc * xs[:, None]
        _epilogue(y, offs_m, offs_n, mask_m, mask_n, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                  HAS_BIAS, GELU, HAS_RES, SWAP_AB, EPI_SPLIT)


def _run(op, xq, x_scale, packed, scales, bias, group_size, out_dtype, residual, gelu, s1=None):
    """The checks and the launch shared by `w4a8_linear` and `w4a8p_linear` (s1 given: the progressive
    format, `scales` then being its uint8 group scales s2)."""
    if triton is None:
        raise RuntimeError(f"{op}: triton is not installed")
    if xq.dtype != torch.int8 or xq.ndim != 2:
        raise TypeError(f"{op}: xq must be 2-D int8, got {xq.dtype} {tuple(xq.shape)}")
    if x_scale.dtype != torch.float32 or x_scale.shape != xq.shape[:1]:
        raise TypeError(f"{op}: x_scale must be float32 ({xq.shape[0]},)")
    if s1 is not None and scales.dtype != torch.uint8:
        raise TypeError(f"{op}: group scales s2 must be uint8 (integer scales), got {scales.dtype}")
    n, k = check_packed_int4(op, xq, packed, scales, bias, group_size)
    if s1 is not None and (s1.dtype != torch.float32 or s1.shape != (n,) or s1.device != xq.device):
        raise ValueError(f"{op}: s1 must be float32 ({n},) on {xq.device}, got {s1.dtype} {tuple(s1.shape)} "
                         f"on {s1.device}")
    m = xq.shape[0]
    if xq.stride(1) != 1 or not packed.is_contiguous() or not scales.is_contiguous():
        raise ValueError(f"{op}: xq must be K-contiguous; packed and scales contiguous")
    if residual is not None and (residual.shape != (m, n) or residual.stride(1) != 1 or residual.device != xq.device):
        raise ValueError(f"{op}: residual must be ({m}, {n}) with unit column stride on {xq.device}, got "
                         f"{tuple(residual.shape)} stride {residual.stride()} on {residual.device}")
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _w4a8_kernel[grid](xq, x_scale, packed, scales, bias if bias is not None else x_scale,
                       residual if residual is not None else y, y, m, n, k,
                       xq.stride(0), packed.stride(0), scales.stride(0),
                       residual.stride(0) if residual is not None else 0, y.stride(0),
                       GROUP=group_size, HAS_BIAS=bias is not None, GELU=gelu, HAS_RES=residual is not None,
                       PROG=s1 is not None, s1_ptr=s1)
    return y


def _fake(xq, x_scale, packed, scales, bias, group_size, out_dtype=torch.float16, residual=None, gelu=False):
    return xq.new_empty((xq.shape[0], packed.shape[0]), dtype=out_dtype)


@fast_custom_op("qvit::w4a8_linear", _fake)
def w4a8_linear(xq: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None, group_size: int, out_dtype: torch.dtype = torch.float16,
                residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """y = x_scale * sum_g scales_g * (xq . (u - 8))_g (+ bias) (-> gelu) (+ residual); see the module
    docstring. The epilogue runs in float32 and rounds once, as the W8A8 kernel's."""
    return _run("w4a8_linear", xq, x_scale, packed, scales, bias, group_size, out_dtype, residual, gelu)


def _fake_prog(xq, x_scale, packed, s2, s1, bias, group_size, out_dtype=torch.float16, residual=None, gelu=False):
    return xq.new_empty((xq.shape[0], packed.shape[0]), dtype=out_dtype)


@fast_custom_op("qvit::w4a8p_linear", _fake_prog)
def w4a8p_linear(xq: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, s2: torch.Tensor,
                 s1: torch.Tensor, bias: torch.Tensor | None, group_size: int, out_dtype: torch.dtype = torch.float16,
                 residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """The progressive 4-bit GEMM in one kernel: y = x_scale * s1 * (xq . (q4 * s2)) (+ bias) (-> gelu)
    (+ residual), the nibbles expanded to the int8 q4 * s2 in registers inside the main loop (what
    `expand_int4_progressive` + `w8a8_linear` do in two kernels and an int8 weight's round trip through
    memory). Format: `quantize_int4_progressive` (packed uint8 (N, K // 2), s2 uint8 (N, K // g), s1 float32
    (N,)). Bit-exact integer sums; the epilogue is the W8A8 kernel's."""
    return _run("w4a8p_linear", xq, x_scale, packed, s2, bias, group_size, out_dtype, residual, gelu, s1=s1)


if triton is not None:

    @triton.jit
    def _expand_prog_kernel(p_ptr, s2_ptr, w_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr):
        """(BN, BK) tile of the int8 weight q4 * s2 from its nibbles and integer group scales."""
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        offs_kh = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_n = offs_n < N
        p = tl.load(p_ptr + offs_n[:, None].to(tl.int64) * (K // 2) + offs_kh[None, :], mask=mask_n[:, None], other=0)
        s2 = tl.load(s2_ptr + offs_n.to(tl.int64) * (K // GROUP) + k0 // GROUP, mask=mask_n, other=0)
        w = (_unpack_tile(p, False) - 8) * s2.to(tl.int32)[:, None]
        tl.store(w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :], w.to(tl.int8), mask=mask_n[:, None])


def _check_expand(name, packed, g, group_size, what):
    """The expansion launchers' checks: contiguous uint8 nibbles (N, K // 2) and per-group uint8 values (N, K // g)
    on one device (CPU only under the interpreter). Returns (N, K)."""
    if triton is None:
        raise RuntimeError(f"{name}: triton is not installed")
    if packed.dtype != torch.uint8 or packed.ndim != 2 or not packed.is_contiguous():
        raise TypeError(f"{name}: packed must be contiguous 2-D uint8, got {packed.dtype} {tuple(packed.shape)}")
    n, k = packed.shape[0], packed.shape[1] * 2
    Q.check_group_size(k, group_size)
    if g.dtype != torch.uint8 or tuple(g.shape) != (n, k // group_size) or not g.is_contiguous():
        raise ValueError(f"{name}: {what} must be contiguous uint8 {(n, k // group_size)}, got {g.dtype} "
                         f"{tuple(g.shape)}")
    if g.device != packed.device:
        raise ValueError(f"{name}: packed and {what} are on different devices")
    if packed.device.type == "cpu" and not interpreting():
        raise ValueError(f"{name}: CPU tensors need TRITON_INTERPRET=1 (or use the torch backend)")
    return n, k


def _fake_expand(packed, s2, group_size):
    return packed.new_empty((packed.shape[0], packed.shape[1] * 2), dtype=torch.int8)


@fast_custom_op("qvit::expand_int4_progressive", _fake_expand)
def expand_int4_progressive(packed: torch.Tensor, s2: torch.Tensor, group_size: int) -> torch.Tensor:
    """The progressive 4-bit format's int8 weight (q4 * s2, see qvit.kernels.quant.quantize_int4_progressive)
    in one pass: reads K/2 + K/g bytes per row, writes K. `Int4ProgLinear` runs it before the W8A8 GEMM, so
    4-bit weights stay 4-bit in memory and the GEMM is the 8-bit one. Bit-exact to the PyTorch reference."""
    n, k = _check_expand("expand_int4_progressive", packed, s2, group_size, "group scales")
    if group_size % 32:
        raise ValueError(f"expand_int4_progressive: group_size={group_size} must be a multiple of 32")
    w = torch.empty((n, k), dtype=torch.int8, device=packed.device)
    if n * k:
        bn, bk = (16, 32) if interpreting() else (32, 128 if group_size % 128 == 0 else 64 if group_size % 64 == 0 else 32)
        _expand_prog_kernel[(triton.cdiv(n, bn), k // bk)](packed, s2, w, n, k, GROUP=group_size, BLOCK_N=bn,
                                                           BLOCK_K=bk)
    return w


if triton is not None:
    from qvit.kernels.layernorm_quant import _pdl_enter
    from qvit.kernels.w8a8_linear import _pow2_values

    @triton.jit
    def _expand_pow2_kernel(p_ptr, e_ptr, w_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, PDL: tl.constexpr = False):
        """(BN, BK) tile of the e4m3 weight q4 * 2^(6 - e) from its nibbles and group exponents: the power of two
        built from its exponent bits, so the product is exact and the cast a conversion. PDL: the 4-bit weight
        (a constant) is read and expanded before the wait for the previous kernel; only the store comes after."""
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        offs_kh = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        offs_g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        mask_n = offs_n < N
        p = tl.load(p_ptr + offs_n[:, None].to(tl.int64) * (K // 2) + offs_kh[None, :], mask=mask_n[:, None], other=0)
        e = tl.load(e_ptr + offs_n[:, None].to(tl.int64) * (K // GROUP) + offs_g[None, :], mask=mask_n[:, None],
                    other=0)
        w = _pow2_values(p, e, BLOCK_N, BLOCK_K, GROUP)
        _pdl_enter(PDL)
        tl.store(w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :], w.to(tl.float8e4nv), mask=mask_n[:, None])


def _fake_expand_pow2(packed, e, group_size):
    return packed.new_empty((packed.shape[0], packed.shape[1] * 2), dtype=torch.float8_e4m3fn)


@fast_custom_op("qvit::expand_int4_pow2", _fake_expand_pow2)
def expand_int4_pow2(packed: torch.Tensor, e: torch.Tensor, group_size: int) -> torch.Tensor:
    """The power-of-two 4-bit format's float8_e4m3fn weight (q4 * 2^(6 - e), see
    qvit.kernels.quant.quantize_int4_pow2) in one pass: reads K/2 + K/g bytes per row, writes K.
    `Fp8W4Linear` runs it before the fp8 GEMM, so the weights stay 4-bit in memory and the GEMM is the fp8 one.
    Bit-exact to the PyTorch reference (`Q.expand_int4_pow2`)."""
    n, k = _check_expand("expand_int4_pow2", packed, e, group_size, "group exponents")
    if group_size % 16 or group_size > 128 or 128 % group_size:
        raise ValueError(f"expand_int4_pow2: group_size={group_size} must divide 128 and be a multiple of 16")
    w = torch.empty((n, k), dtype=torch.float8_e4m3fn, device=packed.device)
    if n * k:
        bn, bk = (16, 32 if group_size <= 32 else group_size) if interpreting() else (32, 128)
        if k % bk:
            bk = group_size
        _expand_pow2_kernel[(triton.cdiv(n, bn), k // bk)](packed, e, w, n, k, GROUP=group_size, BLOCK_N=bn,
                                                           BLOCK_K=bk, **pdl_kwargs(packed.device))
    return w
