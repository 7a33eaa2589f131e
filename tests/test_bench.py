"""pytest-benchmark kernel comparisons (skipped by default: run `pytest --benchmark-only -m gpu tests/test_bench.py`).
The full tables with ceilings come from `qvit bench` (qvit.profiling.bench_kernels)."""
import pytest
import torch

pytestmark = pytest.mark.gpu


def _sync_loop(fn, n=20):
    def run():
        for _ in range(n):
            fn()
        torch.cuda.synchronize()  # once per timed batch of launches
    return run


@pytest.mark.parametrize("layer,k,n", [("qkv", 1024, 3072), ("proj", 1024, 1024), ("fc1", 1024, 4096), ("fc2", 4096, 1024)])
@pytest.mark.parametrize("m", [197, 12608])
@pytest.mark.parametrize("provider", ["torch-bf16", "qvit-w8a8", "qvit-w4a8", "qvit-w4a8p", "qvit-w4a16"])
def test_linear(benchmark, layer, k, n, m, provider):
    from qvit.kernels import quant as Q
    from qvit.kernels.w4a8_linear import expand_int4_progressive, w4a8_linear
    from qvit.kernels.w4a16_linear import w4a16_linear
    from qvit.kernels.w8a8_linear import w8a8_linear
    benchmark.group = f"linear {layer} M={m}"
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    if provider == "torch-bf16":
        fn = lambda: torch.nn.functional.linear(x, w)  # noqa: E731
    elif provider == "qvit-w8a8":
        xq, xs = Q.quantize_int8_per_token(x)
        wq, ws = Q.quantize_int8_per_channel(w)
        fn = lambda: w8a8_linear(xq, xs, wq, ws, None, None, False, torch.bfloat16)  # noqa: E731
    elif provider == "qvit-w4a8p":  # 4-bit two-level weights: expanded to int8 per call, then the W8A8 GEMM
        xq, xs = Q.quantize_int8_per_token(x)
        p, s2, s1 = Q.quantize_int4_progressive(w, 128)
        fn = lambda: w8a8_linear(xq, xs, expand_int4_progressive(p, s2, 128), s1, None, None, False,  # noqa: E731
                                 torch.bfloat16)
    else:
        p, s, _ = Q.quantize_int4(w, 128)
        if provider == "qvit-w4a8":
            xq, xs = Q.quantize_int8_per_token(x)
            fn = lambda: w4a8_linear(xq, xs, p, s, None, 128, torch.bfloat16)  # noqa: E731
        else:
            fn = lambda: w4a16_linear(x, p, s, None, None, 128, "int4-sym")  # noqa: E731
    fn()
    benchmark(_sync_loop(fn))


@pytest.mark.parametrize("b,s", [(1, 197), (64, 197), (64, 577)])
@pytest.mark.parametrize("provider", ["sdpa-flash", "sdpa-cudnn", "qvit-fp16", "qvit-int8", "qvit-int8+quant",
                                      "qvit-int8-on-chip"])
def test_attention(benchmark, b, s, provider):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from qvit.kernels.attention import attention_fwd, attention_int8, attention_qk_int8, quantize_qk
    benchmark.group = f"attention B={b} S={s}"
    q, k, v = torch.randn(b, s, 3, 16, 64, device="cuda", dtype=torch.float16).unbind(2)
    if provider.startswith("sdpa"):
        be = SDPBackend.FLASH_ATTENTION if provider == "sdpa-flash" else SDPBackend.CUDNN_ATTENTION
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

        def fn():
            with sdpa_kernel([be]):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    elif provider == "qvit-fp16":
        fn = lambda: attention_fwd(q, k, v, 0.125)  # noqa: E731
    elif provider == "qvit-int8":
        qq = quantize_qk(q, k)
        fn = lambda: attention_int8(*qq, v, 0.125)  # noqa: E731
    elif provider == "qvit-int8+quant":  # quantize Q/K (one kernel), then attention
        fn = lambda: attention_int8(*quantize_qk(q, k), v, 0.125)  # noqa: E731
    else:  # what the model runs: Q/K quantized inside the attention kernel
        fn = lambda: attention_qk_int8(q, k, v, 0.125)  # noqa: E731
    fn()
    benchmark(_sync_loop(fn))
