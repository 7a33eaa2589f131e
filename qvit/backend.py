"""One backend flag for every linear and every attention call.

Resolution order: explicit argument > environment variable > auto.

    linears:   QVIT_BACKEND = torch | triton | cuda | auto
    attention: QVIT_ATTN    = torch | qvit | sdpa | sdpa-flash | sdpa-noflash | auto

`torch` is the plain-PyTorch reference (always available, any device). `triton` runs qvit's
Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1); `cuda` runs the
hand-written kernels of the `qvit._C` extension. For attention, `qvit` is qvit's own fused
FA2-style Triton kernel, `sdpa-flash` is PyTorch SDPA restricted to its FlashAttention-2
backend, `sdpa-noflash` is SDPA with FLASH excluded (cuDNN / efficient / math), `sdpa` lets
PyTorch choose.

An explicit choice that cannot run raises `BackendUnavailable` with the reason. `auto` picks
the fastest available and, when it has to fall back, logs one line (once per reason). For linears
on a GPU that is Triton, and on sm_90 the W8A8 layers then time the Triton and the CUDA GEMM once
per shape and run the faster (`qvit.kernels.w8a8_cuda.prefer_cuda`).
"""
from __future__ import annotations

import enum
import functools
import importlib.util
import logging
import os

log = logging.getLogger("qvit")


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


class Backend(str, enum.Enum):
    TORCH = "torch"
    TRITON = "triton"
    CUDA = "cuda"
    AUTO = "auto"


class AttnBackend(str, enum.Enum):
    TORCH = "torch"
    QVIT = "qvit"
    SDPA = "sdpa"
    SDPA_FLASH = "sdpa-flash"
    SDPA_NOFLASH = "sdpa-noflash"
    AUTO = "auto"


def _parse(enum_cls, value, what):
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(str(value).strip().lower().replace("_", "-") if enum_cls is AttnBackend
                        else str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in enum_cls)
        raise ValueError(f"unknown {what} backend {value!r}; choose one of: {choices}") from None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _cc_major(index: int) -> int:
    import torch
    return torch.cuda.get_device_capability(index)[0]


def pdl_kwargs(device) -> dict:
    """Launch keywords for qvit's Triton kernels: {"PDL": True, "launch_pdl": True} where QVIT_PDL=1 and the device
    is sm_90 or newer (programmatic dependent launch: the kernel may start while the previous one on the stream
    finishes; each kernel waits (griddepcontrol.wait) before it touches anything the previous one wrote, and
    before any store), else {} (the kernels' PDL constexpr defaults to False). Never under the interpreter, which
    cannot run the griddepcontrol instructions. Off by default: built in session 14 without device time left to
    measure it (NOTES.md)."""
    if os.environ.get("QVIT_PDL", "0") != "1" or interpreting() or device.type != "cuda":
        return {}
    import torch
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"PDL": True, "launch_pdl": True} if _cc_major(index) >= 9 else {}


def tune_shard(configs: list) -> list:
    """The autotuner configs this process compiles. QVIT_TUNE_SHARD="i/n" keeps configs i, i + n, ... (at
    least one): n processes started with i = 0 .. n-1 and TRITON_CACHE_AUTOTUNING=0 compile every config once
    between them in parallel, filling Triton's on-disk kernel cache, so that one process with every config
    (no QVIT_TUNE_SHARD) then tunes from cached binaries: compiling, not timing, dominated a cold machine's
    first autotuning (~2 s per config and kernel variant: 29 attention configs x 5 variants ~ 4.5 min
    sequentially on the H200 machine, session 9). Unset: every config."""
    shard = os.environ.get("QVIT_TUNE_SHARD")
    if not shard:
        return configs
    try:
        i, n = (int(v) for v in shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise ValueError(f"QVIT_TUNE_SHARD={shard!r}: expected 'i/n' with 0 <= i < n") from None
    return configs[i::n] or [configs[i % len(configs)]]


@functools.lru_cache(maxsize=None)
def triton_reason(device_type: str) -> str | None:
    """None if Triton kernels can run on tensors of this device type, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device_type == "cpu":
        return None if interpreting() else "Triton runs on CPU tensors only with TRITON_INTERPRET=1"
    if device_type != "cuda":
        return f"Triton kernels do not run on {device_type} tensors"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


@functools.lru_cache(maxsize=None)
def cuda_ext_reason(device_type: str) -> str | None:
    """None if the qvit._C extension can run on this device type, else why not."""
    if device_type != "cuda":
        return f"the CUDA extension needs CUDA tensors, got {device_type}"
    from qvit import _ext
    return _ext.load_error()


_warned: set[str] = set()


def _fallback(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning("qvit: %s", msg)


@functools.lru_cache(maxsize=None)
def _resolve_linear(choice: Backend, device_type: str) -> Backend:
    if choice is Backend.TORCH:
        return choice
    if choice is Backend.TRITON:
        reason = triton_reason(device_type)
        if reason:
            raise BackendUnavailable(f"backend 'triton' cannot run: {reason}")
        return choice
    if choice is Backend.CUDA:
        reason = cuda_ext_reason(device_type)
        if reason:
            raise BackendUnavailable(f"backend 'cuda' cannot run: {reason}")
        return choice
    # auto: Triton on GPUs, torch on CPU (the Triton interpreter is a debugging tool, never "fastest").
    if device_type == "cpu":
        return Backend.TORCH
    reason = triton_reason(device_type)
    if reason is None:
        return Backend.TRITON
    _fallback(f"auto backend falls back to torch on {device_type}: {reason}")
    return Backend.TORCH


def resolve_backend(explicit: str | Backend | None = None, device_type: str = "cuda") -> Backend:
    """Backend for quantized linears: explicit > $QVIT_BACKEND > auto."""
    value = explicit if explicit is not None else os.environ.get("QVIT_BACKEND", "auto")
    return _resolve_linear(_parse(Backend, value, "linear"), device_type)


@functools.lru_cache(maxsize=None)
def _resolve_attn(choice: AttnBackend, device_type: str) -> AttnBackend:
    if choice in (AttnBackend.TORCH, AttnBackend.SDPA):
        return choice
    if choice is AttnBackend.QVIT:
        reason = triton_reason(device_type)
        if reason:
            raise BackendUnavailable(f"attention backend 'qvit' cannot run: {reason}")
        return choice
    if choice in (AttnBackend.SDPA_FLASH, AttnBackend.SDPA_NOFLASH):
        if device_type != "cuda":
            raise BackendUnavailable(
                f"attention backend '{choice.value}' selects among CUDA SDPA kernels; "
                f"tensors are on {device_type}")
        return choice
    if device_type == "cuda" and triton_reason("cuda") is None:
        return AttnBackend.QVIT
    if device_type == "cuda":
        _fallback(f"auto attention falls back to sdpa: {triton_reason('cuda')}")
    return AttnBackend.SDPA


def resolve_attn_backend(explicit: str | AttnBackend | None = None, device_type: str = "cuda") -> AttnBackend:
    """Backend for attention: explicit > $QVIT_ATTN > auto."""
    value = explicit if explicit is not None else os.environ.get("QVIT_ATTN", "auto")
    return _resolve_attn(_parse(AttnBackend, value, "attention"), device_type)
