"""QLoRA: peft adapters on a bitsandbytes NF4 base train, merge exactly, and re-quantize into qvit formats."""
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from qvit.train.qlora import merge_qlora, prepare_qlora  # noqa: E402
from qvit.vit.model import ViT  # noqa: E402


def test_merge_equals_adapted_model():
    """After setting nonzero adapters, the merged float model computes what NF4 base + LoRA computes."""
    torch.manual_seed(0)
    m = ViT.from_name("vit_cifar_patch4_32").eval()
    pm, names = prepare_qlora(m, rank=4, compute_dtype=torch.float32)
    assert len(names) == 24
    pm.to("cpu")
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    x = torch.randn(2, 3, 32, 32)
    pm.base_model.model.set_backend(attn="torch")
    with torch.no_grad():
        y = pm(x)
        merged = merge_qlora(pm).set_backend(attn="torch")
        y2 = merged(x)
    assert not any(hasattr(mod, "lora_A") for mod in merged.modules())
    assert (y - y2).abs().max() <= 1e-4 * y.abs().max()


def test_qlora_training_run(tmp_path):
    from qvit.train.trainer import TrainConfig, train
    from qvit.vit.checkpoint import load_model, read_state_dict
    common = dict(epochs=1, batch_size=64, limit_train=128, limit_test=100, warmup_epochs=0, eval_every=1,
                  progress=False, compile="off", model="vit_cifar_patch4_32")
    train(TrainConfig(out=str(tmp_path / "base"), **common), device="cpu")
    base_file = str(tmp_path / "base" / "model.safetensors")
    s = train(TrainConfig(out=str(tmp_path / "ql"), qlora_rank=4, lr=1e-3, amp="none", pretrained=base_file,
                          **common), device="cpu")
    q = s["qlora"]
    assert set(q) == {"before_merge", "merged_float", "merged_nf4", "merged_w4a8"}
    assert all(v["n"] == 100 for v in q.values())
    m = load_model(str(tmp_path / "ql" / "model.safetensors"))
    assert m.cfg.extra["qlora"]["rank"] == 4 and m.cfg.extra["qlora"]["layers"] == 24
    base, _ = read_state_dict(base_file)
    merged, _ = read_state_dict(str(tmp_path / "ql" / "model.safetensors"))
    assert torch.equal(merged["head.weight"], base["head.weight"])  # kept layer: untouched
    assert not torch.equal(merged["blocks.3.mlp.fc1.weight"], base["blocks.3.mlp.fc1.weight"])
    # resume: the adapters-only checkpoint loads back into a rebuilt NF4 base
    s2 = train(TrainConfig(out=str(tmp_path / "ql"), qlora_rank=4, lr=1e-3, amp="none", pretrained=base_file,
                           **common), resume=True, device="cpu")
    assert s2["test"]["n"] == 100
