"""QLoRA-style recovery: LoRA adapters (peft) on a bitsandbytes NF4 base, then merged and re-quantized
into qvit's own 4-bit formats.

`prepare_qlora(model, rank)` swaps the linears that `quantize()` would quantize for
`bitsandbytes.nn.Linear4bit` (NF4, blocksize 64, the QLoRA paper's format) holding the float weights
(bitsandbytes quantizes them when the model moves to its device) and wraps the model with peft LoRA
adapters on exactly those layers; only the adapters train. `merge_qlora(model)` dequantizes each
NF4 base weight (bitsandbytes' own dequantize_4bit), adds the adapter's scaled B @ A, and returns a
plain float ViT: `quantize()` then re-quantizes it into NF4 or int4 for qvit's kernels. peft's own
merge is not used: on a 4-bit base it would re-quantize inside bitsandbytes' format, not qvit's.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from qvit.vit.model import ViT
from qvit.vit.quantize import QuantConfig, _expand_keep, _set, default_filter


def prepare_qlora(model: ViT, rank: int = 8, alpha: float | None = None, keep=("head", "blocks.0.", "blocks.-1."),
                  compute_dtype=torch.bfloat16):
    """Returns (peft model, names of the NF4 + LoRA layers). Call before moving the model to its device."""
    from qvit._shadow import installed_kernels_first
    installed_kernels_first()  # peft -> transformers imports Hugging Face's `kernels`, not this repository's folder
    try:
        import bitsandbytes as bnb
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise RuntimeError(f"QLoRA needs peft and bitsandbytes (pip install 'qvit[train]'): {e}") from e
    if rank <= 0:
        raise ValueError(f"QLoRA rank must be positive, got {rank}")
    cfg = QuantConfig.preset("nf4", keep=keep)
    keep_exp = _expand_keep(cfg.keep, model.cfg.depth)
    names = []
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear or not default_filter(name, mod, keep_exp):
            continue
        if mod.weight.numel() % cfg.nf4_blocksize:
            continue
        q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                              compute_dtype=compute_dtype, quant_type="nf4", quant_storage=torch.uint8)
        q.weight = bnb.nn.Params4bit(mod.weight.detach().float().clone(), requires_grad=False, quant_type="nf4",
                                     blocksize=cfg.nf4_blocksize)
        if mod.bias is not None:
            q.bias = nn.Parameter(mod.bias.detach().float().clone(), requires_grad=False)
        _set(model, name, q)
        names.append(name)
    if not names:
        raise ValueError("prepare_qlora: no linear layer to quantize (all kept or not divisible by the NF4 block)")
    for p in model.parameters():
        p.requires_grad_(False)
    lcfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=0.0,
                      target_modules=names, bias="none")
    return get_peft_model(model, lcfg), names


def _vit_of(model) -> ViT:
    m = model
    for attr in ("base_model", "model"):
        if not isinstance(m, ViT) and hasattr(m, attr):
            m = getattr(m, attr)
    if not isinstance(m, ViT):
        raise TypeError(f"expected a peft-wrapped qvit ViT, got {type(model).__name__}")
    return m


@torch.no_grad()
def merge_qlora(model) -> ViT:
    """A float ViT with every adapter merged into its dequantized NF4 base weight (the model is consumed)."""
    import bitsandbytes.functional as BF
    vit = _vit_of(model)
    for name, mod in list(vit.named_modules()):
        if not hasattr(mod, "base_layer") or not hasattr(mod, "lora_A"):
            continue
        base = mod.base_layer
        w = BF.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
        for adapter in mod.active_adapters:
            a = mod.lora_A[adapter].weight.float()
            b = mod.lora_B[adapter].weight.float()
            w = w + (b @ a) * mod.scaling[adapter]
        lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=w.device)
        lin.weight.copy_(w)
        if base.bias is not None:
            lin.bias.copy_(base.bias.float())
        _set(vit, name, lin)
    for p in vit.parameters():
        p.requires_grad_(True)
    return vit.float()


def trainable_state(model) -> dict:
    return {n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}
