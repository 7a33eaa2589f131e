"""Batched augmentation against per-image references and the properties training relies on."""
import math

import pytest
import torch
import torch.nn.functional as F

from qvit.train import augment as A


def _imgs(b=6, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def test_crop_flip_matches_per_image_reference():
    x = _imgs()
    u = torch.rand(x.shape[0], 3, generator=torch.Generator().manual_seed(1))
    pad = 3
    out = A.random_crop_flip(x, u, pad, True)
    for i in range(x.shape[0]):
        xp = F.pad(x[i:i + 1], (pad,) * 4, mode="reflect")[0]
        oy, ox = int(u[i, 0] * (2 * pad + 1)), int(u[i, 1] * (2 * pad + 1))
        ref = xp[:, oy:oy + x.shape[2], ox:ox + x.shape[3]]
        if u[i, 2] < 0.5:
            ref = ref.flip(2)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=0)


def test_crop_offsets_cover_all_positions():
    x = _imgs(b=1)
    pad = 2
    seen = set()
    for k in range(2 * pad + 1):
        u = torch.tensor([[(k + 0.5) / (2 * pad + 1), 0.0, 0.9]])
        seen.add(A.random_crop_flip(x, u, pad, True).sum().item())
    assert len(seen) == 2 * pad + 1  # five distinct vertical offsets, none clipped away


@pytest.mark.parametrize("name", [n for n in A.RAND_OPS if n != "identity"])
def test_ops_stay_in_range_and_zero_magnitude_is_identity(name):
    x = _imgs()
    b = x.shape[0]
    sign = torch.tensor([1.0, -1.0] * (b // 2))
    y = A.apply_op(name, x, torch.full((b,), 0.7), sign)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    assert not torch.allclose(y, x, atol=1e-3), f"{name} at magnitude 0.7 changed nothing"
    y0 = A.apply_op(name, x, torch.zeros(b), sign)
    if name == "autocontrast":  # has no magnitude: stretches each channel to [0, 1]
        assert torch.allclose(y0.amin(dim=(2, 3)), torch.zeros(b, 3), atol=1e-6)
    elif name == "posterize":  # 8 bits: rounds to the uint8 grid
        torch.testing.assert_close(y0, torch.round(x * 255) / 255)
    else:
        torch.testing.assert_close(y0, x, atol=2e-6, rtol=0)


def test_solarize_and_translate_values():
    x = _imgs(b=2)
    y = A.apply_op("solarize", x, torch.tensor([0.5, 0.5]), torch.ones(2))
    torch.testing.assert_close(y, torch.where(x >= 0.5, 1 - x, x))
    # translate by +v: out(j) = in(j + shift) with mid-gray where the source is outside
    x = _imgs(b=1, h=8, w=8)
    mag = torch.tensor([0.5 / 0.9])  # theta shift 0.9 * mag = 0.5 = 2 pixels (normalized span 2 over 8 px)
    y = A.apply_op("translate_x", x, mag, torch.ones(1))
    torch.testing.assert_close(y[..., :6], x[..., 2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[..., 6:], torch.full_like(y[..., 6:], 0.5), atol=1e-5, rtol=0)


def test_rand_augment_is_per_image():
    """A batch gives each image exactly what it would get alone with the same random numbers."""
    x = _imgs(b=8)
    u = torch.rand(8, 6, generator=torch.Generator().manual_seed(3))
    out = A.rand_augment(x, u, 2, 9.0)
    for i in range(8):
        torch.testing.assert_close(out[i:i + 1], A.rand_augment(x[i:i + 1], u[i:i + 1], 2, 9.0), atol=1e-6, rtol=0)


def test_random_erase():
    x = _imgs(b=4)
    noise = torch.randn_like(x)
    u = torch.tensor([[0.0, 0.5, 0.5, 0.2, 0.3]] * 4)
    y = A.random_erase(x, u, noise, p=1.0)
    m = y != x
    assert m.any(dim=(1, 2, 3)).all()
    torch.testing.assert_close(y[m], noise[m])
    # one rectangle per image, the same on every channel
    assert (m[:, 0] == m[:, 1]).all() and (m[:, 0] == m[:, 2]).all()
    area = m[:, 0].sum(dim=(1, 2)).float()
    assert (area >= 1).all() and (area <= x.shape[2] * x.shape[3] / 3 + x.shape[3]).all()
    torch.testing.assert_close(A.random_erase(x, u, noise, p=0.0), x)


def test_mix_targets_match_pixels():
    cfg = A.AugmentConfig(label_smoothing=0.1, mix_p=1.0)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()
    y = torch.tensor([0, 1, 2, 3])
    kinds = set()
    for seed in range(12):
        xm, t = A.mix(x, y, torch.Generator().manual_seed(seed), cfg, 5)
        torch.testing.assert_close(t.sum(1), torch.ones(4))
        for i in range(4):
            j = 3 - i  # mixed with the flipped batch
            # each image's mean pixel value tells how much of itself it kept
            keep = float((xm[i].mean() - j) / (i - j))
            assert 0 <= keep <= 1
            smooth = A.smooth_targets(y, 5, 0.1)
            torch.testing.assert_close(t[i], keep * smooth[i] + (1 - keep) * smooth[j], atol=1e-5, rtol=0)
        kinds.add("cutmix" if ((xm[0] != 0) & (xm[0] != 3)).sum() == 0 else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_mix_off_gives_smoothed_labels():
    cfg = A.AugmentConfig(mix_p=0.0, label_smoothing=0.2)
    x = _imgs(b=3)
    xm, t = A.mix(x, torch.tensor([1, 0, 2]), torch.Generator().manual_seed(0), cfg, 4)
    assert xm is x
    torch.testing.assert_close(t[0], torch.tensor([0.05, 0.85, 0.05, 0.05]))


def test_augment_pipeline_deterministic_and_normalized():
    aug = A.Augment(A.AugmentConfig())
    x = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a.dtype == torch.float32 and a.shape == (16, 3, 32, 32) and torch.isfinite(a).all()
    e = aug.eval(x)
    mean = torch.tensor(A.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(A.CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(e * std + mean, x.float() / 255, atol=1e-6, rtol=0)


def test_augment_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        A.Augment(A.AugmentConfig())(torch.rand(2, 3, 8, 8), torch.Generator())


def test_rotation_matrix_is_a_rotation():
    choice = torch.tensor([A.RAND_OPS.index("rotate")])
    th = A._geometric_theta(choice, torch.tensor([1.0]), torch.tensor([1.0]), A.RAND_OPS)
    a = math.radians(30)
    torch.testing.assert_close(th[0], torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]))
