"""LayerNorm fused with dynamic per-token int8 quantization (the input of qkv and fc1).

    h[m, :]  = (x[m, :] - mean) / sqrt(var + eps) * weight + bias        (float32, biased var)
    scale[m] = max(amax(|h[m, :]|) / 127, tiny)
    q[m, :]  = clamp(round_half_even(h[m, :] / scale[m]), -127, 127)    (int8)

With `weight=None` the normalization is skipped and the kernel is a plain per-token quantizer
(the input of proj and fc2). Shapes: x (M, K) float16 / bfloat16 / float32, row stride free,
K contiguous; weight, bias (K,); q int8 (M, K); scale float32 (M,).

One read of x and one write of q: 3 bytes per element for fp16 input, the floor of this op. Measured against
the copy bandwidth of the same run (results/h200-gpu-12, H200, M x K = 12,608 x 1,024 / 50,432 x 1,024 /
12,608 x 4,096): fp8 71-77%, int8 61-75% (12,608 x 1,024 moves 61-66% between runs).
SmoothQuant-style smoothing needs no kernel change: the per-channel factors are folded into
weight/bias here and into the next GEMM's weight columns (see qvit.vit.quantize).

Reference: `layernorm_quant_ref` below.
"""
from __future__ import annotations

import torch

from qvit.backend import interpreting, pdl_kwargs, tune_bench, tune_shard
from qvit.kernels._op import fast_custom_op
from qvit.kernels.quant import quantize_int8_per_token

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    triton = None


def layernorm_quant_ref(x, weight=None, bias=None, eps=1e-6, fp8: bool = False):
    """Plain PyTorch: float32 LayerNorm (or identity when weight is None), then per-token int8 (or fp8 e4m3)."""
    h = x.float()
    if weight is not None:
        h = torch.nn.functional.layer_norm(h, (h.shape[-1],), weight.float(),
                                           None if bias is None else bias.float(), eps)
    if fp8:
        from qvit.kernels.quant import quantize_fp8_per_token
        return quantize_fp8_per_token(h)
    return quantize_int8_per_token(h)


