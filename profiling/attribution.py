"""Per-kernel attribution of a torch.profiler capture: every GPU kernel of steady-state forwards,
grouped by the model's NVTX / record_function range (patch_embed, blockN/qkv, blockN/attention, ...)
and by category (GEMM, attention, quantize, normalization, elementwise), with the launch gaps (time
the GPU sat idle inside the measured span) as their own category, so the categories sum to 100% of
the span.

    python -m qvit.profiling.attribution --out DIR [--model vit_large_patch16_224] [--batches 1 64]

Kernels are tied to ranges through the CUDA runtime launch that issued them (same correlation id):
the innermost range open on the CPU at launch time owns the kernel. Writes DIR/attribution.json,
DIR/attribution.md and DIR/attribution.png (stacked bars per variant).
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import sys
import tempfile
from collections import defaultdict

import torch

CATEGORIES = ("GEMM", "attention", "quantize", "normalization", "elementwise", "launch gaps")
_RULES = [
    ("attention", re.compile(r"attn|attention|flash|fmha|sdpa|softmax", re.I)),
    ("GEMM", re.compile(r"gemm|nvjet|cutlass|xmma|matmul|_mm|mm_|w8a8|w4a8|w4a16|splitk|sm90_|addmm|linear|conv", re.I)),
    ("quantize", re.compile(r"quant|_ln_q|int4|nf4", re.I)),
    ("normalization", re.compile(r"layer_?norm|norm", re.I)),
]


def categorize(name: str) -> str:
    for cat, rx in _RULES:
        if rx.search(name):
            return cat
    return "elementwise"


def _range_key(stack: list[str]) -> str:
    """Innermost model range of an annotation stack -> a stable key, e.g. 'block/attention'."""
    blocks = [s for s in stack if re.fullmatch(r"block\d+", s)]
    inner = [s for s in stack if not re.fullmatch(r"block\d+", s) and not s.startswith("variant:")]
    leaf = inner[-1] if inner else None
    if blocks:
        return f"block/{leaf}" if leaf else "block/other"
    return leaf or "outside ranges"


def attribute(trace: dict) -> dict:
    """trace: a chrome trace (torch.profiler export). -> {'span_us', 'busy_us', 'by_category', 'by_range'}"""
    ev = trace["traceEvents"]
    ann = sorted((e for e in ev if e.get("cat") == "user_annotation" and e.get("ph") == "X"),
                 key=lambda e: e["ts"])
    launches = {}
    for e in ev:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            launches[e["args"]["correlation"]] = e
    kernels = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("ph") == "X"]
    starts = [a["ts"] for a in ann]

    def stack_at(ts, tid):
        out = []
        i = bisect.bisect_right(starts, ts)
        for a in ann[:i]:
            if a["ts"] <= ts <= a["ts"] + a["dur"] and a.get("tid") == tid:
                out.append(a["name"])
        return out

    by_cat = defaultdict(float)
    by_range = defaultdict(lambda: defaultdict(float))
    ivals = []
    for k in kernels:
        launch = launches.get(k.get("args", {}).get("correlation"))
        stack = stack_at(launch["ts"], launch.get("tid")) if launch else []
        cat = categorize(k["name"]) if k.get("cat") == "kernel" else "elementwise"
        by_cat[cat] += k["dur"]
        by_range[_range_key(stack)][cat] += k["dur"]
        ivals.append((k["ts"], k["ts"] + k["dur"]))
    if not ivals:
        return {"span_us": 0.0, "busy_us": 0.0, "by_category": {}, "by_range": {}, "kernels": 0}
    ivals.sort()
    busy, cur_s, cur_e = 0.0, ivals[0][0], ivals[0][1]
    for s, e in ivals[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = ivals[-1][1] - ivals[0][0]
    total_k = sum(by_cat.values())
    # overlapping kernels (two streams) would make the categories exceed the busy time: scale to it
    scale = busy / total_k if total_k > busy > 0 else 1.0
    cats = {c: by_cat.get(c, 0.0) * scale for c in CATEGORIES if c != "launch gaps"}
    cats["launch gaps"] = max(span - busy, 0.0)
    return {"span_us": span, "busy_us": busy, "kernels": len(kernels), "by_category": cats,
            "by_range": {r: dict(v) for r, v in sorted(by_range.items())}}


def profile_forward(model, x, iters: int = 5) -> dict:
    """Warm up, then profile `iters` forwards (CUDA kernels + CPU ranges); per-forward attribution."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                model(x)
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.json")
        prof.export_chrome_trace(p)
        with open(p) as f:
            trace = json.load(f)
    res = attribute(trace)
    for k in ("span_us", "busy_us"):
        res[k] /= iters
    res["by_category"] = {c: v / iters for c, v in res["by_category"].items()}
    res["by_range"] = {r: {c: v / iters for c, v in d.items()} for r, d in res["by_range"].items()}
    return res


