"""The persistent TMA W8A8 kernel (kernels/w8a8_persistent.py) against the plain-PyTorch references, under the
interpreter: 2 programs there, so each walks several output tiles (16 x 32) and several K tiles (32)."""
import pytest
import torch

from conftest import check_fp8_static_out, check_w8a8, rel_err, requires_interp, spy
from qvit.kernels import quant as Q

pytestmark = requires_interp


@pytest.mark.parametrize("m,k,n", [(1, 32, 16), (37, 64, 50), (70, 96, 100)])
@pytest.mark.parametrize("bias,gelu,res", [(False, False, False), (True, True, False), (True, False, True)])
def test_persistent_int8_matches_reference(poison, m, k, n, bias, gelu, res):
    from qvit.kernels.w8a8_persistent import w8a8_linear_persistent
    check_w8a8(w8a8_linear_persistent, m, k, n, bias, gelu, res, fp32_bar=2 ** -20)


def test_persistent_two_ctas_per_sm_cover_every_tile(poison, monkeypatch):
    """CTAS_PER_SM = 2 (the configs that overlap one CTA's epilogue with another's MMAs): twice the programs,
    each stepping twice as far; every output tile written once (poisoned output: a missed tile fails)."""
    from conftest import pin_config
    from qvit.kernels import w8a8_persistent as P
    pin_config(monkeypatch, P._w8a8_persistent_kernel, CTAS_PER_SM=2)
    check_w8a8(P.w8a8_linear_persistent, 70, 96, 100, True, True, False, fp32_bar=2 ** -20)


@pytest.mark.parametrize("bias,gelu,res", [(True, True, False), (True, False, True), (False, False, False)])
def test_persistent_tma_store_epilogue(poison, monkeypatch, bias, gelu, res):
    """EPI_TMA: the output tile through a tensor descriptor; odd M and an N that is not a
    multiple of the 32-wide tile (but gives 16-byte rows), so the last boxes hang over the edges (the TMA unit
    clips them); poisoned output (a tile not written fails). N = 50 (100-byte rows): the plain epilogue."""
    from conftest import pin_config
    from qvit.kernels import w8a8_persistent as P
    pin_config(monkeypatch, P._w8a8_persistent_kernel, EPI_TMA=True)
    for n in (56, 50):
        check_w8a8(P.w8a8_linear_persistent, 37, 64, n, bias, gelu, res, fp32_bar=2 ** -20)


def test_persistent_tma_store_fp8_static_out(poison, monkeypatch):
    """EPI_TMA with fc1's fp8 static output (GELU's erf and tanh forms): the same codes as the plain epilogue's
    (same accumulation)."""
    from conftest import pin_config
    from qvit.kernels import w8a8_persistent as P
    xq, xs = Q.quantize_fp8_per_token(torch.randn(37, 64))
    wq, ws = Q.quantize_fp8_per_channel(torch.randn(48, 64))  # 48-byte fp8 rows: TMA-addressable
    b = torch.randn(48)
    s = torch.tensor(0.01)
    q0, _ = P.w8a8_linear_persistent_fp8_static_out(xq, xs, wq, ws, b, True, s)
    t0, _ = P.w8a8_linear_persistent_fp8_static_out(xq, xs, wq, ws, b, True, s, True)  # GELU's tanh form
    pin_config(monkeypatch, P._w8a8_persistent_kernel, EPI_TMA=True)
    q1, _ = P.w8a8_linear_persistent_fp8_static_out(xq, xs, wq, ws, b, True, s)
    t1, _ = P.w8a8_linear_persistent_fp8_static_out(xq, xs, wq, ws, b, True, s, True)
    assert torch.equal(q0.view(torch.uint8), q1.view(torch.uint8))
    assert torch.equal(t0.view(torch.uint8), t1.view(torch.uint8))
    assert not torch.equal(t0.view(torch.uint8), q0.view(torch.uint8))  # the two GELU forms differ somewhere


