"""The persistent TMA W8A8 kernel (kernels/w8a8_persistent.py) against the plain-PyTorch references, under the
interpreter: 2 programs there, so each walks several output tiles (16 x 32) and several K tiles (32)."""
import pytest
import torch

from conftest import check_w8a8, rel_err, requires_interp
from qvit.kernels import quant as Q

pytestmark = requires_interp


@pytest.mark.parametrize("m,k,n", [(1, 32, 16), (37, 64, 50), (70, 96, 100)])
@pytest.mark.parametrize("bias,gelu,res", [(False, False, False), (True, True, False), (True, False, True)])
def test_persistent_int8_matches_reference(poison, m, k, n, bias, gelu, res):
    from qvit.kernels.w8a8_persistent import w8a8_linear_persistent
    check_w8a8(w8a8_linear_persistent, m, k, n, bias, gelu, res, fp32_bar=2 ** -20)


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


@pytest.mark.parametrize("preset", ["w8a8", "fp8"])
def test_model_runs_persistent_gemm_when_asked(monkeypatch, preset):
    """QVIT_PERSISTENT_GEMM=1 sends the quantized linears of a model (Triton backend) to the persistent kernel,
    and the logits match the same model on the one-tile-per-program kernel (same arithmetic in the
    interpreter: both sum exact products in the same precision; the order differs, so not bit-identical)."""
    import copy
    import importlib

    from qvit.vit import QuantConfig, ViT, quantize
    mod = importlib.import_module("qvit.kernels.w8a8_persistent")
    calls = []
    real = mod.w8a8_linear_persistent
    monkeypatch.setattr(mod, "w8a8_linear_persistent", lambda *a: calls.append(a[0].shape) or real(*a))
    torch.manual_seed(0)
    base = ViT.from_name("vit_micro_patch4_32").eval()
    m = quantize(copy.deepcopy(base), QuantConfig.preset(preset, keep=())).half().set_backend(linear="triton",
                                                                                                attn="sdpa")
    x = torch.randn(2, 3, 32, 32).half()
    with torch.no_grad():
        monkeypatch.setenv("QVIT_PERSISTENT_GEMM", "0")
        y0 = m(x).float()
        assert not calls
        monkeypatch.setenv("QVIT_PERSISTENT_GEMM", "1")
        y1 = m(x).float()
    assert len(calls) == 4 * base.cfg.depth + 1  # qkv, proj, fc1, fc2 of every block, and the head
    assert rel_err(y1, y0) < 2 ** -9
