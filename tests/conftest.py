"""Test setup. On a machine without an NVIDIA GPU the Triton kernels run in the interpreter:
TRITON_INTERPRET=1 must be set before triton is first imported, so it is set here, first."""
import os

_HAS_NVIDIA = os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")
if not _HAS_NVIDIA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

GPU = torch.cuda.is_available()
INTERP = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not GPU:
            item.add_marker(skip_gpu)
    # QVIT_TEST_SHARD="i/n": keep every n-th test starting at i (collection order, so that the parametrized
    # cases of one expensive test spread over the shards); tools/gpu_run.sh runs one shard per GPU
    shard = os.environ.get("QVIT_TEST_SHARD")
    if shard:
        try:
            i, n = (int(v) for v in shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise pytest.UsageError(f"QVIT_TEST_SHARD={shard!r}: expected 'i/n' with 0 <= i < n") from None
        keep = [it for k, it in enumerate(items) if k % n == i]
        config.hook.pytest_deselected(items=[it for k, it in enumerate(items) if k % n != i])
        items[:] = keep


requires_interp = pytest.mark.skipif(not INTERP, reason="Triton interpreter tests (CPU); TRITON_INTERPRET is not 1")


@pytest.fixture
def poison(monkeypatch):
    """Make torch.empty return poisoned memory (NaN for floats, -128 for int8, 0xAB for uint8) so that
    an output element the kernel never writes cannot pass for a correct one."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.int8:
            t.fill_(-128)
        elif t.dtype == torch.uint8:
            t.fill_(0xAB)
        return t

    monkeypatch.setattr(torch, "empty", poisoned)
    return poisoned


def rel_err(y, ref):
    y, ref = y.double(), ref.double()
    assert torch.isfinite(y).all(), "output holds NaN/Inf (unwritten or overflowed elements)"
    return float((y - ref).norm() / ref.norm())


def check_w8a8(fn, m, k, n, bias, gelu, res, fp32_bar=None):
    """A W8A8 GEMM `fn(xq, xs, wq, ws, bias, residual, gelu, out_dtype)` against `int8_matmul_ref` on fresh
    random int8 operands: fp16 output within 2^-10 (the int32 dot is exact; float32 epilogue, one fp16
    rounding); with `fp32_bar`, the float32 output within it too."""
    from qvit.kernels import quant as Q
    x, w = torch.randn(m, k), torch.randn(n, k)
    xq, xs = Q.quantize_int8_per_token(x)
    wq, ws = Q.quantize_int8_per_channel(w)
    b = torch.randn(n) if bias else None
    r = torch.randn(m, n).half() if res else None
    ref = Q.int8_matmul_ref(xq, xs, wq, ws, b, torch.float32, gelu=gelu, residual=r)
    assert rel_err(fn(xq, xs, wq, ws, b, r, gelu, torch.float16), ref) < 2 ** -10
    if fp32_bar is not None:
        assert rel_err(fn(xq, xs, wq, ws, b, r, gelu, torch.float32), ref) < fp32_bar


def e4m3_ordinal(q):
    """e4m3 codes as signed integers in value order (adjacent representable values differ by one)."""
    c = q.view(torch.uint8).int()
    return torch.where(c >= 128, -(c - 128), c)


def pin_config(monkeypatch, kernel, config=None, **overrides):
    """Make an autotuned Triton kernel run exactly one config (`config`, default its first) with
    `overrides` applied (e.g. the swapped-operand variant), whatever it would have picked: tests reach
    every code path the autotuner may choose on a GPU."""
    import triton
    c = config if config is not None else kernel.configs[0]
    cfg = triton.Config({**c.kwargs, **overrides}, num_warps=c.num_warps, num_stages=c.num_stages,
                        pre_hook=c.pre_hook)
    monkeypatch.setattr(kernel, "configs", [cfg])
    monkeypatch.setattr(kernel, "cache", {})
    if getattr(kernel, "early_config_prune", None) is not None:
        monkeypatch.setattr(kernel, "early_config_prune", None)
