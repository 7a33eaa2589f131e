"""Loads the compiled CUDA extension `qvit._C` once and remembers why it failed, if it did.

A missing extension (CPU install) and a broken one (ABI mismatch, missing symbol) are reported
differently: the message of the real ImportError is kept, never replaced by a generic one.

The extension exports a plain C ABI (csrc/ops.cpp): every entry point validates its arguments and
returns an error code instead of throwing (C++ exceptions out of the extension crashed the process
on the H200 image). `lib()` returns the ctypes handle; `check(rc, op)` turns a nonzero code into a
Python exception carrying the library's message. The torch ops that use it are registered in
kernels/ (e.g. `qvit::layernorm_quant_cuda`), with fake implementations.
"""
from __future__ import annotations

import ctypes
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
        import torch  # noqa: F401  (loads the CUDA runtime the extension links against)
        mod = importlib.import_module("qvit._C")
        lib = ctypes.CDLL(mod.__file__)
        lib.qvit_last_error.restype = ctypes.c_char_p
        lib.qvit_last_error.argtypes = []
        lib.qvit_layernorm_quant.restype = ctypes.c_int
        lib.qvit_layernorm_quant.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [
            ctypes.c_float, ctypes.c_void_p]
        lib.qvit_w8a8_gemm.restype = ctypes.c_int
        lib.qvit_w8a8_gemm.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 7 + [
            ctypes.c_int] * 3 + [ctypes.c_void_p]
        lib.qvit_l2_prefetch.restype = ctypes.c_int
        lib.qvit_l2_prefetch.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int] * 4 + [ctypes.c_void_p]
        lib.qvit_w8a8_gemm_epilogue.restype = ctypes.c_int
        lib.qvit_w8a8_gemm_epilogue.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [
            ctypes.c_int] * 2
    except (ImportError, OSError, AttributeError) as e:
        _state["err"] = f"qvit._C exists but failed to load: {type(e).__name__}: {e}"
        return
    _state["mod"], _state["lib"] = mod, lib
    if not torch.cuda.is_available():
        _state["err"] = "qvit._C is built but no CUDA device is visible"


def load_error() -> str | None:
    _load()
    return _state.get("err")


def lib():
    """The ctypes handle of qvit._C; raises BackendUnavailable with the reason if it cannot load."""
    _load()
    if "err" in _state:
        from qvit.backend import BackendUnavailable
        raise BackendUnavailable(_state["err"])
    return _state["lib"]


class CudaOpError(RuntimeError):
    """A qvit CUDA entry point refused its arguments or its launch failed; the message names the op."""


def check(rc: int, op: str) -> None:
    if rc != 0:
        msg = (_state["lib"].qvit_last_error() or b"").decode(errors="replace")
        raise CudaOpError(msg or f"{op}: failed with code {rc}")
