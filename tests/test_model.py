"""The minimal ViT equals timm's VisionTransformer on the same random weights, and loads its checkpoints."""
import pytest
import torch

from qvit.vit import CheckpointError, ViT, ViTConfig, load_timm_checkpoint
from qvit.vit.checkpoint import resample_pos_embed

timm = pytest.importorskip("timm")


def _timm_model(name, **kw):
    return timm.create_model(name, pretrained=False, **kw).eval()


@pytest.mark.slow
def test_vit_large_patch16_224_equals_timm():
    torch.manual_seed(0)
    tm = _timm_model("vit_large_patch16_224")
    m = load_timm_checkpoint(ViT.from_name("vit_large_patch16_224").eval(), tm.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = tm(x)
        for attn in ("torch", "sdpa"):
            y = m.set_backend(attn=attn)(x)
            assert (y - ref).abs().max() <= 1e-4, attn


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_small_config_equals_timm(pool):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(1)
    cfg = ViTConfig.from_name("vit_small_patch4_32", global_pool=pool, depth=4)
    tm = VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=384, depth=4, num_heads=6,
                           global_pool=pool).eval()
    m = load_timm_checkpoint(ViT(cfg).eval(), tm.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (m.set_backend(attn="torch")(x) - tm(x)).abs().max() <= 1e-4


def test_checkpoint_file_and_pos_embed_resampling(tmp_path):
    tm = _timm_model("vit_tiny_patch16_224")
    path = tmp_path / "tiny.pth"
    torch.save({"model": {"module." + k: v for k, v in tm.state_dict().items()}}, path)
    m = load_timm_checkpoint(ViT.from_name("vit_tiny_patch16_224", img_size=96).eval(), str(path))
    assert m.pos_embed.shape == (1, 37, 192)
    # the class token's embedding is carried over untouched, the grid is resampled
    assert torch.equal(m.pos_embed[0, 0], tm.pos_embed[0, 0])
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 3, 96, 96))).all()


def test_resample_identity_when_grid_matches():
    pos = torch.randn(1, 1 + 49, 8)
    assert resample_pos_embed(pos, 7) is pos


def test_corrupt_and_mismatched_checkpoints_raise(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    m = ViT.from_name("vit_tiny_patch4_32", depth=2)
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_timm_checkpoint(m, str(bad))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_timm_checkpoint(m, str(tmp_path / "missing.pth"))
    other = ViT.from_name("vit_small_patch4_32", depth=2).state_dict()
    with pytest.raises(CheckpointError, match="has shape"):
        load_timm_checkpoint(m, other)


def test_bad_image_shape_and_unknown_config():
    m = ViT.from_name("vit_tiny_patch4_32", depth=1)
    with pytest.raises(ValueError, match="expected images"):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown ViT config"):
        ViTConfig.from_name("vit_huge_nope")


@pytest.mark.parametrize("name", ["vit_micro_patch4_32", "vit_tiny_patch16_224"])
def test_patch_embed_is_the_strided_conv(name):
    """PatchEmbed runs its stride-p conv as one GEMM over the patches: the same values and gradients as
    nn.Conv2d with the same weights (fresh random images and weights), in the (B, N, C) token layout. In
    float64, so that the two summation orders differ by ~K * 2^-53 of the sums (<= 1e-12 here), far under the
    bar; a patch read in another order is O(1) off."""
    from qvit.vit.model import ViT
    torch.manual_seed(5)
    pe = ViT.from_name(name).patch_embed.double()
    with torch.no_grad():
        pe.proj.weight.normal_()
        pe.proj.bias.normal_()
    s = pe.img_size
    x = torch.randn(3, 3, s, s, dtype=torch.float64, requires_grad=True)
    y = pe(x)
    ref = pe.proj(x).flatten(2).transpose(1, 2)
    assert y.shape == ref.shape and y.is_contiguous()
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, pe.proj.weight), g)
    rx, rw = torch.autograd.grad(ref, (x, pe.proj.weight), g)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


def test_l2_prefetch_is_inert_off_gpu():
    """ViT.set_l2_prefetch (a side-stream L2 prefetch of the next block's weights, GPU inference only): on a CPU the
    forward runs no prefetcher and gives the same logits; the setting survives a deep copy and adds nothing to the
    state dict; the prefetcher itself refuses a CPU device by name, and a CPU module has no CUDA ranges."""
    import copy
    from qvit.kernels.l2_prefetch import BlockPrefetcher, weight_ranges
    torch.manual_seed(0)
    m = ViT.from_name("vit_micro_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        keys = set(m.state_dict())
        m.set_l2_prefetch(True, ctas=4)
        assert torch.equal(m(x), ref)
    assert set(m.state_dict()) == keys
    assert copy.deepcopy(m)._l2_prefetch == {"ctas": 4}
    assert m.set_l2_prefetch(False)._l2_prefetch is None
    with pytest.raises(ValueError, match="needs a CUDA device, got cpu"):
        BlockPrefetcher("cpu")
    assert weight_ranges(m.blocks[0]) == []
