"""Quantization-aware training: fake quantization with a straight-through estimator, in exactly the
formats the kernels run.

`prepare_qat(model, QuantConfig)` replaces the linears that `quantize()` would quantize with
`FakeQuantLinear`, an `nn.Linear` subclass (same parameter names: the state dict stays a float
checkpoint) whose forward uses quantize -> dequantize of its weight (int8 per channel, int4 group-wise,
or NF4, through the same functions as `qvit.kernels.quant`) and, for W8A8/W4A8, of its input
(dynamic per-token int8). Gradients pass straight through the rounding (Bengio et al. 2013).

After training, `quantize(model, same QuantConfig)` (or `qvit study`) produces the real quantized
model; because fake and real quantization share the quantizers, the deployed weights are exactly the
ones the QAT forward saw (tested: fake-quant logits equal the real quantized model's to float rounding).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qvit.kernels import quant as Q
from qvit.vit.quantize import QuantConfig, _expand_keep, _set, default_filter


def _ste(x, fq):
    return x + (fq - x).detach()


def fake_quant_weight(w: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    wd = w.detach()
    if cfg.weight == "int8":
        fq = Q.dequantize_int8(*Q.quantize_int8_per_channel(wd))
    elif cfg.weight == "int4" and cfg.progressive:  # the two-level grid the w4a8p kernels run on
        fq = Q.dequantize_int4_progressive(*Q.quantize_int4_progressive(wd, cfg.group_size), cfg.group_size)
    elif cfg.weight == "int4":
        packed, scales, zeros = Q.quantize_int4(wd, cfg.group_size, cfg.symmetric)
        fq = Q.dequantize_int4(packed, scales, zeros, cfg.group_size)
    else:
        packed, absmax = Q.quantize_nf4(wd, cfg.nf4_blocksize)
        fq = Q.dequantize_nf4(packed, absmax, wd.shape, cfg.nf4_blocksize)
    return _ste(w, fq.to(w.dtype))


def fake_quant_act(x: torch.Tensor) -> torch.Tensor:
    q, s = Q.quantize_int8_per_token(x.detach())
    return _ste(x, (q.float() * s[..., None]).to(x.dtype))


class FakeQuantLinear(nn.Linear):
    """nn.Linear whose forward sees its weight (and input, for int8 activations) quantized."""

    def __init__(self, lin: nn.Linear, cfg: QuantConfig):
        super().__init__(lin.in_features, lin.out_features, bias=lin.bias is not None,
                         device=lin.weight.device, dtype=lin.weight.dtype)
        self.weight = lin.weight
        self.bias = lin.bias
        self.qcfg = cfg

    def forward(self, x):
        w = fake_quant_weight(self.weight, self.qcfg)
        if self.qcfg.act == "int8":
            x = fake_quant_act(x)
        return F.linear(x, w.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None)

    def extra_repr(self):
        return f"{super().extra_repr()}, qat={self.qcfg.weight}/{self.qcfg.act}"


def prepare_qat(model, cfg: QuantConfig, filter_fn=default_filter):
    """Swap the linears `quantize(model, cfg)` would quantize for FakeQuantLinear; returns the names."""
    if cfg.act == "fp8":
        raise ValueError(f"prepare_qat: the fp8 formats (weight={cfg.weight!r}, act='fp8') have no fake "
                         "quantization here; QAT runs the int8 / int4 / nf4 formats (fp8 presets are post-training)")
    keep = _expand_keep(cfg.keep, model.cfg.depth)
    names = []
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear or not filter_fn(name, mod, keep):
            continue
        if cfg.weight == "int4" and mod.in_features % cfg.group_size:
            continue  # quantize() keeps these in higher precision too
        if cfg.weight == "nf4" and mod.weight.numel() % cfg.nf4_blocksize:
            continue
        _set(model, name, FakeQuantLinear(mod, cfg))
        names.append(name)
    if not names:
        raise ValueError(f"prepare_qat: no linear layer matches {cfg} (all kept or not divisible by the group size)")
    return names


def strip_qat(model):
    """FakeQuantLinear -> plain nn.Linear sharing the same parameters (for saving or real quantization)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, FakeQuantLinear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                            device=mod.weight.device, dtype=mod.weight.dtype)
            lin.weight, lin.bias = mod.weight, mod.bias
            _set(model, name, lin)
    return model
