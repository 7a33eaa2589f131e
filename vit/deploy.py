"""Deployment: load any qvit model file and classify image files with it.

`load_any(path)` reads a float (`qvit train`) or quantized (`qvit export` / `qvit quantize`) safetensors
file, checking its format version and shapes (no pickle). `Predictor` resizes images the way the
model was trained (shorter side to the model's size, center crop; normalization from the model's
recorded training data), runs the model on the chosen backends and returns top-k with probabilities
and the measured latency. Unreadable files are reported per file and do not stop the others.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from qvit.vit.checkpoint import CheckpointError, load_model, read_state_dict
from qvit.vit.model import ViT

from qvit.train.augment import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from qvit.train.data import CIFAR10_CLASSES


def load_any(path: str, device="cpu") -> ViT:
    """A float or quantized qvit model file -> ViT (quantized modules where the file says so)."""
    _, meta = read_state_dict(path)
    kind = meta.get("kind")
    if kind == "quantized":
        from qvit.vit.quantize import load_quantized
        return load_quantized(path, device)
    if kind == "float":
        return load_model(path).to(device)
    raise CheckpointError(f"{path}: not a qvit model file (metadata kind={kind!r}); timm checkpoints load with "
                          "`qvit quantize --config NAME` or qvit.vit.load_timm_checkpoint")


def model_norm(model: ViT) -> tuple[tuple, tuple]:
    extra = model.cfg.extra or {}
    if "mean" in extra and "std" in extra:
        return tuple(extra["mean"]), tuple(extra["std"])
    if extra.get("data") == "cifar10":
        return CIFAR_MEAN, CIFAR_STD
    return IMAGENET_MEAN, IMAGENET_STD


def class_names(model: ViT) -> list[str]:
    extra = model.cfg.extra or {}
    if extra.get("classes"):
        return list(extra["classes"])
    if extra.get("data") == "cifar10" and model.cfg.num_classes == 10:
        return list(CIFAR10_CLASSES)
    return [str(i) for i in range(model.cfg.num_classes)]


CALIB_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def calibration_images(model: ViT, source: str, n: int = 256) -> torch.Tensor:
    """The normalized float batch (N, 3, H, W) that `quantize(..., calib=)` computes static fp8 scales from
    (the fp8s* and w4f8s2t presets). source "cifar10": the first n CIFAR-10 training images, what `qvit study`
    and the demo calibrate on (32 px models only); a folder: its first n image files in name order, resized as
    `qvit predict` resizes. Raises ValueError naming what is missing."""
    if n <= 0:
        raise ValueError(f"calibration: n must be positive, got {n}")
    if source == "cifar10":
        if model.cfg.img_size != 32 or model.cfg.in_chans != 3:
            raise ValueError(f"calibration on CIFAR-10 needs a 32 px, 3-channel model; this one takes "
                             f"{model.cfg.img_size} px: pass a folder of images instead")
        from qvit.train.data import load_cifar10
        x, _ = load_cifar10("train")
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in model_norm(model))
        return (x[:n].float().div(255) - mean) / std
    if not os.path.isdir(source):
        raise ValueError(f"calibration source {source!r}: not 'cifar10' and not a folder")
    files = sorted(f for f in os.listdir(source) if f.lower().endswith(CALIB_EXTS))[:n]
    if not files:
        raise ValueError(f"calibration folder {source!r} holds no image files ({', '.join(CALIB_EXTS)})")
    from qvit.train.data import load_image_u8
    size, (mean, std) = model.cfg.img_size, model_norm(model)
    return torch.cat([normalize_u8(load_image_u8(os.path.join(source, f), size, crop_pct(size)), mean, std)
                      for f in files])


def crop_pct(size: int) -> float:
    """CIFAR-size models saw whole 32 px images; ImageNet-size ones the usual 0.875 center crop."""
    return 1.0 if size <= 64 else 0.875


def normalize_u8(x_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (3, H, W) at the model's size -> a normalized (1, 3, H, W) float batch."""
    x = x_u8.float().div(255)
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None]


@dataclass
class Prediction:
    path: str
    top: list  # [(label, probability)]
    latency_ms: float
    logits: torch.Tensor | None = None
    error: str | None = None


class Predictor:
    def __init__(self, model: ViT, device="cpu", linear: str | None = None, attn: str | None = None,
                 dtype: torch.dtype | None = None):
        self.device = torch.device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model.set_backend(linear=linear, attn=attn)
        self.mean, self.std = model_norm(model)
        self.classes = class_names(model)
        self.size = model.cfg.img_size
        self.crop_pct = crop_pct(self.size)

    def normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) at the model's size -> a normalized (1, 3, H, W) float batch."""
        return normalize_u8(x_u8, self.mean, self.std)

    def preprocess(self, path: str) -> torch.Tensor:
        from qvit.train.data import load_image_u8
        return self.normalize(load_image_u8(path, self.size, self.crop_pct))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(device=self.device, dtype=self.dtype)).float()

    def __call__(self, paths, k: int = 5) -> list[Prediction]:
        from qvit.train.data import DataError
        out = []
        for p in paths:
            try:
                x = self.preprocess(p)
            except DataError as e:
                out.append(Prediction(p, [], 0.0, error=str(e)))
                continue
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            z = self.logits(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t) * 1e3
            prob = z.softmax(-1)[0]
            top = prob.topk(min(k, prob.numel()))
            out.append(Prediction(p, [(self.classes[i], float(v)) for v, i in zip(top.values, top.indices.tolist())],
                                  ms, z[0].cpu()))
        return out
