"""End-to-end ViT benchmark: the study's five variants and the peers, in one run on one card.

    python -m qvit.profiling.bench_e2e --out DIR [--model vit_large_patch16_224] [--batches 1 64 256]
                                       [--only qvit,timm,compile,bnb,torchao] [--iters 100]

Per variant: batch-1 latency (mean/p50/p95/p99 over per-iteration CUDA-event timings, eager and
replayed from a CUDA graph), img/s at each batch size (graphed when capturable, else eager),
peak GPU memory of a forward at the largest batch, weight bytes in memory and the size of its
safetensors file on disk. Weights are random (speed and size do not depend on their values; the
accuracy side is `qvit study`). Ratios are against `timm bf16` measured in the same run.

On a CPU (`--device cpu`, tests) the qvit variants run with the reference backends at tiny sizes
and the peers are skipped: the numbers there only prove the harness.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import torch
import torch.nn as nn

from qvit.vit.model import ViT, ViTConfig
from qvit.vit.quantize import QuantConfig, quantize, save_quantized, weight_bytes

from qvit.profiling.bench_kernels import write_json  # noqa: E402
from qvit.variants import KEEP, MAIN, VARIANTS  # noqa: E402

# the five study variants, the W4A16 path and the attention kernel alone, end to end
QVIT_VARIANTS = {k: VARIANTS[k] for k in MAIN + ("x w4a16-int4+sdpa", "x fp8+sdpa-noflash", "x bf16+qvit-attn",
                                                 "x 8bit+qvit-attn-fp16qk", "x w4a8+sdpa-noflash",
                                                 "x 8bit-g128+sdpa-noflash", "x 4bit-g128+sdpa-noflash",
                                                 "x 8bit-g128+qvit-attn-fp16qk", "x 8bit-g128+qvit-attn",
                                                 "x fp8+qvit-attn", "x fp8+qvit-attn-fp16qk",
                                                 "x fp8s+qvit-attn-fp16qk", "x fp8s+sdpa-noflash",
                                                 "x fp8s2+qvit-attn-fp16qk", "x fp8s2t+qvit-attn",
                                                 "x 4bit-fp8s2t+qvit-attn", "x 8bit-int8+qvit-attn",
                                                 "x 4bit-int8+qvit-attn", "x 8bit-int8+sdpa-noflash",
                                                 "x 4bit-int8+sdpa-noflash", "x fp8s4t+qvit-attn",
                                                 "x 4bit-fp8s4t+qvit-attn")}


def _stats(ms: list[float]) -> dict:
    s = sorted(ms)

    def pct(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]
    return {"mean": statistics.fmean(s), "p50": pct(50), "p95": pct(95), "p99": pct(99), "n": len(s)}


def _time_iters(fn, iters: int, device) -> list[float]:
    """Per-iteration wall time of fn (ms): CUDA events around each call on a GPU, perf_counter on a CPU."""
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    return out


def capture_graph(model, x):
    """((graph, static output), None) or (None, reason): model(x) captured in a CUDA graph after three warm-up
    calls on a side stream (autotuning, first launches); replaying it recomputes the output from whatever x
    holds then. The demo and this benchmark both capture with it."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(g):
            out = model(x)
        return (g, out), None
    except Exception as e:  # noqa: BLE001  (a model that cannot be captured is reported, not fatal)
        torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e)[:160]}"


def _graphed(model, x):
    """(replay fn, None) or (None, reason)."""
    got, why = capture_graph(model, x)
    return (got[0].replay if got else None), why


