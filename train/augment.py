"""Batched image augmentation on the training device (GPU or CPU), one call per batch.

Small-image ViTs need heavy augmentation to train well from scratch on CIFAR-10 (RandAugment,
Mixup/CutMix, random erasing, label smoothing). Doing it per image in DataLoader workers caps
the step rate on a machine with few cores; here every op is a tensor op over the whole batch,
with per-sample random choices drawn from one `torch.Generator`, so an epoch's augmentation is a
function of (seed, epoch, rank) and a resumed run replays it.

Pipeline (`Augment.__call__`): uint8 (B, C, H, W) -> random crop with reflect padding + flip
-> RandAugment (`num_ops` ops per image from `RAND_OPS`, magnitude uniform in [0, magnitude])
-> normalize -> random erasing; then `mix` applies Mixup or CutMix to the batch and returns soft
targets with label smoothing. Each op has a plain per-image reference in the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RandAugment op list (timm's "rand" set without Equalize, whose histogram pass does not batch well).
RAND_OPS = ("identity", "autocontrast", "rotate", "solarize", "color", "posterize", "contrast",
            "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
_GEOMETRIC = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y"}
_FILL = 0.5  # RandAugment fills uncovered pixels with mid-gray


@dataclass
class AugmentConfig:
    pad: int = 4                 # random crop from the reflect-padded image (0: off)
    flip: bool = True
    num_ops: int = 2             # RandAugment ops per image (0: off)
    magnitude: float = 9.0       # of 10; each image draws uniform [0, magnitude]
    erase_p: float = 0.25        # random erasing probability per image
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_p: float = 1.0           # probability that a batch is mixed at all
    switch_p: float = 0.5        # probability of CutMix instead of Mixup
    label_smoothing: float = 0.1
    mean: tuple = CIFAR_MEAN
    std: tuple = CIFAR_STD


def _bcast(v):
    return v.view(-1, 1, 1, 1)


def _gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x.mean(1, keepdim=True)


def _blend(a, b, factor):
    """PIL ImageEnhance: b + factor * (a - b), clamped to [0, 1]."""
    return (b + _bcast(factor) * (a - b)).clamp_(0.0, 1.0)


def random_crop_flip(x, u, pad: int, flip: bool):
    """Random crop of size (H, W) from x reflect-padded by `pad`, then a horizontal flip with p=0.5.
    u: (B, 3) uniforms in [0, 1): y offset, x offset, flip."""
    b, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        oy = (u[:, 0] * (2 * pad + 1)).long().clamp_(max=2 * pad)
        ox = (u[:, 1] * (2 * pad + 1)).long().clamp_(max=2 * pad)
        rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])  # (B, H)
        cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])  # (B, W)
        bi = torch.arange(b, device=dev)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        x = torch.where(_bcast(u[:, 2] < 0.5), x.flip(3), x)
    return x.contiguous()


def _affine(x, theta):
    """Apply per-sample 2x3 affine maps (output -> input, normalized coords) with mid-gray fill."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    ones = torch.ones_like(x[:, :1])
    out = F.grid_sample(torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img, cover = out[:, :-1], out[:, -1:]
    return img + (1.0 - cover) * _FILL


def apply_op(name: str, x, mag, sign):
    """One RandAugment op on the whole batch. x float (B, C, H, W) in [0, 1]; mag in [0, 1] per image
    (fraction of the maximum strength); sign +-1 per image for the signed ops."""
    b = x.shape[0]
    if name == "identity":
        return x
    if name == "autocontrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        span = hi - lo
        return torch.where(span > 1e-6, (x - lo) / span.clamp_min(1e-6), x)
    if name == "solarize":  # threshold 1 -> 0 with magnitude
        t = _bcast(1.0 - mag)
        return torch.where(x >= t, 1.0 - x, x)
    if name == "posterize":  # 8 -> 4 bits
        bits = (8 - torch.round(4 * mag)).clamp(4, 8)
        shift = _bcast(2.0 ** (8 - bits))
        return torch.floor(torch.round(x * 255) / shift) * shift / 255
    if name in ("color", "contrast", "brightness", "sharpness"):
        factor = 1.0 + 0.9 * mag * sign
        if name == "color":
            return _blend(x, _gray(x).expand_as(x), factor)
        if name == "contrast":
            return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor)
        if name == "brightness":
            return _blend(x, torch.zeros_like(x), factor)
        # sharpness: PIL's smoothing kernel, borders kept
        k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
        c = x.shape[1]
        blur = F.conv2d(x, k.expand(c, 1, 3, 3), padding=1, groups=c)
        blur[..., 0, :], blur[..., -1, :] = x[..., 0, :], x[..., -1, :]
        blur[..., :, 0], blur[..., :, -1] = x[..., :, 0], x[..., :, -1]
        return _blend(x, blur, factor)
    if name in _GEOMETRIC:
        theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        v = mag * sign
        if name == "rotate":  # up to 30 degrees
            a = v * math.radians(30.0)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        elif name == "shear_x":  # up to 0.3
            theta[:, 0, 1] = 0.3 * v
        elif name == "shear_y":
            theta[:, 1, 0] = 0.3 * v
        elif name == "translate_x":  # up to 45% of the width (normalized coords span 2)
            theta[:, 0, 2] = 2 * 0.45 * v
        else:
            theta[:, 1, 2] = 2 * 0.45 * v
        return _affine(x, theta)
    raise ValueError(f"unknown augmentation op {name!r}; known: {', '.join(RAND_OPS)}")


