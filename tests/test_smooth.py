"""SmoothQuant folding on the committed trained CIFAR-10 model's real activations."""
import copy
import os

import pytest
import torch

from qvit.vit.smooth import calibrate, outlier_ratio, smooth

MODEL = os.path.join(os.path.dirname(__file__), "..", "results", "h200-train-3", "train", "model-bf16.safetensors")


@pytest.fixture(scope="module")
def model_and_images():
    from qvit.train.augment import Augment, AugmentConfig
    from qvit.train.data import load_cifar10
    from qvit.vit.checkpoint import load_model
    m = load_model(MODEL).float().eval().set_backend(attn="torch")
    x, _ = load_cifar10("test")
    imgs = Augment(AugmentConfig()).eval(x[::79][:128])  # 127 images from all classes
    return m, imgs


def test_smoothing_is_exact_in_float_and_flattens_activations(model_and_images):
    m, imgs = model_and_images
    stats = calibrate(m, imgs)
    assert len(stats) == 2 * m.cfg.depth and all(v.shape == (m.cfg.embed_dim,) for v in stats.values())
    sm = copy.deepcopy(m)
    done = smooth(sm, stats, alpha=0.5)
    assert len(done) == 2 * m.cfg.depth
    with torch.no_grad():
        a, b = m(imgs[:16]), sm(imgs[:16])
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    after = calibrate(sm, imgs)
    for name, (before, _) in done.items():
        assert outlier_ratio(after[name]) < before, name


def test_min_ratio_and_errors(model_and_images):
    m, imgs = model_and_images
    stats = calibrate(m, imgs[:32])
    sm = copy.deepcopy(m)
    done = smooth(sm, stats, min_ratio=float("inf"))
    assert done == {}
    assert all(torch.equal(p, q) for p, q in zip(sm.parameters(), m.parameters()))
    with pytest.raises(ValueError, match="alpha"):
        smooth(sm, stats, alpha=1.5)
    with pytest.raises(KeyError, match="no calibration statistics"):
        smooth(sm, {})
    from qvit.vit.quantize import QuantConfig, quantize
    q = quantize(copy.deepcopy(m), QuantConfig.preset("w8a8", keep=()))
    with pytest.raises(TypeError, match="smooth the float model before quantizing"):
        smooth(q, stats)
    with pytest.raises(ValueError, match="normalized float"):
        calibrate(m, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
