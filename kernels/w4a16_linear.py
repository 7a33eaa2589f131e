"""W4A16 linear: 4-bit weights dequantized in registers, fp16/bf16 tensor-core math.

    y = x @ dequant(W)^T (+ bias) (-> GELU) (+ residual),  accumulated in float32, rounded once to x.dtype.

Formats (see qvit.kernels.quant for the packing):
    mode "int4-sym":  W[n, k] = (u - 8) * scales[n, k // g]
    mode "int4-asym": W[n, k] = (u - zeros[n, k // g]) * scales[n, k // g]
    mode "nf4":       W[n, k] = NF4_CODE[u] * absmax[n * K / 64 + k // 64]   (bitsandbytes layout:
                      the flat block index equals a row-major (N, K // 64) group index when 64 | K)
Shapes: x (M, K) float16/bfloat16, K contiguous; packed uint8 (N, K // 2) (int4: k even in the low
nibble; NF4: k even in the HIGH nibble); scales (N, K // g) fp16 (int4) or fp32 (NF4 absmax);
zeros uint8 (N, K // g); bias (N,); y (M, N) in x.dtype.

The dequantized weight tile is rounded to x.dtype before the MMA, exactly as the reference
(dequantize in float32 -> x.dtype -> matmul) would round it, so the only extra error against the
float32 reference is the MMA's accumulation order.

Reference: `w4a16_linear_ref` / `nf4_linear_ref` in qvit.kernels.quant.
"""
from __future__ import annotations

import torch

from qvit.backend import interpreting, tune_bench, tune_shard
from qvit.kernels._op import fast_custom_op
from qvit.kernels.quant import NF4_CODE, check_group_size, check_kernel_device

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

MODES = {"int4-sym": 0, "int4-asym": 1, "nf4": 2}

if triton is not None:
    from qvit.kernels.w8a8_linear import _epilogue  # bias -> GELU -> + residual, one rounding, either layout
    from qvit.kernels.w8a8_linear import _unpack_tile  # nibbles -> int32 (w4a8_linear imports it from here)


