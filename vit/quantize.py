"""quantize(model, config): swap nn.Linear layers for quantized ones (gpt-fast / torchao style).

Two phases, as gpt-fast does: `quantize_state` builds the quantized tensors offline from float
weights; the module swap installs `Int8Linear` / `Int4Linear` / `NF4Linear` modules that hold them
and dispatch on the linear backend flag (`qvit.backend`). Quantized models save to and load from
one safetensors file (tensors + JSON metadata: model config, quant config, per-layer formats);
no pickle anywhere.

Layer policy: `QuantConfig.keep` lists layers kept in higher precision (by default the patch
embedding, which is a convolution and never swapped, the head, and the first and last blocks);
`keep_format` says what "higher" means for kept linears: "float" (untouched) or "int8" (W8A8).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from qvit.backend import Backend, BackendUnavailable, interpreting, resolve_backend, triton_reason
from qvit.kernels import quant as Q
from qvit.vit.checkpoint import CheckpointError, atomic_write, read_state_dict
from qvit.vit.model import Attention, Mlp, ViT, ViTConfig

FORMAT_VERSION = "1"
WEIGHT_FORMATS = ("int8", "int4", "nf4", "fp8")


@dataclass
class QuantConfig:
    """What to quantize and how. Small and explicit: no closures (torchao #1585)."""
    weight: str = "int8"            # int8 | int4 | nf4
    act: str = "int8"               # int8 (W8A8 / W4A8) | fp8 (with fp8 weights) | none (weight-only: W4A16)
    group_size: int = 128           # int4 groups along K (32, 64, 128, or K for per-channel)
    symmetric: bool = True          # int4: symmetric (W4A8 needs it) or asymmetric with zero points
    progressive: bool = False       # int4 W4A8: two-level scales (QServe): the GEMM runs as W8A8
    nf4_blocksize: int = 64
    int8_attention: bool = False    # int8 Q/K inside qvit's fused attention kernel
    # int8 attention: K minus its mean over tokens before quantizing (SageAttention's smoothing; costs a pass
    # over K in every program). Off: on the CIFAR-10 baseline it changed nothing measurable (2,000 test
    # images: top-1 94.25 with it, 94.30 without, 94.30 float; logit error 1.74e-3 vs 1.84e-3, NOTES.md)
    smooth_k: bool = False
    # > 0: fc1's GEMM quantizes its output in its epilogue (after GELU), per token and group of act_group
    # channels, and fc2 takes those int8 codes with group-wise scales; with qvit's attention, its kernel
    # quantizes its output per token and head for proj the same way: no bf16 round trip and no separate
    # quantization kernel before fc2 and proj (W8A8 family only: w8a8, w4a8p). 0: bf16 out, quantize kernels.
    act_group: int = 0
    # fp8 only: fc2's input quantized with one static scale per layer (calibrated: quantize(..., calib=images)),
    # so fc1's epilogue writes it in fp8 directly (no bf16 round trip, no per-token quantize pass over the
    # 4x-wide hidden activation). Per-tensor static activation scales, as FP8 inference engines use them
    fp8_static_mlp: bool = False
    # fp8 only: proj's input at one static, calibrated scale per layer as well; with qvit's attention its kernel
    # writes it in fp8 from its epilogue (no quantize pass between attention and proj)
    fp8_static_proj: bool = False
    # fp8 only: qkv's and fc1's inputs (the outputs of norm1 / norm2) at one static, calibrated scale per layer as
    # well: their LayerNorm + quantize needs no per-token amax (a row's scale is known before its values), so the
    # LayerNorm can run inside the GEMM that reads it (`w8a8_linear_norm_fp8`, QVIT_NORM_FUSED=1; measured 2.5x
    # slower than its own kernel + the GEMM, results/h200-gpu-27). CIFAR-10 top-1 unchanged (results/cpu-study-5)
    fp8_static_norm: bool = False
    # fp8_static_mlp only: GELU in its tanh form (torch's approximate='tanh') in the MLPs whose fc1 writes fc2's
    # static fp8 input: one MUFU tanh and ~7 FP32 instructions per element in fc1's epilogue instead of the erf
    # form's 2 MUFU and ~19 (sm_90 SASS). Its distance from the erf form (<= 4.8e-4 absolute) is far below the
    # e4m3 rounding that follows (half a step: 2^-4 of the value); the kept (int8) blocks keep the erf form
    gelu_tanh: bool = False
    keep: tuple = ("head", "blocks.0.", "blocks.-1.")  # name prefixes kept in higher precision
    keep_format: str = "float"      # float | int8: what kept linears become

    def __post_init__(self):
        if self.weight not in WEIGHT_FORMATS:
            raise ValueError(f"QuantConfig.weight must be one of {WEIGHT_FORMATS}, got {self.weight!r}")
        if self.act not in ("int8", "fp8", "none"):
            raise ValueError(f"QuantConfig.act must be 'int8', 'fp8' or 'none', got {self.act!r}")
        if self.weight == "fp8" and self.act != "fp8":
            raise ValueError("fp8 runs as FP8 W8A8: weight='fp8' and act='fp8' go together")
        if self.act == "fp8" and self.weight not in ("fp8", "int4"):
            raise ValueError(f"act='fp8' runs the fp8 GEMM: weight must be 'fp8' or 'int4' (power-of-two group "
                             f"scales, expanded exactly to e4m3), got {self.weight!r}")
        if self.weight == "int4" and self.act == "fp8" and (not self.symmetric or self.progressive):
            raise ValueError("int4 weights with fp8 activations are symmetric with power-of-two group scales: "
                             "symmetric=True, progressive=False")
        if self.weight == "int8" and self.act != "int8":
            raise ValueError("int8 weights run as W8A8: act must be 'int8'")
        if self.weight == "nf4" and self.act != "none":
            raise ValueError("NF4 weights run weight-only (W4A16): set act='none'")
        if self.weight == "int4" and self.act == "int8" and not self.symmetric:
            raise ValueError("W4A8 needs symmetric int4 weights (symmetric=True)")
        if self.progressive and not (self.weight == "int4" and self.act == "int8"):
            raise ValueError("progressive (two-level) scales are a W4A8 format: weight='int4', act='int8'")
        if self.act_group < 0 or self.act_group % 16:
            raise ValueError(f"QuantConfig.act_group must be 0 or a multiple of 16, got {self.act_group}")
        for opt in ("fp8_static_mlp", "fp8_static_proj", "fp8_static_norm"):
            if getattr(self, opt) and self.act != "fp8":
                raise ValueError(f"QuantConfig.{opt} is an fp8 option (act='fp8')")
        if self.gelu_tanh and not self.fp8_static_mlp:
            raise ValueError("QuantConfig.gelu_tanh is GELU's form in fc1's static fp8 epilogue: it needs "
                             "fp8_static_mlp=True")
        if self.keep_format not in ("float", "int8"):
            raise ValueError(f"QuantConfig.keep_format must be 'float' or 'int8', got {self.keep_format!r}")
        self.keep = tuple(self.keep)

    @property
    def needs_calibration(self) -> bool:
        """True where quantize() needs calibration images (`calib=`): static activation scales."""
        return self.fp8_static_mlp or self.fp8_static_proj or self.fp8_static_norm

    def static_inputs(self) -> tuple:
        """The block linears (suffixes) whose input runs at a static, calibrated fp8 scale."""
        return ((("mlp.fc2",) if self.fp8_static_mlp else ()) + (("attn.proj",) if self.fp8_static_proj else ())
                + (("attn.qkv", "mlp.fc1") if self.fp8_static_norm else ()))

    @classmethod
    def preset(cls, name: str, **overrides) -> "QuantConfig":
        presets = {
            "w8a8": dict(weight="int8", act="int8"),
            "w4a8": dict(weight="int4", act="int8", symmetric=True),
            "w4a8p": dict(weight="int4", act="int8", symmetric=True, progressive=True),
            # the same with fc1's epilogue quantizing fc2's input (per token and 128 channels)
            "w8a8g": dict(weight="int8", act="int8", act_group=128),
            "w4a8pg": dict(weight="int4", act="int8", symmetric=True, progressive=True, act_group=128),
            "w4a16": dict(weight="int4", act="none"),
            "nf4": dict(weight="nf4", act="none"),
            "fp8": dict(weight="fp8", act="fp8"),
            # the same with fc2's input at a static, calibrated scale, written in fp8 by fc1's epilogue
            "fp8s": dict(weight="fp8", act="fp8", fp8_static_mlp=True),
            # ... and proj's input too (written in fp8 by qvit's attention kernel)
            "fp8s2": dict(weight="fp8", act="fp8", fp8_static_mlp=True, fp8_static_proj=True),
            # ... with GELU's tanh form in those MLPs (fc1's epilogue: one MUFU per element instead of two)
            "fp8s2t": dict(weight="fp8", act="fp8", fp8_static_mlp=True, fp8_static_proj=True, gelu_tanh=True),
            # 4-bit weights with power-of-two group scales (32), expanded exactly to e4m3: fp8s2t's GEMMs
            "w4f8s2t": dict(weight="int4", act="fp8", group_size=32, fp8_static_mlp=True, fp8_static_proj=True,
                            gelu_tanh=True),
            # every block linear's input at a static scale (the LayerNorms may then run inside qkv's / fc1's GEMMs)
            "fp8s4t": dict(weight="fp8", act="fp8", fp8_static_mlp=True, fp8_static_proj=True, gelu_tanh=True,
                           fp8_static_norm=True),
            "w4f8s4t": dict(weight="int4", act="fp8", group_size=32, fp8_static_mlp=True, fp8_static_proj=True,
                            gelu_tanh=True, fp8_static_norm=True),
        }
        if name not in presets:
            raise ValueError(f"unknown quantization preset {name!r}; known: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})


def _expand_keep(keep, depth):
    out = []
    for p in keep:
        m = re.match(r"blocks\.(-?\d+)\.?$", p)
        if m:
            i = int(m.group(1))
            out.append(f"blocks.{i % depth}.")
        else:
            out.append(p)
    return tuple(out)


def default_filter(name: str, module: nn.Module, keep: tuple) -> bool:
    """True if `module` (an nn.Linear called `name`) is quantized with the main format."""
    return isinstance(module, nn.Linear) and not any(name == k.rstrip(".") or name.startswith(k) for k in keep)


# ----------------------------------------------------------------------------- modules
def _as_2d(x):
    return x.reshape(-1, x.shape[-1])


@dataclass
class QAct:
    """Activations already quantized per token (by a LayerNorm fused with the quantization), handed to
    the next int8-input linear in place of the float tensor: q int8 (M, K), scale float32 (M,), and
    the shape / dtype / device the float activation had (the linear's output follows them)."""
    q: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    group: int = 0  # 0: scale (M,) per token; g: scale (M, K // g) per token and group of g channels

    @property
    def device(self):
        return self.q.device


@dataclass
class QNorm:
    """A LayerNorm not yet applied, handed to the static-scale fp8 linear after it (QuantConfig.fp8_static_norm), whose
    GEMM normalizes and quantizes its input tiles as it loads them (`w8a8_linear_norm_fp8`): x (M, K) float, the
    LayerNorm module, and the shape / dtype / device the normalized activation would have."""
    x: torch.Tensor
    norm: nn.LayerNorm
    shape: torch.Size
    dtype: torch.dtype

    @property
    def device(self):
        return self.x.device


def _finish(y, gelu, residual):
    """The epilogue a kernel did not fuse, in PyTorch: GELU (erf form, as nn.GELU()), then the residual."""
    if gelu:
        y = torch.nn.functional.gelu(y)
    return y if residual is None else residual + y


class _QuantLinear(nn.Module):
    quant_kind = "?"

    def __init__(self, in_features, out_features, has_bias):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.backend: str | None = None  # None: $QVIT_BACKEND / auto
        if has_bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32))
        else:
            self.bias = None

    def extra_repr(self):
        return f"{self.in_features} -> {self.out_features}, {self.quant_kind}"

    def _apply(self, fn, recurse=True):
        # model.to(device) moves the quantized tensors; model.half() / .to(dtype) must not touch them:
        # their dtypes (int8/uint8 data, float32 scales) are part of the format.
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    def _backend(self, x) -> Backend:
        return resolve_backend(self.backend, x.device.type)

    def _auto_backend(self) -> bool:
        """True when the backend is `auto` (not pinned by the layer or $QVIT_BACKEND)."""
        value = self.backend if self.backend is not None else os.environ.get("QVIT_BACKEND", "auto")
        return str(getattr(value, "value", value)).lower() == "auto"

    # the model passes gelu= / residual= to linears that have this (qvit.vit.model._linear): fused into the
    # GEMM's epilogue where the kernel has it, applied in PyTorch otherwise
    fuses_epilogue = True
    int8_input = False  # True: the input is quantized per token to int8 first (W8A8, W4A8)

    def forward(self, x, gelu: bool = False, residual: torch.Tensor | None = None):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features, expected {self.in_features}")
        lead = tuple(x.shape[:-1])
        if residual is not None and tuple(residual.shape) != lead + (self.out_features,):
            raise ValueError(f"{type(self).__name__}: residual has shape {tuple(residual.shape)}, expected "
                             f"{lead + (self.out_features,)}")
        r2d = residual.reshape(-1, self.out_features) if residual is not None else None
        y = self._forward2d(x if isinstance(x, (QAct, QNorm)) else _as_2d(x), gelu, r2d)
        return y.reshape(*lead, self.out_features)

    def norm_quant(self, x, norm):
        """LayerNorm `norm` of x fused with this layer's per-token int8 input quantization, in one kernel
        (qvit.kernels.layernorm_quant): a QAct, or None where that does not apply (float input layer,
        torch backend, no CUDA, grad enabled, not an affine nn.LayerNorm) and the caller runs norm(x)."""
        if not self.int8_input or torch.is_grad_enabled() or x.dtype not in (torch.float16, torch.bfloat16):
            return None
        if not x.is_cuda and not interpreting():
            return None
        if type(norm) is not nn.LayerNorm or norm.weight is None or tuple(norm.normalized_shape) != (x.shape[-1],):
            return None
        backend = self._backend(x)
        static = getattr(self, "x_static", None)
        if static is not None:  # fp8 at this layer's calibrated input scale (QuantConfig.fp8_static_norm)
            if backend is not Backend.TRITON:
                return None
            x2 = _as_2d(x)
            # QVIT_NORM_FUSED=1: the LayerNorm inside the GEMM, where the GEMM would run the one-tile-per-program
            # kernel that has the prologue (the persistent one, from PERSISTENT_MIN_TOKENS tokens on, has not).
            # Off by default: measured 2.5x slower than the LayerNorm kernel + GEMM at M = 197 (H100,
            # results/h200-gpu-27): every N tile of the GEMM normalizes the same rows again
            if os.environ.get("QVIT_NORM_FUSED", "0") == "1" and getattr(self, "fp8_fast_accum", False) \
                    and not _use_persistent(x2):
                return QNorm(x2.contiguous(), norm, x.shape, x.dtype)
            from qvit.kernels.layernorm_quant import layernorm_quant_fp8_static
            q, scale = layernorm_quant_fp8_static(x2.contiguous(), static, norm.weight, norm.bias, norm.eps)
            return QAct(q, scale, x.shape, x.dtype)
        if backend is Backend.TRITON and getattr(self, "act_format", "int8") == "fp8":
            from qvit.kernels.layernorm_quant import layernorm_quant_fp8 as lnq
        elif backend is Backend.TRITON:
            from qvit.kernels.layernorm_quant import layernorm_quant as lnq
        elif backend is Backend.CUDA and getattr(self, "act_format", "int8") == "int8":
            from qvit.kernels.layernorm_quant import layernorm_quant_cuda as lnq
        else:
            return None
        q, scale = lnq(_as_2d(x).contiguous(), norm.weight, norm.bias, norm.eps)
        return QAct(q, scale, x.shape, x.dtype)

    def layer_meta(self) -> dict:
        return {"kind": self.quant_kind, "in": self.in_features, "out": self.out_features,
                "bias": self.bias is not None}