def to_markdown(res: dict) -> str:
    lines = [f"# Per-kernel attribution, {res['model']} on {res.get('card', '?')}", "",
             "GPU time per forward (us) by category; `launch gaps` is the idle time inside the span from the "
             "first kernel's start to the last one's end, so each row sums to the span. Eager forwards "
             "(CUDA graphs hide individual kernels); NVTX/record_function ranges from qvit's model.", ""]
    for b in res["batches"]:
        lines += [f"## batch {b}", "", "| variant | span us | " + " | ".join(CATEGORIES) + " | sum/span |",
                  "|---|---:|" + "---:|" * (len(CATEGORIES) + 1)]
        for name, per in res["variants"].items():
            r = per.get(str(b))
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:80]} |" + " |" * len(CATEGORIES))
                continue
            cats = r["by_category"]
            tot = sum(cats.values())
            lines.append(f"| {name} | {r['span_us']:.0f} | " + " | ".join(f"{cats.get(c, 0):.0f}" for c in CATEGORIES)
                         + f" | {tot / r['span_us'] * 100 if r['span_us'] else 0:.0f}% |")
        lines.append("")
        for name, per in res["variants"].items():
            r = per.get(str(b))
            if not r or "error" in r:
                continue
            lines += [f"<details><summary>{name}, batch {b}: by range</summary>", "",
                      "| range | " + " | ".join(CATEGORIES[:-1]) + " |", "|---|" + "---:|" * (len(CATEGORIES) - 1)]
            for rng, d in r["by_range"].items():
                lines.append(f"| {rng} | " + " | ".join(f"{d.get(c, 0):.0f}" for c in CATEGORIES[:-1]) + " |")
            lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bs = res["batches"]
    fig, axes = plt.subplots(1, len(bs), figsize=(6 * len(bs), 4.5), squeeze=False)
    for ax, b in zip(axes[0], bs):
        names = [n for n, per in res["variants"].items() if str(b) in per and "error" not in per[str(b)]]
        bottom = [0.0] * len(names)
        for c in CATEGORIES:
            vals = [res["variants"][n][str(b)]["by_category"].get(c, 0) for n in names]
            ax.bar(range(len(names)), vals, bottom=bottom, label=c)
            bottom = [x + y for x, y in zip(bottom, vals)]
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("us per forward")
        ax.set_title(f"batch {b}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    from qvit.profiling.bench_e2e import QVIT_VARIANTS, build_qvit
    from qvit.vit.model import ViT, ViTConfig
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="vit_large_patch16_224")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--variants", nargs="*", default=None, help="subset of the variant names (default: all)")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants or () if v not in QVIT_VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(QVIT_VARIANTS)}")
    if not torch.cuda.is_available():
        print("attribution: needs a CUDA GPU (kernels are what it attributes)", file=sys.stderr)
        return 2
    dev, dtype = torch.device("cuda"), torch.bfloat16
    from qvit.profiling.bench_kernels import env_info
    cfg = ViTConfig.from_name(args.model)
    torch.manual_seed(0)
    base = ViT(cfg).eval()
    res = {"model": args.model, "batches": args.batches, "env": env_info(), "variants": {}}
    res["card"] = res["env"]["card"]
    os.makedirs(args.out, exist_ok=True)
    for name, spec in QVIT_VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        per = {}
        try:
            model, _ = build_qvit(base, *spec, dev, dtype)
        except Exception as e:  # noqa: BLE001
            res["variants"][name] = {str(b): {"error": f"{type(e).__name__}: {e}"} for b in args.batches}
            continue
        for b in args.batches:
            x = torch.randn(b, 3, cfg.img_size, cfg.img_size, device=dev, dtype=dtype)
            try:
                per[str(b)] = profile_forward(model, x, args.iters)
            except Exception as e:  # noqa: BLE001
                per[str(b)] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(f"attribution: {name} b{b}: " + (per[str(b)].get("error") or
                  f"span {per[str(b)]['span_us']:.0f} us, gaps {per[str(b)]['by_category']['launch gaps']:.0f} us"),
                  file=sys.stderr)
        res["variants"][name] = per
        del model
        torch.cuda.empty_cache()
        with open(os.path.join(args.out, "attribution.json"), "w") as f:
            json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "attribution.md"), "w") as f:
        f.write(to_markdown(res))
    plot(res, os.path.join(args.out, "attribution.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
