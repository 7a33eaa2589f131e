"""The LayerNorm fused into a GEMM (QuantConfig.fp8_static_norm), measured in one process:

1. kernels, each timed as a CUDA graph of its launches (`triton.testing.do_bench_cudagraph`, L2-resident operands):
   the epilogue form (`w8a8_linear_res_norm_fp8`): proj (K = 1024) and fc2 (K = 4096) at M = 197, the plain fp8
   GEMM + residual then the LayerNorm kernel, against the one GEMM with the barrier (and the GEMM alone);
   with --prologue, the prologue form (`w8a8_linear_norm_fp8`, qkv and fc1 at M = 197, 12,608);
2. end to end, ViT-L/16 batch 1 graphed: the study's row 3 (fp8s2t), fp8s4t with the LayerNorms written by the
   proj / fc2 epilogues (QVIT_RES_NORM=1) and as kernels of their own (the default), with --prologue inside
   qkv / fc1 (QVIT_NORM_FUSED=1), with --4bit the 4-bit rows alike, and timm bf16, timed in alternation
   (`tools/l2_prefetch_ab.summarize`: median over rounds of each round's p50).

    python tools/norm_fused_ab.py [--linear triton] [--rounds 5] [--iters 40] [--4bit] [--prologue] [--out ab.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from l2_prefetch_ab import capture_timm, replay_once, summarize  # noqa: E402

# (row label, variant, environment while capturing)
OFF = {"QVIT_NORM_FUSED": "0", "QVIT_RES_NORM": "0"}
ROWS = [("row3 fp8s2t", "3 8bit+qvit-attn", OFF), ("fp8s4t unfused", "x fp8s4t+qvit-attn", OFF),
        ("fp8s4t epilogue", "x fp8s4t+qvit-attn", {**OFF, "QVIT_RES_NORM": "1"})]
ROWS_PROLOGUE = [("fp8s4t prologue", "x fp8s4t+qvit-attn", {**OFF, "QVIT_NORM_FUSED": "1"})]
ROWS_4BIT = [("row2 w4f8s2t", "2 4bit+qvit-attn", OFF), ("w4f8s4t unfused", "x 4bit-fp8s4t+qvit-attn", OFF),
             ("w4f8s4t epilogue", "x 4bit-fp8s4t+qvit-attn", {**OFF, "QVIT_RES_NORM": "1"})]


def _timed(row: dict, fns: dict, what: str) -> dict:
    """do_bench_cudagraph us of each launch sequence in fns (run once first: autotuning outside the graphs)."""
    import torch
    from triton.testing import do_bench_cudagraph
    for f in fns.values():
        f()
    torch.cuda.synchronize()
    for name, f in fns.items():
        row[f"{name}_us"] = do_bench_cudagraph(f) * 1e3
    print(f"normab kernels {what}: " + ", ".join(f"{k} {v:.2f} us" for k, v in row.items() if k.endswith("_us")),
          flush=True)
    return row


def bench_res_norm(ms=(197,)) -> list[dict]:
    """us of proj / fc2 + residual then the LayerNorm kernel, against the epilogue form with its barrier (the
    two-launch form, for grids that do not fit, is the GPU tests' and is not timed: the model does not use it)."""
    import torch

    from qvit.kernels import quant as Q
    from qvit.kernels import w8a8_linear as L
    from qvit.kernels.layernorm_quant import layernorm_quant_fp8_static
    dev, n, out = "cuda", 1024, []
    lw, lb = (torch.randn(n, device=dev) * 0.5 + 1).bfloat16(), (torch.randn(n, device=dev) * 0.2).bfloat16()
    s = torch.tensor(0.02, device=dev)
    for m in ms:
        r = (torch.randn(m, n, device=dev) * 2 + 1).bfloat16()
        for name, k in (("proj", 1024), ("fc2", 4096)):
            xq, xs = Q.quantize_fp8_per_token(torch.randn(m, k, device=dev))
            wq, ws = Q.quantize_fp8_per_channel(torch.randn(n, k, device=dev) * 0.02)
            b = torch.randn(n, device=dev)

            def two():
                y = L.w8a8_linear_fp8_fast_accum(xq, xs, wq, ws, b, r, False, torch.bfloat16)
                return layernorm_quant_fp8_static(y, s, lw, lb)
            row = _timed({"M": m, "shape": name, "barrier_fits": L._res_norm_fits(m, n, k)}, {
                "gemm_then_ln": two,
                "gemm_only": lambda: L.w8a8_linear_fp8_fast_accum(xq, xs, wq, ws, b, r, False, torch.bfloat16),
                "epilogue_barrier": lambda: L.w8a8_linear_res_norm_fp8(xq, xs, wq, ws, b, r, lw, lb, 1e-6, s, True)},
                f"M={m} {name}")
            row["barrier_vs_two"] = row["epilogue_barrier_us"] / row["gemm_then_ln_us"]
            out.append(row)
    return out


def bench_kernels(ms=(197, 197 * 64)) -> list[dict]:
    """us of the two-launch path and the fused GEMM at qkv and fc1 (bf16 rows, K = 1024)."""
    import torch
    from triton.testing import do_bench_cudagraph

    from qvit.kernels import quant as Q
    from qvit.kernels import w8a8_linear as L
    from qvit.kernels.layernorm_quant import layernorm_quant_fp8_static
    dev, k, out = "cuda", 1024, []
    for m in ms:
        x = (torch.randn(m, k, device=dev) * 2 + 1).bfloat16()
        lw, lb = (torch.randn(k, device=dev) * 0.5 + 1).bfloat16(), (torch.randn(k, device=dev) * 0.2).bfloat16()
        s_in, s_out = torch.tensor(0.02, device=dev), torch.tensor(0.01, device=dev)
        for name, n in (("qkv", 3072), ("fc1", 4096)):
            wq, ws = Q.quantize_fp8_per_channel(torch.randn(n, k, device=dev) * 0.02)
            b = torch.randn(n, device=dev)
            if name == "qkv":
                def two():
                    q, s = layernorm_quant_fp8_static(x, s_in, lw, lb)
                    return L.w8a8_linear_fp8_fast_accum(q, s, wq, ws, b, None, False, torch.bfloat16)

                def one():
                    return L.w8a8_linear_norm_fp8(x, lw, lb, 1e-6, s_in, wq, ws, b)
            else:
                def two():
                    q, s = layernorm_quant_fp8_static(x, s_in, lw, lb)
                    return L.w8a8_linear_fp8_static_out(q, s, wq, ws, b, True, s_out, True)

                def one():
                    return L.w8a8_linear_norm_fp8_static_out(x, lw, lb, 1e-6, s_in, wq, ws, b, True, s_out, True)
            two(), one()  # autotune outside the timed graphs
            torch.cuda.synchronize()
            row = {"M": m, "shape": name, "two_launch_us": do_bench_cudagraph(two) * 1e3,
                   "fused_us": do_bench_cudagraph(one) * 1e3}
            row["fused_vs_two"] = row["fused_us"] / row["two_launch_us"]
            print(f"normab kernels M={m} {name}: LayerNorm kernel + GEMM {row['two_launch_us']:.2f} us, "
                  f"fused {row['fused_us']:.2f} us ({row['fused_vs_two']:.3f}x)", flush=True)
            out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--linear", default="triton")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--4bit", dest="four_bit", action="store_true")
    ap.add_argument("--prologue", action="store_true", help="the prologue form too (measured slower, session 27)")
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("norm_fused_ab: needs a CUDA GPU")
    from qvit.profiling import bench_e2e as E
    from qvit.profiling.bench_kernels import env_info, write_json
    res = {"linear": args.linear, "iters": args.iters, "env": env_info()}
    if not args.no_kernels:
        res["res_norm_kernels"] = bench_res_norm()
        if args.prologue:
            res["kernels"] = bench_kernels()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    x = torch.randn(1, 3, 224, 224, device=dev, dtype=dtype)
    graphs, outs, models = {}, {}, {}
    rows = ROWS + (ROWS_PROLOGUE if args.prologue else []) + (ROWS_4BIT if args.four_bit else [])
    with torch.no_grad():
        for label, variant, env in rows:
            if variant not in models:
                models[variant] = E.build_variant(variant, args.linear, dev, dtype)
            os.environ.update(env)  # read while the forward is traced into the graph
            got, why = E.capture_graph(models[variant], x)
            if got is None:
                raise SystemExit(f"norm_fused_ab: {label} could not be captured: {why}")
            graphs[label], outs[label] = got
        for k in OFF:
            os.environ.pop(k)
        graphs["timm"], outs["timm"] = capture_timm(x, "norm_fused_ab")
    replay_once(graphs)

    def rel(a, b):
        return float((outs[a].float() - outs[b].float()).norm() / outs[b].float().norm())
    # fused and unfused run the same model: their logits differ by near-tie codes only
    # ... against the distance static LayerNorm-output scales put between fp8s4t and row 3 (same weights)
    res["logits_rel_diff"] = {f"{a} vs {b}": rel(a, b) for a, b in (
        ("fp8s4t epilogue", "fp8s4t unfused"), ("fp8s4t unfused", "row3 fp8s2t"), ("fp8s4t prologue", "fp8s4t unfused"),
        ("w4f8s4t epilogue", "w4f8s4t unfused")) if a in outs}
    rounds = []
    for _ in range(args.rounds):
        rounds.append({name: statistics.median(E._time_iters(g.replay, args.iters, dev)) for name, g in graphs.items()})
    summary = summarize(rounds)
    for r in summary.values():
        r["vs_row3"] = r["p50_ms"] / summary["row3 fp8s2t"]["p50_ms"]
    res.update(rounds=rounds, summary=summary)
    for name, s in summary.items():
        print(f"normab {name:18s} p50 {s['p50_ms']:.4f} ms [{s['min_ms']:.4f}-{s['max_ms']:.4f}]"
              f" vs row3 {s['vs_row3']:.3f} vs timm {s['vs_timm']:.3f}")
    print("normab logits:", res["logits_rel_diff"])
    if args.out:
        write_json(args.out, res)  # atomic
    return 0


if __name__ == "__main__":
    sys.exit(main())