# QVIT_PERSISTENT_GEMM=auto: the persistent kernel from this many tokens on. Measured (H200, results/h200-gpu-11,
# bench_kernels, fp8 in-place and int8, all four ViT-L linears): at M = 12,608 it beat the one-tile-per-program
# kernel on every shape (qkv 81.8 vs 93.2 us, fc1 108.8 vs 123.7), at M = 197 it lost on every one (6.1 vs 5.2
# us for qkv: fewer tiles than SMs, nothing to overlap). Sizes in between were not measured.
PERSISTENT_MIN_TOKENS = 4096
# the 4-bit fp8 layers' fused GEMM (QVIT_W4_FUSED=1) up to this many tokens: batch 1 (197) and 2 of ViT-L/16
W4_FUSED_MAX_M = 512


def _use_persistent(xq: torch.Tensor, xs: torch.Tensor | None = None) -> bool:
    """Whether a W8A8 / fp8 (in-place accumulation) linear on the Triton backend runs the persistent TMA kernel
    (kernels/w8a8_persistent.py). QVIT_PERSISTENT_GEMM: "auto" (default: from PERSISTENT_MIN_TOKENS tokens on),
    "1" (always) or "0" (never); only where the kernel applies (per-token scales, K a multiple of 16,
    contiguous 16-byte aligned activations). xs None: per-token scales (a caller that has not quantized yet)."""
    mode = os.environ.get("QVIT_PERSISTENT_GEMM", "auto")
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"QVIT_PERSISTENT_GEMM={mode!r}: expected 'auto', '0' or '1'")
    if mode == "0" or (mode == "auto" and (xq.shape[0] < PERSISTENT_MIN_TOKENS or not xq.is_cuda)):
        return False
    return (xs is None or xs.ndim == 1) and xq.shape[1] % 16 == 0 and xq.is_contiguous() and xq.data_ptr() % 16 == 0


