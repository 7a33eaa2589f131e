"""Kernel launches per transformer block, counted on the CPU (the Triton launchers run under the interpreter,
the same launcher code as on a GPU): the fused pipeline's launch list is pinned here, so that an extra copy,
cast or quantize kernel between the fused ops fails a test instead of costing batch-1 latency unnoticed."""
import pytest

from conftest import requires_interp

pytestmark = requires_interp


def _blocks(variant, **overrides):
    from qvit.profiling.launches import build, count, per_block
    m, x = build(variant, "vit_micro_patch4_32", **overrides)
    return per_block(count(m, x), m.cfg.depth)


def test_launches_8bit_fp8_fused_attention():
    """The study's 8-bit + qvit attention variant (fp8s2t): LayerNorm + quantize, qkv GEMM, attention writing
    proj's fp8 input and its scale vector, proj GEMM (+ residual), LayerNorm + quantize, fc1 (+ GELU) writing fc2's
    fp8 input and its scale vector, fc2 (+ residual): 7 kernels, nothing from PyTorch (the scale vectors were a
    fill kernel each until session 14), no host synchronization."""
    r = _blocks("3 8bit+qvit-attn")
    assert r["by_range"] == {
        "block/norm1": ["triton:_ln_quant_kernel"],
        "block/qkv": ["triton:_w8a8_kernel"],
        "block/attention": ["triton:_attn_fwd"],
        "block/proj": ["triton:_w8a8_kernel"],
        "block/norm2": ["triton:_ln_quant_kernel"],
        "block/mlp": ["triton:_w8a8_kernel", "triton:_w8a8_kernel"],
    }
    assert r["per_block"] == 7 and r["syncs"] == []


def test_launches_4bit_fp8_expands_each_weight():
    """The study's 4-bit + qvit attention variant (w4f8s2t): the 8-bit one's kernels with each linear's 4-bit
    weight expanded to e4m3 by a kernel of its own before its GEMM: 11 launches per block."""
    r = _blocks("2 4bit+qvit-attn")
    assert r["by_range"]["block/qkv"] == ["triton:_expand_pow2_kernel", "triton:_w8a8_kernel"]
    assert r["by_range"]["block/mlp"] == ["triton:_expand_pow2_kernel", "triton:_w8a8_kernel"] * 2
    assert r["per_block"] == 11 and r["syncs"] == []


def test_launches_4bit_fp8_fused_expansion(monkeypatch):
    """QVIT_W4_FUSED=1 (batch-1 sizes): the 4-bit row's GEMMs expand their weights themselves, so its block runs
    the 8-bit row's 7 kernels instead of 11."""
    monkeypatch.setenv("QVIT_W4_FUSED", "1")
    r = _blocks("2 4bit+qvit-attn")
    assert r["by_range"]["block/qkv"] == ["triton:_w8a8_kernel"]
    assert r["by_range"]["block/mlp"] == ["triton:_w8a8_kernel"] * 2
    assert r["per_block"] == 7 and r["syncs"] == []


def test_launches_8bit_int8_fused_attention():
    """The int8 8-bit + qvit attention variant: LayerNorm+quantize, qkv GEMM, attention with Q/K quantized
    on chip, quantize of its output, proj GEMM (+ residual), LayerNorm+quantize, fc1 (+ GELU), quantize, fc2
    (+ residual): 9 kernels, nothing from PyTorch, no host synchronization."""
    r = _blocks("x 8bit-int8+qvit-attn")
    assert r["by_range"] == {
        "block/norm1": ["triton:_ln_quant_kernel"],
        "block/qkv": ["triton:_w8a8_kernel"],
        "block/attention": ["triton:_attn_fwd"],
        "block/proj": ["triton:_ln_quant_kernel", "triton:_w8a8_kernel"],
        "block/norm2": ["triton:_ln_quant_kernel"],
        "block/mlp": ["triton:_w8a8_kernel", "triton:_ln_quant_kernel", "triton:_w8a8_kernel"],
    }
    assert r["per_block"] == 9 and r["syncs"] == []


