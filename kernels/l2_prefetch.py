"""L2 prefetch of a module's weights on a side stream (csrc/l2_prefetch.cu), for the batch-1 forward.

At batch 1 a ViT-L/16 linear (M = 197) reads its weights from DRAM: the 8-bit model's 293 MiB do not fit the
50 MiB L2, and each block's 12 MiB are read once per forward. `BlockPrefetcher.issue(block)` forks a side stream
from the current one (the side stream waits for what the current stream has queued so far, so a prefetch issued
at block i's start does not run ahead of it) and launches one small kernel there that asks the L2 for every byte of
the block's weight storages; the main stream does not wait for it (a prefetch is a hint: no result depends on it).
`join()` makes the current stream wait for the side stream before the forward returns, which a CUDA-graph capture
needs (every forked stream joined) and which keeps the side stream from outliving the forward.

Storages, not tensors: a tensor's bytes are a range of its storage; prefetching the whole storage covers views
and strides at the cost of the storage's unused bytes (none for the model's weights). Only storages of at least
`min_bytes` are prefetched (the weights, not the biases and scales).

Measured (H100, results/h200-gpu-26, NOTES.md session 26): no gain to take. Row 3 at batch 1, graphed, with every
block running block 0's L2-resident linears was 1-2% *slower* than the model itself, so the weights' DRAM reads do
not bound batch 1; the prefetch moved it by -3% to +38% with the launch shape (the defaults are the best shape
measured, 16 x 32 threads and 64 KiB chunks: -1.9% in one call). Kept as an instrument (tools/l2_prefetch_ab.py),
off by default.
"""
from __future__ import annotations

import ctypes

import torch

MAX_RANGES = 8  # csrc/l2_prefetch.h kL2MaxRanges: ranges per launch


def weight_ranges(module: torch.nn.Module, min_bytes: int = 1 << 16) -> list[tuple[int, int]]:
    """(address, bytes) of the distinct CUDA storages behind `module`'s parameters and buffers of at least
    `min_bytes`, in registration order."""
    seen, out = set(), []
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "cuda":
            continue
        s = t.untyped_storage()
        if s.nbytes() < min_bytes or s.data_ptr() in seen:
            continue
        seen.add(s.data_ptr())
        out.append((s.data_ptr(), s.nbytes()))
    return out


def l2_prefetch(ranges: list[tuple[int, int]], device, ctas: int = 16, threads: int = 32, chunk: int = 1 << 16):
    """Launch the prefetch of `ranges` ((address, bytes) on `device`) on the current stream: `ctas` x `threads`
    threads, `chunk` bytes per bulk prefetch; more than MAX_RANGES ranges take several launches."""
    from qvit import _ext
    lib = _ext.lib()
    stream = torch.cuda.current_stream(device).cuda_stream
    for i in range(0, len(ranges), MAX_RANGES):
        part = ranges[i:i + MAX_RANGES]
        ptrs = (ctypes.c_void_p * len(part))(*[p for p, _ in part])
        nbytes = (ctypes.c_int64 * len(part))(*[n for _, n in part])
        rc = lib.qvit_l2_prefetch(ptrs, nbytes, len(part), ctas, threads, chunk, ctypes.c_void_p(stream))
        _ext.check(rc, "l2_prefetch")


_SIDE: dict = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device, made once (a forward builds its BlockPrefetcher anew)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE:
        _SIDE[index] = torch.cuda.Stream(torch.device("cuda", index))
    return _SIDE[index]


class BlockPrefetcher:
    """Side-stream L2 prefetches of modules' weights, one `issue` per module, then one `join` (see the module
    docstring). ctas / threads / chunk: the prefetch kernel's launch (l2_prefetch)."""

    def __init__(self, device, ctas: int = 16, threads: int = 32, chunk: int = 1 << 16, min_bytes: int = 1 << 16):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"BlockPrefetcher: needs a CUDA device, got {self.device}")
        self.ctas, self.threads, self.chunk, self.min_bytes = ctas, threads, chunk, min_bytes
        self._side = _side_stream(self.device)
        self._forked = False

    def issue(self, module: torch.nn.Module) -> None:
        ranges = weight_ranges(module, self.min_bytes)
        if not ranges:
            return
        main = torch.cuda.current_stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            l2_prefetch(ranges, self.device, self.ctas, self.threads, self.chunk)
        self._forked = True

    def join(self) -> None:
        if self._forked:
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            self._forked = False