def _quantize_act(x, backend: Backend):
    if backend is Backend.TRITON:
        from qvit.kernels.layernorm_quant import layernorm_quant
        return layernorm_quant(x.contiguous())
    if backend is Backend.CUDA:
        from qvit.kernels.layernorm_quant import layernorm_quant_cuda
        return layernorm_quant_cuda(x.contiguous())
    return Q.quantize_int8_per_token(x)


class Int8Linear(_QuantLinear):
    """W8A8: int8 per-channel weights, dynamic per-token int8 activations, int32 accumulation."""
    quant_kind = "w8a8"
    int8_input = True
    act_format = "int8"
    fp8_fast_accum = False  # fp8 only (Fp8Linear)
    _qdtype = torch.int8

    def __init__(self, in_features, out_features, has_bias=True):
        super().__init__(in_features, out_features, has_bias)
        self.register_buffer("wq", torch.zeros(out_features, in_features, dtype=self._qdtype))
        self.register_buffer("w_scale", torch.ones(out_features, dtype=torch.float32))

    @staticmethod
    def _quantize_weight(w):
        return Q.quantize_int8_per_channel(w)

    @classmethod
    def from_float(cls, lin: nn.Linear):
        m = cls(lin.in_features, lin.out_features, lin.bias is not None)
        m.wq, m.w_scale = cls._quantize_weight(lin.weight.detach())
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def _quantize_input(self, x, backend):
        return _quantize_act(x, backend)

    accepts_group_input = True  # takes a QAct with group-wise scales (fc1's quantizing epilogue)
    out_group = 0  # > 0: `forward_quant` is used for this layer's output (QuantConfig.act_group)

    def forward_quant(self, x, gelu: bool = False, group: int = 128) -> QAct:
        """The layer's output (+ bias, GELU) quantized per token and group of `group` channels, as the next
        W8A8 layer's input: in the GEMM's epilogue on the Triton backend, in PyTorch on the reference one."""
        if self._backend(x) is Backend.CUDA:
            raise BackendUnavailable("backend 'cuda' has no quantizing-epilogue GEMM; use 'triton' or 'torch'")
        backend, xq, xs, wq = self._gemm_inputs(x if isinstance(x, QAct) else _as_2d(x))
        lead = tuple(x.shape[:-1])
        if backend is Backend.TRITON:
            from qvit.kernels.w8a8_linear import w8a8_linear_quant_out
            q, s = w8a8_linear_quant_out(xq, xs, wq, self.w_scale, self.bias, gelu, group)
        else:
            y = self._matmul_torch(xq, xs, wq, torch.float32)
            q, s = Q.quantize_int8_per_group(_finish(y, gelu, None), group)
        return QAct(q, s, torch.Size(lead + (self.out_features,)), x.dtype, group)

    def _matmul_torch(self, xq, xs, wq, out_dtype):
        if xs.ndim == 2:  # group-wise activation scales
            return Q.int8_group_matmul_ref(xq, xs, wq, self.w_scale, self.bias, out_dtype)
        if xq.is_cuda and xq.shape[0] > 16 and self.in_features % 8 == 0 and self.out_features % 8 == 0:
            acc = torch._int_mm(xq, wq.t())  # exact int32, same numbers as the float64 path
            y = acc.float() * xs[:, None] * self.w_scale
            return (y + self.bias if self.bias is not None else y).to(out_dtype)
        return Q.int8_matmul_ref(xq, xs, wq, self.w_scale, self.bias, out_dtype)

    def _gemm_inputs(self, x):
        """(backend, int8/fp8 activations, their scales, weight) for a 2-D input or a QAct."""
        backend = self._backend(x)
        if backend is Backend.CUDA and (self.act_format != "int8" or (isinstance(x, QAct) and x.scale.ndim == 2)):
            what = "group-scaled input" if self.act_format == "int8" else f"{self.quant_kind} GEMM"
            raise BackendUnavailable(f"backend 'cuda' has no {what} path ({self.quant_kind}); use 'triton' or 'torch'")
        xq, xs = (x.q, x.scale) if isinstance(x, QAct) else self._quantize_input(x, backend)
        return backend, xq, xs, self._weight(backend)

    def _forward2d(self, x, gelu=False, residual=None):
        out_dtype = x.dtype
        backend, xq, xs, wq = self._gemm_inputs(x)
        fast = self.act_format == "fp8" and self.fp8_fast_accum
        if backend is Backend.TRITON and (self.act_format == "int8" or fast) and self._auto_backend():
            # `auto`: the hand-written CUDA GEMM where it measured faster for this shape (kernels/w8a8_cuda.py;
            # fp8: against the Triton kernel of the same in-place accumulation)
            from qvit.kernels.w8a8_cuda import prefer_cuda
            if prefer_cuda(xq, xs, wq, self.w_scale, self.bias, residual, gelu, out_dtype):
                backend = Backend.CUDA
        if backend is Backend.TRITON:
            from qvit.kernels.w8a8_linear import w8a8_linear, w8a8_linear_fp8_fast_accum
            if (fast or self.act_format == "int8") and _use_persistent(xq, xs):
                from qvit.kernels.w8a8_persistent import w8a8_linear_persistent
                return w8a8_linear_persistent(xq, xs, wq, self.w_scale, self.bias, residual, gelu, out_dtype)
            gemm = w8a8_linear_fp8_fast_accum if fast else w8a8_linear
            return gemm(xq, xs, wq, self.w_scale, self.bias, residual, gelu, out_dtype)
        if backend is Backend.CUDA:  # csrc/w8a8_gemm*.cu: wgmma (sm_90) or mma.sync, split-K, tuned per shape
            from qvit.kernels.w8a8_cuda import w8a8_linear_cuda
            return w8a8_linear_cuda(xq, xs, wq, self.w_scale, self.bias, residual, gelu, out_dtype)
        return _finish(self._matmul_torch(xq, xs, wq, out_dtype), gelu, residual)

    def _weight(self, backend):
        """The int8 (or fp8) weight matrix the GEMM reads."""
        return self.wq


