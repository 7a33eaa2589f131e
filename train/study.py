"""The study's accuracy side: post-training quantization of a trained model into the five variants
(and extra rows), evaluated on the CIFAR-10 test set with qvit's real kernels, plus the layerwise
sensitivity ablation.

Variants (all from one float checkpoint, one evaluation protocol: the 10k test images, batch 500,
the model in bf16 on the GPU, or float32 with the reference backends on a CPU):

    1 bf16             float weights, SDPA (best backend)
    2 4bit+qvit-attn   w4f8s2t (int4 weights, power-of-two group-32 scales, expanded exactly to e4m3; fp8
                       activations at static calibrated scales) + qvit's fused attention (writes proj's fp8 input)
    3 8bit+qvit-attn   fp8s2t (e4m3 W8A8, the same activations) + qvit's fused attention
    4 4bit+sdpa        w4f8s2t + SDPA with FLASH disabled
    5 8bit+sdpa        fp8s2t + SDPA with FLASH disabled

(qvit.variants says why these and not the int8 pipeline, which runs as the "x ...-int8" rows.) Extra rows: the
int8 pipeline (W8A8, w4a8p), W4A16 int4 and NF4 (weight-only), attention variants alone. The first and last
blocks and the head stay in W8A8 by default (`keep`); the ablation measures what that protection buys and which
layers are sensitive.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch

from qvit.train.augment import CIFAR_MEAN, CIFAR_STD, Augment, AugmentConfig
from qvit.train.data import DeviceLoader, load_cifar10
from qvit.train.metrics import evaluate
from qvit.vit.checkpoint import load_model
from qvit.vit.quantize import QuantConfig, default_filter, quantize, weight_bytes

from qvit.variants import FOUR_BIT, KEEP, VARIANTS  # noqa: E402  (one table for study, benchmarks and demo)

# extra rows: a variant of the table after SmoothQuant folding (alpha 0.5, calibrated on 256 training images)
SMOOTHED = {"x 8bit-int8+sdpa-noflash, smoothquant": "x 8bit-int8+sdpa-noflash",
            "x 4bit-int8+sdpa-noflash, smoothquant": "x 4bit-int8+sdpa-noflash"}


def _env(device):
    """(linear backend, dtype, attention override) for the device: the real kernels on a GPU, the
    references on a CPU (the Triton interpreter is far too slow for 10k images)."""
    if device.type == "cuda":
        return "triton", torch.bfloat16, None
    return "torch", torch.float32, "torch"


def build_variant(base, preset, attn, int8_qk, device, keep=KEEP, filter_fn=default_filter, keep_format="float",
                  calib=None):
    """`calib`: normalized training images for the presets that calibrate static scales (fp8s)."""
    linear, dtype, attn_override = _env(device)
    m = copy.deepcopy(base)
    if preset is not None:
        quantize(m, QuantConfig.preset(preset, keep=keep, int8_attention=int8_qk, keep_format=keep_format),
                 filter_fn=filter_fn, calib=calib)
    m = m.to(device=device, dtype=dtype).eval()
    m.set_backend(linear=linear, attn=attn_override or attn)
    return m


def run_eval(model, loader, aug, num_classes=10):
    t = time.perf_counter()
    res = evaluate(model, loader, lambda x: aug.eval(x).to(next(model.parameters()).dtype), num_classes)
    res["eval_s"] = time.perf_counter() - t
    return res


def layer_filter(select):
    """A quantize() filter that quantizes exactly the linears whose name satisfies `select`."""
    import torch.nn as nn
    return lambda name, mod, keep: isinstance(mod, nn.Linear) and select(name)


def study(model_path: str, out: str, device=None, data_root=None, limit_test=None, variants=None,
          ablation: bool = True, ablation_preset: str | None = None, ablation_rows=None) -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = load_model(model_path).float().eval()
    depth = base.cfg.depth
    xte, yte = load_cifar10("test", data_root)
    if limit_test and limit_test < xte.shape[0]:
        keep = torch.randperm(xte.shape[0], generator=torch.Generator().manual_seed(1))[:limit_test].sort().values
        xte, yte = xte[keep], yte[keep]
    loader = DeviceLoader(xte, yte, 500, False, False, device=device)
    aug = Augment(AugmentConfig(mean=CIFAR_MEAN, std=CIFAR_STD))
    linear, dtype, attn_override = _env(device)
    rows = {}
    names = list(variants) if variants is not None else list(VARIANTS) + list(SMOOTHED)  # []: none
    smooth_info = None
    calib = None  # 256 training images, for SmoothQuant's statistics and the static fp8 scales (fp8s)
    if any(n in SMOOTHED or (VARIANTS[n][0] and QuantConfig.preset(VARIANTS[n][0]).needs_calibration)
           for n in names if n in VARIANTS or n in SMOOTHED):
        xtr, _ = load_cifar10("train", data_root)
        calib = aug.eval(xtr[:256])
        del xtr
    if any(n in SMOOTHED for n in names):
        from qvit.vit.smooth import calibrate, smooth
        stats = calibrate(base, calib)
        smoothed = copy.deepcopy(base)
        smooth_info = {k: {"outlier_ratio_before": a, "after": b} for k, (a, b) in smooth(smoothed, stats, 0.5).items()}
    for name in names:
        src = smoothed if name in SMOOTHED else base
        preset, attn, int8_qk, keep_format = VARIANTS[SMOOTHED.get(name, name)]
        m = build_variant(src, preset, attn, int8_qk, device, keep_format=keep_format, calib=calib)
        r = run_eval(m, loader, aug)
        r.update(preset=preset or "float", attn=attn_override or attn, int8_qk=int8_qk, linear_backend=linear,
                 keep_format=keep_format, weight_bytes=weight_bytes(m))
        rows[name] = r
        print(f"qvit study: {name:28s} top1={r['top1']:.2f} top5={r['top5']:.2f} f1={r['macro_f1']:.2f} "
              f"({r['eval_s']:.1f}s)", file=sys.stderr)
        del m
    from qvit.profiling.bench_kernels import source_commit
    commit = source_commit()
    result = {"model": model_path, "commit": commit, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "linear_backend": linear, "dtype": str(dtype).replace("torch.", ""), "n_test": int(xte.shape[0]),
              "keep": list(KEEP), "variants": rows, "smoothquant": smooth_info}
    _write(out, result)  # the variants survive an ablation that fails or runs out of time
    if ablation:
        result["ablation"] = sensitivity(base, loader, aug, device, depth, ablation_preset or FOUR_BIT, ablation_rows)
        _write(out, result)
    return result


def _write(out, result):
    from qvit.vit.checkpoint import atomic_write
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "study_ptq.json"), lambda t: open(t, "w").write(json.dumps(result, indent=1)))


def sensitivity(base, loader, aug, device, depth, preset=FOUR_BIT, only=None) -> dict:
    """Top-1 of `preset` applied to one block at a time, to one layer type at a time (all blocks), to
    every linear (no protection) and with the default protection (first/last blocks and head float).
    only: label prefixes of the rows to run (e.g. to finish an ablation a deadline cut); the float
    reference always runs."""
    ref = run_eval(build_variant(base, None, "sdpa", False, device), loader, aug)["top1"]
    rows = {"float": ref}

    def one(label, select):
        if only and not any(label.startswith(p) for p in only):
            return
        m = build_variant(base, preset, "sdpa", False, device, keep=(), filter_fn=layer_filter(select))
        top1 = run_eval(m, loader, aug)["top1"]
        rows[label] = top1
        print(f"qvit study: ablation {preset} {label:24s} top1={top1:.2f} (drop {ref - top1:+.2f})", file=sys.stderr)

    for i in range(depth):
        one(f"block{i}", lambda n, i=i: n.startswith(f"blocks.{i}."))
    for kind in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
        one(f"all {kind}", lambda n, kind=kind: n.startswith("blocks.") and n.endswith(kind))
    one("head", lambda n: n == "head")
    one("all linears (no protection)", lambda n: True)
    one("default protection (blocks 0, -1, head float)",
        lambda n: not (n == "head" or n.startswith("blocks.0.") or n.startswith(f"blocks.{depth - 1}.")))
    return {"preset": preset, "top1": rows, "drop": {k: ref - v for k, v in rows.items()}}