if triton is not None:

    _INTERP = tl.constexpr(interpreting())

    @triton.jit
    def _div_rn_fast(y, scale, inv):
        """y / scale correctly rounded (as IEEE division), from inv = div_rn(1, scale): q = y * inv, then one
        correction with the exact remainder fma(-q, scale, y) (Markstein: with inv the correctly rounded
        reciprocal and q within an ulp, the corrected quotient is the correctly rounded one, barring
        overflow/underflow). Two FMAs and a multiply per element where div.rn is a reciprocal, a range check
        (FCHK) and a call to a slow path."""
        q = y * inv
        if _INTERP:  # the interpreter's fma is x * y + z with the product rounded first: float64 holds it exactly
            r = y.to(tl.float64) - q.to(tl.float64) * scale.to(tl.float64)
            return (q.to(tl.float64) + r * inv.to(tl.float64)).to(tl.float32)
        return tl.math.fma(tl.math.fma(-q, scale, y), inv, q)

    @triton.jit
    def _fp8_static_codes(y, s_ptr):
        """y / s_ptr[0] rounded to nearest even on the e4m3 grid and saturated at +-448 (float32 values; the cast
        to float8_e4m3fn is then exact): `quantize_fp8_static`. The GPU's cvt rounds as torch's cast; the
        interpreter's rounds wrongly across a binade and at ties, so there the value is put on the grid first."""
        scale = tl.load(s_ptr)
        v = tl.clamp(_div_rn_fast(y, scale, tl.math.div_rn(1.0, scale)), -448.0, 448.0)
        if _INTERP:
            v = _round_e4m3(v)
        return v

    @triton.jit
    def _pdl_enter(PDL: tl.constexpr):
        """Programmatic dependent launch (`qvit.backend.pdl_kwargs`): wait until the previous kernel on the stream
        has finished and its writes are visible (griddepcontrol.wait), then let the next kernel launch
        (griddepcontrol.launch_dependents: it starts once every program here has passed this point, and waits in
        its own _pdl_enter). Every load of a previous kernel's output and every store of a kernel must come after
        this call; loads of constants (weights) and L2 prefetches may come before. Nothing without PDL."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()

    @triton.jit
    def _prefetch_rows_l2(ptr, rows, mask_rows, row_stride, row_bytes, PDL: tl.constexpr):
        """With PDL only: prefetch.global.L2 of every 128-byte line of rows `rows` (row_bytes each, 1-byte
        elements), before _pdl_enter, so that a GEMM's weight tile streams into L2 while the previous kernel
        finishes (at batch 1 every linear reads its weights from DRAM: ViT-L/16's 300 MB of fp8 weights do not
        fit the 50 MB L2). A hint with no result."""
        if PDL:
            LINES: tl.constexpr = 8
            for c0 in range(0, row_bytes, 128 * LINES):
                cols = c0 + tl.arange(0, LINES) * 128
                ok = mask_rows[:, None] & (cols < row_bytes)[None, :]
                off = tl.where(ok, rows[:, None].to(tl.int64) * row_stride + cols[None, :], 0)
                tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptr + off],
                                          dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _store_static_scale(sv_ptr, s_ptr, rows, mask):
        """sv[rows] = s_ptr[0]: the per-token scale vector (M,) of an fp8 output at one static scale, which the next
        GEMM reads, written by the kernel that wrote the codes. A separate fill (`expand(m).contiguous()`) was a
        launch of its own after fc1 and after the attention in every block: 48 of ViT-L/16's ~220 at batch 1."""
        tl.store(sv_ptr + rows, tl.zeros(rows.shape, tl.float32) + tl.load(s_ptr), mask=mask)

    @triton.jit
    def _int8_rn(v):
        """float32 -> int8 as torch.round(v).clamp(-127, 127) (nearest, ties to even; NaN aside): one cvt.rni
        per element, a max at -127 (cvt.pack.sat would give -128 from -127.5 down: session 12 call 4's GPU test
        caught that), then one cvt.pack.sat.s8 per two elements (the second source to the low byte, the third
        operand's low half above: four elements, element 0 lowest), which saturates at 127. In place of the
        add-and-subtract rounding below (`_round_half_even`) with its float clamp, conversion and byte packing,
        which the interpreter runs instead (no libdevice float2int_rn nor PTX there): LayerNorm + quantize at
        K = 1024, ROWS = 1, 1 warp, 1,080 -> 976 SASS instructions per thread (sm_90, Triton 3.6)."""
        if _INTERP:
            return tl.clamp(_round_half_even(v), -127.0, 127.0).to(tl.int8)
        vi = tl.maximum(libdevice.float2int_rn(v), -127)
        return tl.inline_asm_elementwise(
            "{ .reg .b32 hi; cvt.pack.sat.s8.s32.b32 hi, $4, $3, 0; cvt.pack.sat.s8.s32.b32 $0, $2, $1, hi; }",
            "=r,r,r,r,r", [vi], dtype=tl.int8, is_pure=True, pack=4)

    @triton.jit
    def _round_half_even(x):
        # adding and subtracting 1.5 * 2^23 rounds to the nearest integer, ties to even (as
        # torch.round does), for |x| < 2^22; fp32 add is round-to-nearest-even on GPU and in the
        # interpreter alike. |x| <= 127 here.
        return (x + 12582912.0) - 12582912.0

    @triton.jit
    def _round_e4m3(v):
        """v (float32, |v| <= 448) rounded to the nearest float8 e4m3 value, ties to even, in float32
        arithmetic: step = 2^(exponent - 3) for normals (3 mantissa bits), 2^-9 below 2^-6 (subnormals).
        The cast to float8 afterwards is then exact (Triton's interpreter rounds that cast wrongly across
        a binade and at ties; the GPU's cvt would round correctly, and agrees with this on every value)."""
        bits = v.to(tl.int32, bitcast=True)
        e = ((bits >> 23) & 0xFF) - 127
        e = tl.maximum(e, -6)
        step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
        return _round_half_even(v / step) * step

    def _lnq_configs():
        if interpreting():  # two rows per program: the row mask of a partial last tile is exercised
            return [triton.Config({"ROWS": 2}, num_warps=1)]
        # 1-2 warps per row: the three row reductions (mean, variance, |max|) stay within a warp (shuffles, no
        # shared memory or barriers); per row that is 1,400 (1 warp) / 1,616 (2) issued warp-instructions
        # against 2,144 (4 warps) and 3,200 (8) at K = 1024 (sm_90 SASS, Triton 3.6, static counts)
        return [triton.Config({"ROWS": r}, num_warps=w) for r in (1, 2, 4, 8, 16) for w in (1, 2, 4, 8, 16)]

    def _lnq_prune(configs, named_args, **kwargs):
        bk = kwargs.get("BLOCK_K", named_args.get("BLOCK_K"))
        # at least 4 and at most 128 elements per thread (256 spill: 696 bytes at ROWS = 8, 1 warp, K = 1024)
        out = [c for c in configs if c.kwargs["ROWS"] * bk <= 16384
               and c.num_warps * 32 * 4 <= c.kwargs["ROWS"] * bk <= c.num_warps * 32 * 128]
        return out or configs[:1]

    @triton.autotune(configs=tune_shard(_lnq_configs()), key=["M", "K", "NORM", "FP8", "STATIC"],
                     prune_configs_by={"early_config_prune": _lnq_prune}, do_bench=tune_bench)
    @triton.jit
    def _ln_quant_kernel(x_ptr, w_ptr, b_ptr, q_ptr, s_ptr, st_ptr, M, K, stride_xm, stride_qm, eps,
                         NORM: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, FP8: tl.constexpr,
                         ROWS: tl.constexpr, STATIC: tl.constexpr = False, PDL: tl.constexpr = False):
        """ROWS whole rows per program as one (ROWS, BLOCK_K) tile: every load of the tile is issued before
        the first reduction waits on any of them (the memory-level parallelism a row-at-a-time loop lacks)."""
        _pdl_enter(PDL)
        pid = tl.program_id(0)
        offs_k = tl.arange(0, BLOCK_K)
        rows = pid * ROWS + tl.arange(0, ROWS)
        kmask = offs_k < K
        rmask = rows < M
        mask = rmask[:, None] & kmask[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + offs_k[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        if NORM:
            w = tl.load(w_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)
            mean = tl.sum(x, axis=1) / K
            xc = tl.where(mask, x - mean[:, None], 0.0)
            var = tl.sum(xc * xc, axis=1) / K
            h = xc * (1.0 / tl.sqrt(var + eps))[:, None] * w[None, :]
            if HAS_BIAS:
                h += tl.load(b_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)[None, :]
        else:
            h = x
        h = tl.where(mask, h, 0.0)
        # one division per row (the reciprocal), then the correctly rounded quotient by _div_rn_fast; fp8: the
        # GPU's cvt rounds to nearest even and saturates as torch's cast does, so the explicit rounding onto
        # the e4m3 grid is for the interpreter only (its cast rounds wrongly across a binade and at ties)
        if FP8 and STATIC:  # e4m3 at one static (calibrated) scale st_ptr[0], saturated at +-448
            scale = tl.zeros((ROWS,), tl.float32) + tl.load(st_ptr)
        elif FP8:  # e4m3: scale = amax / 448
            scale = tl.maximum(tl.max(tl.abs(h), axis=1) / 448.0, 1.1754943508222875e-38)
        else:
            scale = tl.maximum(tl.max(tl.abs(h), axis=1) / 127.0, 1.1754943508222875e-38)
        inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
        v = _div_rn_fast(h, scale[:, None], inv[:, None])
        if FP8:
            v = tl.clamp(v, -448.0, 448.0)
            if _INTERP:
                v = _round_e4m3(v)
            q8 = v.to(q_ptr.dtype.element_ty)
        else:
            q8 = _int8_rn(v)
        tl.store(q_ptr + rows[:, None].to(tl.int64) * stride_qm + offs_k[None, :], q8, mask=mask)
        tl.store(s_ptr + rows, scale, mask=rmask)


def _validate(x, weight, bias):
    if triton is None:
        raise RuntimeError("layernorm_quant: triton is not installed")
    _validate_common(x, weight, bias)
    if x.device.type == "cpu" and not interpreting():
        raise ValueError("layernorm_quant: CPU tensors need TRITON_INTERPRET=1 (or use the torch backend)")
    if x.shape[1] > 65536:
        raise ValueError(f"layernorm_quant: K={x.shape[1]} exceeds the one-row-per-tile limit of 65536")


def _validate_common(x, weight, bias):
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"layernorm_quant: x must be a 2-D tensor (M, K), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"layernorm_quant: x must be float16/bfloat16/float32, got {x.dtype}")
    if x.stride(1) != 1:
        raise ValueError("layernorm_quant: x must be contiguous along K")
    k = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            if t.shape != (k,):
                raise ValueError(f"layernorm_quant: {name} must have shape ({k},), got {tuple(t.shape)}")
            if t.device != x.device:
                raise ValueError(f"layernorm_quant: {name} is on {t.device}, x on {x.device}")
    if bias is not None and weight is None:
        raise ValueError("layernorm_quant: bias without weight")


def _fake(x, weight=None, bias=None, eps=1e-6):
    return (x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:1], dtype=torch.float32))


