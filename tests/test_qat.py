"""QAT: fake quantization equals the real quantized model, gradients pass through, training runs."""
import copy

import pytest
import torch

from qvit.train.qat import FakeQuantLinear, fake_quant_act, fake_quant_weight, prepare_qat, strip_qat
from qvit.vit.model import ViT
from qvit.vit.quantize import QuantConfig, quantize


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "w4a8p", "w4a16", "nf4"])
def test_fake_quant_layers_match_real_quantized_layers(preset):
    """Each FakeQuantLinear, on the input it sees inside the QAT model, gives what the deployed layer
    (reference backend) gives on that input, to float summation order: the fake quantizer is the real
    one. (End-to-end logits are not compared to that tolerance: with dynamic per-token activation
    quantization a 1e-7 input change flips a few roundings and moves a random-init model's logits by ~1%,
    for the fake-quant model against itself as much as against the deployed one.)"""
    torch.manual_seed(0)
    m = ViT.from_name("vit_cifar_patch4_32").eval()
    x = torch.randn(3, 3, 32, 32)
    cfg = QuantConfig.preset(preset)
    fq = copy.deepcopy(m).set_backend(attn="torch")
    names = prepare_qat(fq, cfg)
    assert len(names) == 6 * 4  # blocks 1..6 x (qkv, proj, fc1, fc2); head and blocks 0, 7 kept
    real = quantize(copy.deepcopy(m), cfg).set_backend(linear="torch", attn="torch")
    seen = {}
    hooks = [fq.get_submodule(n).register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0], out)))
             for n in names]
    with torch.no_grad():
        logits = fq(x)
        for n in names:
            inp, out = seen[n]
            ref = real.get_submodule(n)(inp)
            assert (out - ref).abs().max() <= 1e-5 * ref.abs().max(), n
    for h in hooks:
        h.remove()
    with torch.no_grad():
        f = m.set_backend(attn="torch")(x)
    assert (logits - f).abs().max() > 1e-3 * f.abs().max()  # and quantization did change the output


def test_ste_gradients():
    w = torch.randn(16, 128, requires_grad=True)
    cfg = QuantConfig.preset("w4a8")
    y = fake_quant_weight(w, cfg)
    assert not torch.equal(y, w)
    y.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))
    x = torch.randn(4, 128, requires_grad=True)
    (fake_quant_act(x) * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))


def test_prepare_and_strip_keep_the_state_dict():
    m = ViT.from_name("vit_micro_patch4_32")
    keys = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="no linear layer"):  # K=64 < group 128: nothing to quantize
        prepare_qat(m, QuantConfig.preset("w4a8"))
    for p in ("fp8", "w4f8s2t"):  # no fake quantization of the fp8 grids: refused, not run on another grid
        with pytest.raises(ValueError, match="fp8 formats .* have no fake quantization"):
            prepare_qat(m, QuantConfig.preset(p, keep=()))
    prepare_qat(m, QuantConfig.preset("w8a8", keep=()))
    assert any(isinstance(mod, FakeQuantLinear) for mod in m.modules())
    assert m.state_dict().keys() == keys.keys()
    strip_qat(m)
    assert not any(isinstance(mod, FakeQuantLinear) for mod in m.modules())
    for k, v in m.state_dict().items():
        assert torch.equal(v, keys[k])


def test_qat_training_run(tmp_path):
    from qvit.train.trainer import TrainConfig, train
    from qvit.vit.checkpoint import load_model
    common = dict(epochs=1, batch_size=64, limit_train=128, limit_test=100, warmup_epochs=0, eval_every=1,
                  progress=False, compile="off", model="vit_cifar_patch4_32")
    train(TrainConfig(out=str(tmp_path / "base"), **common), device="cpu")
    s = train(TrainConfig(out=str(tmp_path / "qat"), qat="w4a8", lr=1e-4,
                          pretrained=str(tmp_path / "base" / "model.safetensors"), **common), device="cpu")
    m = load_model(str(tmp_path / "qat" / "model.safetensors"))
    assert m.cfg.extra["qat"]["preset"] == "w4a8" and m.cfg.extra["qat"]["layers"] == 24
    assert s["test"]["n"] == 100
