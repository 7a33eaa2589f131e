"""Quantization formats: pack/unpack, quantize/dequantize and plain-PyTorch reference matmuls.

Every format is plain tensors, so a quantized layer's state dict is a flat dict of tensors
(safetensors-friendly). Shapes follow nn.Linear: weights are (N, K) = (out_features, in_features),
activations (M, K).

int8 weights, per output channel, symmetric
    w ~= q * scale[n];  q int8 in [-127, 127] (N, K);  scale float32 (N,) = amax(|w[n]|) / 127.
int8 activations, per token, dynamic, symmetric
    x ~= q * scale[m];  q int8 in [-127, 127] (M, K);  scale float32 (M,) = amax(|x[m]|) / 127.
    -128 is never produced, so -q never overflows and the range is symmetric.
int4 weights, group-wise along K, two per byte
    packed uint8 (N, K // 2): byte j of row n holds k = 2j in bits 0-3 (low nibble) and
    k = 2j + 1 in bits 4-7 (high nibble). Nibbles are unsigned u in [0, 15].
    scales float16 (N, K // group_size); group_size in {32, 64, 128} (or any divisor of K that
    is a multiple of 2, e.g. K for per-channel).
    symmetric:  q = u - 8 in [-7, 7] (u = 0, i.e. -8, is never produced), scale = amax / 7,
                w ~= q * scale.
    asymmetric: zeros uint8 (N, K // group_size) in [0, 15]; scale = (max - min) / 15 with the
                range widened to contain 0 so that 0 is exact; w ~= (u - zero) * scale.
    Scales are rounded to float16 first and the weights quantized with the rounded scale, so
    dequantize(quantize(w)) is what any kernel reading the stored tensors computes.
NF4 weights, bitsandbytes layout
    the weight flattened row-major into blocks of `blocksize` (64 by default) elements;
    absmax float32 (numel // blocksize,); packed uint8 (numel // 2,) with element 2i in the
    HIGH nibble and 2i + 1 in the LOW nibble (bitsandbytes' order, the reverse of int4 above);
    w ~= NF4_CODE[u] * absmax[block]. `nf4_from_bnb` converts a bitsandbytes Linear4bit weight
    (nested/double-quantized absmax included) without re-quantizing.
"""
from __future__ import annotations

import torch

INT8_MAX = 127
INT4_GROUP_SIZES = (32, 64, 128)

# The 16 NF4 code values exactly as bitsandbytes defines them (functional.get_4bit_type("nf4")).
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)


# ----------------------------------------------------------------------------- validation
def _check_tensor(name, t, dtypes=None, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_static_scale(op: str, scale, device) -> torch.Tensor:
    """A static (calibrated) quantization scale as the kernels take it: a one-element float32 tensor on
    `device`; returned as shape (1,). The value is not read (no host sync): calibration checks it."""
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1 or scale.dtype != torch.float32 \
            or scale.device != torch.device(device):
        raise ValueError(f"{op}: the static scale must be a one-element float32 tensor on {device}, got "
                         f"{scale!r:.80}")
    return scale.reshape(1)


def check_kernel_device(op: str, *tensors) -> None:
    """A Triton launcher's device checks: every tensor given (None skipped) on one device, and CPU tensors only
    under the interpreter. Raises naming `op`."""
    from qvit.backend import interpreting
    devs = {t.device for t in tensors if t is not None}
    if len(devs) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(map(str, devs))}")
    if next(iter(devs)).type == "cpu" and not interpreting():
        raise ValueError(f"{op}: CPU tensors need TRITON_INTERPRET=1 (or use the torch backend)")


def _check_same_device(**tensors):
    devs = {k: v.device for k, v in tensors.items() if v is not None}
    if len(set(devs.values())) > 1:
        raise ValueError(f"tensors are on different devices: {', '.join(f'{k}={v}' for k, v in devs.items())}")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_group_size(k: int, group_size: int) -> None:
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"group_size={group_size} must be even and divide in_features K={k}")


