"""How fast a batch-1 GEMM's weight tiles can stream from DRAM, by layout and by number of programs.

Nsight Compute put fc2 + residual at M = 197 (K = 4,096, N = 1,024, 4 MiB of fp8 weights) at 10.6-12.0 us for
every tile and split-K configuration tried (64 to 256 CTAs, 8 to 32 K steps per CTA), while fc1 (K = 1,024,
N = 4,096, the same 4 MiB and FLOPs) took 7.4 us (results/h200-gpu-16 call 2): more programs did not help fc2,
so per-program latency does not explain it. What differs is the weight's row stride: a (BLOCK_N, BLOCK_K) tile
of fc2's weight is 64 segments of 128 bytes 4,096 bytes apart, fc1's 1,024 apart.

This reads an (N, K) int8 matrix the way the GEMM reads its weight (each program a BLOCK_N-row slab, K / SPLIT
columns of it, BLOCK_K at a time, with several loads in flight) and sums it, in three layouts: row-major
(`rows`), row-major with each row padded by 128 bytes (`padded`: the same tiles, stride no longer a power of
two), and tiled (`tiled`: every (BLOCK_N, BLOCK_K) tile one contiguous block, in the order a program reads
them), timed like the autotuner times kernels (`qvit.backend.tune_bench`: in a CUDA graph, after an L2 flush).
Then the same streams with the activation side added (`gemm_parts`: every program also loads all 197 tokens'
tile of each K step; then the int32 MMA too, a split-K GEMM with no epilogue and no reduction), so that the gap
between streaming and the GEMM can be split into its parts. Every kernel's result is checked against torch's
before it is timed.

    python -m qvit.profiling.weight_stream --out results/RUN/weight_stream
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

LAYOUTS = ("rows", "padded", "tiled")
PAD = 128  # bytes added to each row of the `padded` layout


def pack(w: torch.Tensor, layout: str, block_n: int, block_k: int) -> tuple[torch.Tensor, int]:
    """(storage, row stride in elements) of the (N, K) matrix `w` in `layout`. N and K must be multiples of the
    block for `tiled`; `rows` / `padded` take any shape."""
    n, k = w.shape
    if layout == "rows":
        return w.contiguous(), k
    if layout == "padded":
        out = torch.zeros((n, k + PAD), dtype=w.dtype, device=w.device)
        out[:, :k] = w
        return out, k + PAD
    if layout == "tiled":
        if n % block_n or k % block_k:
            raise ValueError(f"weight_stream: tiled layout needs N={n} and K={k} multiples of the "
                             f"({block_n}, {block_k}) tile")
        t = w.reshape(n // block_n, block_n, k // block_k, block_k).permute(0, 2, 1, 3).contiguous()
        return t.reshape(-1), k
    raise ValueError(f"weight_stream: layout {layout!r} is not one of {LAYOUTS}")


def reference(w: torch.Tensor, split: int) -> torch.Tensor:
    """(split, N) int32: row sums of each of the `split` equal K chunks."""
    n, k = w.shape
    return w.to(torch.int32).reshape(n, split, k // split).sum(-1).t().contiguous()


if triton is not None:
    @triton.jit
    def _stream_kernel(w_ptr, out_ptr, N, K, stride_n, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       STEPS: tl.constexpr, TILED: tl.constexpr):
        """Program (n, s) sums rows n*BLOCK_N.. of K chunk s (STEPS tiles of BLOCK_K), all of its loads
        unrolled so that as many are in flight as registers allow; writes out[s, rows]."""
        pid_n, pid_s = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N,), dtype=tl.int32)
        for i in tl.static_range(STEPS):
            kt = pid_s * STEPS + i  # K tile index
            if TILED:
                base = (pid_n.to(tl.int64) * (K // BLOCK_K) + kt) * (BLOCK_N * BLOCK_K)
                ptrs = w_ptr + base + tl.arange(0, BLOCK_N)[:, None] * BLOCK_K + offs_k[None, :]
                t = tl.load(ptrs)
            else:
                ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_n + (kt * BLOCK_K + offs_k)[None, :]
                t = tl.load(ptrs, mask=(offs_n < N)[:, None], other=0)
            acc += tl.sum(t.to(tl.int32), axis=1)
        tl.store(out_ptr + pid_s * N + offs_n, acc, mask=offs_n < N)


def stream_sums(storage: torch.Tensor, n: int, k: int, stride: int, layout: str, block_n: int, block_k: int,
                split: int) -> torch.Tensor:
    """(split, N) int32 row sums per K chunk of the matrix held in `storage` (see `pack`)."""
    if triton is None:
        raise RuntimeError("weight_stream: needs Triton")
    if k % (split * block_k):
        raise ValueError(f"weight_stream: K={k} is not a multiple of split {split} x BLOCK_K {block_k}")
    if storage.dtype != torch.int8:
        raise ValueError(f"weight_stream: expected an int8 matrix, got {storage.dtype}")
    out = torch.empty((split, n), dtype=torch.int32, device=storage.device)
    _stream_kernel[(triton.cdiv(n, block_n), split)](storage, out, n, k, stride, BLOCK_N=block_n,
                                                     BLOCK_K=block_k, STEPS=k // (split * block_k),
                                                     TILED=layout == "tiled", num_warps=4)
    return out


if triton is not None:
    @triton.jit
    def _gemm_kernel(x_ptr, w_ptr, out_ptr, M, N, K, stride_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, STEPS: tl.constexpr, DOT: tl.constexpr):
        """The stream kernel plus the activation side of a batch-1 GEMM, program (n, s) over K chunk s: every
        program also loads the (BLOCK_M >= M, BLOCK_K) activation tile of each step (all tokens: one program per
        weight tile, as `_stream_kernel`). DOT: int32 tl.dot of the tiles (a split-K GEMM with no epilogue and
        no reduction), its column sums into out[s, cols] (the MMA kept live, almost nothing stored); else both
        tiles' sums, per weight row, into out[s, rows]."""
        pid_n, pid_s = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        sums = tl.zeros((BLOCK_N,), dtype=tl.int32)
        if DOT:  # a loop the compiler software-pipelines (num_stages), as it does the GEMM's
            for i in range(STEPS):
                k0 = (pid_s * STEPS + i) * BLOCK_K
                w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_n + (k0 + offs_k)[None, :],
                            mask=(offs_n < N)[:, None], other=0)
                x = tl.load(x_ptr + offs_m[:, None] * K + (k0 + offs_k)[None, :], mask=(offs_m < M)[:, None],
                            other=0)
                acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.int32)
        else:  # every load issued up front, as the stream kernel's
            for i in tl.static_range(STEPS):
                k0 = (pid_s * STEPS + i) * BLOCK_K
                w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_n + (k0 + offs_k)[None, :],
                            mask=(offs_n < N)[:, None], other=0)
                x = tl.load(x_ptr + offs_m[:, None] * K + (k0 + offs_k)[None, :], mask=(offs_m < M)[:, None],
                            other=0)
                sums += tl.sum(w.to(tl.int32), axis=1) + tl.sum(x.to(tl.int32))
        if DOT:
            sums = tl.sum(acc, axis=0)
        tl.store(out_ptr + pid_s * N + offs_n, sums, mask=offs_n < N)