def measure(name, model, cfg: ViTConfig, device, dtype, batches, iters, disk_bytes, warm_only=False):
    """warm_only: one forward per batch size (the autotuners compile and tune), nothing timed."""
    row = {"variant": name, "weight_bytes": weight_bytes(model), "disk_bytes": disk_bytes}
    torch.manual_seed(0)
    with torch.no_grad():
        if warm_only:
            for b in batches:
                model(torch.randn(b, 3, cfg.img_size, cfg.img_size).to(device=device, dtype=dtype))
            return row
        for b in batches:
            x = torch.randn(b, 3, cfg.img_size, cfg.img_size).to(device=device, dtype=dtype)
            for _ in range(3):  # warm-up: autotuning, cuBLAS heuristics, compile
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            n = iters if b == 1 else max(10, iters // 5)
            eager = _stats(_time_iters(lambda: model(x), n, device))
            r = {"eager_ms": eager}
            if device.type == "cuda":
                replay, why = _graphed(model, x)
                if replay is not None:
                    r["graphed_ms"] = _stats(_time_iters(replay, n, device))
                else:
                    r["graph_error"] = why
            best = r.get("graphed_ms", eager)["p50"]
            r["img_per_s"] = b / best * 1e3
            row[f"batch{b}"] = r
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            x = torch.randn(max(batches), 3, cfg.img_size, cfg.img_size).to(device=device, dtype=dtype)
            model(x)
            torch.cuda.synchronize()
            row["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
            row["activation_peak_bytes"] = torch.cuda.max_memory_allocated() - base
    return row


def _disk(write) -> int:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.safetensors")
        write(p)
        return os.path.getsize(p)


def build_qvit(base: ViT, preset, attn, int8_qk, keep_format, device, dtype, linear="triton", disk=True):
    """The variant on `device` and its safetensors size (None with disk=False: a warm-up copy skips the write)."""
    m = copy.deepcopy(base)
    if preset is not None:
        cfg = QuantConfig.preset(preset, keep=KEEP, keep_format=keep_format, int8_attention=int8_qk)
        # static scales calibrated on random images: the weights are random too; what is timed does not depend
        # on the scale values (saturated codes cost the same)
        calib = torch.randn(8, base.cfg.in_chans, base.cfg.img_size, base.cfg.img_size,
                            generator=torch.Generator().manual_seed(0)) if cfg.needs_calibration else None
        quantize(m, cfg, calib=calib)
    m = m.to(device=device, dtype=dtype).eval()
    linear = linear if device.type == "cuda" else "torch"
    m.set_backend(linear=linear, attn=attn if device.type == "cuda" else "torch")
    if not disk:
        return m, None
    if preset is None:
        from qvit.vit.checkpoint import save_model
        disk = _disk(lambda p: save_model(m, p))
    else:
        disk = _disk(lambda p: save_quantized(m, p))
    return m, disk


def build_variant(name: str, linear: str, device, dtype, model: str = "vit_large_patch16_224"):
    """One qvit variant of the study on `device`, from the seed-0 random base model (no safetensors write): what
    the tools that time a single variant (tools/l2_prefetch_ab.py, tools/graph_timeline.py) start from."""
    if name not in QVIT_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; bench_e2e knows: {', '.join(QVIT_VARIANTS)}")
    torch.manual_seed(0)
    base = ViT(ViTConfig.from_name(model)).eval()
    return build_qvit(base, *QVIT_VARIANTS[name], device, dtype, linear, disk=False)[0]


def _state_disk(model) -> int:
    from safetensors.torch import save_file
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
          if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    return _disk(lambda p: save_file(sd, p))


def _swap_linears(model, make):
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and name.startswith("blocks."):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, make(mod))
    return model


# the peers by name -> the --only group that enables them; all but the timm baseline run in a process of
# their own (`_isolated_row`): a peer that breaks CUDA state (a failed graph capture leaves the CUDA RNG in
# capture mode, and every later `torch.randn` on the GPU raises) then loses only its own row
PEERS = {"timm bf16 (sdpa)": "timm", "timm bf16 + torch.compile": "compile", "bitsandbytes NF4": "bnb",
         "bitsandbytes LLM.int8": "bnb", "torchao int8-dynamic": "torchao", "torchao int8-dynamic + compile": "torchao"}


def _blocks_only(mod, fqn: str) -> bool:
    """The linears every peer quantizes: the transformer blocks' (as qvit's variants do; the head's M is the
    batch, and torch._int_mm refuses M <= 16)."""
    return isinstance(mod, nn.Linear) and fqn.startswith("blocks.")


def build_peer(name: str, name_cfg: str, device, dtype):
    """(model, disk bytes or None) of the peer `name` (a PEERS key); raises with the reason when it cannot run."""
    if name not in PEERS:
        raise ValueError(f"bench_e2e: unknown peer {name!r}; known: {', '.join(PEERS)}")
    import timm
    t = timm.create_model(name_cfg, pretrained=False).to(device=device, dtype=dtype).eval()
    if name == "timm bf16 (sdpa)":
        return t, _state_disk(t)
    if name == "timm bf16 + torch.compile":
        return torch.compile(t), _state_disk(t)
    if PEERS[name] == "bnb":
        import bitsandbytes as bnb

        def nf4(lin):
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                  compute_dtype=dtype, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(lin.weight.detach().float().cpu(), requires_grad=False, quant_type="nf4")
            if lin.bias is not None:
                q.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
            return q.to(device)

        def int8(lin):
            q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                    has_fp16_weights=False, threshold=6.0)
            q.weight = bnb.nn.Int8Params(lin.weight.detach().half().cpu(), requires_grad=False,
                                         has_fp16_weights=False)
            if lin.bias is not None:
                q.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
            return q.to(device)
        m = _swap_linears(t.cpu(), nf4 if name == "bitsandbytes NF4" else int8).to(device)
        return m, _state_disk(m)
    from torchao.quantization import quantize_
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig as C
        cfg = C()
    except ImportError:
        from torchao.quantization import int8_dynamic_activation_int8_weight
        cfg = int8_dynamic_activation_int8_weight()
    quantize_(t, cfg, filter_fn=_blocks_only)
    return (torch.compile(t) if name.endswith("+ compile") else t), None


