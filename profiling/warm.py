"""Parallel compilation of the Triton autotuners' configs before a benchmark tunes them.

On a cold machine the first autotuning of a shape compiles every config of the kernel variant it runs,
one after the other (~2 s each with Triton 3.6 on the H200 machine's CPUs: session 9's first attention
benchmark spent 4.5 min compiling for one shape). `warm` starts n copies of a benchmark command, copy i
with QVIT_TUNE_SHARD=i/n (qvit.backend.tune_shard: it sees configs i, i + n, ...), autotuning results
not cached (TRITON_CACHE_AUTOTUNING=0) and `--warm-shard` (the command runs each qvit kernel once per
shape, no peers and no timing), so that between them they compile every config into Triton's on-disk
cache; the real run afterwards loads the binaries and only times them. The warm copies' own tuning
choices, made on a shared GPU, are thrown away with their processes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def warm(module: str, argv: list[str], n: int, log_dir: str | None = None) -> dict:
    """Run `python -m module *argv --warm-shard i/n` for i in 0..n-1 at once; wait for all. Returns
    {"processes": n, "seconds": wall time, "failed": [i, ...]}: a failed copy only costs compile time later
    (its configs get compiled by the real run), so it is reported, not raised."""
    t0 = time.time()
    log_dir = log_dir or tempfile.mkdtemp(prefix="qvit-warm-")
    os.makedirs(log_dir, exist_ok=True)
    procs = []
    threads = str(max(1, (os.cpu_count() or 1) // n))
    for i in range(n):
        # the cores shared out: n copies of PyTorch's default (a thread per core each) oversubscribe the CPU in
        # the copies' CPU-side work (building and quantizing a ViT-L in bench_e2e)
        env = dict(os.environ, QVIT_TUNE_SHARD=f"{i}/{n}", TRITON_CACHE_AUTOTUNING="0", OMP_NUM_THREADS=threads,
                   MKL_NUM_THREADS=threads)
        log = open(os.path.join(log_dir, f"warm.{i}.log"), "w")
        procs.append((subprocess.Popen([sys.executable, "-m", module, *argv, "--warm-shard", f"{i}/{n}"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for i, (p, log) in enumerate(procs):
        if p.wait() != 0:
            failed.append(i)
        log.close()
    out = {"processes": n, "seconds": round(time.time() - t0, 1), "failed": failed, "logs": log_dir}
    print(f"warm: {n} processes compiled {module}'s autotuner configs in {out['seconds']} s"
          + (f"; copies {failed} failed (logs in {log_dir})" if failed else ""), file=sys.stderr, flush=True)
    return out


def strip_warm_args(argv: list[str]) -> list[str]:
    """argv without `--warm N` / `--warm=N` and `--out DIR` (each copy writes to a folder of its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--warm", "--out"):
            skip = True
            continue
        if a.startswith(("--warm=", "--out=")):
            continue
        out.append(a)
    return out
