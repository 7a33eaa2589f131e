"""A minimal Vision Transformer whose state dict is timm's `VisionTransformer` state dict.

Pre-norm blocks (LayerNorm eps 1e-6, erf GELU MLP), a class token and learned position
embeddings, exactly as timm's `vit_*_patch*` models, so timm checkpoints load unchanged
(`qvit.vit.checkpoint.checkpoint_filter_fn` handles prefixes and position-embedding resampling).

Every attention call goes through the attention backend flag (`qvit.backend`), every quantized
linear through the linear backend flag; `ViT.set_backend` sets both for the whole model.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from qvit.backend import AttnBackend, BackendUnavailable, _fallback, resolve_attn_backend
from qvit.profiling.nvtx import range_ctx


@dataclass
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    global_pool: str = "token"  # "token" (class token) or "avg" (mean of patch tokens, timm's fc_norm)
    eps: float = 1e-6
    drop_path_rate: float = 0.0
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the recipe that trained it)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid ** 2 + 1

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ViTConfig":
        if name not in CONFIGS:
            raise ValueError(f"unknown ViT config {name!r}; known: {', '.join(sorted(CONFIGS))}")
        return replace(CONFIGS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    # timm's ImageNet models (224 px, patch 16)
    "vit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    # small-image variants for CIFAR-10 (32 px, patch 4: 64 patches + class token)
    "vit_tiny_patch4_32": ViTConfig(img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch4_32": ViTConfig(img_size=32, patch_size=4, num_classes=10, embed_dim=384, depth=12, num_heads=6),
    "vit_cifar_patch4_32": ViTConfig(img_size=32, patch_size=4, num_classes=10, embed_dim=256, depth=8,
                                     num_heads=8, mlp_ratio=2.0),
    # for tests: the smallest shape every kernel accepts
    "vit_micro_patch4_32": ViTConfig(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=2,
                                     mlp_ratio=2.0),
}


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


@dataclass
class Normed:
    """The residual stream x after a GEMM whose epilogue also wrote the next LayerNorm of it, h: the next linear's
    quantized input (`forward_res_norm`)."""
    x: torch.Tensor
    h: object


def _stream(x):
    """The residual stream itself, from a tensor or a Normed."""
    return x.x if isinstance(x, Normed) else x


def _linear(lin, x, gelu: bool = False, residual=None, norm_next=None):
    """lin(x), then GELU, then + residual. Linears that can fuse these into their GEMM's epilogue (qvit's
    quantized modules: `fuses_epilogue`) get them as arguments; for the others PyTorch applies them, in
    the order the unfused block always used (GELU(y), then residual + y). norm_next = (LayerNorm, next linear):
    a Normed where the linear's epilogue also wrote that LayerNorm as the next linear's input."""
    if norm_next is not None and residual is not None and not gelu and hasattr(lin, "forward_res_norm"):
        out = lin.forward_res_norm(x, residual, *norm_next)
        if out is not None:
            return Normed(*out)
    if getattr(lin, "fuses_epilogue", False):
        return lin(x, gelu=gelu, residual=residual)
    y = lin(x)
    if gelu:
        y = F.gelu(y)
    return y if residual is None else residual + y


def _norm_into(norm, lin, x):
    """norm(x) as the input of `lin`; a quantized int8-input linear may instead take the LayerNorm fused
    with its per-token quantization (one kernel, `norm_quant`), returning its pre-quantized input. A Normed x
    brings it, written by the GEMM before."""
    if isinstance(x, Normed):
        return x.h
    fuse = getattr(lin, "norm_quant", None)
    out = fuse(x, norm) if fuse is not None else None
    return norm(x) if out is None else out


def _sdpa(q, k, v, backend: AttnBackend):
    # SDPA wants (B, H, S, D); transposes are views, SDPA handles the strides.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if backend is AttnBackend.SDPA_FLASH:
        ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    elif backend is AttnBackend.SDPA_NOFLASH:
        ctx = sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2)


def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func  # the real FA2 package, when installed
    except ImportError:
        return None
    return flash_attn_func


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_backend: str | None = None  # None: $QVIT_ATTN / auto
        self.int8_qk = False  # quantized variants: int8 Q/K inside the fused kernel
        self.smooth_k = False  # ... with K minus its token mean (QuantConfig.smooth_k)
        self.proj_group = 0  # > 0: qvit's kernel quantizes its output for proj (QuantConfig.act_group)

    def forward(self, x, residual=None, norm_next=None):
        """x (B, S, C) float, or pre-quantized by `_norm_into`; residual: added to the output (fused into
        the proj GEMM's epilogue where it can be); norm_next: see `_linear`."""
        b, s, c = x.shape
        with range_ctx("qkv"):
            qkv = self.qkv(x).view(b, s, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # (B, S, H, D) views, no copy
        static = getattr(self.proj, "x_static", None)
        if static is not None and not torch.is_grad_enabled() and q.dtype in (torch.float16, torch.bfloat16) \
                and resolve_attn_backend(self.attn_backend, q.device.type) is AttnBackend.QVIT:
            # the attention kernel's epilogue writes proj's fp8 input at its calibrated scale (fp8_static_proj)
            from qvit.kernels import attention as qattn
            from qvit.vit.quantize import QAct
            with range_ctx("attention"):
                o8, osc = qattn.attention_fp8_static_out(q, k, v, self.head_dim ** -0.5, static, self.int8_qk,
                                                         self.smooth_k)
            with range_ctx("proj"):
                return _linear(self.proj, QAct(o8.view(b * s, c), osc, torch.Size((b, s, c)), q.dtype),
                               residual=residual, norm_next=norm_next)
        if self.proj_group and not torch.is_grad_enabled() and q.dtype in (torch.float16, torch.bfloat16) \
                and resolve_attn_backend(self.attn_backend, q.device.type) is AttnBackend.QVIT:
            # the attention kernel's epilogue writes proj's input: int8 per (token, head) with its scale
            from qvit.kernels import attention as qattn
            from qvit.vit.quantize import QAct
            with range_ctx("attention"):
                o8, osc = qattn.attention_quant_out(q, k, v, self.head_dim ** -0.5, self.int8_qk, self.smooth_k)
            xin = QAct(o8.view(b * s, c), osc.view(b * s, self.num_heads), torch.Size((b, s, c)), q.dtype,
                       self.head_dim)
            with range_ctx("proj"):
                return _linear(self.proj, xin, residual=residual, norm_next=norm_next)
        with range_ctx("attention"):
            o = self.attend(q, k, v)
        with range_ctx("proj"):
            return _linear(self.proj, o.reshape(b, s, c), residual=residual, norm_next=norm_next)

    def attend(self, q, k, v):
        backend = resolve_attn_backend(self.attn_backend, q.device.type)
        if backend is AttnBackend.QVIT:
            if q.dtype not in (torch.float16, torch.bfloat16):
                if self.attn_backend is not None:
                    raise BackendUnavailable(f"attention backend 'qvit' needs float16/bfloat16 inputs, got {q.dtype}")
                _fallback(f"auto attention: qvit kernel needs fp16/bf16, got {q.dtype}; using sdpa")
                backend = AttnBackend.SDPA
            else:
                from qvit.kernels import attention as qattn
                if self.int8_qk and not torch.is_grad_enabled():
                    # Q/K quantized on chip inside the attention kernel (no int8 copy through memory)
                    return qattn.attention_qk_int8(q, k, v, self.head_dim ** -0.5, self.smooth_k)
                return qattn.attention(q, k, v)
        if backend is AttnBackend.TORCH:
            from qvit.kernels.attention import attention_ref
            return attention_ref(q, k, v, upcast=False)
        if backend is AttnBackend.SDPA_FLASH:
            fa = _flash_attn_func()
            if fa is not None and q.dtype in (torch.float16, torch.bfloat16):
                return fa(q, k, v)
        return _sdpa(q, k, v, backend)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, residual=None, norm_next=None):
        form = self.act.approximate if type(self.act) is nn.GELU else None
        gelu = form == "none"
        group = getattr(self.fc1, "out_group", 0)
        if gelu and group and not torch.is_grad_enabled():
            # fc1's epilogue: bias, GELU, int8 per token and group -> fc2's input (QuantConfig.act_group)
            return _linear(self.fc2, self.fc1.forward_quant(x, gelu=True, group=group), residual=residual,
                           norm_next=norm_next)
        static = getattr(self.fc2, "x_static", None)
        if form is not None and static is not None and hasattr(self.fc1, "forward_fp8_static") \
                and not torch.is_grad_enabled():
            # fc1's epilogue: bias, GELU (erf or tanh form: QuantConfig.gelu_tanh), fp8 at fc2's calibrated input
            # scale (QuantConfig.fp8_static_mlp)
            return _linear(self.fc2, self.fc1.forward_fp8_static(x, gelu=True, scale=static,
                                                                 gelu_tanh=form == "tanh"), residual=residual,
                           norm_next=norm_next)
        if gelu:
            h = _linear(self.fc1, x, gelu=True)  # fused into fc1's epilogue where the kernel has it
        else:
            h = self.act(self.fc1(x))
        return _linear(self.fc2, h, residual=residual, norm_next=norm_next)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.eps)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x, norm_next=None):
        """x: the residual stream (or a Normed from the block before); norm_next = (the next block's norm1, its
        qkv): see `_linear`."""
        if self.training and self.drop_path.p > 0:
            x = _stream(x)
            with range_ctx("norm1"):
                h = self.norm1(x)
            x = x + self.drop_path(self.attn(h))
            with range_ctx("norm2"):
                h = self.norm2(x)
            with range_ctx("mlp"):
                return x + self.drop_path(self.mlp(h))
        # no drop path: the residual adds go into the proj / fc2 GEMMs and each LayerNorm into the next
        # GEMM's input quantization, where the (quantized) layers can fuse them; the same math otherwise
        with range_ctx("norm1"):
            h = _norm_into(self.norm1, self.attn.qkv, x)
        x = self.attn(h, residual=_stream(x), norm_next=(self.norm2, self.mlp.fc1))
        with range_ctx("norm2"):
            h = _norm_into(self.norm2, self.mlp.fc1, x)
        with range_ctx("mlp"):
            return self.mlp(h, residual=_stream(x), norm_next=norm_next)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.img_size = cfg.img_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x):
        if x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected images (batch, channels, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}")
        # the stride-p conv as what it is, one GEMM over the patches: (B, C, H, W) -> (B, N, C p p) rows in the
        # conv weight's (C, p, p) order, then x @ W^T + b in the token layout the blocks read. On the H200 at batch
        # 256 (bf16) nn.Conv2d took 3.5 ms per forward here, 2.0 ms in its GEMM and 1.4 ms in layout kernels
        # (results/h200-attr-2, h200-gpu-13): the GEMM is 79 GFLOP (~0.1 ms), the copy 154 MB
        b, c, h, w = x.shape
        p = self.proj.kernel_size[0]
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)  # (B, N, C)


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {cfg.global_pool!r}")
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size={cfg.img_size} is not a multiple of patch_size={cfg.patch_size}")
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_tokens, d) * 0.02)
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[Block(cfg, dpr[i]) for i in range(cfg.depth)])
        # timm: the final norm is `norm` for token pooling, `fc_norm` (after pooling) for avg pooling
        if cfg.global_pool == "avg":
            self.norm = nn.Identity()
            self.fc_norm = nn.LayerNorm(d, eps=cfg.eps)
        else:
            self.norm = nn.LayerNorm(d, eps=cfg.eps)
            self.fc_norm = nn.Identity()
        self.head = nn.Linear(d, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._l2_prefetch = None  # set_l2_prefetch
        self.apply(self._init)
        nn.init.normal_(self.cls_token, std=1e-6)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ViT":
        return cls(ViTConfig.from_name(name, **overrides))

    def set_backend(self, linear: str | None = None, attn: str | None = None) -> "ViT":
        """Set the linear and attention backends of every layer (None: environment / auto)."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.attn_backend = attn
            if hasattr(m, "backend") and hasattr(m, "quant_kind"):
                m.backend = linear
        return self

    def set_l2_prefetch(self, on: bool = True, **launch) -> "ViT":
        """Inference on a GPU: prefetch each block's weights into L2 on a side stream while the block before it
        runs (qvit.kernels.l2_prefetch; needs the CUDA extension). launch: BlockPrefetcher's ctas / threads /
        chunk / min_bytes. Off by default: it measured no gain (results/h200-gpu-26)."""
        self._l2_prefetch = dict(launch) if on else None
        return self

    def _prefetcher(self, x):
        launch = getattr(self, "_l2_prefetch", None)
        if launch is None or self.training or x.device.type != "cuda" or torch.compiler.is_compiling():
            return None
        from qvit.kernels.l2_prefetch import BlockPrefetcher
        return BlockPrefetcher(x.device, **launch)

    def forward_features(self, x):
        pf = self._prefetcher(x)
        if pf is not None:
            pf.issue(self.blocks[0])
        with range_ctx("patch_embed"):
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            x = x + self.pos_embed.to(x.dtype)
        for i, blk in enumerate(self.blocks):
            if pf is not None and i + 1 < len(self.blocks):
                pf.issue(self.blocks[i + 1])  # the next block's weights, while this one runs
            nxt = self.blocks[i + 1] if i + 1 < len(self.blocks) else None
            with range_ctx(f"block{i}"):
                if isinstance(blk, Block):  # returns a Normed for nxt where its fc2 wrote nxt's norm1
                    x = blk(x, norm_next=(nxt.norm1, nxt.attn.qkv) if isinstance(nxt, Block) else None)
                else:
                    x = blk(_stream(x))
        if pf is not None:
            pf.join()
        with range_ctx("norm"):
            return self.norm(x)

    def forward_head(self, x):
        with range_ctx("head"):
            x = x[:, 1:].mean(dim=1) if self.cfg.global_pool == "avg" else x[:, 0]
            return self.head(self.fc_norm(x))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(cfg: ViTConfig) -> float:
    """Multiply-adds x 2 of one forward pass (linears, attention matmuls, patch embedding)."""
    n, d, h = cfg.num_tokens, cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    per_block = 2 * n * d * (3 * d + d + 2 * h) + 2 * 2 * n * n * d
    patch = 2 * (n - 1) * d * cfg.in_chans * cfg.patch_size ** 2
    return float(cfg.depth * per_block + patch + 2 * d * cfg.num_classes)


__all__ = ["ViT", "ViTConfig", "CONFIGS", "count_params", "flops_per_image"]