def gemm_parts(x: torch.Tensor, w: torch.Tensor, block_n: int, block_k: int, split: int, dot: bool) -> torch.Tensor:
    """(split, N) int32 per K chunk: with dot, the column sums of x (M, K) @ w (N, K).T; else the weight rows' sums
    plus the whole activation chunk's sum (the loads without the MMA). One row tile holds all M. The output is
    allocated uninitialized and written whole: no fill kernel and no (split, M, N) partials in the timing
    (session 17 call 2 timed a zero fill of those and, with dot, their store: up to 12.9 MB at 256 programs)."""
    if triton is None:
        raise RuntimeError("weight_stream: needs Triton")
    (m, k), n = x.shape, w.shape[0]
    if w.shape[1] != k or x.dtype != torch.int8 or w.dtype != torch.int8:
        raise ValueError(f"weight_stream: expected int8 x (M, K) and w (N, K), got {tuple(x.shape)} {x.dtype} and "
                         f"{tuple(w.shape)} {w.dtype}")
    if k % (split * block_k):
        raise ValueError(f"weight_stream: K={k} is not a multiple of split {split} x BLOCK_K {block_k}")
    block_m = max(16, triton.next_power_of_2(m))
    out = torch.empty((split, n), dtype=torch.int32, device=x.device)
    _gemm_kernel[(triton.cdiv(n, block_n), split)](x, w, out, m, n, k, w.stride(0), BLOCK_M=block_m,
                                                   BLOCK_N=block_n, BLOCK_K=block_k, STEPS=k // (split * block_k),
                                                   DOT=dot, num_warps=4, num_stages=3)
    return out


