"""Batch-1 autotuning in the model: each autotuned kernel's config chosen by the graphed latency of the whole
forward, not by the kernel timed alone.

qvit's autotuners time every config alone, in a CUDA graph after an L2 flush (`qvit.backend.tune_bench`). At
batch 1 (M = 197) the configs of a kernel are within a microsecond of each other and the model's own graph is not
that setting (neighbouring kernels, what they leave in L2, launch overlap): two sets of such decisions for the
same code measured the 8-bit row's batch 1 at 0.943-0.951 and 1.019 ms (results/h200-gpu-16). This takes the
decisions the autotuners made, then, key by key (one key = one kernel shape, shared by every block), tries each
candidate config the autotuner would have considered in the captured forward and keeps the fastest (coordinate
descent; `--rounds` passes). The autotuners' choices and the descent's are then timed again, alternately, and the
descent's are kept only if faster; kept ones are written into Triton's on-disk autotune cache in the format the
autotuner reads back (TRITON_CACHE_AUTOTUNING=1), so that `tools/triton-autotune.tgz` can carry them.

    TRITON_CACHE_AUTOTUNING=1 python -m qvit.profiling.tune_in_model --out results/RUN/tune_b1 \\
        --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn"

A key decided for an earlier variant is kept for the later ones (the rows share shapes). Timing: the forward
captured afresh for every candidate (a graph keeps the kernels it was captured with), `--iters` replays, p50.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time

import torch


@contextlib.contextmanager
def recording():
    """Within: every call of a Triton autotuner records (autotuner, key, the configs it would consider for that
    key) in the yielded dict, keyed by (autotuner's kernel name, key). The key is computed as Triton 3.x's
    `Autotuner.run` computes it (the `key` arguments' values, then every tensor argument's dtype)."""
    from triton.runtime.autotuner import Autotuner
    seen: dict = {}
    real_run = Autotuner.run

    def run(self, *args, **kwargs):
        if len(self.configs) > 1:
            self.nargs = dict(zip(self.arg_names, args))
            key = autotune_key(self, args, kwargs)
            name = (self.base_fn.__name__, key)
            if name not in seen:
                seen[name] = (self, key, list(self.prune_configs(kwargs)))
        return real_run(self, *args, **kwargs)

    Autotuner.run = run
    try:
        yield seen
    finally:
        Autotuner.run = real_run


def autotune_key(tuner, args, kwargs) -> tuple:
    """Triton's key for one call (triton/runtime/autotuner.py, `Autotuner.run`)."""
    all_args = {**dict(zip(tuner.arg_names, args)), **kwargs}
    _args = {k: v for k, v in all_args.items() if k in tuner.arg_names}
    key = [_args[k] for k in tuner.keys if k in _args]
    key += [str(a.dtype) for a in _args.values() if hasattr(a, "dtype")]
    return tuple(key)


def coordinate_descent(candidates: dict, current: dict, time_fn, rounds: int = 1, log=None) -> tuple[dict, float]:
    """Key by key, each candidate in place of the current choice, the fastest kept: (choices, time).
    candidates: {name: [config, ...]}; current: {name: config} (changed in place and returned); time_fn(): the
    time of the whole thing with the choices `current` holds now. A candidate replaces the choice only if it is
    faster than the best time so far."""
    best = time_fn()
    if log is not None:
        log.append({"start": best})
    for r in range(rounds):
        changed = False
        for name, cfgs in candidates.items():
            keep = current[name]
            for c in cfgs:
                if c is keep:
                    continue
                current[name] = c
                t = time_fn()
                if log is not None:
                    log.append({"round": r, "key": str(name), "config": str(c), "time": t})
                if t < best:
                    best, keep, changed = t, c, True
            current[name] = keep
        if not changed:
            break
    return current, best


def disk_cache_file(tuner, key, configs) -> tuple:
    """(cache manager, file name) of `tuner`'s on-disk decision for `key` over the candidate list `configs`,
    computed as Triton 3.6's `Autotuner.check_disk_cache` computes it (the Triton build, the backend, the kernel
    source, the cache-invalidating environment, the key, every candidate)."""
    from triton.compiler.compiler import make_backend
    from triton.runtime import autotuner as A  # the names check_disk_cache uses, from the module itself
    fn = tuner.fn
    while not isinstance(fn, A.JITFunction):
        fn = fn.fn
    parts = [A.triton_key(), make_backend(A.driver.active.get_current_target()).hash(), fn.cache_key,
             str(sorted(A.get_cache_invalidating_env_vars().items())), str(key)] + [str(c) for c in configs]
    return A.get_cache_manager(hashlib.sha256("-".join(parts).encode("utf-8")).hexdigest()), \
        f"{fn.__name__[:150]}.autotune.json"


def save_decision(tuner, key, configs, best, timings: dict) -> str:
    """Write `best` as `tuner`'s decision for `key` into Triton's autotune disk cache, replacing what was there,
    in the format `Autotuner.check_disk_cache` reads back: {"key": key, "configs_timings": [(config.__dict__,
    [ms]), ...]}, from which the autotuner takes the minimum. timings: {config: [ms, ...]} measured in the model;
    each candidate is written with its fastest time, `best` first (the first of equal minima is taken). `best`
    must be measured and at least as fast as every other candidate, else ValueError. Returns the file's path."""
    if best not in timings:
        raise ValueError(f"tune_in_model: no in-model time for the chosen config {best}")
    fastest = {c: min(t) for c, t in timings.items() if t and not c.pre_hook}
    slower = [c for c, t in fastest.items() if t < fastest[best]]
    if slower:
        raise ValueError(f"tune_in_model: {slower[0]} measured faster ({fastest[slower[0]]:.4f} ms) than the chosen "
                         f"{best} ({fastest[best]:.4f} ms)")
    cache, name = disk_cache_file(tuner, key, configs)
    old = cache.get_file(name)
    if old:
        os.remove(old)
    rows = [(best.__dict__, [fastest[best]])] + [(c.__dict__, [t]) for c, t in fastest.items() if c is not best]
    return cache.put(json.dumps({"key": key, "configs_timings": rows}), name, binary=False)


def _p50(ms) -> float:
    from qvit.profiling.bench_e2e import _stats
    return _stats(list(ms))["p50"]


def _graph_time(model, x, iters: int) -> float:
    """p50 ms of `iters` replays of the forward captured now (bench_e2e's capture and per-replay event timing)."""
    from qvit.profiling.bench_e2e import _graphed, _time_iters
    replay, why = _graphed(model, x)
    if replay is None:
        raise RuntimeError(f"tune_in_model: the forward could not be captured: {why}")
    _time_iters(replay, 3, x.device)  # warm replays
    return _p50(_time_iters(replay, iters, x.device))


def tune(model, x, iters: int, rounds: int, decided: set, log: list, checks: int = 3) -> tuple[dict, dict]:
    """One variant: its autotuned calls recorded in one forward, then coordinate descent over the keys not in
    `decided`. Then the autotuners' own choices and the descent's are timed again, alternately, `checks` times
    each: the descent's are kept only if their median is faster (one capture per candidate can pick noise),
    else the autotuners' stay. Returns ({(kernel, key): (tuner, key, candidates, kept config, in-model ms per
    candidate)}, {"autotuner_ms": [...], "descent_ms": [...], "kept": "descent" | "autotuner"})."""
    with torch.no_grad(), recording() as seen:
        model(x)
    torch.cuda.synchronize()
    todo = {n: v for n, v in seen.items() if n not in decided and len(v[2]) > 1}
    initial = {n: v[0].cache[v[1]] for n, v in todo.items()}
    current = dict(initial)
    times: dict = {n: {} for n in todo}

    def run_with(choices, record=True):
        for n, (tuner, key, _) in todo.items():
            tuner.cache[key] = choices[n]
        with torch.no_grad():
            t = _graph_time(model, x, iters)
        if record:
            for n in todo:
                times[n].setdefault(choices[n], []).append(t)
        return t

    chosen, _ = coordinate_descent({n: v[2] for n, v in todo.items()}, current, lambda: run_with(current), rounds,
                                   log)
    check = {"autotuner_ms": [], "descent_ms": []}
    for _ in range(checks):
        check["autotuner_ms"].append(run_with(initial, record=False))
        check["descent_ms"].append(run_with(chosen, record=False))
    check["autotuner_p50"], check["descent_p50"] = _p50(check["autotuner_ms"]), _p50(check["descent_ms"])
    check["kept"] = "descent" if check["descent_p50"] < check["autotuner_p50"] else "autotuner"
    keep = chosen if check["kept"] == "descent" else initial
    for n, (tuner, key, _) in todo.items():
        tuner.cache[key] = keep[n]
    return {n: (v[0], v[1], v[2], keep[n], times[n]) for n, v in todo.items()}, check


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", nargs="+", default=["3 8bit+qvit-attn", "2 4bit+qvit-attn"])
    ap.add_argument("--model", default="vit_large_patch16_224")
    ap.add_argument("--iters", type=int, default=30, help="graph replays per candidate (p50)")
    ap.add_argument("--rounds", type=int, default=1, help="coordinate-descent passes over the keys")
    ap.add_argument("--no-save", action="store_true", help="measure only; leave Triton's disk cache as it is")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_in_model: needs a CUDA GPU", file=sys.stderr)
        return 2
    if not args.no_save and os.environ.get("TRITON_CACHE_AUTOTUNING") != "1":
        print("tune_in_model: set TRITON_CACHE_AUTOTUNING=1 (the decisions are written to, and read back from, "
              "Triton's disk cache), or pass --no-save", file=sys.stderr)
        return 2
    from qvit.profiling.bench_e2e import QVIT_VARIANTS, build_qvit
    from qvit.vit import ViT, ViTConfig
    unknown = [v for v in args.variants if v not in QVIT_VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(QVIT_VARIANTS)}")
    dev, dtype = torch.device("cuda"), torch.bfloat16
    cfg = ViTConfig.from_name(args.model)
    torch.manual_seed(0)
    base = ViT(cfg).eval()
    x = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size, device=dev, dtype=dtype)
    decided: set = set()
    report = {"model": args.model, "device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
              "commit": os.environ.get("QVIT_COMMIT", ""), "iters": args.iters, "rounds": args.rounds,
              "variants": {}}
    for name in args.variants:
        preset, attn, int8_qk, keep_format = QVIT_VARIANTS[name]
        model, _ = build_qvit(base, preset, attn, int8_qk, keep_format, dev, dtype, disk=False)
        log: list = []
        t0 = time.time()
        res, check = tune(model, x, args.iters, args.rounds, decided, log)
        before, after = check["autotuner_p50"], check["descent_p50"]
        keys = []
        for n, (tuner, key, cands, best, times) in res.items():
            decided.add(n)
            save = not args.no_save and check["kept"] == "descent"
            path = save_decision(tuner, key, cands, best, times) if save else None
            keys.append({"kernel": n[0], "key": str(key), "candidates": len(cands), "chosen": str(best),
                         "in_model_ms": {str(c): _p50(t) for c, t in times.items()}, "file": path})
        report["variants"][name] = {"autotuner_ms": before, "descent_ms": after, "kept": check["kept"],
                                    "check": check, "seconds": time.time() - t0, "keys": keys, "log": log}
        print(f"tune_in_model: {name}: batch 1 graphed p50, the autotuners' choices {before:.3f} ms, the descent's "
              f"{after:.3f} ms ({check['kept']}'s kept) over {len(keys)} keys, {len(log) - 1} captures, "
              f"{time.time() - t0:.0f} s", flush=True)
        del model
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tune_in_model.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