def test_persistent_tma_store_needs_aligned_rows():
    """N = 50 in fp16 is a 100-byte row: not 16-byte aligned, so the EPI_TMA configs are pruned (and the
    fallback for tiny shapes is a plain-epilogue config)."""
    from qvit.kernels import w8a8_persistent as P
    cfgs = [c for c in P._configs()]
    tma = dict(cfgs[0].kwargs, EPI_TMA=True)
    import triton
    cfgs = cfgs + [triton.Config(tma, num_warps=4, num_stages=1)]
    args = dict(M=37, N=50, K=64, GELU=False, QSTATIC=False)
    assert all(not c.kwargs.get("EPI_TMA") for c in P._prune(cfgs, dict(args, TMA_OUT=False)))
    assert any(c.kwargs.get("EPI_TMA") for c in P._prune(cfgs, dict(args, TMA_OUT=True)))
    tiny = dict(M=1, N=1, K=16, GELU=False, QSTATIC=False, TMA_OUT=False)
    assert all(not c.kwargs.get("EPI_TMA") for c in P._prune(list(reversed(cfgs)), tiny))


@pytest.mark.parametrize("m,k,n", [(1, 32, 16), (37, 64, 50)])
def test_persistent_fp8_matches_reference(poison, m, k, n):
    from qvit.kernels.w8a8_persistent import w8a8_linear_persistent
    xq, xs = Q.quantize_fp8_per_token(torch.randn(m, k))
    wq, ws = Q.quantize_fp8_per_channel(torch.randn(n, k))
    b, r = torch.randn(n), torch.randn(m, n).half()
    y = w8a8_linear_persistent(xq, xs, wq, ws, b, r, True, torch.float16)
    ref = Q.fp8_matmul_ref(xq, xs, wq, ws, b, torch.float32, gelu=True, residual=r)
    # the interpreter sums the exact fp8 products in float32 (the same bar as the fp8 w8a8_linear test)
    assert rel_err(y, ref) < 2 ** -10


def test_persistent_refuses_what_it_cannot_run():
    from qvit.kernels.w8a8_persistent import w8a8_linear_persistent
    xq, xs = Q.quantize_int8_per_token(torch.randn(4, 40))
    wq, ws = Q.quantize_int8_per_channel(torch.randn(8, 40))
    with pytest.raises(ValueError, match="K=40 must be a multiple of 16"):
        w8a8_linear_persistent(xq, xs, wq, ws)
    xq, _ = Q.quantize_int8_per_token(torch.randn(4, 64))
    wq, ws = Q.quantize_int8_per_channel(torch.randn(8, 64))
    with pytest.raises(ValueError, match="per-token activation scales"):
        w8a8_linear_persistent(xq, torch.ones(4, 2), wq, ws)
    with pytest.raises(ValueError, match="w_scale"):
        w8a8_linear_persistent(xq, torch.ones(4), wq, ws[:4])
    buf = torch.zeros(4 * 64 + 8, dtype=torch.int8)
    shifted = buf[8:].view(4, 64)  # contiguous, 8 bytes past an aligned start
    with pytest.raises(ValueError, match="16-byte aligned"):
        w8a8_linear_persistent(shifted, torch.ones(4), wq, ws)


@pytest.mark.parametrize("m,k,n", [(1, 32, 16), (37, 64, 50)])
@pytest.mark.parametrize("gelu", [False, True])
def test_persistent_fp8_static_out_matches_reference(poison, m, k, n, gelu):
    """fp8s's fc1 on the persistent kernel (conftest.check_fp8_static_out)."""
    from qvit.kernels.w8a8_persistent import w8a8_linear_persistent_fp8_static_out
    check_fp8_static_out(w8a8_linear_persistent_fp8_static_out, m, k, n, gelu)