def test_launches_act_group_removes_both_quantize_kernels():
    """With act_group (fc1's epilogue quantizes fc2's input, the attention's epilogue proj's input) the two
    quantize kernels between GEMMs are gone: 7 launches per block."""
    r = _blocks("x 8bit-g128+qvit-attn", act_group=32)  # 32: the interpreter's N tile holds whole groups
    assert r["by_range"]["block/proj"] == ["triton:_w8a8_kernel"]
    assert r["by_range"]["block/mlp"] == ["triton:_w8a8_kernel", "triton:_w8a8_kernel"]
    assert r["by_range"]["block/attention"] == ["triton:_attn_fwd"]
    assert r["per_block"] == 7 and r["syncs"] == []


@pytest.mark.parametrize("variant", ["1 bf16", "5 8bit+sdpa-noflash", "4 4bit+sdpa-noflash", "x 4bit-int8+qvit-attn"])
def test_launches_no_host_sync(variant):
    """No variant synchronizes with the host inside a forward (a CUDA graph could not capture it), and every
    block launches the same kernels (per_block raises otherwise)."""
    r = _blocks(variant)
    assert r["syncs"] == [] and r["per_block"] >= 7


@pytest.mark.parametrize("variant", ["x w4a16-int4+sdpa", "x nf4+sdpa"])
def test_launches_w4a16_epilogue_fused(variant):
    """W4A16 / NF4: bias, GELU and the residual inside the GEMM (no PyTorch gelu/add between): one kernel per
    linear, 7 launches per block (group 32 so that every linear of the tiny model is 4-bit)."""
    r = _blocks(variant, group_size=32) if "int4" in variant else _blocks(variant)
    assert r["by_range"]["block/mlp"] == ["triton:_w4a16_kernel", "triton:_w4a16_kernel"]
    assert r["by_range"]["block/proj"] == ["triton:_w4a16_kernel"]
    assert r["per_block"] == 7 and r["syncs"] == []


def test_launches_4bit_int8_expands_each_weight():
    """The int8 4-bit variant (w4a8p) expands each linear's 4-bit weight to int8 in a kernel of its own before
    the W8A8 GEMM: 4 launches per block more than the 8-bit variant (13), the price of the 8-bit GEMM's speed
    at large M (results/h200-gpu-6: 1.15-1.51x cuBLAS bf16 at M = 12,608 against 0.61-0.65x for the direct
    W4A8 kernel)."""
    r = _blocks("x 4bit-int8+qvit-attn", group_size=32)
    assert r["by_range"]["block/qkv"] == ["triton:_expand_prog_kernel", "triton:_w8a8_kernel"]
    assert r["per_block"] == 13 and r["syncs"] == []


def test_launch_counter_sees_syncs_and_torch_ops():
    """The counter itself: a forward that calls .item() inside a block is reported as a host sync, and a
    PyTorch op the fused path should not have (an extra clone) appears in its range's list."""
    import qvit.vit.model as model_mod
    from qvit.profiling.launches import build, count, per_block
    m, x = build("x 8bit-int8+qvit-attn", "vit_micro_patch4_32")
    real = model_mod.Mlp.forward

    def forward(self, h, residual=None, norm_next=None):
        float(h.q.float().abs().max())  # .item() on fc1's int8 input: a host sync
        return real(self, h, residual=None if residual is None else residual.clone(), norm_next=norm_next)

    model_mod.Mlp.forward = forward
    try:
        r = per_block(count(m, x), m.cfg.depth)
    finally:
        model_mod.Mlp.forward = real
    assert r["syncs"] == [("block/mlp", "_local_scalar_dense")] * m.cfg.depth
    assert "torch:clone" in r["by_range"]["block/mlp"] and r["per_block"] > 9