class Fp8Linear(Int8Linear):
    """FP8 W8A8: e4m3 per-channel weights, dynamic per-token e4m3 activations, float32 accumulation on the
    fp8 tensor cores (sm_89 / sm_90 and newer); the same GEMM kernel and epilogue as W8A8."""
    quant_kind = "fp8"
    act_format = "fp8"
    _qdtype = torch.float8_e4m3fn
    accepts_group_input = False
    # Triton backend: the tensor cores accumulate in place over all of K (`w8a8_linear_fp8_fast_accum`).
    # Measured on the H200 (results/h200-gpu-10): 1.25-1.48x faster than promoting into float32 every K tile,
    # at an added error below the bf16 output's own rounding. False: the promoted kernel
    fp8_fast_accum = True

    def __init__(self, in_features, out_features, has_bias=True, static_input: bool = False):
        super().__init__(in_features, out_features, has_bias)
        # one calibrated input scale (QuantConfig.fp8_static_mlp) or None: per-token dynamic scales
        self.register_buffer("x_static", torch.ones((), dtype=torch.float32) if static_input else None)

    @classmethod
    def from_float(cls, lin: nn.Linear, static_scale: float | None = None):
        return super().from_float(lin)._set_static(static_scale)

    def _set_static(self, static_scale: float | None):
        """One calibrated input scale (or None: per-token scales); returns self."""
        if static_scale is not None:
            if not (math.isfinite(static_scale) and static_scale > 0):
                raise ValueError(f"{type(self).__name__}: static input scale must be positive and finite, got "
                                 f"{static_scale}")
            self.register_buffer("x_static", torch.tensor(float(static_scale), dtype=torch.float32,
                                                          device=self.w_scale.device))
        return self

    def layer_meta(self) -> dict:
        return {**super().layer_meta(), **({"static_input": True} if self.x_static is not None else {})}

    @staticmethod
    def _quantize_weight(w):
        return Q.quantize_fp8_per_channel(w)

    def forward_fp8_static(self, x, gelu: bool, scale: torch.Tensor, gelu_tanh: bool = False) -> QAct:
        """This layer's output (+ bias, GELU; gelu_tanh: its tanh form) in fp8 at the static scale `scale` (the
        next layer's calibrated input scale), as that layer's input: in the GEMM's epilogue on the Triton
        backend (`w8a8_linear_fp8_static_out`), in PyTorch on the reference one. A QNorm input: the LayerNorm in
        the same GEMM (`w8a8_linear_norm_fp8_static_out`)."""
        lead = tuple(x.shape[:-1])
        if isinstance(x, QNorm):
            from qvit.kernels.w8a8_linear import w8a8_linear_norm_fp8_static_out
            n = x.norm
            q, s = w8a8_linear_norm_fp8_static_out(x.x, n.weight, n.bias, n.eps, self.x_static,
                                                   self._weight(Backend.TRITON), self.w_scale, self.bias, gelu, scale,
                                                   gelu_tanh)
            return QAct(q, s, torch.Size(lead + (self.out_features,)), x.dtype)
        backend, xq, xs, wq = self._gemm_inputs(x if isinstance(x, QAct) else _as_2d(x))
        if backend is Backend.TRITON:
            if _use_persistent(xq, xs):  # both accumulate in place (fast accum)
                from qvit.kernels.w8a8_persistent import w8a8_linear_persistent_fp8_static_out as static_out
            else:
                from qvit.kernels.w8a8_linear import w8a8_linear_fp8_static_out as static_out
            q, s = static_out(xq, xs, wq, self.w_scale, self.bias, gelu, scale, gelu_tanh)
        else:
            if gelu_tanh and not gelu:
                raise ValueError("Fp8Linear.forward_fp8_static: gelu_tanh=True needs gelu=True")
            y = self._matmul_torch(xq, xs, wq, torch.float32)
            y = torch.nn.functional.gelu(y, approximate="tanh") if gelu_tanh else _finish(y, gelu, None)
            q, s = Q.quantize_fp8_static(y, scale)
        return QAct(q, s, torch.Size(lead + (self.out_features,)), x.dtype)

    def forward_res_norm(self, x, residual: torch.Tensor, norm: nn.Module, nxt: nn.Module):
        """This layer's output + bias + residual (the residual stream) and, from the same GEMM's epilogue, the
        LayerNorm `norm` of it as `nxt`'s fp8 input at nxt's calibrated scale (QuantConfig.fp8_static_norm:
        proj -> norm2 -> fc1, fc2 -> the next block's norm1 -> qkv; `w8a8_linear_res_norm_fp8`): (y, QAct), or
        None where that does not apply and the caller runs the layer, then the LayerNorm. Applies with
        QVIT_RES_NORM=1, without grad, on the Triton backend with in-place accumulation, per-token input scales and
        a float16 / bfloat16 residual, where a grid of at most one program per SM covers the output (batch 1-2 of
        ViT-L/16 on an H100; on the CPU under the interpreter, as two launches)."""
        if os.environ.get("QVIT_RES_NORM", "0") != "1" or torch.is_grad_enabled() or not self.fp8_fast_accum:
            return None
        static = getattr(nxt, "x_static", None)
        if static is None or not getattr(nxt, "int8_input", False) or residual.dtype not in (torch.float16,
                                                                                              torch.bfloat16):
            return None
        if type(norm) is not nn.LayerNorm or norm.weight is None \
                or tuple(norm.normalized_shape) != (self.out_features,):
            return None
        if self._backend(x) is not Backend.TRITON or nxt._backend(residual) is not Backend.TRITON:
            return None
        if not residual.is_cuda and not interpreting():
            return None
        if isinstance(x, QAct) and x.scale.ndim != 1:
            return None
        from qvit.kernels.w8a8_linear import _res_norm_fits, w8a8_linear_res_norm_fp8
        lead = tuple(residual.shape[:-1])
        m = residual.numel() // self.out_features
        if residual.is_cuda and not _res_norm_fits(m, self.out_features, self.in_features):
            return None
        _, xq, xs, wq = self._gemm_inputs(x if isinstance(x, QAct) else _as_2d(x))
        if _use_persistent(xq, xs):
            return None
        y, q, sv = w8a8_linear_res_norm_fp8(xq, xs, wq, self.w_scale, self.bias,
                                            residual.reshape(-1, self.out_features), norm.weight, norm.bias,
                                            norm.eps, static)
        return y.reshape(*lead, self.out_features), QAct(q, sv, residual.shape, residual.dtype)

    def _forward2d(self, x, gelu=False, residual=None):
        if isinstance(x, QNorm):
            from qvit.kernels.w8a8_linear import w8a8_linear_norm_fp8
            n = x.norm
            y = w8a8_linear_norm_fp8(x.x, n.weight, n.bias, n.eps, self.x_static, self._weight(Backend.TRITON),
                                     self.w_scale, self.bias, gelu)
            return y if residual is None else residual + y
        return super()._forward2d(x, gelu, residual)

    def _quantize_input(self, x, backend):
        if self.x_static is not None and backend is Backend.TRITON:
            from qvit.kernels.layernorm_quant import layernorm_quant_fp8_static
            return layernorm_quant_fp8_static(x.contiguous(), self.x_static)
        if self.x_static is not None:
            return Q.quantize_fp8_static(x, self.x_static)
        if backend is Backend.TRITON:
            from qvit.kernels.layernorm_quant import layernorm_quant_fp8
            return layernorm_quant_fp8(x.contiguous())
        return Q.quantize_fp8_per_token(x)

    def _matmul_torch(self, xq, xs, wq, out_dtype):
        return Q.fp8_matmul_ref(xq, xs, wq, self.w_scale, self.bias, out_dtype)