# ----------------------------------------------------------------------------- int8
def quantize_int8_per_channel(w: torch.Tensor):
    """(N, K) float -> (q int8 (N, K), scale float32 (N,)); symmetric, per output channel."""
    _check_tensor("weight", w, FLOAT_DTYPES, 2)
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(wf / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_int8_per_token(x: torch.Tensor):
    """(..., K) float -> (q int8 (..., K), scale float32 (...)); dynamic, symmetric, per token.

    The scale is amax / 127 and q = round(x / scale): the division form (not x * (127 / amax))
    is the definition every kernel in qvit follows.
    """
    _check_tensor("x", x, FLOAT_DTYPES)
    xf = x.float()
    scale = (xf.abs().amax(dim=-1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(xf / scale[..., None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32):
    """Per-row scales: (R, K) int8, (R,) -> (R, K) dtype."""
    _check_tensor("q", q, (torch.int8,))
    return (q.float() * scale.float()[..., None]).to(dtype)


def w8a8_linear_ref(x, wq, w_scale, bias=None, out_dtype=None):
    """Reference W8A8 linear: quantize x per token, exact integer dot product, scale, bias.

    x (..., K) float; wq int8 (N, K); w_scale float32 (N,). The integer dot is computed in
    float64, which is exact for |sum| < 2^53 (K * 127 * 127 is far below that).
    """
    _check_tensor("wq", wq, (torch.int8,), 2)
    if x.shape[-1] != wq.shape[1]:
        raise ValueError(f"x has K={x.shape[-1]} features but the weight expects K={wq.shape[1]}")
    xq, xs = quantize_int8_per_token(x)
    return int8_matmul_ref(xq, xs, wq, w_scale, bias, out_dtype or x.dtype)


def int8_matmul_ref(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.float32, gelu=False, residual=None):
    """(xq (..., K) int8 . wq (N, K) int8^T) * x_scale[..., None] * w_scale[None] (+ bias)(-> gelu)(+ residual)."""
    acc = xq.double() @ wq.double().t()
    return _epilogue_ref(acc.float() * x_scale.float()[..., None] * w_scale.float(), bias, gelu, residual, out_dtype)


def _epilogue_ref(y, bias, gelu, residual, out_dtype):
    """The GEMMs' epilogue on a float32 result: + bias -> GELU (erf) -> + residual, rounded once."""
    if bias is not None:
        y = y + bias.float()
    if gelu:
        y = torch.nn.functional.gelu(y)
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype)


def quantize_int8_per_group(x: torch.Tensor, group: int):
    """(..., K) float -> (q int8 (..., K), scale float32 (..., K // group)): per token and per run of `group`
    consecutive channels, scale = amax / 127 and q = round(x / scale) as `quantize_int8_per_token` (which is
    the case group = K). What the fc1 GEMM's epilogue writes for fc2 (a token's 4,096 channels are spread over
    several output tiles, so no single program sees the token's amax)."""
    _check_tensor("x", x, FLOAT_DTYPES)
    k = x.shape[-1]
    if group <= 0 or k % group:
        raise ValueError(f"activation group size {group} must divide K={k}")
    xg = x.float().reshape(*x.shape[:-1], k // group, group)
    scale = (xg.abs().amax(dim=-1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(xg / scale[..., None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(x.shape), scale


def int8_group_matmul_ref(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.float32, gelu=False, residual=None):
    """`int8_matmul_ref` with group-wise activation scales x_scale (..., K // g): each group's exact integer
    dot is scaled by its own activation scale, then by the channel's weight scale."""
    k = xq.shape[-1]
    g = k // x_scale.shape[-1]
    if g * x_scale.shape[-1] != k:
        raise ValueError(f"x_scale has {x_scale.shape[-1]} groups, which do not divide K={k}")
    x2, s2 = xq.reshape(-1, k).double(), x_scale.reshape(-1, k // g).double()
    acc = torch.zeros(x2.shape[0], wq.shape[0], dtype=torch.float64, device=xq.device)
    for j in range(k // g):  # each group's exact integer dot, scaled by the group's activation scale
        acc += (x2[:, j * g:(j + 1) * g] @ wq[:, j * g:(j + 1) * g].double().t()) * s2[:, j:j + 1]
    return _epilogue_ref(acc.float().reshape(*xq.shape[:-1], wq.shape[0]) * w_scale.float(), bias, gelu, residual,
                         out_dtype)


# ----------------------------------------------------------------------------- fp8 (e4m3)
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_fp8_per_token(x: torch.Tensor):
    """(..., K) float -> (q float8_e4m3fn (..., K), scale float32 (...)): scale = amax / 448, q = x / scale
    rounded to nearest even by the cast (|x / scale| <= 448, so nothing saturates)."""
    _check_tensor("x", x, FLOAT_DTYPES)
    xf = x.float()
    scale = (xf.abs().amax(dim=-1) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_fp8_static(x: torch.Tensor, scale: float | torch.Tensor):
    """(..., K) float -> (q float8_e4m3fn (..., K), scale float32 (...) filled with `scale`): one static
    (calibrated) scale for the whole tensor, q = x / scale rounded to nearest even and saturated at +-448
    (values past the calibrated range clip)."""
    _check_tensor("x", x, FLOAT_DTYPES)
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(())
    if not bool(torch.isfinite(s)) or float(s) <= 0:
        raise ValueError(f"quantize_fp8_static: scale must be a positive finite number, got {float(s)}")
    q = (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, s.expand(x.shape[:-1]).contiguous()


def quantize_fp8_per_channel(w: torch.Tensor):
    """(N, K) float -> (q float8_e4m3fn (N, K), scale float32 (N,)); per output channel."""
    _check_tensor("weight", w, FLOAT_DTYPES, 2)
    return quantize_fp8_per_token(w)


def fp8_matmul_ref(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.float32, gelu=False, residual=None):
    """FP8 W8A8 reference: the same math as int8_matmul_ref (the fp8 values' dot product in float64, then
    the float32 epilogue); the kernel accumulates in float32 on the fp8 tensor cores."""
    return int8_matmul_ref(xq, x_scale, wq, w_scale, bias, out_dtype, gelu, residual)


# ----------------------------------------------------------------------------- int4
def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """(N, K) uint8 nibbles in [0, 15] -> (N, K // 2) uint8; k even -> low nibble, k odd -> high."""
    _check_tensor("nibbles", u, (torch.uint8,), 2)
    if u.shape[1] % 2:
        raise ValueError(f"int4 packing needs an even K, got K={u.shape[1]}")
    if int(u.max()) > 15 if u.numel() else False:
        raise ValueError("int4 nibbles must lie in [0, 15]")
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K // 2) uint8 -> (N, K) uint8 nibbles, the inverse of pack_int4."""
    _check_tensor("packed", packed, (torch.uint8,), 2)
    lo, hi = packed & 0xF, packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def quantize_int4(w: torch.Tensor, group_size: int = 128, symmetric: bool = True):
    """(N, K) float -> (packed uint8 (N, K//2), scales fp16 (N, K//g), zeros uint8 (N, K//g) or None)."""
    _check_tensor("weight", w, FLOAT_DTYPES, 2)
    n, k = w.shape
    check_group_size(k, group_size)
    wg = w.float().reshape(n, k // group_size, group_size)
    tiny = 2.0 ** -24  # smallest fp16 subnormal: keeps scale > 0 after rounding to fp16
    if symmetric:
        scale = (wg.abs().amax(-1) / 7).clamp(min=tiny).half()
        q = torch.round(wg / scale.float()[..., None]).clamp(-7, 7)
        u = (q + 8).to(torch.uint8)
        zeros = None
    else:
        lo = wg.amin(-1).clamp(max=0)
        hi = wg.amax(-1).clamp(min=0)
        scale = ((hi - lo) / 15).clamp(min=tiny).half()
        zeros_f = torch.round(-lo / scale.float()).clamp(0, 15)
        u = (torch.round(wg / scale.float()[..., None]) + zeros_f[..., None]).clamp(0, 15).to(torch.uint8)
        zeros = zeros_f.to(torch.uint8)
    return pack_int4(u.reshape(n, k)), scale, zeros


def dequantize_int4(packed, scales, zeros=None, group_size: int = 128, dtype=torch.float32):
    """Inverse of quantize_int4 up to rounding: (N, K//2) -> (N, K) dtype, computed in float32."""
    _check_tensor("packed", packed, (torch.uint8,), 2)
    _check_tensor("scales", scales, (torch.float16, torch.float32, torch.bfloat16), 2)
    n, k = packed.shape[0], packed.shape[1] * 2
    check_group_size(k, group_size)
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(f"scales must have shape {(n, k // group_size)} for K={k}, group_size={group_size}, "
                         f"got {tuple(scales.shape)}")
    u = unpack_int4(packed).float().reshape(n, k // group_size, group_size)
    if zeros is None:
        q = u - 8
    else:
        if tuple(zeros.shape) != tuple(scales.shape):
            raise ValueError(f"zeros must have the shape of scales {tuple(scales.shape)}, got {tuple(zeros.shape)}")
        q = u - zeros.float()[..., None]
    return (q * scales.float()[..., None]).reshape(n, k).to(dtype)


PROG_INT8_MAX = 119  # first-level int8 range of the progressive format: 7 * 17 = 119 keeps q4 * s2 in int8


def quantize_int4_progressive(w: torch.Tensor, group_size: int = 128):
    """Two-level ("progressive", as QServe) 4-bit weights: per-output-channel int8 in [-119, 119] with a
    float32 scale s1, then group-wise symmetric int4 of those integers with *integer* scales s2 in [1, 17]:

        w[n, k] ~ s1[n] * (q4[n, k] * s2[n, k // g]),   q4 in [-7, 7],  |q4 * s2| <= 119

    so the expanded weight q4 * s2 is an int8 matrix with one float scale per channel: the GEMM is a plain
    W8A8 one (no per-group float work inside it). Nibbles are stored as q4 + 8 in pack_int4's order.
    Returns (packed uint8 (N, K // 2), s2 uint8 (N, K // g), s1 float32 (N,))."""
    _check_tensor("weight", w, FLOAT_DTYPES, 2)
    n, k = w.shape
    check_group_size(k, group_size)
    wf = w.float()
    s1 = (wf.abs().amax(1) / PROG_INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    w8 = torch.round(wf / s1[:, None]).clamp(-PROG_INT8_MAX, PROG_INT8_MAX).reshape(n, k // group_size, group_size)
    s2 = torch.ceil(w8.abs().amax(-1) / 7).clamp(1, 17)
    q = torch.round(w8 / s2[..., None]).clamp(-7, 7)
    return pack_int4((q + 8).to(torch.uint8).reshape(n, k)), s2.to(torch.uint8), s1


def _packed_groups(packed, g, group_size, what):
    """Checks nibbles (N, K // 2) and their per-group uint8 companions (N, K // g); returns (N, K) and the signed
    codes q4 = nibble - 8 as (N, K // g, g) int16."""
    _check_tensor("packed", packed, (torch.uint8,), 2)
    _check_tensor(what, g, (torch.uint8,), 2)
    n, k = packed.shape[0], packed.shape[1] * 2
    check_group_size(k, group_size)
    if tuple(g.shape) != (n, k // group_size):
        raise ValueError(f"{what} must have shape {(n, k // group_size)} for K={k}, group_size={group_size}, "
                         f"got {tuple(g.shape)}")
    return n, k, (unpack_int4(packed).to(torch.int16) - 8).reshape(n, k // group_size, group_size)


def expand_int4_progressive(packed: torch.Tensor, s2: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """(N, K // 2) nibbles and (N, K // g) integer group scales -> the int8 weight q4 * s2 (N, K)."""
    n, k, q = _packed_groups(packed, s2, group_size, "group scales")
    return (q * s2.to(torch.int16)[..., None]).reshape(n, k).to(torch.int8)


def dequantize_int4_progressive(packed, s2, s1, group_size: int = 128, dtype=torch.float32):
    return (expand_int4_progressive(packed, s2, group_size).float() * s1.float()[:, None]).to(dtype)


POW2_EXP_MAX = 9  # group exponents 0..9: q4 * 2^(6 - e) stays within e4m3's exact range (2^-3 .. 448)


def quantize_int4_pow2(w: torch.Tensor, group_size: int = 32):
    """4-bit weights on a grid float8_e4m3fn holds exactly, so that the fp8 GEMM runs them unchanged:

        w[n, k] ~ s[n] * q4[n, k] * 2^-e[n, k // g],   q4 in [-7, 7],  e in [0, 9]

    s = max |w[n, :]| / 7 (the largest group takes e = 0), and each group the finest power of two that keeps its
    max within 7 steps. The e4m3 weight is q4 * 2^(6 - e) exactly (at most 3 significant bits, magnitude 2^-3 ..
    448) with the per-channel scale s / 64: expanding it is a conversion, not a rounding. Nibbles are q4 + 8 in
    pack_int4's order. Returns (packed uint8 (N, K // 2), e uint8 (N, K // g), w_scale float32 (N,) = s / 64)."""
    _check_tensor("weight", w, FLOAT_DTYPES, 2)
    n, k = w.shape
    check_group_size(k, group_size)
    tiny = torch.finfo(torch.float32).tiny
    wf = w.float()
    s = (wf.abs().amax(1) / 7).clamp(min=tiny)
    wg = wf.reshape(n, k // group_size, group_size)
    amax = wg.abs().amax(-1).clamp(min=tiny)
    e = torch.floor(torch.log2(7 * s[:, None] / amax)).clamp(0, POW2_EXP_MAX)
    q = torch.round(wg / (s[:, None, None] * torch.exp2(-e)[..., None])).clamp(-7, 7)
    return pack_int4((q + 8).to(torch.uint8).reshape(n, k)), e.to(torch.uint8), s / 64


def expand_int4_pow2(packed: torch.Tensor, e: torch.Tensor, group_size: int = 32) -> torch.Tensor:
    """(N, K // 2) nibbles and (N, K // g) group exponents -> the float8_e4m3fn weight q4 * 2^(6 - e) (N, K),
    exact (see quantize_int4_pow2)."""
    n, k, q = _packed_groups(packed, e, group_size, "group exponents")
    if e.numel() and int(e.max()) > POW2_EXP_MAX:
        raise ValueError(f"group exponents must be <= {POW2_EXP_MAX}, got {int(e.max())}")
    return (q.float() * torch.exp2(6 - e.float())[..., None]).reshape(n, k).to(torch.float8_e4m3fn)


def w4a16_linear_ref(x, packed, scales, zeros=None, group_size=128, bias=None):
    """Reference W4A16 linear: dequantize the weight to float32, matmul in float32, cast to x.dtype."""
    w = dequantize_int4(packed, scales, zeros, group_size)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x has K={x.shape[-1]} features but the weight expects K={w.shape[1]}")
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def w4a8_linear_ref(x, packed, scales, group_size=128, bias=None):
    """Reference W4A8 linear: x quantized per token to int8, symmetric int4 weights, exact
    integer dot per group, float32 accumulation of the group-scaled partial sums."""
    n, k = packed.shape[0], packed.shape[1] * 2
    check_group_size(k, group_size)
    xq, xs = quantize_int8_per_token(x)
    q = (unpack_int4(packed).to(torch.int16) - 8).double().reshape(n, k // group_size, group_size)
    xg = xq.double().reshape(*xq.shape[:-1], k // group_size, group_size)
    part = torch.einsum("...gk,ngk->...ng", xg, q)  # exact integer partial sums per group
    y = (part.float() * scales.float()).sum(-1) * xs[..., None]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ----------------------------------------------------------------------------- NF4 (bitsandbytes layout)
def _nf4_midpoints(device):
    code = NF4_CODE.to(device)
    return (code[1:] + code[:-1]) / 2


def quantize_nf4(w: torch.Tensor, blocksize: int = 64):
    """(N, K) float -> (packed uint8 (N*K//2,), absmax float32 (N*K//blocksize,)), bitsandbytes layout."""
    _check_tensor("weight", w, FLOAT_DTYPES, 2)
    if w.numel() % blocksize or blocksize % 2:
        raise ValueError(f"NF4 blocksize={blocksize} must be even and divide numel={w.numel()}")
    blocks = w.float().reshape(-1, blocksize)
    absmax = blocks.abs().amax(-1)
    normed = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    # nearest code; a value exactly on a midpoint goes to the lower code, as bitsandbytes' x > mid test does
    u = torch.bucketize(normed, _nf4_midpoints(w.device), right=False).to(torch.uint8).reshape(-1)
    packed = (u[0::2] << 4) | u[1::2]
    return packed.contiguous(), absmax


def unpack_nf4(packed: torch.Tensor) -> torch.Tensor:
    """(numel//2,) uint8 -> (numel,) uint8 codes, element 2i from the high nibble."""
    _check_tensor("packed", packed, (torch.uint8,))
    p = packed.reshape(-1)
    return torch.stack((p >> 4, p & 0xF), dim=-1).reshape(-1)


def dequantize_nf4(packed, absmax, shape, blocksize: int = 64, dtype=torch.float32):
    """NF4_CODE[u] * absmax[block] in float32, then cast: what bitsandbytes' dequantize_4bit computes."""
    _check_tensor("absmax", absmax, (torch.float32,))
    numel = 1
    for s in shape:
        numel *= int(s)
    if packed.numel() * 2 != numel:
        raise ValueError(f"packed NF4 data holds {packed.numel() * 2} values, shape {tuple(shape)} needs {numel}")
    if absmax.numel() * blocksize != numel:
        raise ValueError(f"absmax has {absmax.numel()} blocks of {blocksize}; shape {tuple(shape)} needs "
                         f"{numel // blocksize}")
    vals = NF4_CODE.to(packed.device)[unpack_nf4(packed).long()].reshape(-1, blocksize)
    return (vals * absmax.reshape(-1, 1)).reshape(shape).to(dtype)


def nf4_linear_ref(x, packed, absmax, shape, blocksize=64, bias=None):
    w = dequantize_nf4(packed, absmax, shape, blocksize)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def nf4_from_bnb(weight) -> dict:
    """Convert a bitsandbytes Params4bit (Linear4bit.weight) with quant_type 'nf4' into qvit's NF4
    tensors, without re-quantizing: the packed bytes are kept and a double-quantized absmax is
    expanded exactly as bitsandbytes does (code2[q] * absmax2[block] + offset, in float32).

    Returns dict(packed, absmax, shape, blocksize).
    """
    qs = getattr(weight, "quant_state", None)
    if qs is None:
        raise ValueError("weight has no quant_state: not a quantized bitsandbytes Params4bit "
                         "(move the Linear4bit to the GPU first so that it is quantized)")
    if qs.quant_type != "nf4":
        raise ValueError(f"only NF4 converts to qvit's NF4 format, got quant_type={qs.quant_type!r}")
    code = qs.code.float().cpu()
    if not torch.equal(code, NF4_CODE):
        raise ValueError("the bitsandbytes NF4 code table differs from qvit's NF4_CODE")
    absmax = qs.absmax
    if getattr(qs, "nested", False) or qs.state2 is not None:
        s2 = qs.state2
        q = absmax.reshape(-1).long()
        blocks = torch.arange(q.numel(), device=q.device) // s2.blocksize
        absmax = s2.code.float()[q] * s2.absmax.float()[blocks]
        absmax = absmax + qs.offset.float()
    return dict(packed=weight.data.reshape(-1).contiguous(), absmax=absmax.float().contiguous(),
                shape=tuple(qs.shape), blocksize=int(qs.blocksize))


def check_gemm_operands(op: str, xq, x_scale, wq, w_scale, qdtype) -> tuple[int, int, int]:
    """The checks every W8A8 launcher makes first (Triton and CUDA alike): xq (M, K) and wq (N, K) 2-D tensors of
    `qdtype` with the same K, float32 scales; returns (M, K, N). Raises naming `op` and the argument."""
    for name, t, dt in (("xq", xq, qdtype), ("wq", wq, qdtype),
                        ("x_scale", x_scale, torch.float32), ("w_scale", w_scale, torch.float32)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor")
        if t.dtype != dt:
            raise TypeError(f"{op}: {name} must be {dt}, got {t.dtype}")
    if xq.ndim != 2 or wq.ndim != 2:
        raise ValueError(f"{op}: xq and wq must be 2-D, got {tuple(xq.shape)} and {tuple(wq.shape)}")
    m, k = xq.shape
    n, k2 = wq.shape
    if k != k2:
        raise ValueError(f"{op}: xq has K={k} but wq has K={k2}")
    return m, k, n


def e4m3_ordinal(q: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn codes as signed integers in value order (adjacent representable values differ by one):
    the distance between two fp8 tensors in steps of the e4m3 grid."""
    c = q.view(torch.uint8).int()
    return torch.where(c >= 128, -(c - 128), c)
