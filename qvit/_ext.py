"""Loads the compiled CUDA extension `qvit._C` once and remembers why it failed, if it did.

A missing extension (CPU install) and a broken one (ABI mismatch, missing symbol) are reported
differently: the message of the real ImportError is kept, never replaced by a generic one.
"""
from __future__ import annotations

import importlib
import importlib.util

_state: dict = {}


def _load():
    if "mod" in _state or "err" in _state:
        return
    if importlib.util.find_spec("qvit._C") is None:
        _state["err"] = ("qvit was installed without its CUDA extension (no CUDA toolkit or CPU-only "
                         "torch at build time, or QVIT_BUILD_CUDA=0); reinstall on a CUDA machine")
        return
    try:
        import torch  # noqa: F401  (the extension links against libtorch)
        _state["mod"] = importlib.import_module("qvit._C")
    except (ImportError, OSError) as e:
        _state["err"] = f"qvit._C exists but failed to load: {type(e).__name__}: {e}"
        return
    import torch
    if not torch.cuda.is_available():
        _state["err"] = "qvit._C is built but no CUDA device is visible"


def load_error() -> str | None:
    _load()
    return _state.get("err")


def _register_fakes():
    import torch

    @torch.library.register_fake("qvit_cuda::layernorm_quant")
    def _(x, weight, bias, eps):
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:1], dtype=torch.float32)


def ops():
    """torch.ops.qvit_cuda once the extension registered its kernels; raises with the reason if it cannot."""
    _load()
    if "err" in _state:
        from qvit.backend import BackendUnavailable
        raise BackendUnavailable(_state["err"])
    import torch
    if not _state.get("fakes"):
        _register_fakes()
        _state["fakes"] = True
    return torch.ops.qvit_cuda
