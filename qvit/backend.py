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
    cannot run the griddepcontrol instructions. Off by default: on the H200 its effect on batch 1 followed the
    autotuner's decisions, -6% to +6% (results/h200-gpu-16, NOTES.md session 16). Any other value than 0 or 1 is
    an error."""
    value = os.environ.get("QVIT_PDL", "0")
    if value not in ("0", "1"):
        raise ValueError(f"QVIT_PDL={value!r}: expected 0 or 1")
    if value == "0" or interpreting() or device.type != "cuda":
        return {}
    import torch
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"PDL": True, "launch_pdl": True} if _cc_major(index) >= 9 else {}


def tune_bench(kernel_call, quantiles=(0.5, 0.2, 0.8), trials: int = 7):
    """The autotuner's timer for qvit's kernels (`triton.autotune(do_bench=tune_bench)`): the kernel's GPU time
    inside a CUDA graph, each run after an L2 flush, in ms, at the requested quantiles over `trials` replays.

    Triton's default timer launches from the host; a ViT-L/16 kernel at batch 1 (M = 197) runs 3-10 us, about
    the time the host takes to launch it, so host speed decided the ranking: session 14's batch-1 configs chosen
    beside another process's compilation were 0.2 ms slower end to end, and session 15's first call measured
    fp8s2t at 1.257 ms batch 1 with configs that an earlier call's tuning had put at 1.004. In a graph the launch
    costs nothing and what is left is what the model's own graph replays: one graph runs `reps` x (flush, kernel),
    a second `reps` x flush, and the difference over `reps` is the kernel with its weights coming from DRAM, as
    in a ViT forward (300 MB of weights against a 50-60 MB L2); the flush writes twice the L2's size. Where a
    capture fails, Triton's own timer, with one warning."""
    import torch
    caller, stream = torch.cuda.current_stream(), torch.cuda.Stream()
    stream.wait_stream(caller)  # the inputs the caller's stream is still writing
    try:
        with torch.cuda.stream(stream):
            kernel_call()  # compiles, and raises what the autotuner skips (out of resources) before any capture
            try:
                return _graphed_times(kernel_call, quantiles, trials, stream)
            except RuntimeError as e:
                _warn_host_timing(str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        caller.wait_stream(stream)
    import triton.testing
    return triton.testing.do_bench(kernel_call, quantiles=quantiles)


@functools.lru_cache(maxsize=None)
def _warn_host_timing(why: str) -> None:
    log.warning("qvit autotuning: CUDA graph capture failed (%s); timing these configs from the host", why)


def _graphed_times(kernel_call, quantiles, trials: int, stream) -> list:
    import torch
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 64 << 20
    flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(3):
        flush.zero_()
        kernel_call()
    t1.record()
    t1.synchronize()
    reps = max(2, min(40, int(2.0 / max(t0.elapsed_time(t1) / 3, 1e-3))))  # ~2 ms of work per replay

    def capture(with_kernel: bool):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            for _ in range(reps):
                flush.zero_()
                if with_kernel:
                    kernel_call()
        return g

    graphs = (capture(True), capture(False))
    for g in graphs:
        g.replay()
    times = []
    for _ in range(trials):
        ms = []
        for g in graphs:
            t0.record()
            g.replay()
            t1.record()
            t1.synchronize()
            ms.append(t0.elapsed_time(t1))
        times.append(max(ms[0] - ms[1], 0.0) / reps)
    q = torch.tensor(times).quantile(torch.tensor(list(quantiles), dtype=torch.float32))
    return [float(v) for v in q]


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
