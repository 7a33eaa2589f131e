"""SmoothQuant-style smoothing (Xiao et al. 2023), folded into the LayerNorms: an exact float
transform that moves activation outliers into the weights before per-token int8 quantization.

For a linear y = W x whose input comes straight from a LayerNorm (qkv after norm1, fc1 after norm2),
per input channel j:  s_j = max|x_j|^alpha / max_i |W_ij|^(1 - alpha);  x' = x / s (folded into the
LayerNorm's weight and bias), W' = W * s (columns). y is unchanged in exact arithmetic; the per-token
activation range shrinks where a few channels dominate it, which is what int8 per-token
quantization of activations loses accuracy to.

    stats = calibrate(model, images)        # a few hundred training images
    smooth(model, stats, alpha=0.5)         # then quantize(model, QuantConfig.preset("w8a8"))
"""
from __future__ import annotations

import torch

from qvit.vit.model import ViT

PAIRS = (("norm1", "attn.qkv"), ("norm2", "mlp.fc1"))


@torch.no_grad()
def calibrate(model: ViT, images: torch.Tensor, batch_size: int = 64) -> dict:
    """Per-input-channel max |x| of every LayerNorm-fed linear over `images` (normalized float, NCHW)."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"calibrate: images must be normalized float (N, C, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    stats, hooks = {}, []
    for i, blk in enumerate(model.blocks):
        for _, lin_name in PAIRS:
            name = f"blocks.{i}.{lin_name}"
            lin = blk.get_submodule(lin_name)

            def hook(mod, inp, out, name=name):
                a = inp[0].detach().abs().flatten(0, -2).amax(0).float()
                stats[name] = torch.maximum(stats[name], a) if name in stats else a
            hooks.append(lin.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        for i in range(0, images.shape[0], batch_size):
            model(images[i:i + batch_size].to(dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return stats


def outlier_ratio(amax: torch.Tensor) -> float:
    """max / median of the per-channel ranges: ~1-3 for a flat activation, >> 1 with outlier channels."""
    return float(amax.max() / amax.median().clamp(min=1e-12))


@torch.no_grad()
def smooth(model: ViT, stats: dict, alpha: float = 0.5, min_ratio: float = 0.0) -> dict:
    """Fold smoothing factors into each (LayerNorm, linear) pair whose input outlier ratio is at least
    `min_ratio` (0: all). Returns {linear name: outlier ratio before, after} for the smoothed ones."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth: alpha must be in [0, 1], got {alpha}")
    done = {}
    for i, blk in enumerate(model.blocks):
        for norm_name, lin_name in PAIRS:
            name = f"blocks.{i}.{lin_name}"
            if name not in stats:
                raise KeyError(f"smooth: no calibration statistics for {name}; run calibrate() on this model")
            norm, lin = blk.get_submodule(norm_name), blk.get_submodule(lin_name)
            if not isinstance(lin, torch.nn.Linear):
                raise TypeError(f"smooth: {name} is {type(lin).__name__}; smooth the float model before quantizing")
            ax = stats[name].to(lin.weight.device).clamp(min=1e-5)
            before = outlier_ratio(ax)
            if before < min_ratio:
                continue
            aw = lin.weight.abs().amax(0).float().clamp(min=1e-5)
            s = (ax.pow(alpha) / aw.pow(1 - alpha)).clamp(min=1e-5)
            norm.weight.div_(s.to(norm.weight.dtype))
            if norm.bias is not None:
                norm.bias.div_(s.to(norm.bias.dtype))
            lin.weight.mul_(s.to(lin.weight.dtype)[None, :])
            done[name] = (before, outlier_ratio(ax / s))
    return done
