"""NVTX ranges for qvit's model and training step, free when nobody is listening.

Ranges are emitted when `QVIT_NVTX=1` (set it under `nsys profile`) or while torch.profiler is
recording (its trace then shows them as user annotations). Otherwise `range_ctx` returns a shared
null context: one function call and one flag test per range.
"""
from __future__ import annotations

import contextlib
import os

import torch

_NULL = contextlib.nullcontext()
_FORCED = os.environ.get("QVIT_NVTX", "0") not in ("", "0")


def enabled() -> bool:
    if _FORCED:
        return True
    try:
        return torch.autograd.profiler._is_profiler_enabled
    except AttributeError:  # older torch
        return False


@contextlib.contextmanager
def _both(name):
    with torch.autograd.profiler.record_function(name):
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_push(name)
            try:
                yield
            finally:
                torch.cuda.nvtx.range_pop()
        else:
            yield


def range_ctx(name: str):
    """`with range_ctx("block3/attn"): ...` -> an NVTX range + profiler annotation when enabled."""
    if torch.compiler.is_compiling() or not enabled():
        return _NULL
    return _both(name)