def _outputs(x):
    """(q int8 (M, K), scale float32 (M,)) for the kernels to fill."""
    m, k = x.shape
    return (torch.empty((m, k), dtype=torch.int8, device=x.device), torch.empty((m,), dtype=torch.float32, device=x.device))


def _launch(x, weight, bias, eps, qdtype, static=None):
    _validate(x, weight, bias)
    m, k = x.shape
    q = torch.empty((m, k), dtype=qdtype, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    block_k = triton.next_power_of_2(k)
    _ln_quant_kernel[lambda meta: (triton.cdiv(m, meta["ROWS"]),)](
        x, weight if weight is not None else s, bias if bias is not None else s, q, s,
        static if static is not None else s, m, k, x.stride(0), q.stride(0), eps,
        NORM=weight is not None, HAS_BIAS=bias is not None, BLOCK_K=block_k, FP8=qdtype == torch.float8_e4m3fn,
        STATIC=static is not None, **pdl_kwargs(x.device))
    return q, s


@fast_custom_op("qvit::layernorm_quant", _fake)
def layernorm_quant(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> (q int8 (M, K), scale float32 (M,)); LayerNorm first when weight is given."""
    return _launch(x, weight, bias, eps, torch.int8)


def _fake_fp8(x, weight=None, bias=None, eps=1e-6):
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[:1], dtype=torch.float32))


@fast_custom_op("qvit::layernorm_quant_fp8", _fake_fp8)
def layernorm_quant_fp8(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                        eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The same kernel writing float8_e4m3fn (scale = amax / 448) for the FP8 GEMM."""
    return _launch(x, weight, bias, eps, torch.float8_e4m3fn)


_DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


def _validate_cuda(x, weight, bias):
    _validate_common(x, weight, bias)
    if not x.is_cuda:
        raise ValueError(f"layernorm_quant_cuda: x must be a CUDA tensor, got {x.device}")
    vec = 16 // x.element_size()
    k = x.shape[1]
    if k % vec:
        raise ValueError(f"layernorm_quant_cuda: K={k} must be a multiple of {vec} for {x.dtype} (16-byte vectors)")
    if k > 32 * vec * 16:
        raise ValueError(f"layernorm_quant_cuda: K={k} exceeds {32 * vec * 16} for {x.dtype}")
    if x.data_ptr() % 16 or (x.stride(0) * x.element_size()) % 16:
        raise ValueError("layernorm_quant_cuda: rows of x must be 16-byte aligned")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or not t.is_contiguous() or t.data_ptr() % 16):
            raise TypeError(f"layernorm_quant_cuda: {name} must be a contiguous, 16-byte aligned {x.dtype} tensor, "
                            f"got {t.dtype}")


@fast_custom_op("qvit::layernorm_quant_cuda", _fake)
def layernorm_quant_cuda(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                         eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The same op on the hand-written CUDA kernel (csrc/layernorm_quant.cu), validated here first so
    that bad input raises a Python error naming the problem; the library checks again and returns an
    error code (never a crash) for anything that slips through."""
    from qvit import _ext
    lib = _ext.lib()
    _validate_cuda(x, weight, bias)
    m, k = x.shape
    q, s = _outputs(x)
    if m == 0:
        return q, s
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = lib.qvit_layernorm_quant(_DTYPE_CODE[x.dtype], x.data_ptr(),
                                      weight.data_ptr() if weight is not None else None,
                                      bias.data_ptr() if bias is not None else None,
                                      q.data_ptr(), s.data_ptr(), m, k, x.stride(0), float(eps), stream)
    _ext.check(rc, "layernorm_quant_cuda")
    return q, s


def _fake_fp8_static(x, scale, weight=None, bias=None, eps=1e-6):
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[:1], dtype=torch.float32))


@fast_custom_op("qvit::layernorm_quant_fp8_static", _fake_fp8_static)
def layernorm_quant_fp8_static(x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None = None,
                               bias: torch.Tensor | None = None, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The same kernel writing float8_e4m3fn at one static, calibrated scale (a one-element float32 tensor):
    (q (M, K), scale (M,) filled with it), as `quantize_fp8_static` does (LayerNorm first when weight is
    given). A static-scale fp8 layer's input where no GEMM or attention epilogue wrote it."""
    from qvit.kernels.quant import check_static_scale
    check_static_scale("layernorm_quant_fp8_static", scale, x.device)
    return _launch(x, weight, bias, eps, torch.float8_e4m3fn, scale.reshape(1))
