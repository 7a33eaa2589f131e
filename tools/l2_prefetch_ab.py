"""Batch-1 graphed latency of a qvit variant with and without the side-stream L2 prefetch of the next block's weights
(`ViT.set_l2_prefetch`, csrc/l2_prefetch.cu), in one process, timed in alternation, with two bounds beside it:

- `hot`: every block runs block 0's linears (the same shapes and kernels, 12 MiB of 8-bit weights that stay in
  L2): the latency if no linear waited for DRAM, what a perfect prefetch could reach;
- `timm`: timm bf16 (SDPA) graphed, the issue's baseline.

    python tools/l2_prefetch_ab.py [--variant "3 8bit+qvit-attn"] [--linear triton] [--rounds 5] [--iters 40]
        [--setting CTAS:THREADS:CHUNK ...] [--out ab.json]

Each setting is one prefetch launch shape (default 8:32:16384 and 32:32:16384). Each round replays every graph
`iters` times (CUDA events per replay) in a fixed order; the summary gives each row's median of the rounds' p50 and
its ratio to the base row and to timm.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys


def summarize(rounds: list[dict]) -> dict:
    """{row: {"p50_ms": median over rounds of the round's p50, "min_ms", "max_ms", "vs_base", "vs_timm"}}."""
    rows = rounds[0].keys() if rounds else ()
    out = {r: {"p50_ms": statistics.median(x[r] for x in rounds), "min_ms": min(x[r] for x in rounds),
               "max_ms": max(x[r] for x in rounds)} for r in rows}
    for r in out:
        if "base" in out:
            out[r]["vs_base"] = out[r]["p50_ms"] / out["base"]["p50_ms"]
        if "timm" in out:
            out[r]["vs_timm"] = out[r]["p50_ms"] / out["timm"]["p50_ms"]
    return out


def parse_setting(text: str) -> dict:
    try:
        ctas, threads, chunk = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected CTAS:THREADS:CHUNK, e.g. 8:32:16384") from None
    return {"ctas": ctas, "threads": threads, "chunk": chunk}


def share_linears(model) -> None:
    """Every block's linears become block 0's modules (their weights stay in L2: the `hot` bound)."""
    b0 = model.blocks[0]
    for b in model.blocks[1:]:
        b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2 = b0.attn.qkv, b0.attn.proj, b0.mlp.fc1, b0.mlp.fc2


def capture_timm(x, tool: str):
    """(graph, static output) of timm bf16 (SDPA) ViT-L/16 on x, the tools' baseline row; exits naming `tool`."""
    from qvit.profiling import bench_e2e as E
    model, _ = E.build_peer("timm bf16 (sdpa)", "vit_large_patch16_224", x.device, x.dtype)
    got, why = E.capture_graph(model, x)
    if got is None:
        raise SystemExit(f"{tool}: timm could not be captured: {why}")
    return got


def replay_once(graphs: dict) -> None:
    """Every graph replayed once (its static output filled), then a sync."""
    import torch
    for g in graphs.values():
        g.replay()
    torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="3 8bit+qvit-attn")
    ap.add_argument("--linear", default="triton")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--setting", type=parse_setting, action="append", default=None)
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("l2_prefetch_ab: needs a CUDA GPU")
    from qvit.profiling import bench_e2e as E
    from qvit.vit.model import ViTConfig
    settings = args.setting or [parse_setting("8:32:16384"), parse_setting("32:32:16384")]
    dev, dtype = torch.device("cuda"), torch.bfloat16
    cfg = ViTConfig.from_name("vit_large_patch16_224")
    try:
        model = E.build_variant(args.variant, args.linear, dev, dtype)
    except ValueError as e:
        raise SystemExit(f"l2_prefetch_ab: {e}") from None
    hot = copy.deepcopy(model)
    share_linears(hot)
    x = torch.randn(1, 3, cfg.img_size, cfg.img_size, device=dev, dtype=dtype)
    graphs, outs = {}, {}
    with torch.no_grad():
        for name, m, pf in [("base", model, None), ("hot", hot, None), ("base#2", model, None)] + [
                (f"prefetch {s['ctas']}:{s['threads']}:{s['chunk']}", model, s) for s in settings]:
            m.set_l2_prefetch(pf is not None, **(pf or {}))
            got, why = E.capture_graph(m, x)
            if got is None:
                raise SystemExit(f"l2_prefetch_ab: {name} could not be captured: {why}")
            graphs[name], outs[name] = got
        model.set_l2_prefetch(False)
        if not args.no_timm:
            graphs["timm"], outs["timm"] = capture_timm(x, "l2_prefetch_ab")
    replay_once(graphs)
    # the prefetch is a hint: its graphs must give the base graph's logits bit for bit
    same = {n: bool(torch.equal(outs[n], outs["base"])) for n in graphs if n.startswith("prefetch")}
    rounds = []
    for _ in range(args.rounds):
        r = {}
        for name, g in graphs.items():
            ms = E._time_iters(g.replay, args.iters, dev)
            r[name] = statistics.median(ms)
        rounds.append(r)
    summary = summarize(rounds)
    from qvit.profiling.bench_kernels import env_info
    res = {"variant": args.variant, "linear": args.linear, "iters": args.iters, "env": env_info(),
           "same_logits_as_base": same, "rounds": rounds, "summary": summary}
    for name, s in summary.items():
        print(f"l2ab {name:28s} p50 {s['p50_ms']:.4f} ms [{s['min_ms']:.4f}-{s['max_ms']:.4f}]"
              f" vs base {s.get('vs_base', float('nan')):.3f} vs timm {s.get('vs_timm', float('nan')):.3f}")
    print("l2ab same logits as base:", same)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
