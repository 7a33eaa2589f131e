"""Export -> load -> predict: same logits as the in-memory model (bit-exact on one backend), clear
per-file errors, refusal of corrupt or mismatched files."""
import copy
import json

import numpy as np
import pytest
import torch

from qvit.cli import main as cli
from qvit.vit.checkpoint import CheckpointError, save_model
from qvit.vit.deploy import Predictor, class_names, load_any
from qvit.vit.model import ViT
from qvit.vit.quantize import QuantConfig, quantize


@pytest.fixture
def float_file(tmp_path):
    torch.manual_seed(0)
    m = ViT.from_name("vit_cifar_patch4_32")
    m.cfg.extra = {"data": "cifar10", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    p = tmp_path / "float.safetensors"
    save_model(m, str(p))
    return m, p


@pytest.fixture
def images(tmp_path):
    from PIL import Image
    g = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(32, 32), (50, 70), (300, 200)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(g.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    return paths, str(bad)


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "w4a8p", "nf4"])
def test_export_load_predict_round_trip(tmp_path, float_file, images, preset, capsys):
    m, fpath = float_file
    out = tmp_path / f"{preset}.safetensors"
    assert cli(["export", "--model", str(fpath), "--preset", preset, "--out", str(out)]) == 0
    loaded = load_any(str(out))
    mem = quantize(copy.deepcopy(m).eval(), QuantConfig.preset(preset, keep_format="int8"))  # the CLI default
    p_file = Predictor(loaded, "cpu", linear="torch", attn="torch")
    p_mem = Predictor(mem, "cpu", linear="torch", attn="torch")
    paths, bad = images
    a, b = p_file(paths), p_mem(paths)
    for ra, rb in zip(a, b):
        assert torch.equal(ra.logits, rb.logits)  # bit-exact: same tensors, same backend
        # the reported top-5 is the top-5 of the softmax of the logits, with the model's class names
        prob = ra.logits.softmax(-1)
        top = prob.topk(5)
        assert [lb for lb, _ in ra.top] == [class_names(loaded)[i] for i in top.indices.tolist()]
        assert [p for _, p in ra.top] == pytest.approx(top.values.tolist(), abs=1e-6)
    # the command: every good file printed with its top-5, the bad one reported, exit 0
    capsys.readouterr()
    rc = cli(["predict", *paths, bad, "--model", str(out), "--backend", "torch", "--attn", "torch", "--json",
              "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0
    res = json.loads(cap.out)["predictions"]
    assert [r["image"] for r in res] == paths + [bad]
    assert all(len(r["top"]) == 5 for r in res[:3]) and "not a readable image" in res[3]["error"]
    assert "notes.txt: not a readable image" in cap.err
    for r, ref in zip(res[:3], a):
        assert r["top"][0]["label"] == ref.top[0][0] and r["top"][0]["p"] == pytest.approx(ref.top[0][1], abs=1e-5)


@pytest.mark.parametrize("preset", ["fp8s2t", "w4f8s2t"])
def test_export_calibrated_presets(tmp_path, float_file, images, preset):
    """The study's 8-bit / 4-bit rows from the command line: `--calib FOLDER` calibrates the static fp8 scales on
    that folder's images (resized as `qvit predict` resizes; the non-image file skipped), the file holds them, and
    it equals the in-memory model quantized with the same batch (bit-exact logits on one backend); w4f8s2t keeps
    its own group size (32). Without --calib, or with a folder of no images, the command says what is missing."""
    from qvit.vit.deploy import calibration_images
    m, fpath = float_file
    folder = tmp_path  # img0..2.png and notes.txt
    out = tmp_path / f"{preset}.safetensors"
    assert cli(["export", "--model", str(fpath), "--preset", preset, "--calib", str(folder), "--out", str(out)]) == 0
    calib = calibration_images(m, str(folder))
    assert calib.shape == (3, 3, 32, 32)
    mem = quantize(copy.deepcopy(m).eval(), QuantConfig.preset(preset, keep_format="int8"), calib=calib)
    loaded = load_any(str(out))
    assert float(loaded.blocks[1].mlp.fc2.x_static) == float(mem.blocks[1].mlp.fc2.x_static) > 0
    if preset == "w4f8s2t":
        assert loaded.blocks[1].mlp.fc1.group_size == 32
    paths, _ = images
    a = Predictor(loaded, "cpu", linear="torch", attn="torch")(paths)
    b = Predictor(mem, "cpu", linear="torch", attn="torch")(paths)
    assert all(torch.equal(ra.logits, rb.logits) for ra, rb in zip(a, b))
    with pytest.raises(SystemExit, match="pass --calib cifar10"):
        cli(["export", "--model", str(fpath), "--preset", preset, "--out", str(out)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="holds no image files"):
        cli(["export", "--model", str(fpath), "--preset", preset, "--calib", str(empty), "--out", str(out)])


def test_predict_all_bad_fails_and_refuses_non_models(tmp_path, float_file, images):
    _, fpath = float_file
    assert cli(["predict", images[1], "--model", str(fpath), "--device", "cpu"]) == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_any(str(junk))
    assert cli(["predict", images[0][0], "--model", str(junk), "--device", "cpu"]) == 2


def test_float_model_normalization_and_classes(float_file):
    m, fpath = float_file
    loaded = load_any(str(fpath))
    p = Predictor(loaded, "cpu")
    assert p.mean == (0.5, 0.5, 0.5) and p.classes[0] == "airplane" and p.crop_pct == 1.0
