"""Data, metrics, the trainer (resume, checkpoints, DDP on gloo, folder finetuning), the PTQ study and
the report, at tiny scale on the CPU with the real CIFAR-10 shards."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from qvit.train.data import DataError, DeviceLoader, find_cifar10, load_cifar10, load_image_u8, scan_folder
from qvit.train.metrics import Counts
from qvit.vit.checkpoint import CheckpointError


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    os.environ["QVIT_CACHE"] = str(tmp_path_factory.mktemp("qvit-cache"))


@pytest.fixture(scope="session")
def cifar_test():
    return load_cifar10("test")


def test_cifar10_test_split(cifar_test):
    x, y = cifar_test
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1000] * 10
    m = x.float().div(255).mean(dim=(0, 2, 3))
    torch.testing.assert_close(m, torch.tensor([0.4941, 0.4851, 0.4504]), atol=2e-4, rtol=0)  # README's values


def test_cifar10_cache_round_trip(cifar_test):
    x2, y2 = load_cifar10("test")  # second call reads the cache
    assert torch.equal(x2, cifar_test[0]) and torch.equal(y2, cifar_test[1])


def test_cifar10_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        find_cifar10(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "test.tar.gz").write_bytes(b"this is not a tar file")
    with pytest.raises(DataError, match="test.tar.gz: not a readable tar shard"):
        load_cifar10("test", str(bad), cache=False)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_cifar10("val")


def test_device_loader_shards_cover_each_index_once():
    n, bs, world = 103, 8, 2
    x = torch.arange(n).view(n, 1, 1, 1).to(torch.uint8)
    y = torch.arange(n)
    seen = []
    for rank in range(world):
        dl = DeviceLoader(x, y, bs, shuffle=True, drop_last=True, seed=3, rank=rank, world=world)
        dl.set_epoch(4)
        for xb, yb in dl:
            assert xb.shape[0] == bs // world
            seen += yb.tolist()
    assert len(seen) == len(set(seen)) == (n // bs) * bs
    dl = DeviceLoader(x, y, bs, shuffle=True, drop_last=True, seed=3)
    order = lambda e: (dl.set_epoch(e), torch.cat([b for _, b in dl]))[1]  # noqa: E731
    assert not torch.equal(order(0), order(1)) and torch.equal(order(1), order(1))
    ev = DeviceLoader(x, y, bs, shuffle=False, drop_last=False)
    assert torch.equal(torch.cat([b for _, b in ev]), y)
    with pytest.raises(ValueError, match="not divisible by the world size"):
        DeviceLoader(x, y, 7, True, True, world=2)


def test_counts_match_plain_definitions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g)
    y = torch.randint(0, 7, (500,), generator=g)
    c = Counts(7)
    c.update(logits[:200], y[:200])
    c.update(logits[200:], y[200:])
    r = c.result()
    pred = logits.argmax(1)
    assert r["top1"] == pytest.approx(100 * (pred == y).float().mean().item())
    top5 = logits.topk(5, 1).indices
    assert r["top5"] == pytest.approx(100 * (top5 == y[:, None]).any(1).float().mean().item())
    f1s = []
    for k in range(7):
        tp = ((pred == k) & (y == k)).sum().item()
        fp = ((pred == k) & (y != k)).sum().item()
        fn = ((pred != k) & (y == k)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert r["macro_f1"] == pytest.approx(100 * np.mean(f1s))
    with pytest.raises(ValueError, match="logits must be"):
        c.update(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))


def _tiny(out, **kw):
    from qvit.train.trainer import TrainConfig
    base = dict(model="vit_micro_patch4_32", epochs=2, batch_size=64, limit_train=256, limit_test=200,
                warmup_epochs=1, eval_every=1, out=str(out), progress=False, compile="off", ema_decay=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_artifacts(tmp_path):
    from qvit.train.trainer import train
    from qvit.vit.checkpoint import load_model
    s = train(_tiny(tmp_path / "run"), device="cpu")
    assert s["steps"] == 8 and s["test"]["n"] == 200
    for f in ("model.safetensors", "last.pt", "summary.json", "metrics.jsonl"):
        assert (tmp_path / "run" / f).is_file(), f
    m = load_model(str(tmp_path / "run" / "model.safetensors"))
    assert m.cfg.num_classes == 10 and m.cfg.extra["test"]["top1"] == s["test"]["top1"]
    hist = [json.loads(ln) for ln in open(tmp_path / "run" / "metrics.jsonl")]
    assert [h["epoch"] for h in hist if "epoch" in h] == [1, 2]
    from qvit.train.trainer import resolve_amp
    assert s["config"]["amp"] == resolve_amp("auto", torch.device("cpu"))  # recorded resolved, never "auto"


def test_amp_auto_follows_the_device(monkeypatch):
    """amp=auto: bf16 on CUDA and on a CPU with native bf16 (AVX512-BF16 or AMX), none on other CPUs (emulated
    bf16 matmuls: 6.3x slower than float32 on an AVX2 CPU); explicit settings kept; anything else refused by name."""
    from qvit.train.trainer import resolve_amp
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for bf16, amx, want in ((False, False, "none"), (True, False, "bf16"), (False, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert resolve_amp("auto", cpu) == want
        assert resolve_amp("auto", cuda) == "bf16"
    for amp in ("bf16", "fp16", "none"):
        assert resolve_amp(amp, cpu) == resolve_amp(amp, cuda) == amp
    with pytest.raises(ValueError, match="amp='bfloat16': expected auto, bf16, fp16 or none"):
        resolve_amp("bfloat16", cpu)


def test_resume_after_interruption_is_exact(tmp_path):
    """Stopping after epoch 1 and resuming gives bit-for-bit the weights (and EMA weights) of an
    uninterrupted run; the saved model is the EMA."""
    from qvit.train.trainer import load_checkpoint, train
    from qvit.vit.checkpoint import read_state_dict
    full = train(_tiny(tmp_path / "a", epochs=3, ema_decay=0.9), device="cpu")
    train(_tiny(tmp_path / "b", epochs=3, max_steps=4, ema_decay=0.9), device="cpu")  # "killed" after epoch 1
    assert load_checkpoint(str(tmp_path / "b" / "last.pt"))["epoch"] == 1
    resumed = train(_tiny(tmp_path / "b", epochs=3, ema_decay=0.9), resume=True, device="cpu")
    assert resumed["steps"] == full["steps"] == 12
    ca, cb = load_checkpoint(str(tmp_path / "a" / "last.pt")), load_checkpoint(str(tmp_path / "b" / "last.pt"))
    for part in ("model", "ema"):
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), (part, k)
    assert resumed["test"] == full["test"]
    saved, _ = read_state_dict(str(tmp_path / "a" / "model.safetensors"))
    assert torch.equal(saved["pos_embed"], ca["ema"]["pos_embed"])
    assert not torch.equal(ca["ema"]["pos_embed"], ca["model"]["pos_embed"])


def test_resume_refuses_other_options_and_corrupt_files(tmp_path):
    from qvit.train.trainer import train
    train(_tiny(tmp_path / "r", epochs=1), device="cpu")
    with pytest.raises(CheckpointError, match="lr="):
        train(_tiny(tmp_path / "r", epochs=1, lr=5e-4), resume=True, device="cpu")
    p = tmp_path / "r" / "last.pt"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="last.pt: not a readable training checkpoint"):
        train(_tiny(tmp_path / "r", epochs=1), resume=True, device="cpu")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint untouched and no temporary file."""
    from qvit.train import trainer
    train_dir = tmp_path / "c"
    trainer.train(_tiny(train_dir, epochs=1), device="cpu")
    before = (train_dir / "last.pt").read_bytes()

    def boom(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    m = torch.nn.Linear(2, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(str(train_dir / "last.pt"), m, torch.optim.SGD(m.parameters(), 0.1), 1, 1,
                                _tiny(train_dir))
    assert (train_dir / "last.pt").read_bytes() == before
    assert not [f for f in os.listdir(train_dir) if f.startswith(".tmp-")]


def _write_folder(root, n_per_class=6, corrupt=False):
    from PIL import Image
    g = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                h, w = int(g.integers(20, 60)), int(g.integers(20, 60))
                Image.fromarray(g.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def test_folder_finetune_from_checkpoint(tmp_path):
    from qvit.train.trainer import train
    from qvit.vit.checkpoint import load_model
    base = train(_tiny(tmp_path / "base", epochs=1), device="cpu")
    assert base["steps"] == 4
    _write_folder(tmp_path / "imgs")
    s = train(_tiny(tmp_path / "ft", data=f"folder:{tmp_path / 'imgs'}", batch_size=4, limit_train=None,
                    limit_test=None, pretrained=str(tmp_path / "base" / "model.safetensors")), device="cpu")
    assert s["test"]["n"] == 12 and s["steps"] == 6
    m = load_model(str(tmp_path / "ft" / "model.safetensors"))
    assert m.cfg.num_classes == 2 and m.cfg.extra["classes"] == ["cat", "dog"]
    # the backbone started from the checkpoint (not from a fresh init): pos_embed moved only a little
    b0 = load_model(str(tmp_path / "base" / "model.safetensors")).pos_embed
    assert (m.pos_embed - b0).abs().max() < 0.05


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such image folder"):
        scan_folder(str(tmp_path / "missing"))
    _write_folder(tmp_path / "imgs", corrupt=True)
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        load_image_u8(str(tmp_path / "imgs" / "train" / "cat" / "broken.jpg"), 32)
    x = load_image_u8(str(tmp_path / "imgs" / "train" / "cat" / "0.png"), 32, crop_pct=0.875)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo): trains, evaluates over both shards, rank 0 writes the model."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m",
           "qvit.cli", "train", "--model", "vit_micro_patch4_32", "--epochs", "1", "--batch-size", "64",
           "--limit-train", "256", "--limit-test", "200", "--compile", "off", "--no-progress", "--device", "cpu",
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(open(out / "summary.json").read())
    assert s["world"] == 2 and s["steps"] == 4 and s["test"]["n"] == 200  # both ranks' halves counted once


def test_study_and_report_on_cpu(tmp_path):
    from qvit.train.report import render, write
    from qvit.train.study import study
    from qvit.train.trainer import train
    run = tmp_path / "run"
    train(_tiny(run / "train", model="vit_cifar_patch4_32", epochs=1, limit_train=128, limit_test=100), device="cpu")
    r = study(str(run / "train" / "model.safetensors"), str(run / "study"), device="cpu", limit_test=100,
              variants=["1 bf16", "3 8bit+qvit-attn", "2 4bit+qvit-attn"], ablation=True)
    v = r["variants"]
    assert set(v) == {"1 bf16", "3 8bit+qvit-attn", "2 4bit+qvit-attn"} and r["linear_backend"] == "torch"
    assert v["2 4bit+qvit-attn"]["weight_bytes"] < v["3 8bit+qvit-attn"]["weight_bytes"] < v["1 bf16"]["weight_bytes"]
    assert "block7" in r["ablation"]["top1"] and "all linears (no protection)" in r["ablation"]["drop"]
    md = render(str(run))
    assert "| 3 8bit+qvit-attn | fp8s2t | int8 |" in md and "Layerwise sensitivity" in md
    assert os.path.isfile(write(str(run)))
    shutil.rmtree(run)


def test_compare_tiny_protocol(tmp_path):
    """`qvit compare` on a CPU: the stages run at toy scale, RESULTS.md holds the five variants, a stage
    whose artifact exists is skipped on a second call."""
    from qvit.train.compare import run
    out = tmp_path / "cmp"
    path = run(str(out), stages=("train", "study", "e2e", "report"), device="cpu")
    md = open(path).read()
    assert "Tiny CPU run" in md
    for k in ("1 bf16", "2 4bit+qvit-attn", "3 8bit+qvit-attn", "4 4bit+sdpa-noflash", "5 8bit+sdpa-noflash"):
        assert f"| {k} |" in md
    mtime = os.path.getmtime(out / "train" / "model.safetensors")
    run(str(out), stages=("train", "report"), device="cpu")
    assert os.path.getmtime(out / "train" / "model.safetensors") == mtime


def test_folder_finetune_from_timm_checkpoint(tmp_path):
    """ViT finetuning from a timm checkpoint (torch file, timm key names) on an ImageNet-style folder at
    another resolution: position embeddings resampled, the 1000-class head replaced by a 2-class one."""
    timm = pytest.importorskip("timm")
    from qvit.train.trainer import TrainConfig, train
    from qvit.vit.checkpoint import load_model
    t = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(t.state_dict(), tmp_path / "timm_vit_tiny.pth")
    _write_folder(tmp_path / "imgs")
    s = train(TrainConfig(model="vit_tiny_patch16_224", data=f"folder:{tmp_path / 'imgs'}", img_size=64, epochs=1,
                          batch_size=4, warmup_epochs=0, lr=1e-5, eval_every=1, progress=False, compile="off",
                          pretrained=str(tmp_path / "timm_vit_tiny.pth"), out=str(tmp_path / "ft")), device="cpu")
    assert s["test"]["n"] == 12
    m = load_model(str(tmp_path / "ft" / "model.safetensors"))
    assert m.cfg.img_size == 64 and m.cfg.num_classes == 2 and m.pos_embed.shape == (1, 17, 192)
    # the blocks came from the timm weights (lr 1e-5 for 3 steps moves them by ~1e-4 at most)
    w = t.state_dict()["blocks.5.mlp.fc1.weight"]
    assert (m.blocks[5].mlp.fc1.weight - w).abs().max() < 1e-3


def test_sensitivity_only_runs_the_named_rows(monkeypatch):
    """`--ablation-rows`: only the rows whose label starts with a given prefix are evaluated (plus the float
    reference), each with its own layer selection."""
    from qvit.train import study as st
    built = []

    def fake_build(base, preset, attn, int8_qk, device, keep_format="float", keep=None, filter_fn=None):
        names = ["head", "blocks.0.attn.qkv", "blocks.1.mlp.fc2", "blocks.2.attn.proj"]
        built.append(None if filter_fn is None else [n for n in names if filter_fn(n, torch.nn.Linear(1, 1), ())])
        return len(built)

    monkeypatch.setattr(st, "build_variant", fake_build)
    monkeypatch.setattr(st, "run_eval", lambda m, loader, aug: {"top1": 90.0 - m})
    r = st.sensitivity(None, None, None, "cpu", 3, "w4a8", only=["head", "default protection"])
    assert list(r["top1"]) == ["float", "head", "default protection (blocks 0, -1, head float)"]
    assert built == [None, ["head"], ["blocks.1.mlp.fc2"]]
    assert r["drop"]["head"] == r["top1"]["float"] - r["top1"]["head"]


def test_results_from_a_later_study_file(tmp_path):
    """`qvit compare --stages report --study FILE`: the table's accuracy comes from FILE (a later study of the
    same model, in another folder), the source line names it, and the run folder's ablation is kept."""
    import json

    from qvit.train.compare import write_results
    out = tmp_path / "run"
    (out / "study").mkdir(parents=True)
    row = {"n": 10, "top5": 99.0, "macro_f1": 80.0}
    json.dump({"variants": {"1 bf16": {**row, "top1": 91.0}, "2 4bit+qvit-attn": {**row, "top1": 90.5}}},
              open(out / "study" / "study_ptq.json", "w"))
    json.dump({"preset": "w4a8", "top1": {"float": 91.0, "head": 90.9}, "drop": {"float": 0.0, "head": 0.1}},
              open(out / "study" / "ablation_from_log.json", "w"))
    later = tmp_path / "later" / "study_ptq.json"
    later.parent.mkdir()
    json.dump({"n_test": 10, "variants": {"1 bf16": {**row, "top1": 91.0}, "2 4bit+qvit-attn": {**row, "top1": 90.25}}},
              open(later, "w"))
    md = open(write_results(str(out), False, study_file=str(later))).read()
    assert "| 2 4bit+qvit-attn | 90.25 |" in md and "90.50" not in md
    assert "../later/study_ptq.json" in md
    assert "| head | 90.90 | +0.10 |" in md


def test_qat_recovery_lines_follow_the_preset_not_the_row_name(tmp_path):
    """RESULTS.md's recovery lines list the QAT model's study rows that ran the preset it was finetuned for,
    whatever that study named them: a session-8 QAT (w4a8) was evaluated on rows then called "2 4bit+..." /
    "4 4bit+...", names the fp8 rows carry now; rows of another preset and the extra rows' variations are not
    QAT results."""
    import json

    from qvit.train.compare import write_results
    out = tmp_path / "run"
    (out / "study").mkdir(parents=True)
    (out / "qat-w4a8" / "study").mkdir(parents=True)
    row = {"n": 10, "top5": 99.0, "macro_f1": 80.0}
    json.dump({"variants": {"1 bf16": {**row, "top1": 91.0}}}, open(out / "study" / "study_ptq.json", "w"))
    json.dump({"config": {"qat": "w4a8", "epochs": 8}}, open(out / "qat-w4a8" / "summary.json", "w"))
    json.dump({"variants": {"1 bf16": {**row, "top1": 90.0, "preset": None},
                            "2 4bit+qvit-attn": {**row, "top1": 90.77, "preset": "w4a8", "attn": "qvit",
                                                 "int8_qk": True},
                            "3 8bit+qvit-attn": {**row, "top1": 90.9, "preset": "w8a8", "attn": "qvit"},
                            "x 4bit+qvit-attn, kept float": {**row, "top1": 90.8, "preset": "w4a8", "attn": "qvit"}}},
              open(out / "qat-w4a8" / "study" / "study_ptq.json", "w"))
    md = open(write_results(str(out), False)).read()
    lines = [ln for ln in md.splitlines() if ln.startswith("- QAT")]
    assert lines == ["- QAT w4a8 (8 epochs) then w4a8 linears, qvit attention, int8 Q/K (its study's row "
                     "'2 4bit+qvit-attn'): top-1 90.77 (-0.23 vs bf16 baseline)"], lines


def test_results_from_several_e2e_files(tmp_path):
    """`qvit compare --stages report --e2e A --e2e B`: for each variant and batch size the last file that measured
    it wins (B's batch 1 and 64 over A's batch 1; A's batch 256 kept), every ratio is against its own run's
    baseline (A's timm for batch 256, not B's), the size fields come from the run of the row's largest batch,
    and the source line says which batches each file gave."""
    import json

    from qvit.train.compare import write_results
    out = tmp_path / "run"
    (out / "study").mkdir(parents=True)
    row = {"n": 10, "top5": 99.0, "macro_f1": 80.0}
    json.dump({"variants": {"1 bf16": {**row, "top1": 91.0}, "3 8bit+qvit-attn": {**row, "top1": 90.5}}},
              open(out / "study" / "study_ptq.json", "w"))

    def b1(ms):
        return {"graphed_ms": {"mean": ms, "p50": ms, "p95": ms, "p99": ms}, "eager_ms": {"p50": 9.0}}

    def e2e(name, rows, batches):
        p = tmp_path / name / "bench_e2e.json"
        p.parent.mkdir()
        json.dump({"model": "vit_large_patch16_224", "batches": batches, "env": {"card": "H200"}, "rows": rows},
                  open(p, "w"))
        return str(p)

    a = e2e("a", [{"variant": "timm bf16 (sdpa)", "batch1": b1(1.4), "batch256": {"img_per_s": 1000.0},
                   "weight_bytes": 2 ** 20},
                  {"variant": "3 8bit+qvit-attn", "batch1": b1(1.0), "batch256": {"img_per_s": 1700.0},
                   "weight_bytes": 2 ** 20, "disk_bytes": 3 * 2 ** 20, "peak_mem_bytes": 2 * 2 ** 30}], [1, 256])
    b = e2e("b", [{"variant": "timm bf16 (sdpa)", "batch1": b1(1.3), "batch64": {"img_per_s": 2000.0},
                   "weight_bytes": 2 ** 20},
                  {"variant": "3 8bit+qvit-attn", "batch1": b1(0.9), "batch64": {"img_per_s": 3600.0},
                   "weight_bytes": 2 ** 20, "disk_bytes": 5 * 2 ** 20, "peak_mem_bytes": 2 ** 30}], [1, 64])
    md = open(write_results(str(out), False, e2e_file=[a, b])).read()
    line = next(ln for ln in md.splitlines() if ln.startswith("| 3 8bit+qvit-attn |"))
    assert "| 0.900 | 0.900 | 0.900 | 0.900 | 3600 | 1700 | 1.70x | 3.0 | 2.00 |" in line, line
    assert "../a/bench_e2e.json (b256)" in md and "../b/bench_e2e.json (b1, b64)" in md
