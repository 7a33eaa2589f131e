"""Test setup. On a machine without an NVIDIA GPU the Triton kernels run in the interpreter:
TRITON_INTERPRET=1 must be set before triton is first imported, so it is set here, first."""
import math
import os

_HAS_NVIDIA = os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")
if not _HAS_NVIDIA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from qvit._shadow import installed_kernels_first  # noqa: E402

# before any test module imports peft (-> transformers -> Hugging Face's `kernels`): `python -m pytest` puts the
# repository root on sys.path, where kernels/ would be found under that name (qvit/_shadow.py)
installed_kernels_first()

GPU = torch.cuda.is_available()
INTERP = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not GPU:
            item.add_marker(skip_gpu)
    # QVIT_TEST_SHARD="i/n": keep every n-th test starting at i (collection order, so that the parametrized
    # cases of one expensive test spread over the shards); tools/gpu_run.sh runs one shard per GPU
    shard = os.environ.get("QVIT_TEST_SHARD")
    if shard:
        try:
            i, n = (int(v) for v in shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise pytest.UsageError(f"QVIT_TEST_SHARD={shard!r}: expected 'i/n' with 0 <= i < n") from None
        keep = [it for k, it in enumerate(items) if k % n == i]
        config.hook.pytest_deselected(items=[it for k, it in enumerate(items) if k % n != i])
        items[:] = keep


requires_interp = pytest.mark.skipif(not INTERP, reason="Triton interpreter tests (CPU); TRITON_INTERPRET is not 1")


@pytest.fixture
def poison(monkeypatch):
    """Make torch.empty return poisoned memory (NaN for floats, -128 for int8, 0xAB for uint8) so that
    an output element the kernel never writes cannot pass for a correct one."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.int8:
            t.fill_(-128)
        elif t.dtype == torch.uint8:
            t.fill_(0xAB)
        return t

    monkeypatch.setattr(torch, "empty", poisoned)
    return poisoned


def rel_err(y, ref):
    y, ref = y.double(), ref.double()
    assert torch.isfinite(y).all(), "output holds NaN/Inf (unwritten or overflowed elements)"
    return float((y - ref).norm() / ref.norm())


def check_w8a8(fn, m, k, n, bias, gelu, res, fp32_bar=None):
    """A W8A8 GEMM `fn(xq, xs, wq, ws, bias, residual, gelu, out_dtype)` against `int8_matmul_ref` on fresh
    random int8 operands: fp16 output within 2^-10 (the int32 dot is exact; float32 epilogue, one fp16
    rounding); with `fp32_bar`, the float32 output within it too."""
    from qvit.kernels import quant as Q
    x, w = torch.randn(m, k), torch.randn(n, k)
    xq, xs = Q.quantize_int8_per_token(x)
    wq, ws = Q.quantize_int8_per_channel(w)
    b = torch.randn(n) if bias else None
    r = torch.randn(m, n).half() if res else None
    ref = Q.int8_matmul_ref(xq, xs, wq, ws, b, torch.float32, gelu=gelu, residual=r)
    assert rel_err(fn(xq, xs, wq, ws, b, r, gelu, torch.float16), ref) < 2 ** -10
    if fp32_bar is not None:
        assert rel_err(fn(xq, xs, wq, ws, b, r, gelu, torch.float32), ref) < fp32_bar


from qvit.kernels.quant import e4m3_ordinal  # noqa: E402,F401  (the tests' name for it)


def pin_config(monkeypatch, kernel, config=None, **overrides):
    """Make an autotuned Triton kernel run exactly one config (`config`, default its first) with
    `overrides` applied (e.g. the swapped-operand variant), whatever it would have picked: tests reach
    every code path the autotuner may choose on a GPU."""
    import triton
    c = config if config is not None else kernel.configs[0]
    cfg = triton.Config({**c.kwargs, **overrides}, num_warps=c.num_warps, num_stages=c.num_stages,
                        pre_hook=c.pre_hook)
    monkeypatch.setattr(kernel, "configs", [cfg])
    monkeypatch.setattr(kernel, "cache", {})
    if getattr(kernel, "early_config_prune", None) is not None:
        monkeypatch.setattr(kernel, "early_config_prune", None)


def check_fp8_static_out(fn, m, k, n, gelu):
    """An fp8 GEMM whose epilogue writes float8_e4m3fn at one static scale (fc1 of fp8s), under the interpreter
    (exact sums): the codes `quantize_fp8_static` makes of the float32 reference epilogue (one e4m3 step at most
    where the float32 epilogue's rounding lands on the other side of a rounding edge), saturated at +-448 where
    the scale is too small, and the launcher's refusals (int8 operands, a scale that is not one float32)."""
    import pytest

    from qvit.kernels import quant as Q
    xq, xs = Q.quantize_fp8_per_token(torch.randn(m, k))
    wq, ws = Q.quantize_fp8_per_channel(torch.randn(n, k))
    b = torch.randn(n)
    ref = Q.fp8_matmul_ref(xq, xs, wq, ws, b, torch.float32, gelu=gelu)
    s = torch.tensor(float(ref.abs().max()) / 448 * 0.5)  # half the range: the largest values saturate
    q, sc = fn(xq, xs, wq, ws, b, gelu, s)
    qr, scr = Q.quantize_fp8_static(ref, s)
    assert torch.equal(sc, scr) and sc.shape == (m,) and q.dtype == torch.float8_e4m3fn
    d = (e4m3_ordinal(q) - e4m3_ordinal(qr)).abs()
    assert int(d.max()) <= 1 and float(d.float().mean()) < 2e-2
    assert bool((q.float().abs() == 448).any()) and not bool(q.float().isnan().any())
    with pytest.raises(TypeError, match="float8_e4m3fn operands only"):
        fn(*Q.quantize_int8_per_token(torch.randn(m, k)), *Q.quantize_int8_per_channel(torch.randn(n, k)), b, gelu, s)
    with pytest.raises(ValueError, match="one-element float32"):
        fn(xq, xs, wq, ws, b, gelu, torch.ones(2))


# GELU's tanh form against its erf form: max |difference| over [-12, 12] is 4.732e-4 (at |x| = 2.699, float64,
# 2.4 M points); beyond, both are x or 0 to float32. QuantConfig.gelu_tanh's documented distance
GELU_TANH_VS_ERF = 4.8e-4
# tanh.approx.f32's absolute error over the whole range (PTX ISA)
TANH_APPROX_ERR = 2 ** -10.987


def fp8_bracket(q, g, s, delta):
    """Elementwise: the e4m3 codes q (at scale s) are those of some value within delta of g (float32 tensors,
    delta >= 0): `quantize_fp8_static` rounds monotonically, so q lies between the codes of g - delta and
    g + delta."""
    from qvit.kernels import quant as Q
    lo, _ = Q.quantize_fp8_static(g - delta, s)
    hi, _ = Q.quantize_fp8_static(g + delta, s)
    return (q.float() >= lo.float()) & (q.float() <= hi.float())


def check_fp8_static_out_gelu_tanh(fn, y_pre, xq, xs, wq, ws, b, s, tanh_err, y_err):
    """fc1's fp8 static output with GELU's tanh form (QuantConfig.gelu_tanh): every code is the rounding of a
    value within the kernel's error of torch's gelu(approximate='tanh') of the pre-activation y_pre (float32,
    bias included): tanh's error (tanh_err, absolute) times |y| / 2, the pre-activation's (y_err relative,
    times GELU's slope <= 1.13), and the scale's folded reciprocal (2^-20 of the value). Saturation, no NaN,
    and gelu_tanh without gelu refused."""
    import pytest
    q, sc = fn(xq, xs, wq, ws, b, True, s, True)
    g = torch.nn.functional.gelu(y_pre.double(), approximate="tanh").float()
    delta = y_pre.abs() * (tanh_err / 2 + 1.13 * y_err) + g.abs() * 2 ** -20
    ok = fp8_bracket(q, g, s, delta)
    assert bool(ok.all()), f"{int((~ok).sum())} of {ok.numel()} codes outside the bracket"
    assert torch.equal(sc, s.reshape(()).expand(xq.shape[0]))
    assert bool((q.float().abs() == 448).any()) and not bool(q.float().isnan().any())
    with pytest.raises(ValueError, match="gelu_tanh=True .* needs gelu=True"):
        fn(xq, xs, wq, ws, b, False, s, True)
    return q


def spy(monkeypatch, module: str, name: str) -> list:
    """Wrap `module.name` (a kernel launcher the model looks up at call time) so that each call appends its
    first argument's shape to the returned list, then runs the real function."""
    import importlib
    mod = importlib.import_module(module)
    calls, real = [], getattr(mod, name)
    monkeypatch.setattr(mod, name, lambda *a, **k: calls.append(tuple(a[0].shape)) or real(*a, **k))
    return calls


def norm_codes_and_ties(x, lw, lb, s_in):
    """The LayerNorm (float64) of x at the static scale s_in as e4m3 codes (`quantize_fp8_static`), and where a code
    is a near-tie: it changes when its value moves by 1e-6 of the magnitudes the value is computed from
    (|(x - mean) rstd w| + (|x| + |mean|) rstd |w| + |b|; float32 statistics and the cancellation of the bias against
    the normalized value leave errors below 4.5e-7 of that: session 27, 2 M values), so that a kernel computing in
    float32 may round it to the other neighbour."""
    from qvit.kernels.quant import quantize_fp8_static
    xd, w, b = x.double(), lw.double(), lb.double()
    mean = xd.mean(1, keepdim=True)
    rstd = 1 / torch.sqrt(((xd - mean) ** 2).mean(1, keepdim=True) + 1e-6)
    t = (xd - mean) * rstd * w
    h = t + b
    delta = 1e-6 * (t.abs() + (xd.abs() + mean.abs()) * rstd * w.abs() + b.abs())
    q = quantize_fp8_static(h.float(), s_in)[0]
    lo = quantize_fp8_static((h - delta).float(), s_in)[0]
    hi = quantize_fp8_static((h + delta).float(), s_in)[0]
    ties = (lo.view(torch.uint8) != q.view(torch.uint8)) | (hi.view(torch.uint8) != q.view(torch.uint8))
    return q, ties


def check_res_norm(xq, xs, wq, ws, b, r, lw, lb, barrier=True):
    """The fp8 GEMM + residual with the next LayerNorm in its epilogue (`w8a8_linear_res_norm_fp8`) on operands
    whose residual stream r has a common offset and an outlier channel, at a power-of-two static output scale that
    saturates the largest values: y is the plain fp8 GEMM's (`w8a8_linear_fp8_fast_accum`, bit for bit: callers
    on a GPU pin one config); the codes are those of the float64 LayerNorm of y but at near-ties (one e4m3 step
    there), near-ties rare; the scale vector is the static scale. Returns the op's outputs."""
    from qvit.kernels import w8a8_linear as L
    m, n = r.shape
    y = L.w8a8_linear_fp8_fast_accum(xq, xs, wq, ws, b, r, False, r.dtype)
    h = torch.nn.functional.layer_norm(y.double(), (n,), lw.double(), lb.double(), 1e-6)
    s = torch.tensor(2.0 ** math.floor(math.log2(float(h.abs().max()) / 448 * 0.5)), device=r.device)
    got, q, sv = L.w8a8_linear_res_norm_fp8(xq, xs, wq, ws, b, r, lw, lb, 1e-6, s, barrier)
    assert got.dtype == r.dtype and torch.equal(got, y)
    assert torch.equal(sv, s.expand(m))
    qr, ties = norm_codes_and_ties(y.float(), lw.float(), lb.float(), s)
    assert bool((qr.float().abs() == 448).any())
    assert float(ties.float().mean()) < 0.01
    d = (e4m3_ordinal(q) - e4m3_ordinal(qr)).abs()
    assert int(d.max()) <= 1 and bool((d[~ties] == 0).all()), (int(d.max()), int((d[~ties] != 0).sum()))
    return got, q, sv


def check_norm_prologue(x, lw, lb, n, static_out):
    """The fp8 GEMM with the LayerNorm prologue (`w8a8_linear_norm_fp8[_static_out]`) against its parts, on x (M, K)
    with a power-of-two static input scale that saturates the largest values:
    (1) its codes, read through the identity weight (one exact product per output, times the power of two): those
    of the float64 LayerNorm, except at near-ties, which may sit one e4m3 step away;
    (2) with a random weight (N, K), bias, and either the float output or fc1's GELU (tanh form) into fp8: identical
    to the plain fp8 GEMM kernel fed those codes (the same accumulation: callers pin one config)."""
    from qvit.kernels import quant as Q
    from qvit.kernels import w8a8_linear as L
    m, k = x.shape
    h = torch.nn.functional.layer_norm(x.double(), (k,), lw.double(), lb.double(), 1e-6)
    s_in = torch.tensor(2.0 ** math.floor(math.log2(float(h.abs().max()) / 448 * 0.5)), device=x.device)
    qr, ties = norm_codes_and_ties(x, lw, lb, s_in)
    assert bool((qr.float().abs() == 448).any())
    assert float(ties.float().mean()) < 0.01  # near-ties are rare: nearly every code is compared exactly
    eye = torch.eye(k, device=x.device).to(torch.float8_e4m3fn)
    ones = torch.ones(k, device=x.device)
    codes = (L.w8a8_linear_norm_fp8(x, lw, lb, 1e-6, s_in, eye, ones).float() / s_in).to(torch.float8_e4m3fn)
    d = (e4m3_ordinal(codes) - e4m3_ordinal(qr)).abs()
    assert int(d.max()) <= 1 and bool((d[~ties] == 0).all()), (int(d.max()), int((d[~ties] != 0).sum()))
    wq, ws = Q.quantize_fp8_per_channel(torch.randn(n, k, device=x.device) * 0.05)
    b = torch.randn(n, device=x.device)
    sv_in = s_in.expand(m).contiguous()
    if static_out:
        y = L.w8a8_linear_fp8_fast_accum(codes, sv_in, wq, ws, b, None, False, torch.float32)
        s_out = (torch.nn.functional.gelu(y).abs().max() / 448 * 0.8).float().reshape(())
        got, sv = L.w8a8_linear_norm_fp8_static_out(x, lw, lb, 1e-6, s_in, wq, ws, b, True, s_out, True)
        ref, _ = L.w8a8_linear_fp8_static_out(codes, sv_in, wq, ws, b, True, s_out, True)
        assert torch.equal(sv, s_out.expand(m))
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
    else:
        got = L.w8a8_linear_norm_fp8(x, lw, lb, 1e-6, s_in, wq, ws, b)
        assert got.dtype == x.dtype
        assert torch.equal(got, L.w8a8_linear_fp8_fast_accum(codes, sv_in, wq, ws, b, None, False, x.dtype))
