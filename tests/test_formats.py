"""Quantization formats: round trips bit-exact, errors within the bounds the formats imply."""
import pytest
import torch

from qvit.kernels import quant as Q


def rand_w(n, k, dtype=torch.float32):
    return (torch.randn(n, k) * torch.rand(n, 1) * 0.1).to(dtype)


@pytest.mark.parametrize("n,k", [(1, 2), (7, 10), (33, 130)])
def test_int4_pack_unpack_bit_exact(n, k):
    u = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    p = Q.pack_int4(u)
    assert p.shape == (n, k // 2) and p.dtype == torch.uint8
    assert torch.equal(Q.unpack_int4(p), u)
    # documented bit order: k even in the low nibble
    assert int(p[0, 0]) == int(u[0, 0]) | (int(u[0, 1]) << 4)


def test_nf4_pack_order_matches_bitsandbytes_layout():
    w = rand_w(4, 64)
    p, a = Q.quantize_nf4(w)
    codes = Q.unpack_nf4(p)
    assert int(p[0]) == (int(codes[0]) << 4) | int(codes[1])  # element 2i in the high nibble


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_per_channel(dtype):
    w = rand_w(37, 61, dtype)
    q, s = Q.quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and int(q.min()) >= -127
    d = Q.dequantize_int8(q, s)
    # rounding to the nearest step: error <= scale / 2 per element (plus float32 rounding)
    assert ((d - w.float()).abs() <= s[:, None] / 2 * (1 + 1e-5) + 1e-12).all()
    # re-quantizing the dequantized weight gives the same bytes
    q2, s2 = Q.quantize_int8_per_channel(d)
    assert torch.equal(q2, q)


def test_int8_per_token_any_leading_dims():
    x = torch.randn(3, 5, 17)
    q, s = Q.quantize_int8_per_token(x)
    assert q.shape == x.shape and s.shape == (3, 5)
    assert (q.abs().amax(-1) == 127).all()  # every row uses its full range


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_quantize_bounds_and_round_trip(group, symmetric):
    w = rand_w(9, 256)
    p, s, z = Q.quantize_int4(w, group, symmetric)
    assert s.dtype == torch.float16 and s.shape == (9, 256 // group)
    assert (z is None) == symmetric
    d = Q.dequantize_int4(p, s, z, group)
    step = s.float().repeat_interleave(group, dim=1)
    # symmetric: nearest grid point, |error| <= step / 2. Asymmetric: the zero point is rounded to
    # an integer too, shifting the grid by up to step / 2, so the range ends may clip by that much:
    # |error| <= step / 2 + step / 2.
    bound = step / 2 if symmetric else step
    assert ((d - w).abs() <= bound * (1 + 1e-3) + 1e-7).all()
    if symmetric:
        assert int(Q.unpack_int4(p).min()) >= 1  # u = 0 (q = -8) is never produced
    # the dequantized weight re-quantizes to the same nibbles with the stored scales
    u = Q.unpack_int4(p).float().reshape(9, -1, group)
    zero = 8 if symmetric else z.float()[..., None]
    u2 = torch.round(d.reshape(9, -1, group) / s.float()[..., None]) + zero
    assert torch.equal(u2, u)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_progressive_bounds_and_round_trip(group):
    """Two-level 4-bit: q4 in [-7, 7], integer group scales in [1, 17], the expanded int8 weight q4 * s2
    within +-119 (so it never overflows int8), and the error of each weight bounded by the two roundings:
    half a first-level step (s1 / 2) plus half a second-level step (s1 * s2 / 2)."""
    w = rand_w(37, 256)
    w[3, 5] = 0.9  # an outlier channel
    w[4] = 0  # an all-zero channel
    packed, s2, s1 = Q.quantize_int4_progressive(w, group)
    assert packed.shape == (37, 128) and s2.shape == (37, 256 // group) and s1.shape == (37,)
    assert packed.dtype == s2.dtype == torch.uint8 and s1.dtype == torch.float32
    u = Q.unpack_int4(packed)
    assert int(u.min()) >= 1 and int(u.max()) <= 15  # q4 + 8 in [1, 15]
    assert int(s2.min()) >= 1 and int(s2.max()) <= 17
    w8 = Q.expand_int4_progressive(packed, s2, group)
    assert w8.dtype == torch.int8 and int(w8.abs().max()) <= Q.PROG_INT8_MAX
    assert torch.equal(w8.int(), ((u.int() - 8).reshape(37, -1, group) * s2.int()[..., None]).reshape(37, 256))
    deq = Q.dequantize_int4_progressive(packed, s2, s1, group)
    bound = s1[:, None] * (0.5 + s2.float().repeat_interleave(group, 1) / 2)
    assert ((deq - w).abs() <= bound * (1 + 1e-6)).all()
    assert torch.equal(deq[4], torch.zeros(256))
    # the float weight carries the int8 one exactly: dividing by the channel scale gives it back
    assert torch.equal(torch.round(deq / s1[:, None]).to(torch.int8), w8)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_pow2_bounds_and_exact_e4m3(group):
    """4-bit weights with power-of-two group scales (fp8 GEMM's 4-bit format): q4 in [-7, 7], exponents in
    [0, 9]; the expanded float8_e4m3fn weight is q4 * 2^(6 - e) exactly (no rounding in the cast); each weight
    within half its group's step s * 2^-e of the float one; every group uses at least half its range (its
    max over 3.5 steps) unless its exponent is at the cap; all-zero channels stay zero."""
    w = rand_w(37, 256)
    w[3, 5] = 0.9  # an outlier channel: its other groups take finer steps
    w[4] = 0
    w[5, :group] *= 1e-5  # a group far below its channel's max: the exponent cap
    packed, e, ws = Q.quantize_int4_pow2(w, group)
    assert packed.shape == (37, 128) and e.shape == (37, 256 // group) and ws.shape == (37,)
    assert packed.dtype == e.dtype == torch.uint8 and ws.dtype == torch.float32
    u = Q.unpack_int4(packed)
    assert int(u.min()) >= 1 and int(u.max()) <= 15 and int(e.max()) <= Q.POW2_EXP_MAX
    assert int(e[5, 0]) == Q.POW2_EXP_MAX
    w8 = Q.expand_int4_pow2(packed, e, group)
    q = (u.float() - 8).reshape(37, -1, group)
    assert w8.dtype == torch.float8_e4m3fn
    assert torch.equal(w8.float(), (q * torch.exp2(6 - e.float())[..., None]).reshape(37, 256))
    step = (ws[:, None] * 64 * torch.exp2(-e.float())).repeat_interleave(group, 1)
    deq = w8.float() * ws[:, None]
    assert ((deq - w).abs() <= step / 2 * (1 + 1e-6)).all()
    assert torch.equal(deq[4], torch.zeros(256))
    amax = w.abs().reshape(37, -1, group).amax(-1)
    used = amax / step.reshape(37, -1, group)[..., 0]
    ok = (used > 3.5) | (e == Q.POW2_EXP_MAX) | (amax == 0)
    assert bool(ok.all()), used[~ok]
    with pytest.raises(ValueError, match="exponents must be <= 9"):
        Q.expand_int4_pow2(packed, torch.full_like(e, 10), group)


def test_int4_zero_is_exact_asymmetric():
    w = rand_w(4, 64)
    w[:, ::5] = 0.0
    p, s, z = Q.quantize_int4(w, 32, symmetric=False)
    assert (Q.dequantize_int4(p, s, z, 32)[:, ::5] == 0).all()


def test_nf4_round_trip_and_bound():
    w = rand_w(16, 128)
    p, a = Q.quantize_nf4(w, 64)
    d = Q.dequantize_nf4(p, a, w.shape, 64)
    gaps = (Q.NF4_CODE[1:] - Q.NF4_CODE[:-1]).max()
    blocks_err = (d - w).abs().reshape(-1, 64)
    assert (blocks_err <= a[:, None] * gaps / 2 + 1e-7).all()
    p2, a2 = Q.quantize_nf4(d, 64)  # codes are fixed points of quantize o dequantize
    assert torch.equal(p2, p) and torch.allclose(a2, a)


@pytest.mark.parametrize("bad", [
    lambda: Q.quantize_int4(torch.randn(4, 100), 64),          # 64 does not divide K=100
    lambda: Q.quantize_int4(torch.randn(4, 96), 33),           # odd group
    lambda: Q.quantize_int8_per_channel(torch.randn(4, 8).int()),  # wrong dtype
    lambda: Q.quantize_int8_per_channel(torch.randn(8)),       # wrong rank
    lambda: Q.pack_int4(torch.zeros(2, 3, dtype=torch.uint8)),  # odd K
    lambda: Q.dequantize_int4(torch.zeros(2, 32, dtype=torch.uint8), torch.ones(2, 3, dtype=torch.float16), None, 32),
    lambda: Q.dequantize_nf4(torch.zeros(32, dtype=torch.uint8), torch.ones(2), (8, 8), 64),
])
def test_bad_inputs_raise_clear_errors(bad):
    with pytest.raises((ValueError, TypeError)) as e:
        bad()
    assert len(str(e.value)) > 15


def test_reference_matmuls_against_float():
    torch.manual_seed(0)
    x = torch.randn(11, 128)
    w = rand_w(24, 128)
    b = torch.randn(24)
    ref = x @ w.t() + b
    wq, ws = Q.quantize_int8_per_channel(w)
    y8 = Q.w8a8_linear_ref(x, wq, ws, b)
    # error bound from the format: |dx| <= sx/2, |dw| <= sw/2 per element -> per-output bound
    xq, xs = Q.quantize_int8_per_token(x)
    bound = (xs[:, None] / 2 * w.abs().sum(1)[None] + ws[None] / 2 * x.abs().sum(1)[:, None]
             + xs[:, None] * ws[None] / 4 * 128)
    assert ((y8 - ref).abs() <= bound * (1 + 1e-4) + 1e-5).all()
    p, s, _ = Q.quantize_int4(w, 64)
    y4 = Q.w4a16_linear_ref(x, p, s, None, 64)
    wd = Q.dequantize_int4(p, s, None, 64)
    torch.testing.assert_close(y4, x @ wd.t())


def test_bnb_nf4_converts_bit_exactly():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F
    w = torch.randn(48, 128, dtype=torch.float16)
    for nested in (False, True):
        q, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=nested)
        ref = F.dequantize_4bit(q, st)
        param = type("Params4bitLike", (), {"quant_state": st, "data": q})()
        c = Q.nf4_from_bnb(param)
        got = Q.dequantize_nf4(c["packed"], c["absmax"], c["shape"], c["blocksize"], torch.float16)
        assert torch.equal(got, ref), f"nested={nested}"