def _geometric_theta(choice, mag, sign, ops):
    """Per-sample 2x3 affine (output -> input, normalized coords): identity unless the image drew a
    geometric op. Rotation up to 30 degrees, shear up to 0.3, translation up to 45% of the side."""
    b = choice.shape[0]
    v = mag * sign
    zero = torch.zeros_like(v)
    a = torch.where(choice == ops.index("rotate"), v * math.radians(30.0), zero) if "rotate" in ops else zero
    sx = torch.where(choice == ops.index("shear_x"), 0.3 * v, zero) if "shear_x" in ops else zero
    sy = torch.where(choice == ops.index("shear_y"), 0.3 * v, zero) if "shear_y" in ops else zero
    tx = torch.where(choice == ops.index("translate_x"), 0.9 * v, zero) if "translate_x" in ops else zero
    ty = torch.where(choice == ops.index("translate_y"), 0.9 * v, zero) if "translate_y" in ops else zero
    c, s = torch.cos(a), torch.sin(a)
    row0 = torch.stack([c, -s + sx, tx], 1)
    row1 = torch.stack([s + sy, c, ty], 1)
    return torch.stack([row0, row1], 1).view(b, 2, 3)


def rand_augment(x, u, num_ops: int, magnitude: float, ops=RAND_OPS):
    """RandAugment over a batch: for each of `num_ops` layers every image picks one op uniformly.
    u: (B, 3 * num_ops) uniforms (op choice, magnitude, sign per layer).

    No host synchronization: the geometric ops of all images run as one grid_sample (identity for
    the images that drew another op), each color op runs on the whole batch and is selected per
    image, so the whole pipeline is one static graph (torch.compile fuses it into a few kernels)."""
    geo = [i for i, n in enumerate(ops) if n in _GEOMETRIC]
    for layer in range(num_ops):
        choice = (u[:, 3 * layer] * len(ops)).long().clamp_(max=len(ops) - 1)
        mag = u[:, 3 * layer + 1] * (magnitude / 10.0)
        sign = torch.where(u[:, 3 * layer + 2] < 0.5, -1.0, 1.0)
        out = x
        if geo:
            is_geo = torch.zeros_like(choice, dtype=torch.bool)
            for i in geo:
                is_geo = is_geo | (choice == i)
            out = torch.where(_bcast(is_geo), _affine(x, _geometric_theta(choice, mag, sign, ops).to(x.dtype)), x)
        for i, name in enumerate(ops):
            if name == "identity" or name in _GEOMETRIC:
                continue
            out = torch.where(_bcast(choice == i), apply_op(name, x, mag, sign), out)
        x = out
    return x


