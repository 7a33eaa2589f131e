"""The spread of one M = 197 GEMM's time over fresh operands, inside one process: the question session 25 left
(results/h200-gpu-25): the CUDA W8A8 GEMM's config 11 at fc1 measured 5.06-5.34 us from one process to the next
while the Triton kernel stayed at 5.20-5.28. Each trial makes new operands (a pad of random size, a multiple of 512
bytes up to 4 MiB, allocated and kept before them changes where the caching allocator puts them; every trial records
the addresses) and times the pinned CUDA launch and the Triton kernel as CUDA graphs in alternation
(`w8a8_cuda._graph_times`, the tuner's timer). `--same-values` keeps
the operands' values and changes only their addresses; `--same-address` keeps the addresses and draws new values.
If the CUDA time spreads inside one process as it did between processes while Triton's stays flat, it follows its
operands; the two switches tell addresses from values.

    python tools/gemm_spread.py [--layer fc1] [--config 11] [--splits 1] [--trials 12] [--rounds 3]
        [--same-values | --same-address] [--out spread.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

LAYERS = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}


def summarize(rows: list[dict]) -> dict:
    """{provider: {min, median, max, spread}} of the trials' times (us); spread = max / min."""
    out = {}
    for p in rows[0]["us"] if rows else ():
        t = [r["us"][p] for r in rows]
        out[p] = {"min": min(t), "median": statistics.median(t), "max": max(t), "spread": max(t) / min(t)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", choices=sorted(LAYERS), default="fc1")
    ap.add_argument("--config", type=int, default=11)
    ap.add_argument("--splits", type=int, default=1)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    same = ap.add_mutually_exclusive_group()
    same.add_argument("--same-values", action="store_true", help="new addresses, the first trial's values")
    same.add_argument("--same-address", action="store_true", help="the first trial's addresses, new values")
    ap.add_argument("--out", default=None, help="JSON: every trial and the summary")
    args = ap.parse_args(argv)
    import torch
    from qvit.kernels import quant as Q
    from qvit.kernels import w8a8_cuda as C
    from qvit.kernels.w8a8_linear import w8a8_linear
    if not torch.cuda.is_available():
        raise SystemExit("gemm_spread: needs a CUDA GPU")
    k, n = LAYERS[args.layer]
    gen = torch.Generator(device="cpu").manual_seed(0)

    def draw():  # fresh operands: new values, new allocations
        xq, xs = Q.quantize_int8_per_token(torch.randn(197, k, generator=gen).cuda())
        wq, ws = Q.quantize_int8_per_channel(torch.randn(n, k, generator=gen).cuda() * 0.02)
        return xq, xs, wq, ws, torch.randn(n, generator=gen).cuda()

    first, keep, rows = None, [], []
    for t in range(args.trials):
        if args.same_address and first is not None:
            for dst, src in zip(first, draw()):  # new values written into the first trial's storage
                dst.copy_(src)
            ops = first
        else:
            pad = int(torch.randint(0, 8192, (1,), generator=gen)) * 512
            keep.append(torch.empty(pad + 512, dtype=torch.uint8, device="cuda"))  # moves what follows
            ops = tuple(a.clone() for a in first) if args.same_values and first is not None else draw()
        if first is None:
            first = ops
        xq, xs, wq, ws, b = ops
        ms = C._graph_times(xq.device, {
            "cuda": lambda: C.w8a8_linear_cuda(xq, xs, wq, ws, b, None, False, torch.bfloat16, args.config,
                                               args.splits),
            "triton": lambda: w8a8_linear(xq, xs, wq, ws, b, None, False, torch.bfloat16)}, args.rounds)
        row = {"trial": t, "us": {p: v * 1e3 / C._TUNE_REPS for p, v in ms.items()},
               "x_addr": xq.data_ptr(), "w_addr": wq.data_ptr()}
        rows.append(row)
        print(f"trial {t:2d}: cuda {row['us']['cuda']:.2f} us, triton {row['us']['triton']:.2f} us, "
              f"w at {wq.data_ptr() % (2 << 20):#x} mod 2 MiB, x at {xq.data_ptr() % (2 << 20):#x}")
    summary = summarize(rows)
    for p, s in summary.items():
        print(f"{p}: min {s['min']:.2f} / median {s['median']:.2f} / max {s['max']:.2f} us (x{s['spread']:.3f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "device": torch.cuda.get_device_name(), "trials": rows,
                       "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