def test_persistent_mode_auto_and_bad_value(monkeypatch):
    """QVIT_PERSISTENT_GEMM: auto (the default) takes the persistent kernel only for CUDA tensors from
    PERSISTENT_MIN_TOKENS tokens on; 1 wherever it applies; 0 never; anything else is an error naming it."""
    import importlib
    VQ = importlib.import_module("qvit.vit.quantize")  # the module (qvit.vit.quantize is also a function)
    big = torch.zeros(VQ.PERSISTENT_MIN_TOKENS, 64, dtype=torch.int8)
    xs = torch.ones(big.shape[0])
    monkeypatch.delenv("QVIT_PERSISTENT_GEMM", raising=False)
    assert not VQ._use_persistent(big, xs)  # CPU tensors (the interpreter): auto stays on the tiled kernel
    monkeypatch.setenv("QVIT_PERSISTENT_GEMM", "1")
    assert VQ._use_persistent(big[:3], xs[:3])
    assert VQ._use_persistent(big[:3])  # no scales yet: per-token ones (the LayerNorm-prologue check)
    assert not VQ._use_persistent(big[:3], torch.ones(3, 2))  # group scales: not this kernel
    assert not VQ._use_persistent(torch.zeros(3, 40, dtype=torch.int8), xs[:3])  # K % 16
    monkeypatch.setenv("QVIT_PERSISTENT_GEMM", "0")
    assert not VQ._use_persistent(big, xs)
    monkeypatch.setenv("QVIT_PERSISTENT_GEMM", "yes")
    with pytest.raises(ValueError, match="QVIT_PERSISTENT_GEMM='yes'"):
        VQ._use_persistent(big, xs)


def _off_then_on(monkeypatch, model, calls):
    """The logits of `model` on a fixed 32 px batch with QVIT_PERSISTENT_GEMM=0 (no call recorded in `calls`)
    and then =1."""
    x = torch.randn(2, 3, 32, 32).half()
    with torch.no_grad():
        monkeypatch.setenv("QVIT_PERSISTENT_GEMM", "0")
        y0 = model(x).float()
        assert not calls
        monkeypatch.setenv("QVIT_PERSISTENT_GEMM", "1")
        y1 = model(x).float()
    return y0, y1


def test_fp8s_model_runs_persistent_static_out_when_asked(monkeypatch):
    """fp8s with QVIT_PERSISTENT_GEMM=1: fc1 writes fc2's fp8 input from the persistent kernel (once per block),
    the other linears run persistent too, and the logits match the one-tile-per-program kernels'."""
    import copy

    from qvit.vit import QuantConfig, ViT, quantize
    calls = spy(monkeypatch, "qvit.kernels.w8a8_persistent", "w8a8_linear_persistent_fp8_static_out")
    torch.manual_seed(0)
    base = ViT.from_name("vit_micro_patch4_32").eval()
    m = quantize(copy.deepcopy(base), QuantConfig.preset("fp8s", keep=()), calib=torch.randn(16, 3, 32, 32))
    m = m.half().set_backend(linear="triton", attn="sdpa")
    y0, y1 = _off_then_on(monkeypatch, m, calls)
    assert len(calls) == base.cfg.depth
    assert rel_err(y1, y0) < 2 ** -9


@pytest.mark.parametrize("preset", ["w8a8", "fp8"])
def test_model_runs_persistent_gemm_when_asked(monkeypatch, preset):
    """QVIT_PERSISTENT_GEMM=1 sends the quantized linears of a model (Triton backend) to the persistent kernel,
    and the logits match the same model on the one-tile-per-program kernel (same arithmetic in the
    interpreter: both sum exact products in the same precision; the order differs, so not bit-identical)."""
    import copy

    from qvit.vit import QuantConfig, ViT, quantize
    calls = spy(monkeypatch, "qvit.kernels.w8a8_persistent", "w8a8_linear_persistent")
    torch.manual_seed(0)
    base = ViT.from_name("vit_micro_patch4_32").eval()
    m = quantize(copy.deepcopy(base), QuantConfig.preset(preset, keep=())).half().set_backend(linear="triton",
                                                                                                attn="sdpa")
    y0, y1 = _off_then_on(monkeypatch, m, calls)
    assert len(calls) == 4 * base.cfg.depth + 1  # qkv, proj, fc1, fc2 of every block, and the head
    assert rel_err(y1, y0) < 2 ** -9