def _isolated_row(name: str, args) -> dict:
    """Measure peer `name` in a fresh Python process (same GPU, same arguments); its row, or an error row
    with the reason (the child's last lines) when it fails or dies."""
    import subprocess
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "qvit.profiling.bench_e2e", "--peer", name, "--out", d, "--model", args.model,
               "--iters", str(args.iters), "--batches", *map(str, args.batches)]
        if args.device:
            cmd += ["--device", args.device]
        p = subprocess.run(cmd, capture_output=True, text=True)
        f = os.path.join(d, "peer.json")
        if p.returncode == 0 and os.path.exists(f):
            return json.load(open(f))
        tail = " | ".join(line for line in (p.stderr or "").strip().splitlines()[-3:])
        return {"variant": name, "error": f"exit {p.returncode}: {tail[-300:]}"}


def sizes(args) -> int:
    """Disk and weight bytes of every qvit variant of the config, from a bf16 model: file sizes
    depend only on shapes and formats, so this runs on any machine."""
    cfg = ViTConfig.from_name(args.model)
    torch.manual_seed(0)
    base = ViT(cfg).eval().to(torch.bfloat16)
    rows = []
    for name, (preset, attn, int8_qk, keep_format) in QVIT_VARIANTS.items():
        for kf in ([keep_format, "float"] if preset is not None and keep_format != "float" else [keep_format]):
            m, disk = build_qvit(base, preset, attn, int8_qk, kf, torch.device("cpu"), torch.bfloat16)
            rows.append({"variant": name, "keep": list(KEEP), "keep_format": kf, "weight_bytes": weight_bytes(m),
                         "disk_bytes": disk})
            del m
    ref = rows[0]["disk_bytes"]
    for r in rows:
        r["disk_vs_bf16"] = r["disk_bytes"] / ref
        r["smaller_than_fp32"] = 2 * ref / r["disk_bytes"]
    os.makedirs(args.out, exist_ok=True)
    res = {"model": args.model, "params": sum(p.numel() for p in base.parameters()), "rows": rows,
           "note": "sizes depend only on shapes and formats; measured with qvit's own save functions"}
    with open(os.path.join(args.out, "sizes.json"), "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"# {args.model}: weights on disk (safetensors, scales and config included)", "",
             "| variant | kept layers (head, blocks 0 and -1) | disk MiB | vs bf16 | smaller than fp32 |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['keep_format']} | {r['disk_bytes'] / 2 ** 20:.1f} | "
                     f"{r['disk_vs_bf16']:.3f}x | {r['smaller_than_fp32']:.2f}x |")
    with open(os.path.join(args.out, "sizes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _ref_row(rows):
    return next((r for r in rows if r["variant"].startswith("timm bf16 (sdpa)") and "error" not in r), None) or \
        next((r for r in rows if r["variant"].startswith("1 ") and "error" not in r), None)


def merge(paths: list[str]) -> dict:
    """One result from several bench_e2e runs of one commit on one kind of card (e.g. one per GPU of a
    machine, each measuring its own timm bf16 baseline): every row keeps the img/s of the baseline measured
    in its own run (`ref_img_per_s`, `lane`), so each ratio stays a same-run ratio. The runs may measure
    different batch sizes (the result's `batches` is their union; a row has only its own run's)."""
    runs = [json.load(open(p)) for p in paths]
    for key in ("model",):
        if len({json.dumps(r[key]) for r in runs}) != 1:
            raise ValueError(f"merge: the runs differ in {key}: " + ", ".join(f"{p}: {r[key]}" for p, r in zip(paths, runs)))
    for key in ("card", "commit", "torch", "triton"):
        if len({r["env"].get(key) for r in runs}) != 1:
            raise ValueError(f"merge: the runs differ in {key}: " + ", ".join(f"{p}: {r['env'].get(key)}"
                                                                              for p, r in zip(paths, runs)))
    res = {**{k: v for k, v in runs[0].items() if k not in ("rows", "missing", "env")}, "env": runs[0]["env"],
           "merged_from": [os.path.basename(os.path.dirname(os.path.abspath(p))) + "/" + os.path.basename(p)
                           for p in paths], "rows": [], "missing": {}}
    res["env"]["dates"] = [r["env"].get("date") for r in runs]
    res["batches"] = sorted({b for r in runs for b in r["batches"]})
    for lane, run in enumerate(runs):
        ref = _ref_row(run["rows"])
        for r in run["rows"]:
            r = dict(r, lane=lane)
            if ref is not None:
                r["ref_variant"] = ref["variant"]
                r["ref_img_per_s"] = {k: v["img_per_s"] for k, v in ref.items() if k.startswith("batch")}
            if r["variant"] == (ref or {}).get("variant") and lane > 0:
                r["variant"] = f"{r['variant']} (run {lane + 1})"
            res["rows"].append(r)
        res["missing"].update(run.get("missing", {}))
    return res


def _ratio(r, ref, big):
    """img/s at batch `big` over the same run's baseline (a merged row carries its own), or None."""
    base = (r.get("ref_img_per_s") or {}).get(big) or (ref or {}).get(big, {}).get("img_per_s")
    return r[big]["img_per_s"] / base if base and big in r else None


def to_markdown(res: dict) -> str:
    rows = res["rows"]
    ref = _ref_row(rows)
    bs = res["batches"]
    head = ["variant", "b1 eager p50 ms", "b1 graphed mean", "p50", "p95", "p99"] + \
        [f"img/s b{b}" for b in bs if b != 1] + ["x ref b" + str(max(bs)), "weights MiB", "disk MiB", "peak GiB"]
    lines = [f"# End-to-end {res['model']} on {res['env'].get('card', res['device'])}", "",
             f"torch {res['env'].get('torch')}, Triton {res['env'].get('triton')}, commit {res['env'].get('commit')}. "
             "Batch-1 latency per call in ms (CUDA events per iteration); img/s from the graphed p50 where the "
             "forward could be captured, else eager. Ratio column: img/s at the largest batch over the reference "
             f"row ({ref['variant'] if ref else '?'})"
             + (f" measured in the same run (merged from {len(res['merged_from'])} runs, one per GPU: "
                + ", ".join(res["merged_from"]) + ")" if res.get("merged_from") else "") + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error'][:80]} |" + " |" * (len(head) - 2))
            continue
        b1 = r.get("batch1", {})
        g = b1.get("graphed_ms")
        cells = [r["variant"], f"{b1['eager_ms']['p50']:.3f}" if b1 else "-"]
        cells += [f"{g[k]:.3f}" for k in ("mean", "p50", "p95", "p99")] if g else ["-"] * 4
        cells += [f"{r[f'batch{b}']['img_per_s']:.0f}" if f"batch{b}" in r else "-" for b in bs if b != 1]
        big = f"batch{max(bs)}"
        x = _ratio(r, ref, big)
        cells.append(f"{x:.2f}x" if x is not None else "-")
        cells.append(f"{r['weight_bytes'] / 2 ** 20:.1f}")
        cells.append(f"{r['disk_bytes'] / 2 ** 20:.1f}" if r.get("disk_bytes") else "-")
        cells.append(f"{r['peak_mem_bytes'] / 2 ** 30:.2f}" if r.get("peak_mem_bytes") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if res.get("missing"):
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in res["missing"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="vit_large_patch16_224")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--only", default="qvit,timm,compile,bnb,torchao")
    ap.add_argument("--variants", nargs="*", default=None, help="subset of the qvit variant names")
    ap.add_argument("--device", default=None)
    ap.add_argument("--linear", default="triton",
                    help="linear backend(s) of the qvit variants, comma-separated (triton, cuda, auto): one row per "
                         "variant and backend; rows not on Triton are named '... [cuda linears]' / '[auto linears]' "
                         "(auto rows record the per-shape GEMM choices)")
    ap.add_argument("--l2-prefetch", choices=("off", "on", "both"), default="off",
                    help="the qvit variants with ViT.set_l2_prefetch (the next block's weights prefetched into L2 on "
                         "a side stream; needs the CUDA extension): rows named '... [l2 prefetch]'; both: each "
                         "variant with and without")
    ap.add_argument("--peers-on-cpu", action="store_true", help=argparse.SUPPRESS)  # tests: the isolation path
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)  # internal: one peer, in its own process
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="merge bench_e2e.json files of one commit and card (one run per GPU) into OUT; no timing")
    ap.add_argument("--warm", type=int, default=0, metavar="N",
                    help="first compile the qvit variants' Triton autotuner configs in N parallel processes "
                         "(qvit.profiling.warm), one forward per variant and batch each, nothing timed")
    ap.add_argument("--warm-shard", default=None, help=argparse.SUPPRESS)  # internal: one of the N processes
    ap.add_argument("--sizes-only", action="store_true",
                    help="weight and safetensors sizes of the qvit variants (bf16 base), no timing; any machine")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if args.warm_shard:  # a warm copy: the qvit variants on Triton linears only (auto runs the same kernels)
        args.only, args.linear = "qvit", "triton"
    unknown = [v for v in args.variants or () if v not in QVIT_VARIANTS]
    if unknown:  # a typo must not silently measure nothing
        ap.error(f"unknown variant(s) {unknown}; bench_e2e knows: {', '.join(QVIT_VARIANTS)}")
    if args.sizes_only:
        return sizes(args)
    if args.merge:
        res = merge(args.merge)
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "bench_e2e.json"), res)
        with open(os.path.join(args.out, "bench_e2e.md"), "w") as f:
            f.write(to_markdown(res))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    only = set(args.only.split(","))
    warmed = None
    if args.warm > 1 and not args.warm_shard and "qvit" in only and device.type == "cuda":
        from qvit.profiling.warm import strip_warm_args, warm
        warmed = warm("qvit.profiling.bench_e2e", strip_warm_args(argv) + ["--out", tempfile.mkdtemp()], args.warm)
    cfg = ViTConfig.from_name(args.model)
    torch.manual_seed(0)
    base = ViT(cfg).eval()
    if device.type == "cuda":
        from qvit.profiling.bench_kernels import env_info
        env = env_info()
    else:
        env = {"card": "cpu", "torch": torch.__version__}
    res = {"model": args.model, "device": device.type, "dtype": str(dtype), "batches": args.batches, "env": env,
           "rows": [], "missing": {}}
    if warmed:
        res["warm"] = warmed
    if args.peer is not None:  # child of _isolated_row: one row into OUT/peer.json
        model, disk = build_peer(args.peer, args.model, device, dtype)
        row = measure(args.peer, model, cfg, device, dtype, args.batches, args.iters, disk)
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "peer.json"), row)
        return 0
    # the baseline first (in this process), then qvit, then the other peers, each in a process of its own:
    # a run cut short (deadline) keeps the ratios
    todo = []
    if device.type == "cuda" and "timm" in only:
        try:
            todo.append(("timm bf16 (sdpa)", *build_peer("timm bf16 (sdpa)", args.model, device, dtype)))
        except Exception as e:  # noqa: BLE001
            res["missing"]["timm"] = f"{type(e).__name__}: {str(e)[:200]}"
    if "qvit" in only:
        prefetch = {"off": (False,), "on": (True,), "both": (False, True)}[args.l2_prefetch]
        for linear in args.linear.split(","):
            for name, spec in QVIT_VARIANTS.items():
                if args.variants and name not in args.variants:
                    continue
                for pf in prefetch:
                    # rows on another linear backend than Triton, or with the L2 prefetch, say so in their name
                    row = name if linear == "triton" else f"{name} [{linear} linears]"
                    todo.append((row + (" [l2 prefetch]" if pf else ""), spec + (linear, pf), None))
    if device.type == "cuda" or args.peers_on_cpu:
        todo += [(name, "isolated", None) for name, group in PEERS.items()
                 if group in only and group != "timm"]
    os.makedirs(args.out, exist_ok=True)
    for name, model, disk in todo:
        try:
            if isinstance(model, str):  # "isolated": a peer, in a process of its own
                row = _isolated_row(name, args)
            else:
                linear = None
                if isinstance(model, tuple):
                    *spec, linear, pf = model
                    model, disk = build_qvit(base, *spec, device, dtype, linear, disk=not args.warm_shard)
                    if pf and device.type == "cuda":
                        model.set_l2_prefetch(True)
                if linear == "auto":
                    from qvit.kernels import w8a8_cuda
                    w8a8_cuda._prefer.clear()
                row = measure(name, model, cfg, device, dtype, args.batches, args.iters, disk,
                              warm_only=bool(args.warm_shard))
                if args.warm_shard:
                    continue
                if linear == "auto":  # which GEMM the per-shape timing picked: (M, N, K) -> "cuda" / "triton"
                    row["auto_linear_choices"] = {f"{k[0]}x{k[1]}x{k[2]}{' +gelu' if k[4] else ''}"
                                                  f"{' +residual' if k[5] else ''}": "cuda" if v else "triton"
                                                  for k, v in w8a8_cuda._prefer.items()}
        except Exception as e:  # noqa: BLE001  (one failing variant must not lose the others)
            traceback.print_exc()
            row = {"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        res["rows"].append(row)
        b1 = row.get("batch1", {})
        print(f"bench_e2e: {name:32s} " + (row["error"] if "error" in row else
              f"b1 eager p50 {b1.get('eager_ms', {}).get('p50', float('nan')):.3f} ms, graphed p50 "
              f"{b1.get('graphed_ms', {}).get('p50', float('nan')):.3f} ms, "
              + ", ".join(f"b{b} {row[f'batch{b}']['img_per_s']:.0f} img/s" for b in args.batches if b != 1)),
              file=sys.stderr)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_json(os.path.join(args.out, "bench_e2e.json"), res)  # after every row: a deadline keeps them
    if args.warm_shard:  # a warm-up copy: nothing measured, nothing to write
        return 0
    with open(os.path.join(args.out, "bench_e2e.md"), "w") as f:
        f.write(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
