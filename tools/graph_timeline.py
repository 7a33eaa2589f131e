"""Where a graphed batch-1 forward's time goes: kernel time against the idle gaps between kernels, from the kernel
records of CUDA-graph replays (torch.profiler / CUPTI), for a qvit variant (default row 3) and timm bf16.

    python tools/graph_timeline.py [--variant "3 8bit+qvit-attn"] [--linear triton] [--replays 5] [--out tl.json]

Per replay: the span (first kernel's start to last kernel's end), the sum of kernel durations, the idle time
(span - the union of kernel intervals) and the number of kernels; per kernel class (GEMM, attention, LayerNorm +
quantize, other) and per kernel name (its first 120 characters) the summed duration and count; the gap distribution
(start of a kernel - end of the one before it). Beside them the same graph's replay time without the profiler (CUDA
events, median of 40), which says how much the tracing itself adds.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys

CLASSES = (("attention", re.compile(r"attn|attention|flash|fmha|sdpa", re.I)),
           ("layernorm+quant", re.compile(r"layernorm|layer_norm|_ln_|lnq|norm_quant", re.I)),
           ("gemm", re.compile(r"w8a8|w4a|gemm|matmul|linear|cutlass|sm90_|nvjet|wgmma|_mm_|scaled_mm", re.I)))


def kernel_class(name: str) -> str:
    for cls, pat in CLASSES:
        if pat.search(name):
            return cls
    return "other"


def replay_stats(kernels: list[tuple[float, float, str]]) -> dict:
    """kernels: (start_us, end_us, name) of one replay. Span, busy (union of the intervals), summed durations,
    idle = span - busy, the gaps between consecutive kernels (by start) and the per-class sums."""
    ks = sorted(kernels)
    span = ks[-1][1] - ks[0][0] if ks else 0.0
    busy, cur_s, cur_e = 0.0, None, None
    for s, e, _ in ks:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    gaps = [b[0] - a[1] for a, b in zip(ks, ks[1:])]
    per, names = {}, {}
    for s, e, n in ks:
        for key, table in ((kernel_class(n), per), (n[:120], names)):
            c = table.setdefault(key, {"us": 0.0, "count": 0})
            c["us"] += e - s
            c["count"] += 1
    return {"kernels": len(ks), "span_us": span, "busy_us": busy, "idle_us": span - busy,
            "kernel_sum_us": sum(e - s for s, e, _ in ks), "gap_median_us": statistics.median(gaps) if gaps else 0.0,
            "gap_p90_us": sorted(gaps)[int(0.9 * (len(gaps) - 1))] if gaps else 0.0, "classes": per,
            "names": dict(sorted(names.items(), key=lambda kv: -kv[1]["us"]))}


def split_replays(kernels: list[tuple[float, float, str]], replays: int) -> list[list]:
    """The kernel records of `replays` back-to-back replays of one graph, in start order, cut into equal parts
    (every replay runs the same kernels); refuses a count that does not divide evenly."""
    ks = sorted(kernels)
    if replays < 1 or len(ks) % replays:
        raise ValueError(f"{len(ks)} kernel records do not split into {replays} equal replays")
    n = len(ks) // replays
    return [ks[i * n:(i + 1) * n] for i in range(replays)]


def _trace(g, replays: int) -> list[tuple[float, float, str]]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            g.replay()
        torch.cuda.synchronize()
    out = []
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in ev.name.lower() \
                and "memset" not in ev.name.lower():
            out.append((ev.time_range.start, ev.time_range.end, ev.name))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="3 8bit+qvit-attn")
    ap.add_argument("--linear", default="triton")
    ap.add_argument("--replays", type=int, default=5)
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("graph_timeline: needs a CUDA GPU")
    from qvit.profiling import bench_e2e as E
    from qvit.vit.model import ViTConfig
    if args.variant not in E.QVIT_VARIANTS:
        raise SystemExit(f"graph_timeline: unknown variant {args.variant!r}")
    dev, dtype = torch.device("cuda"), torch.bfloat16
    cfg = ViTConfig.from_name("vit_large_patch16_224")
    rows = [(args.variant, lambda: E.build_variant(args.variant, args.linear, dev, dtype))]
    if not args.no_timm:
        rows.append(("timm bf16 (sdpa)", lambda: E.build_peer("timm bf16 (sdpa)", "vit_large_patch16_224", dev,
                                                             dtype)[0]))
    x = torch.randn(1, 3, cfg.img_size, cfg.img_size, device=dev, dtype=dtype)
    res = {"linear": args.linear, "replays": args.replays, "rows": {}}
    for name, build in rows:
        model = build()
        got, why = E.capture_graph(model, x)
        if got is None:
            raise SystemExit(f"graph_timeline: {name} could not be captured: {why}")
        g = got[0]
        for _ in range(20):
            g.replay()
        plain = statistics.median(E._time_iters(g.replay, 40, dev)) * 1e3
        trace = _trace(g, args.replays)
        try:
            per = [replay_stats(k) for k in split_replays(trace, args.replays)]
        except ValueError as e:  # a record lost or added: the whole trace as one, said so
            print(f"timeline {name}: {e}; the {args.replays} replays reported as one span")
            per = [replay_stats(trace)]
        best = min(per, key=lambda r: r["span_us"])
        res["rows"][name] = {"replay_us_unprofiled": plain, "replays": per}
        cls = ", ".join(f"{c} {v['us']:.0f} us / {v['count']}" for c, v in sorted(best["classes"].items()))
        print(f"timeline {name}: replay {plain:.0f} us unprofiled; traced span {best['span_us']:.0f} us, busy "
              f"{best['busy_us']:.0f}, idle {best['idle_us']:.0f} ({best['idle_us'] / best['span_us']:.0%}), "
              f"{best['kernels']} kernels, gap median {best['gap_median_us']:.2f} p90 {best['gap_p90_us']:.2f} us; "
              f"{cls}")
        del model, g, got
        torch.cuda.empty_cache()
    from qvit.profiling.bench_kernels import env_info
    res["env"] = env_info()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