def _packed4_buffers(m, group_size, group_name, group_fill):
    """The buffers of the 4-bit formats that expand to the 8-bit GEMMs' weight: nibbles (N, K // 2), one uint8 per
    group (N, K // g) named group_name, one float32 scale per channel."""
    Q.check_group_size(m.in_features, group_size)
    m.group_size = group_size
    n, k = m.out_features, m.in_features
    m.register_buffer("packed", torch.zeros(n, k // 2, dtype=torch.uint8))
    m.register_buffer(group_name, torch.full((n, k // group_size), group_fill, dtype=torch.uint8))
    m.register_buffer("w_scale", torch.ones(n, dtype=torch.float32))


class Int4ProgLinear(Int8Linear):
    """4-bit weights in the progressive two-level format (qvit.kernels.quant.quantize_int4_progressive):
    packed nibbles + integer group scales + one float scale per channel. Each call expands them to the int8
    weight (one small Triton pass over the 4-bit bytes) and runs the W8A8 GEMM with its fused epilogue: the
    weights stay 4-bit in memory, the GEMM is the 8-bit one (the group-scaled W4A8 kernel runs at 0.61-0.65x
    of cuBLAS bf16 at large M on the H200; W8A8 at 1.24-1.48x, results/h200-gpu-3)."""
    quant_kind = "w4a8p"

    def __init__(self, in_features, out_features, has_bias=True, group_size=128):
        _QuantLinear.__init__(self, in_features, out_features, has_bias)
        _packed4_buffers(self, group_size, "gscale", 1)

    @classmethod
    def from_float(cls, lin: nn.Linear, group_size=128):
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size)
        m.packed, m.gscale, m.w_scale = Q.quantize_int4_progressive(lin.weight.detach(), group_size)
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def _weight(self, backend):
        # the cuda backend expands with the Triton kernel too, where Triton runs (csrc/ has no expand kernel)
        triton_ok = backend is Backend.TRITON or (backend is Backend.CUDA and triton_reason("cuda") is None)
        if triton_ok and self.group_size % 32 == 0:
            from qvit.kernels.w4a8_linear import expand_int4_progressive
            return expand_int4_progressive(self.packed, self.gscale, self.group_size)
        return Q.expand_int4_progressive(self.packed, self.gscale, self.group_size)

    def layer_meta(self):
        return {**super().layer_meta(), "group_size": self.group_size}


class Fp8W4Linear(Fp8Linear):
    """4-bit weights on a grid float8_e4m3fn holds exactly (qvit.kernels.quant.quantize_int4_pow2): packed
    nibbles + a power-of-two exponent per group + one float scale per channel. Each call expands them to the
    e4m3 weight (one small Triton pass over the 4-bit bytes; a conversion, no rounding) and runs the fp8 GEMM
    with its fused epilogues and fp8 activations, static scales included (QuantConfig weight='int4', act='fp8'):
    the weights stay 4-bit in memory, the GEMM is the fp8 one."""
    quant_kind = "w4f8"

    def __init__(self, in_features, out_features, has_bias=True, group_size=32, static_input: bool = False):
        _QuantLinear.__init__(self, in_features, out_features, has_bias)
        _packed4_buffers(self, group_size, "gexp", 0)
        self.register_buffer("x_static", torch.ones((), dtype=torch.float32) if static_input else None)

    @classmethod
    def from_float(cls, lin: nn.Linear, static_scale: float | None = None, group_size: int = 32):
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size)
        m.packed, m.gexp, m.w_scale = Q.quantize_int4_pow2(lin.weight.detach(), group_size)
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m._set_static(static_scale)

    def _weight(self, backend):
        triton_ok = backend is Backend.TRITON or (backend is Backend.CUDA and triton_reason("cuda") is None)
        if triton_ok and 128 % self.group_size == 0 and self.group_size % 16 == 0:
            from qvit.kernels.w4a8_linear import expand_int4_pow2
            return expand_int4_pow2(self.packed, self.gexp, self.group_size)
        return Q.expand_int4_pow2(self.packed, self.gexp, self.group_size)

    def _fused_inputs(self, x):
        """(fp8 activations, their scales) where this call runs the GEMM that expands the 4-bit weight tile by tile
        (`w4f8_linear_*`: QVIT_W4_FUSED=1, Triton backend, fast accumulation, at most W4_FUSED_MAX_M tokens, where
        the per-call expansion's write and re-read of the whole fp8 weight is not amortized over many rows),
        else None. Off by default: built and CPU-tested, not yet measured on a GPU (NOTES.md, session 15)."""
        if os.environ.get("QVIT_W4_FUSED", "0") != "1" or not self.fp8_fast_accum:
            return None
        if 128 % self.group_size or self.group_size % 16:
            return None
        m = x.q.shape[0] if isinstance(x, QAct) else x.shape[0]
        backend = self._backend(x)
        if backend is not Backend.TRITON or m > W4_FUSED_MAX_M:
            return None
        return (x.q, x.scale) if isinstance(x, QAct) else self._quantize_input(x, backend)

    def _forward2d(self, x, gelu=False, residual=None):
        xin = None if isinstance(x, QNorm) else self._fused_inputs(x)
        if xin is None:
            return super()._forward2d(x, gelu, residual)
        from qvit.kernels.w8a8_linear import w4f8_linear_fast_accum
        return w4f8_linear_fast_accum(*xin, self.packed, self.gexp, self.w_scale, self.group_size, self.bias, residual,
                                      gelu, x.dtype)

    def forward_fp8_static(self, x, gelu: bool, scale: torch.Tensor, gelu_tanh: bool = False) -> QAct:
        xin = None if isinstance(x, QNorm) else self._fused_inputs(x if isinstance(x, QAct) else _as_2d(x))
        if xin is None:
            return super().forward_fp8_static(x, gelu, scale, gelu_tanh)
        from qvit.kernels.w8a8_linear import w4f8_linear_fp8_static_out
        q, s = w4f8_linear_fp8_static_out(*xin, self.packed, self.gexp, self.w_scale, self.group_size, self.bias, gelu,
                                          scale, gelu_tanh)
        return QAct(q, s, torch.Size(tuple(x.shape[:-1]) + (self.out_features,)), x.dtype)

    def layer_meta(self):
        return {**super().layer_meta(), "group_size": self.group_size}


class Int4Linear(_QuantLinear):
    """int4 group-wise weights; act='int8' runs W4A8 on int8 tensor cores, act='none' W4A16."""

    def __init__(self, in_features, out_features, has_bias=True, group_size=128, symmetric=True, act="none"):
        super().__init__(in_features, out_features, has_bias)
        Q.check_group_size(in_features, group_size)
        self.group_size, self.symmetric, self.act = group_size, symmetric, act
        self.quant_kind = "w4a8" if act == "int8" else "w4a16"
        self.int8_input = act == "int8"
        g = in_features // group_size
        self.register_buffer("packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, g, dtype=torch.float16))
        if symmetric:
            self.zeros = None
        else:
            self.register_buffer("zeros", torch.zeros(out_features, g, dtype=torch.uint8))

    @classmethod
    def from_float(cls, lin: nn.Linear, group_size=128, symmetric=True, act="none"):
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size, symmetric, act)
        m.packed, m.scales, zeros = Q.quantize_int4(lin.weight.detach(), group_size, symmetric)
        if zeros is not None:
            m.zeros = zeros
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def layer_meta(self):
        return {**super().layer_meta(), "group_size": self.group_size, "symmetric": self.symmetric, "act": self.act}

    def _forward2d(self, x, gelu=False, residual=None):
        backend = self._backend(x)
        if backend is Backend.CUDA:
            raise BackendUnavailable(f"backend 'cuda' has no {self.quant_kind} GEMM yet; use 'triton' or 'torch'")
        if self.act == "int8":
            if backend is Backend.TRITON:
                from qvit.kernels.w4a8_linear import w4a8_linear
                xq, xs = (x.q, x.scale) if isinstance(x, QAct) else _quantize_act(x, backend)
                return w4a8_linear(xq, xs, self.packed, self.scales, self.bias, self.group_size, x.dtype, residual, gelu)
            if isinstance(x, QAct):
                y = Q.dequantize_int8(x.q, x.scale)
                y = Q.w4a8_linear_ref(y, self.packed, self.scales, self.group_size, self.bias).to(x.dtype)
            else:
                y = Q.w4a8_linear_ref(x, self.packed, self.scales, self.group_size, self.bias)
            return _finish(y, gelu, residual)
        if backend is Backend.TRITON and x.dtype in (torch.float16, torch.bfloat16):
            from qvit.kernels.w4a16_linear import w4a16_linear
            mode = "int4-sym" if self.symmetric else "int4-asym"
            return w4a16_linear(x.contiguous(), self.packed, self.scales, self.zeros, self.bias, self.group_size, mode,
                                residual, gelu)
        y = Q.w4a16_linear_ref(x, self.packed, self.scales, self.zeros, self.group_size, self.bias)
        return _finish(y, gelu, residual)


class NF4Linear(_QuantLinear):
    """NF4 weights in bitsandbytes' layout (blocks of 64 along the flattened weight), W4A16."""
    quant_kind = "nf4"

    def __init__(self, in_features, out_features, has_bias=True, blocksize=64):
        super().__init__(in_features, out_features, has_bias)
        if in_features % blocksize:
            raise ValueError(f"NF4Linear: blocksize={blocksize} must divide in_features={in_features}")
        self.blocksize = blocksize
        self.register_buffer("packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("absmax", torch.ones(out_features, in_features // blocksize, dtype=torch.float32))

    @classmethod
    def from_float(cls, lin: nn.Linear, blocksize=64):
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, blocksize)
        p, a = Q.quantize_nf4(lin.weight.detach(), blocksize)
        m.packed, m.absmax = p.view(m.packed.shape), a.view(m.absmax.shape)
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    @classmethod
    def from_bnb(cls, lin4bit):
        """A bitsandbytes Linear4bit (NF4, quantized) -> NF4Linear with the same bytes."""
        c = Q.nf4_from_bnb(lin4bit.weight)
        n, k = c["shape"]
        m = cls(k, n, lin4bit.bias is not None, c["blocksize"])
        m.packed = c["packed"].view(n, k // 2).clone()
        m.absmax = c["absmax"].view(n, k // c["blocksize"]).clone()
        if lin4bit.bias is not None:
            m.bias = lin4bit.bias.detach().float().clone()
        return m

    def layer_meta(self):
        return {**super().layer_meta(), "blocksize": self.blocksize}

    def _forward2d(self, x, gelu=False, residual=None):
        backend = self._backend(x)
        if backend is Backend.CUDA:
            raise BackendUnavailable("backend 'cuda' has no NF4 GEMM yet; use 'triton' or 'torch'")
        if backend is Backend.TRITON and x.dtype in (torch.float16, torch.bfloat16) and self.blocksize % 32 == 0:
            from qvit.kernels.w4a16_linear import w4a16_linear
            return w4a16_linear(x.contiguous(), self.packed, self.absmax, None, self.bias, self.blocksize, "nf4",
                                residual, gelu)
        y = Q.nf4_linear_ref(x, self.packed, self.absmax, (self.out_features, self.in_features),
                             self.blocksize, self.bias)
        return _finish(y, gelu, residual)


def _make(meta: dict) -> _QuantLinear:
    kind = meta["kind"]
    if kind == "w8a8":
        return Int8Linear(meta["in"], meta["out"], meta["bias"])
    if kind in ("w4a8", "w4a16"):
        return Int4Linear(meta["in"], meta["out"], meta["bias"], meta["group_size"], meta["symmetric"], meta["act"])
    if kind == "nf4":
        return NF4Linear(meta["in"], meta["out"], meta["bias"], meta["blocksize"])
    if kind == "fp8":
        return Fp8Linear(meta["in"], meta["out"], meta["bias"], bool(meta.get("static_input", False)))
    if kind == "w4a8p":
        return Int4ProgLinear(meta["in"], meta["out"], meta["bias"], meta["group_size"])
    if kind == "w4f8":
        return Fp8W4Linear(meta["in"], meta["out"], meta["bias"], meta["group_size"],
                           bool(meta.get("static_input", False)))
    raise CheckpointError(f"unknown quantized layer kind {kind!r}")


def _from_float(lin: nn.Linear, cfg: QuantConfig, main: bool, static_scale: float | None = None):
    if not main:
        return Int8Linear.from_float(lin) if cfg.keep_format == "int8" else None
    if cfg.weight == "int8":
        return Int8Linear.from_float(lin)
    if cfg.weight == "int4" and cfg.act == "fp8":
        return Fp8W4Linear.from_float(lin, static_scale, cfg.group_size)
    if cfg.weight == "int4" and cfg.progressive:
        return Int4ProgLinear.from_float(lin, cfg.group_size)
    if cfg.weight == "int4":
        return Int4Linear.from_float(lin, cfg.group_size, cfg.symmetric, cfg.act)
    if cfg.weight == "fp8":
        return Fp8Linear.from_float(lin, static_scale)
    return NF4Linear.from_float(lin, cfg.nf4_blocksize)


def _set(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _set_runtime(model: ViT, config: QuantConfig):
    """The quantization choices made at run time, not stored in any tensor: int8 Q/K attention (and K
    smoothing), and fc1's quantizing epilogue feeding fc2 (only where both are W8A8-family layers)."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.int8_qk, m.smooth_k = config.int8_attention, config.smooth_k
            fuse = (config.act_group > 0 and isinstance(m.proj, Int8Linear) and m.proj.act_format == "int8"
                    and m.proj.accepts_group_input and m.head_dim % 32 == 0)
            m.proj_group = m.head_dim if fuse else 0
        if isinstance(m, Mlp):
            fuse = (config.act_group > 0 and isinstance(m.fc1, Int8Linear) and m.fc1.act_format == "int8"
                    and getattr(m.fc2, "accepts_group_input", False) and m.fc2.in_features % config.act_group == 0)
            if isinstance(m.fc1, Int8Linear):
                m.fc1.out_group = config.act_group if fuse else 0
            static = isinstance(m.fc1, Fp8Linear) and getattr(m.fc2, "x_static", None) is not None
            if type(m.act) is nn.GELU:
                m.act = nn.GELU(approximate="tanh" if config.gelu_tanh and static else "none")


@torch.no_grad()
def calibrate_inputs(model: ViT, images: torch.Tensor, suffixes=("mlp.fc2",), batch_size: int = 64) -> dict:
    """max |x| over `images` (normalized float NCHW) of the input of every block's linear named by `suffixes`,
    on the float model: {"blocks.i.mlp.fc2": amax, ...}. What QuantConfig.fp8_static_mlp / fp8_static_proj
    turn into static fp8 scales (amax / 448)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError("calibration images must be a normalized float tensor (N, C, H, W), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    amax, hooks = {}, []
    for i, blk in enumerate(model.blocks):
        for suffix in suffixes:
            name = f"blocks.{i}.{suffix}"

            def hook(mod, inp, out, name=name):
                a = float(inp[0].detach().abs().max())
                amax[name] = max(amax.get(name, 0.0), a)
            hooks.append(blk.get_submodule(suffix).register_forward_hook(hook))
    was = model.training
    model.eval()
    p = next(model.parameters())
    try:
        for i in range(0, images.shape[0], batch_size):
            model(images[i:i + batch_size].to(device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return amax


def quantize(model: ViT, config: QuantConfig, filter_fn=default_filter, calib: torch.Tensor | None = None) -> ViT:
    """Swap the model's linears in place for quantized modules; returns the model. `calib`: normalized float
    images (N, C, H, W) for the options that calibrate static activation scales (QuantConfig.fp8_static_mlp)."""
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    static = {}
    if config.needs_calibration:
        if calib is None:
            raise ValueError(f"QuantConfig {', '.join(config.static_inputs())}: static input scales are calibrated: "
                             "pass calibration images, quantize(model, config, calib=images)")
        static = {name: max(a, 1e-30) / Q.FP8_MAX
                  for name, a in calibrate_inputs(model, calib, config.static_inputs()).items()}
    keep = _expand_keep(config.keep, model.cfg.depth)
    layers = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear):
            continue
        main = filter_fn(name, mod, keep)
        if main and config.weight == "int4" and mod.in_features % config.group_size:
            main = False  # e.g. a head whose K the group does not divide stays in higher precision
        new = _from_float(mod, config, main, static.get(name))
        if new is not None:
            new = new.to(mod.weight.device)
            _set(model, name, new)
            layers[name] = new.layer_meta()
    _set_runtime(model, config)
    model.quant_config = config
    model.quant_layers = layers
    return model


# ----------------------------------------------------------------------------- files
def save_quantized(model: ViT, path: str) -> None:
    """One safetensors file: every tensor of the model plus config, quant config and layer formats."""
    from safetensors.torch import save_file

    import qvit
    if not hasattr(model, "quant_layers"):
        raise ValueError("model is not quantized: call quantize(model, config) first")
    meta = {"qvit_format": FORMAT_VERSION, "qvit_version": qvit.__version__, "kind": "quantized",
            "config": json.dumps(model.cfg.to_dict()), "quant": json.dumps(asdict(model.quant_config)),
            "layers": json.dumps(model.quant_layers)}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def load_quantized(path: str, device="cpu") -> ViT:
    """Inverse of save_quantized. Refuses a wrong format version, a corrupt file or mismatched shapes."""
    sd, meta = read_state_dict(path)
    if meta.get("kind") != "quantized":
        raise CheckpointError(f"{path}: not a qvit quantized model (metadata kind={meta.get('kind')!r})")
    if meta.get("qvit_format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('qvit_format')!r}, this qvit reads {FORMAT_VERSION!r}")
    try:
        cfg = ViTConfig(**json.loads(meta["config"]))
        qd = json.loads(meta["quant"])
        qd.setdefault("smooth_k", True)  # files written before the option smoothed K
        qcfg = QuantConfig(**qd)
        layers = json.loads(meta["layers"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable qvit metadata ({e})") from e
    with torch.device("meta"):
        model = ViT(cfg)
    for name, lm in layers.items():
        _set(model, name, _make(lm))
    _set_runtime(model, qcfg)
    model.quant_config, model.quant_layers = qcfg, layers
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match the recorded layers: missing {missing[:6]}, "
                              f"unexpected {unexpected[:6]}")
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape) or own[k].dtype != v.dtype:
            raise CheckpointError(f"{path}: {k} is {v.dtype} {tuple(v.shape)}, expected "
                                  f"{own[k].dtype} {tuple(own[k].shape)}")
    for k, v in sd.items():  # the power-of-two format's exponents index e4m3's exact range (expand_int4_pow2)
        if k.endswith(".gexp") and v.numel() and int(v.max()) > Q.POW2_EXP_MAX:
            raise CheckpointError(f"{path}: {k} holds group exponent {int(v.max())}, the format allows 0..{Q.POW2_EXP_MAX}")
    model.load_state_dict(sd, assign=True)
    return model.to(device)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the model occupies on the GPU, activations aside). A tensor
    subclass that stores other tensors (torchao's quantized weights: int8 data + scales behind a bf16 face) counts
    the tensors it stores (`__tensor_flatten__`), not numel x its nominal dtype's size, which reported torchao's
    int8 model at the bf16 model's 580.5 MiB (results/h200-gpu-15)."""
    return sum(_stored_bytes(t) for t in list(model.parameters()) + list(model.buffers()))


def _stored_bytes(t: torch.Tensor) -> int:
    if hasattr(type(t), "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_stored_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


__all__ = ["QuantConfig", "quantize", "save_quantized", "load_quantized", "Int8Linear", "Int4Linear", "Int4ProgLinear",
           "Fp8W4Linear", "NF4Linear", "default_filter", "weight_bytes"]