if triton is not None:

    def _configs():
        if interpreting():
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1, "SWAP_AB": False},
                                  num_warps=4, num_stages=1)]
        cfgs = []
        for bm, bn, bk, w, s in [(16, 64, 128, 4, 4), (32, 64, 128, 4, 4), (64, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                                 (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 128, 8, 3), (64, 256, 64, 8, 3),
                                 (64, 32, 128, 4, 4), (128, 64, 128, 4, 3), (128, 128, 64, 4, 4)]:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 1, "SWAP_AB": False},
                                      num_warps=w, num_stages=s))
        # swapped operands: the dequantized weight tile is the MMA's register operand; BLOCK_N is the MMA's
        # M side. BLOCK_M = 256 covers a whole batch-1 ViT sequence (197 tokens): each weight tile is then
        # dequantized once instead of once per M-tile (ncu: the unswapped kernel ran 64 CTAs at M=197)
        # BLOCK_N 32: below wgmma's 64-row minimum (mma.sync then), but twice the CTAs for N = 1024 at M = 197
        for bm, bn, bk, w, s in [(256, 64, 64, 4, 3), (256, 64, 128, 8, 3), (128, 64, 128, 4, 4), (64, 64, 128, 4, 4),
                                 (256, 128, 64, 8, 3), (128, 128, 64, 4, 4), (32, 64, 128, 4, 4), (256, 32, 128, 4, 3)]:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 1, "SWAP_AB": True},
                                      num_warps=w, num_stages=s))
        # the large swapped tiles with GELU's epilogue in two halves (EPI_SPLIT, see w8a8_linear._epilogue)
        for bm, bn, bk, w, s in [(256, 64, 64, 4, 3), (256, 128, 64, 8, 3), (128, 128, 64, 4, 4)]:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 1, "SWAP_AB": True,
                                       "EPI_SPLIT": True}, num_warps=w, num_stages=s))
        return cfgs

    def group_prune(fallback):
        """Autotuner prune for the group-wise 4-bit kernels: BLOCK_K must divide the group (the kernels
        refuse others by static_assert), tiles far taller than M only add padding; `fallback` if none is left."""
        def prune(configs, named_args, **kwargs):
            m, g = named_args["M"], kwargs.get("GROUP", named_args.get("GROUP"))
            gelu = kwargs.get("GELU", named_args.get("GELU", False))
            out = [c for c in configs if g % c.kwargs["BLOCK_K"] == 0 and c.kwargs["BLOCK_M"] <= 2 * max(m, 16)
                   and (gelu or not c.kwargs.get("EPI_SPLIT"))]  # without GELU a split config is its twin
            return out or [fallback]
        return prune

    _prune = group_prune(triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32, "SPLIT_K": 1, "SWAP_AB": False},
                                       num_warps=4))

    @triton.jit
    def _nf4_decode(u):
        """NF4 code value of each nibble, in registers: a 4-level select tree on the nibble's bits
        (15 selects per element) instead of a gather from the table in global memory. The constants
        are NF4_CODE (qvit.kernels.quant) exactly; tests/test_kernels_w4 checks the two agree."""
        b0 = (u & 1) != 0
        b1 = (u & 2) != 0
        b2 = (u & 4) != 0
        b3 = (u & 8) != 0
        v0 = tl.where(b1, tl.where(b0, -0.39491748809814453, -0.5250730514526367),
                      tl.where(b0, -0.6961928009986877, -1.0))
        v1 = tl.where(b1, tl.where(b0, 0.0, -0.09105003625154495),
                      tl.where(b0, -0.18477343022823334, -0.28444138169288635))
        v2 = tl.where(b1, tl.where(b0, 0.33791524171829224, 0.24611230194568634),
                      tl.where(b0, 0.16093020141124725, 0.07958029955625534))
        v3 = tl.where(b1, tl.where(b0, 1.0, 0.7229568362236023),
                      tl.where(b0, 0.5626170039176941, 0.44070982933044434))
        return tl.where(b3, tl.where(b2, v3, v2), tl.where(b2, v1, v0))

    @triton.autotune(configs=tune_shard(_configs()), key=["M", "N", "K", "GROUP", "MODE"],
                     prune_configs_by={"early_config_prune": _prune}, do_bench=tune_bench)
    @triton.jit
    def _w4a16_kernel(x_ptr, p_ptr, s_ptr, z_ptr, code_ptr, b_ptr, r_ptr, y_ptr, M, N, K,
                      stride_xm, stride_pn, stride_sn, stride_rm, stride_ym,
                      GROUP: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
                      HAS_RES: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                      SWAP_AB: tl.constexpr, EPI_SPLIT: tl.constexpr = False):
        """SWAP_AB=False: acc (BM, BN) = x @ dequant(w)^T; SWAP_AB=True: acc (BN, BM) = dequant(w) @ x^T (the
        dequantized tile feeds the MMA from registers), stored transposed. Same products, float32 sums; the
        W8A8 GEMM's epilogue (bias -> GELU -> + residual in float32, one rounding)."""
        tl.static_assert(GROUP % BLOCK_K == 0)
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        offs_kh = tl.arange(0, BLOCK_K // 2)
        mask_m = offs_m < M
        mask_n = offs_n < N
        if SWAP_AB:
            x_ptrs = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm + offs_k[:, None]  # x^T tile (BK, BM)
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        p_ptrs = p_ptr + offs_n[:, None].to(tl.int64) * stride_pn + offs_kh[None, :]
        for k0 in range(0, K, BLOCK_K):
            p = tl.load(p_ptrs, mask=mask_n[:, None], other=0)
            u = _unpack_tile(p, MODE == 2)
            g = k0 // GROUP
            s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + g, mask=mask_n, other=0.0).to(tl.float32)
            if MODE == 0:
                w = (u - 8).to(tl.float32) * s[:, None]
            elif MODE == 1:
                z = tl.load(z_ptr + offs_n.to(tl.int64) * stride_sn + g, mask=mask_n, other=0).to(tl.int32)
                w = (u - z[:, None]).to(tl.float32) * s[:, None]
            else:
                w = _nf4_decode(u) * s[:, None]
            w = w.to(x_ptr.dtype.element_ty)
            if SWAP_AB:
                a = tl.load(x_ptrs, mask=mask_m[None, :], other=0.0)
                acc = tl.dot(w, a, acc)
            else:
                a = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
                acc = tl.dot(a, tl.trans(w), acc)
            x_ptrs += BLOCK_K
            p_ptrs += BLOCK_K // 2
        _epilogue(acc, offs_m, offs_n, mask_m, mask_n, b_ptr, r_ptr, y_ptr, stride_rm, stride_ym,
                  HAS_BIAS, GELU, HAS_RES, SWAP_AB, EPI_SPLIT)


