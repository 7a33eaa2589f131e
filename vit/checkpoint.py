"""Checkpoints: timm state dicts in, safetensors out. Nothing here unpickles arbitrary code.

`checkpoint_filter_fn(state_dict, model)` adapts a timm ViT state dict the way timm does:
strips wrapper prefixes, drops keys the minimal model has no use for only when they are
identities, and resamples the position embeddings when the patch grid differs.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import torch
import torch.nn.functional as F

from qvit.vit.model import ViT, ViTConfig

_PREFIXES = ("module.", "model.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not match the model; the message names the file."""


def resample_pos_embed(pos: torch.Tensor, new_grid: int, num_prefix: int = 1) -> torch.Tensor:
    """(1, prefix + g*g, C) -> (1, prefix + new_grid^2, C), bicubic on the grid part (as timm)."""
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    old = int(math.isqrt(grid.shape[1]))
    if old * old != grid.shape[1]:
        raise CheckpointError(f"position embedding has {grid.shape[1]} grid tokens, not a square")
    if old == new_grid:
        return pos
    g = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([prefix, g], dim=1)


def checkpoint_filter_fn(state_dict: dict, model: ViT) -> dict:
    out = {}
    for k, v in state_dict.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k == "pos_embed" and v.shape != model.pos_embed.shape:
            v = resample_pos_embed(v, model.cfg.grid)
        if k == "patch_embed.proj.weight" and v.shape != model.patch_embed.proj.weight.shape:
            if v.shape[:2] == model.patch_embed.proj.weight.shape[:2]:  # patch size change
                v = F.interpolate(v.float(), size=model.patch_embed.proj.weight.shape[-2:], mode="bicubic",
                                  antialias=True, align_corners=False).to(v.dtype)
        out[k] = v
    return out


def read_state_dict(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) from .safetensors or a torch file (loaded with weights_only=True)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # safetensors raises its own error types for corrupt headers/data
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: does not hold a flat state dict of tensors")
    return sd, {}


def load_timm_checkpoint(model: ViT, source, strict: bool = True) -> ViT:
    """Load a timm ViT checkpoint (a path or a state dict) into `model`."""
    name = source if isinstance(source, str) else "<state dict>"
    sd = read_state_dict(source)[0] if isinstance(source, str) else source
    sd = checkpoint_filter_fn(sd, model)
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{name}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(f"{name}: keys do not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model


def atomic_write(path: str, write_fn) -> None:
    """write_fn(tmp_path) then rename: a crash leaves the old file or the new one, never half of one."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model: ViT, path: str, extra_meta: dict | None = None) -> None:
    """Float model -> one safetensors file with its config in the metadata."""
    from safetensors.torch import save_file
    meta = {"qvit_format": "1", "kind": "float", "config": json.dumps(model.cfg.to_dict())}
    meta.update({k: json.dumps(v) for k, v in (extra_meta or {}).items()})
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def load_model(path: str) -> ViT:
    sd, meta = read_state_dict(path)
    if meta.get("kind") != "float" or "config" not in meta:
        raise CheckpointError(f"{path}: not a qvit float model file (kind={meta.get('kind')!r}); "
                              "use qvit.vit.quantize.load_quantized for quantized files")
    model = ViT(ViTConfig(**json.loads(meta["config"])))
    return load_timm_checkpoint(model, sd)