def gemm_parts_reference(x: torch.Tensor, w: torch.Tensor, split: int, dot: bool) -> torch.Tensor:
    (m, k), n = x.shape, w.shape[0]
    xc = x.to(torch.int64).reshape(m, split, k // split)
    wc = w.to(torch.int64).reshape(n, split, k // split)
    if dot:  # int64 sums cast down: the kernel's int32 additions wrap the same way
        return torch.einsum("msk,nsk->sn", xc, wc).to(torch.int32)
    return (wc.sum(-1).t() + xc.sum((0, 2))[:, None]).to(torch.int32)


# (name, N, K): ViT-L/16's four linears
SHAPES = (("fc1", 4096, 1024), ("fc2", 1024, 4096), ("qkv", 3072, 1024), ("proj", 1024, 1024))


def run(out_dir: str, block_n: int = 64, block_k: int = 128, programs=(64, 128, 256)) -> dict:
    from qvit.backend import tune_bench
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for name, n, k in SHAPES:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=gen)
        for layout in LAYOUTS:
            storage, stride = pack(w, layout, block_n, block_k)
            for p in programs:
                split = p // (n // block_n)
                if split < 1 or k % (split * block_k):
                    continue
                got = stream_sums(storage, n, k, stride, layout, block_n, block_k, split)
                if not torch.equal(got, reference(w, split)):
                    raise AssertionError(f"weight_stream: {name} {layout} split {split}: wrong sums")
                p50, p20, p80 = tune_bench(lambda: stream_sums(storage, n, k, stride, layout, block_n, block_k,
                                                               split))
                rows.append({"shape": name, "N": n, "K": k, "layout": layout, "programs": (n // block_n) * split,
                             "split": split, "steps": k // (split * block_k), "us_p50": p50 * 1e3,
                             "us_p20": p20 * 1e3, "us_p80": p80 * 1e3, "GBps": n * k / (p50 * 1e-3) / 1e9})
                print(f"weight_stream: {name:4s} {layout:6s} {rows[-1]['programs']:4d} programs x "
                      f"{rows[-1]['steps']:2d} steps  {p50 * 1e3:7.2f} us  {rows[-1]['GBps']:7.0f} GB/s", flush=True)
    # the same streams with the activation side of a batch-1 GEMM: all M = 197 tokens' tiles loaded too, then
    # the int32 MMA (no epilogue, no split reduction): where the GEMM's 2.6x over streaming comes from
    gemm_rows = []
    for name, n, k in SHAPES:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=gen)
        x = torch.randint(-128, 128, (197, k), dtype=torch.int8, device=dev, generator=gen)
        for p in programs:
            split = p // (n // block_n)
            if split < 1 or k % (split * block_k):
                continue
            for dot in (False, True):
                got = gemm_parts(x, w, block_n, block_k, split, dot)
                if not torch.equal(got.cpu(), gemm_parts_reference(x.cpu(), w.cpu(), split, dot)):
                    raise AssertionError(f"weight_stream: {name} split {split} dot {dot}: wrong result")
                p50, p20, p80 = tune_bench(lambda: gemm_parts(x, w, block_n, block_k, split, dot))
                gemm_rows.append({"shape": name, "N": n, "K": k, "M": 197, "mode": "mma" if dot else "loads",
                                  "programs": (n // block_n) * split, "split": split,
                                  "steps": k // (split * block_k), "us_p50": p50 * 1e3, "us_p20": p20 * 1e3,
                                  "us_p80": p80 * 1e3})
                print(f"weight_stream: {name:4s} {'mma' if dot else 'loads':6s} {gemm_rows[-1]['programs']:4d} "
                      f"programs x {gemm_rows[-1]['steps']:2d} steps  {p50 * 1e3:7.2f} us", flush=True)
    props = torch.cuda.get_device_properties(dev)
    res = {"gemm_rows": gemm_rows, "device": props.name, "torch": torch.__version__, "triton": triton.__version__,
           "commit": os.environ.get("QVIT_COMMIT", ""), "block_n": block_n, "block_k": block_k,
           "timer": "qvit.backend.tune_bench (CUDA graph, L2 flushed before each launch), p50 of 7 replays",
           "rows": rows}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "weight_stream.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out_dir, "weight_stream.md"), "w") as f:
        f.write(to_markdown(res))
    return res


def to_markdown(res: dict) -> str:
    lines = [f"# Weight streaming at batch 1 on {res['device']}", "",
             f"torch {res['torch']}, Triton {res['triton']}, commit {res['commit'] or '?'}; tiles "
             f"{res['block_n']} x {res['block_k']} int8; {res['timer']}.", "",
             "| shape | N x K | programs | K steps each | rows us | padded us | tiled us | rows GB/s | tiled GB/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    cells = {(r["shape"], r["programs"], r["layout"]): r for r in res["rows"]}
    for name, n, k in SHAPES:
        for p in sorted({r["programs"] for r in res["rows"] if r["shape"] == name}):
            c = {lay: cells.get((name, p, lay)) for lay in LAYOUTS}
            if c["rows"] is None:
                continue
            us = [f"{c[lay]['us_p50']:.2f}" if c[lay] else "" for lay in LAYOUTS]
            lines.append(f"| {name} | {n} x {k} | {p} | {c['rows']['steps']} | {' | '.join(us)} | "
                         f"{c['rows']['GBps']:.0f} | {c['tiled']['GBps'] if c['tiled'] else float('nan'):.0f} |")
    if res.get("gemm_rows"):
        lines += ["", "With the activation side (M = 197, all tokens in one row tile; row-major weights): the weight "
                  "stream alone, plus the activation tiles' loads, plus the int32 MMA (no epilogue, no split "
                  "reduction).", "",
                  "| shape | programs | K steps each | stream us | + activation loads us | + MMA us |",
                  "|---|---:|---:|---:|---:|---:|"]
        g = {(r["shape"], r["programs"], r["mode"]): r for r in res["gemm_rows"]}
        for name, n, k in SHAPES:
            for p in sorted({r["programs"] for r in res["gemm_rows"] if r["shape"] == name}):
                st = cells.get((name, p, "rows"))
                lo, mm = g.get((name, p, "loads")), g.get((name, p, "mma"))
                lines.append(f"| {name} | {p} | {(lo or mm)['steps']} | {st['us_p50']:.2f} | "
                             f"{lo['us_p50']:.2f} | {mm['us_p50']:.2f} |" if st and lo and mm else
                             f"| {name} | {p} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--block-k", type=int, default=128)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("weight_stream: needs a CUDA GPU", file=sys.stderr)
        return 2
    run(args.out, args.block_n, args.block_k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