if triton is not None:

    @triton.jit
    def _dequant_w4_kernel(p_ptr, s_ptr, z_ptr, w_ptr, N, K, stride_pn, stride_sn, stride_wn,
                           GROUP: tl.constexpr, MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """(N, K // 2) packed -> (N, K) weight in w_ptr's dtype, the same float32 math as the reference."""
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        offs_kh = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        mask = (offs_n < N)[:, None] & (offs_k < K)[None, :]
        p = tl.load(p_ptr + offs_n[:, None].to(tl.int64) * stride_pn + offs_kh[None, :],
                    mask=(offs_n < N)[:, None] & (offs_kh < K // 2)[None, :], other=0)
        u = _unpack_tile(p, MODE == 2)
        g_ptrs = offs_n[:, None].to(tl.int64) * stride_sn + offs_k[None, :] // GROUP
        s = tl.load(s_ptr + g_ptrs, mask=mask, other=0.0).to(tl.float32)
        if MODE == 0:
            w = (u - 8).to(tl.float32) * s
        elif MODE == 1:
            w = (u - tl.load(z_ptr + g_ptrs, mask=mask, other=0).to(tl.int32)).to(tl.float32) * s
        else:
            w = _nf4_decode(u) * s
        tl.store(w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :], w.to(w_ptr.dtype.element_ty), mask=mask)


def check_packed_int4(op, x, packed, scales, bias, group_size):
    """Checks shared by the 4-bit GEMMs; returns (N, K)."""
    if packed.dtype != torch.uint8 or packed.ndim != 2:
        raise TypeError(f"{op}: packed must be 2-D uint8 (N, K/2), got {packed.dtype} {tuple(packed.shape)}")
    k = x.shape[1]
    n = packed.shape[0]
    if packed.shape[1] * 2 != k:
        raise ValueError(f"{op}: x has K={k} but packed holds K={packed.shape[1] * 2}")
    check_group_size(k, group_size)
    if group_size % 32:
        raise ValueError(f"{op}: group_size={group_size} must be a multiple of 32 for the kernel")
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(f"{op}: scales must have shape {(n, k // group_size)}, got {tuple(scales.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"{op}: bias must be ({n},), got {tuple(bias.shape)}")
    check_kernel_device(op, x, packed, scales, bias)
    return n, k


_code_cache: dict = {}


def _nf4_code(device):
    if device not in _code_cache:
        _code_cache[device] = NF4_CODE.to(device)
    return _code_cache[device]


def _validate(x, packed, scales, zeros, bias, group_size, mode):
    if triton is None:
        raise RuntimeError("w4a16_linear: triton is not installed")
    if mode not in MODES:
        raise ValueError(f"w4a16_linear: mode must be one of {list(MODES)}, got {mode!r}")
    if x.ndim != 2 or x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"w4a16_linear: x must be 2-D float16/bfloat16, got {x.dtype} {tuple(x.shape)}")
    n, k = check_packed_int4("w4a16_linear", x, packed, scales, bias, group_size)
    want = (n, k // group_size)
    if mode == "int4-asym" and (zeros is None or tuple(zeros.shape) != want or zeros.dtype != torch.uint8):
        raise ValueError(f"w4a16_linear: int4-asym needs uint8 zeros of shape {want}")
    if mode == "nf4" and scales.dtype != torch.float32:
        raise TypeError("w4a16_linear: NF4 absmax must be float32")
    if zeros is not None and zeros.device != x.device:
        raise ValueError(f"w4a16_linear: zeros is on {zeros.device}, x on {x.device}")
    if x.stride(1) != 1 or not packed.is_contiguous() or not scales.is_contiguous():
        raise ValueError("w4a16_linear: x must be K-contiguous; packed and scales contiguous")


def _fake(x, packed, scales, zeros, bias, group_size, mode, residual=None, gelu=False):
    return x.new_empty((x.shape[0], packed.shape[0]))


@fast_custom_op("qvit::w4a16_linear", _fake)
def w4a16_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 bias: torch.Tensor | None, group_size: int, mode: str, residual: torch.Tensor | None = None,
                 gelu: bool = False) -> torch.Tensor:
    """y = x @ dequant(packed)^T (+ bias) (-> GELU) (+ residual (M, N), any float dtype), in x.dtype; see the
    module docstring."""
    _validate(x, packed, scales, zeros, bias, group_size, mode)
    m, k = x.shape
    n = packed.shape[0]
    if residual is not None:
        if residual.shape != (m, n) or not residual.is_floating_point() or residual.device != x.device:
            raise ValueError(f"w4a16_linear: residual must be a float ({m}, {n}) tensor on {x.device}, got "
                             f"{residual.dtype} {tuple(residual.shape)} on {residual.device}")
        if residual.stride(1) != 1:
            residual = residual.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _w4a16_kernel[grid](x, packed, scales, zeros if zeros is not None else packed, _nf4_code(x.device),
                        bias if bias is not None else scales, residual if residual is not None else y, y, m, n, k,
                        x.stride(0), packed.stride(0), scales.stride(0),
                        residual.stride(0) if residual is not None else 0, y.stride(0),
                        GROUP=group_size, MODE=MODES[mode], HAS_BIAS=bias is not None, GELU=gelu,
                        HAS_RES=residual is not None)
    return y


def dequantize_w4(packed, scales, zeros, group_size: int, mode: str, dtype=torch.bfloat16) -> torch.Tensor:
    """The whole (N, K) weight in `dtype` from its 4-bit form, in one Triton kernel; bit-exact to
    `dequantize_int4` / `dequantize_nf4` followed by `.to(dtype)` (same float32 math, one rounding)."""
    if triton is None:
        raise RuntimeError("dequantize_w4: triton is not installed")
    if mode not in MODES:
        raise ValueError(f"dequantize_w4: mode must be one of {list(MODES)}, got {mode!r}")
    n, k = packed.shape[0], packed.shape[1] * 2
    if packed.device.type == "cpu" and not interpreting():
        raise ValueError("dequantize_w4: CPU tensors need TRITON_INTERPRET=1 (or use the torch backend)")
    w = torch.empty((n, k), dtype=dtype, device=packed.device)
    bn, bk = (16, 32) if interpreting() else (32, 128)
    _dequant_w4_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
        packed, scales, zeros if zeros is not None else packed, w, n, k, packed.stride(0), scales.stride(0), w.stride(0),
        GROUP=group_size, MODE=MODES[mode], BLOCK_N=bn, BLOCK_K=bk, num_warps=4)
    return w


@fast_custom_op("qvit::w4a16_linear_dequant", _fake)
def w4a16_linear_dequant(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                         bias: torch.Tensor | None, group_size: int, mode: str) -> torch.Tensor:
    """The large-M alternative to the fused kernel: dequantize the weight once per call (`dequantize_w4`,
    N x K x 2 bytes written), then one cuBLAS GEMM. Each M-tile of the fused kernel re-dequantizes the
    weight tile it uses, which makes it ALU-bound when M spans many tiles (results/h200-gpu-2/ncu_sol.md);
    this path pays the dequantization once. Same rounding as the fused kernel: the weight is rounded to
    x.dtype, the products accumulate in float32 (cuBLAS)."""
    _validate(x, packed, scales, zeros, bias, group_size, mode)
    w = dequantize_w4(packed, scales, zeros, group_size, mode, x.dtype)
    return torch.nn.functional.linear(x, w, bias.to(x.dtype) if bias is not None else None)