def random_erase(x, u, noise, p: float, area=(0.02, 1 / 3), ratio=(0.3, 3.3)):
    """Random erasing (Zhong et al.): per image with probability p, one rectangle of normal noise.
    u: (B, 5) uniforms (on/off, area, aspect, top, left); noise: normal, shaped like x."""
    b, c, h, w = x.shape
    dev = x.device
    on = u[:, 0] < p
    a = (u[:, 1] * (area[1] - area[0]) + area[0]) * h * w
    r = torch.exp(u[:, 2] * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0]))
    eh = torch.sqrt(a * r).round().clamp(1, h)
    ew = torch.sqrt(a / r).round().clamp(1, w)
    y0 = torch.floor(u[:, 3] * (h - eh + 1))
    x0 = torch.floor(u[:, 4] * (w - ew + 1))
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    my = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])
    mx = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])
    m = (my[:, :, None] & mx[:, None, :] & on[:, None, None])[:, None]
    return torch.where(m, noise.to(x.dtype), x)


def smooth_targets(y, num_classes: int, smoothing: float):
    off = smoothing / num_classes
    t = torch.full((y.shape[0], num_classes), off, device=y.device)
    return t.scatter_(1, y[:, None], 1.0 - smoothing + off)


def mix(x, y, gc: torch.Generator, cfg: AugmentConfig, num_classes: int):
    """Mixup (Zhang et al.) or CutMix (Yun et al.) of the batch with its flipped order; returns
    (images, soft targets). The CutMix box is clipped to the image and lambda corrected for it.
    `gc` is a CPU generator: the per-batch draws stay on the host, so no device sync per step."""
    t = smooth_targets(y, num_classes, cfg.label_smoothing)
    if cfg.mix_p <= 0 or (cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0):
        return x, t
    r = torch.rand(4, generator=gc).tolist()
    if r[0] >= cfg.mix_p:
        return x, t
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or r[1] < cfg.switch_p)
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    # Beta(alpha, alpha) from two Gammas with the run's generator (torch's Beta sampler takes none)
    ga = torch._standard_gamma(torch.full((2,), float(alpha)), generator=gc).tolist()
    lam = ga[0] / (ga[0] + ga[1])
    xf, tf = x.flip(0), t.flip(0)
    if not use_cutmix:
        return x * lam + xf * (1 - lam), t * lam + tf * (1 - lam)
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(r[2] * h), int(r[3] * w)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[..., y0:y1, x0:x1] = xf[..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, t * lam + tf * (1 - lam)


class Augment:
    """uint8 (B, C, H, W) on any device -> normalized float32 images (+ soft targets via `mix`).

    All random numbers of a batch are drawn first (one uniform matrix, one normal tensor) from the
    run's generator; the transform itself is then a pure function of them (`transform`), which
    `compile=True` hands to torch.compile (hundreds of small kernels become a few)."""

    def __init__(self, cfg: AugmentConfig, compile: bool = False):
        self.cfg = cfg
        self._core = torch.compile(self.transform, dynamic=False, fullgraph=True) if compile else self.transform

    @property
    def num_uniforms(self) -> int:
        return 3 + 3 * self.cfg.num_ops + 5

    def normalize(self, x):
        mean = torch.tensor(self.cfg.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.cfg.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def transform(self, x_u8, u, noise):
        x = x_u8.float() / 255
        x = random_crop_flip(x, u[:, 0:3], self.cfg.pad, self.cfg.flip)
        if self.cfg.num_ops > 0:
            x = rand_augment(x, u[:, 3:3 + 3 * self.cfg.num_ops], self.cfg.num_ops, self.cfg.magnitude)
        x = self.normalize(x)
        if self.cfg.erase_p > 0:
            x = random_erase(x, u[:, -5:], noise, self.cfg.erase_p)
        return x

    def __call__(self, x_u8, g):
        if x_u8.dtype != torch.uint8 or x_u8.ndim != 4:
            raise TypeError(f"Augment expects uint8 (B, C, H, W) images, got {x_u8.dtype} {tuple(x_u8.shape)}")
        u = torch.rand(x_u8.shape[0], self.num_uniforms, generator=g, device=g.device).to(x_u8.device)
        if self.cfg.erase_p > 0:
            noise = torch.randn(x_u8.shape, generator=g, device=g.device).to(x_u8.device)
        else:
            noise = torch.zeros((), device=x_u8.device)
        return self._core(x_u8, u, noise)

    def eval(self, x_u8):
        return self.normalize(x_u8.float() / 255)
