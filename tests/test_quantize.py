"""quantize(): module swap, layer policy, safetensors round trip, refusal of bad files."""
import copy
import json

import pytest
import torch

from qvit.vit import (CheckpointError, Fp8Linear, Int4Linear, Int4ProgLinear, Int8Linear, NF4Linear, QuantConfig, ViT,
                      load_quantized, quantize, save_quantized, weight_bytes)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return ViT.from_name("vit_small_patch4_32", depth=4).eval()


def _logits(m, x):
    with torch.no_grad():
        return m.set_backend(linear="torch", attn="torch")(x)


@pytest.mark.parametrize("preset,cls", [("w8a8", Int8Linear), ("w4a8", Int4Linear), ("w4a16", Int4Linear),
                                        ("nf4", NF4Linear), ("fp8", Fp8Linear), ("w4a8p", Int4ProgLinear)])
def test_presets_swap_and_round_trip(tmp_path, base, preset, cls):
    x = torch.randn(2, 3, 32, 32)
    ref = _logits(base, x)
    m = quantize(copy.deepcopy(base), QuantConfig.preset(preset, group_size=64))
    # policy: head and first/last blocks stay float, the middle blocks are swapped
    assert isinstance(m.head, torch.nn.Linear)
    assert isinstance(m.blocks[0].attn.qkv, torch.nn.Linear) and isinstance(m.blocks[3].mlp.fc2, torch.nn.Linear)
    assert isinstance(m.blocks[1].attn.qkv, cls) and isinstance(m.blocks[2].mlp.fc1, cls)
    y = _logits(m, x)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), 0)
    # fp8 e4m3 keeps 3 mantissa bits: its rms rounding error is ~2.6x int8's per-token step/sqrt(12) for
    # typical values (|x| ~ amax / 3), so 1 - cos (quadratic in the error) is ~7x int8's: 0.998
    assert cos > {"w8a8": 0.999, "fp8": 0.998}.get(preset, 0.98), float(cos)
    path = tmp_path / f"{preset}.safetensors"
    save_quantized(m, str(path))
    m2 = load_quantized(str(path))
    assert torch.equal(_logits(m2, x), y)  # bit-exact on the same backend
    assert weight_bytes(m2) == weight_bytes(m)


def test_keep_format_int8_and_size(base):
    m = quantize(copy.deepcopy(base), QuantConfig.preset("w4a8", group_size=64, keep_format="int8"))
    assert isinstance(m.head, Int8Linear) and isinstance(m.blocks[0].mlp.fc1, Int8Linear)
    all4 = quantize(copy.deepcopy(base), QuantConfig.preset("w4a8", group_size=64, keep=()))
    assert isinstance(all4.blocks[0].attn.qkv, Int4Linear)
    assert weight_bytes(all4) < weight_bytes(m) < weight_bytes(base)


def test_bad_configs():
    with pytest.raises(ValueError, match="weight must be one of"):
        QuantConfig(weight="int3")
    with pytest.raises(ValueError, match="symmetric"):
        QuantConfig(weight="int4", act="int8", symmetric=False)
    with pytest.raises(ValueError, match="unknown quantization preset"):
        QuantConfig.preset("w2a2")


def test_load_refuses_bad_files(tmp_path, base):
    m = quantize(copy.deepcopy(base), QuantConfig.preset("w8a8"))
    good = tmp_path / "m.safetensors"
    save_quantized(m, str(good))
    raw = good.read_bytes()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        load_quantized(str(corrupt))
    # a wrong format version is refused by name
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        sd = {k: f.get_tensor(k) for k in f.keys()}
    save_file(sd, str(tmp_path / "v9.safetensors"), metadata={**meta, "qvit_format": "9"})
    with pytest.raises(CheckpointError, match="format version"):
        load_quantized(str(tmp_path / "v9.safetensors"))
    # a tensor whose shape disagrees with the recorded layers
    layers = json.loads(meta["layers"])
    name = next(iter(layers))
    sd2 = dict(sd)
    sd2[f"{name}.wq"] = sd2[f"{name}.wq"][:, :-8].contiguous()
    save_file(sd2, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="expected"):
        load_quantized(str(tmp_path / "shape.safetensors"))


def test_half_keeps_quantized_formats(base):
    m = quantize(copy.deepcopy(base), QuantConfig.preset("w8a8")).half()
    q = m.blocks[1].attn.qkv
    assert q.wq.dtype == torch.int8 and q.w_scale.dtype == torch.float32 and q.bias.dtype == torch.float32
    assert m.blocks[0].attn.qkv.weight.dtype == torch.float16  # float layers do follow .half()


def test_int8_attention_smoothing_saved_and_old_files_keep_it(tmp_path, base):
    """QuantConfig.smooth_k reaches every attention module and survives save/load; a file written before the
    option existed (no smooth_k in its quant metadata) loads with K smoothing on, as it was made."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from qvit.vit.model import Attention
    for smooth in (False, True):
        m = quantize(copy.deepcopy(base), QuantConfig.preset("w8a8", int8_attention=True, smooth_k=smooth))
        assert all(a.int8_qk and a.smooth_k == smooth for a in m.modules() if isinstance(a, Attention))
        p = tmp_path / f"m{smooth}.safetensors"
        save_quantized(m, str(p))
        back = load_quantized(str(p))
        assert all(a.smooth_k == smooth for a in back.modules() if isinstance(a, Attention))
    with safe_open(str(tmp_path / "mFalse.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        sd = {k: f.get_tensor(k) for k in f.keys()}
    q = json.loads(meta["quant"])
    del q["smooth_k"]
    save_file(sd, str(tmp_path / "old.safetensors"), metadata={**meta, "quant": json.dumps(q)})
    old = load_quantized(str(tmp_path / "old.safetensors"))
    assert all(a.smooth_k for a in old.modules() if isinstance(a, Attention))


@pytest.mark.parametrize("preset", ["w8a8g", "w4a8pg"])
def test_fc1_quantizing_epilogue_feeds_fc2(base, preset):
    """act_group: each W8A8-family fc1 hands fc2 int8 codes with per-token, per-group scales (no float
    round trip), on the reference backend here: logits as close to float as the per-token path's, the
    fused path taken in every quantized block (not in the float-kept ones), saved and loaded with the file."""
    from qvit.vit.model import Mlp
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    f = _logits(base, x)
    plain = _logits(quantize(copy.deepcopy(base), QuantConfig.preset(preset.rstrip("g"))), x)
    m = quantize(copy.deepcopy(base), QuantConfig.preset(preset))
    calls = []
    for mlp in (mm for mm in m.modules() if isinstance(mm, Mlp)):
        if getattr(mlp.fc1, "out_group", 0):
            real = mlp.fc1.forward_quant
            mlp.fc1.forward_quant = lambda *a, real=real, **k: calls.append(1) or real(*a, **k)
    g = _logits(m, x)
    assert len(calls) == 2  # depth 4: blocks 1 and 2 quantized, 0 and 3 kept in float
    err = lambda y: float((y - f).norm() / f.norm())  # noqa: E731
    assert err(g) <= 1.5 * err(plain) + 1e-3, (err(g), err(plain))
    assert not torch.equal(g, plain)  # the path differs (group scales, no bf16 rounding between fc1 and fc2)


def test_act_group_saved_and_validated(tmp_path, base):
    from qvit.vit.model import Mlp
    m = quantize(copy.deepcopy(base), QuantConfig.preset("w8a8g", keep_format="int8"))
    save_quantized(m, str(tmp_path / "g.safetensors"))
    back = load_quantized(str(tmp_path / "g.safetensors"))
    assert back.quant_config.act_group == 128
    assert all(mm.fc1.out_group == 128 for mm in back.modules() if isinstance(mm, Mlp))
    with pytest.raises(ValueError, match="act_group"):
        QuantConfig.preset("w8a8", act_group=100)
    # formats without a group-scaled int8 input never fuse (W4A16 weights, FP8 activations: Fp8Linear is an
    # Int8Linear subclass, so this checks the activation-format test); the W8A8 kept blocks do
    for p in ("w4a16", "fp8"):
        q = quantize(copy.deepcopy(base), QuantConfig.preset(p, act_group=128, keep_format="int8"))
        groups = {type(mm.fc1).__name__: getattr(mm.fc1, "out_group", 0) for mm in q.modules() if isinstance(mm, Mlp)}
        assert groups == {"Int8Linear": 128, {"w4a16": "Int4Linear", "fp8": "Fp8Linear"}[p]: 0}, (p, groups)


def test_fp8_static_mlp_calibrated_saved_and_refused_without_images(tmp_path, base):
    """fp8s: every quantized fc2 gets one static input scale = max |fc2 input| over the calibration images /
    448 (measured here with a hook on the float model), saved and loaded with the file; without images
    quantize() refuses by name; an fp8 option on another format is refused."""
    from qvit.vit.quantize import calibrate_inputs
    torch.manual_seed(1)
    images = torch.randn(16, 3, 32, 32)
    with pytest.raises(ValueError, match="mlp.fc2: static input scales are calibrated"):
        quantize(copy.deepcopy(base), QuantConfig.preset("fp8s"))
    with pytest.raises(ValueError, match="fp8 option"):
        QuantConfig.preset("w8a8", fp8_static_mlp=True)
    with pytest.raises(ValueError, match="normalized float tensor"):
        quantize(copy.deepcopy(base), QuantConfig.preset("fp8s"), calib=torch.zeros(2, 3, 32, dtype=torch.uint8))
    amax = calibrate_inputs(copy.deepcopy(base), images)
    seen = {}
    hooks = [b.mlp.fc2.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, float(i[0].abs().max())))
             for k, b in enumerate(base.blocks)]
    with torch.no_grad():
        base(images)
    for h in hooks:
        h.remove()
    assert amax == pytest.approx({f"blocks.{k}.mlp.fc2": v for k, v in seen.items()}, rel=1e-6)
    m = quantize(copy.deepcopy(base), QuantConfig.preset("fp8s"), calib=images)
    for k in (1, 2):  # the quantized middle blocks; blocks 0 and 3 and the head stay float
        fc2 = m.blocks[k].mlp.fc2
        assert isinstance(fc2, Fp8Linear) and float(fc2.x_static) == pytest.approx(amax[f"blocks.{k}.mlp.fc2"] / 448)
        assert m.blocks[k].mlp.fc1.x_static is None and m.blocks[k].attn.qkv.x_static is None
    path = tmp_path / "fp8s.safetensors"
    save_quantized(m, str(path))
    back = load_quantized(str(path))
    assert back.quant_config.fp8_static_mlp
    assert float(back.blocks[2].mlp.fc2.x_static) == float(m.blocks[2].mlp.fc2.x_static)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(back, x), _logits(m, x))


def test_fp8_static_mlp_accuracy_and_fused_path(monkeypatch, base):
    """The model with static fc2 scales stays as close to the float model as per-token fp8 (a per-tensor
    scale calibrated on the same distribution); at inference fc1 hands fc2 its fp8 output directly
    (`forward_fp8_static`), and that equals fc1 -> bf16/fp32 -> static quantization of fc2's input."""
    from qvit.vit.quantize import Fp8Linear as F
    torch.manual_seed(2)
    images = torch.randn(32, 3, 32, 32)
    x = torch.randn(4, 3, 32, 32)
    ref = _logits(base, x)
    dyn = _logits(quantize(copy.deepcopy(base), QuantConfig.preset("fp8")), x)
    m = quantize(copy.deepcopy(base), QuantConfig.preset("fp8s"), calib=images)
    calls = []
    real = F.forward_fp8_static
    monkeypatch.setattr(F, "forward_fp8_static", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    fused = _logits(m, x)
    assert len(calls) == 2  # blocks 1 and 2
    with torch.enable_grad():  # the unfused path: fc1 -> float -> fc2's static quantization
        unfused = m(x).detach()
    assert len(calls) == 2
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(fused, unfused) < 1e-5  # fp32 on the reference backend: the same codes, the same sums
    assert rel(fused, ref) <= 1.5 * rel(dyn, ref) + 1e-3, (rel(fused, ref), rel(dyn, ref))


def test_gelu_tanh_in_the_static_mlps(monkeypatch, tmp_path, base):
    """QuantConfig.gelu_tanh (preset fp8s2t): the MLPs whose fc1 writes fc2's static fp8 input run GELU's tanh
    form, fused (`forward_fp8_static(..., gelu_tanh=True)`) and unfused (under grad: fc1 -> torch's tanh GELU ->
    fc2's static quantization) alike; the kept blocks keep the erf form; the choice survives save/load; it is
    refused without fp8_static_mlp; and the model is no further from the float one than fp8s2 (the two forms
    are <= 4.8e-4 apart, under the e4m3 rounding)."""
    from qvit.vit.model import Mlp
    from qvit.vit.quantize import Fp8Linear as F
    with pytest.raises(ValueError, match="gelu_tanh .* needs fp8_static_mlp"):
        QuantConfig.preset("fp8", gelu_tanh=True)
    torch.manual_seed(4)
    images, x = torch.randn(32, 3, 32, 32), torch.randn(4, 3, 32, 32)
    m = quantize(copy.deepcopy(base), QuantConfig.preset("fp8s2t"), calib=images)
    forms = [b.mlp.act.approximate for b in m.blocks]
    assert forms == ["none", "tanh", "tanh", "none"], forms  # blocks 0 and 3 are kept
    calls = []
    real = F.forward_fp8_static
    monkeypatch.setattr(F, "forward_fp8_static", lambda self, *a, **k: calls.append(k["gelu_tanh"]) or real(self, *a, **k))
    fused = _logits(m, x)
    assert calls == [True, True]
    with torch.enable_grad():
        unfused = m(x).detach()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(fused, unfused) < 1e-5
    erf = _logits(quantize(copy.deepcopy(base), QuantConfig.preset("fp8s2"), calib=images), x)
    assert 0 < rel(fused, erf)  # a different GELU: not the erf model's logits
    ref = _logits(base, x)
    assert rel(fused, ref) <= 1.5 * rel(erf, ref) + 1e-3, (rel(fused, ref), rel(erf, ref))
    path = tmp_path / "fp8s2t.safetensors"
    save_quantized(m, str(path))
    back = load_quantized(str(path))
    assert [b.mlp.act.approximate for b in back.blocks] == forms
    assert torch.equal(_logits(back, x), fused)
    assert all(isinstance(mm, Mlp) for mm in (b.mlp for b in m.blocks))


def test_w4f8_four_bit_on_the_fp8_gemm(tmp_path, base):
    """w4f8s2t: the quantized blocks' linears hold 4-bit weights with power-of-two group scales (Fp8W4Linear,
    ~4.25 bits per weight at group 32) and run fp8s2t's path on the exact e4m3 expansion: the same logits as
    an fp8s2t model whose float weights were first put on that grid; the file is about 4x smaller than bf16 for
    those layers, survives save/load, and a file with an exponent outside the format is refused; an int4 + fp8
    config that is not symmetric and power-of-two is refused."""
    from qvit.kernels import quant as Q
    from qvit.vit.quantize import Fp8W4Linear
    with pytest.raises(ValueError, match="power-of-two group scales"):
        QuantConfig.preset("w4f8s2t", progressive=True)
    with pytest.raises(ValueError, match="weight must be 'fp8' or 'int4'"):
        QuantConfig(weight="int8", act="fp8")
    torch.manual_seed(6)
    images, x = torch.randn(32, 3, 32, 32), torch.randn(4, 3, 32, 32)
    m = quantize(copy.deepcopy(base), QuantConfig.preset("w4f8s2t", keep_format="int8"), calib=images)
    lin = m.blocks[1].mlp.fc1
    assert isinstance(lin, Fp8W4Linear) and lin.x_static is None and m.blocks[1].mlp.fc2.x_static is not None
    assert isinstance(m.blocks[0].mlp.fc1, Int8Linear) and not isinstance(m.blocks[0].mlp.fc1, Fp8W4Linear)
    assert (lin.packed.numel() + lin.gexp.numel()) * 8 / (lin.in_features * lin.out_features) == 4.25
    # the same model from float weights put on the grid, run as plain fp8s2t
    grid = copy.deepcopy(base)
    for i in (1, 2):
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            src = m.get_submodule(f"blocks.{i}.{name}")
            with torch.no_grad():
                grid.get_submodule(f"blocks.{i}.{name}").weight.copy_(
                    Q.expand_int4_pow2(src.packed, src.gexp, 32).float() * src.w_scale[:, None])
    ref = quantize(grid, QuantConfig.preset("fp8s2t", keep_format="int8"), calib=images)
    for i in (1, 2):  # the static input scales as calibrated on the original float model
        for name in ("attn.proj", "mlp.fc2"):
            ref.get_submodule(f"blocks.{i}.{name}").x_static.copy_(m.get_submodule(f"blocks.{i}.{name}").x_static)
    y = _logits(m, x)
    assert float((y - _logits(ref, x)).norm() / y.norm()) < 1e-5
    path = tmp_path / "w4f8.safetensors"
    save_quantized(m, str(path))
    back = load_quantized(str(path))
    assert torch.equal(_logits(back, x), y)
    m.blocks[1].mlp.fc1.gexp[0, 0] = Q.POW2_EXP_MAX + 1
    save_quantized(m, str(path))
    with pytest.raises(CheckpointError, match="group exponent 10"):
        load_quantized(str(path))


def test_fp8_static_proj_calibrated(base):
    """fp8s2 also calibrates every quantized proj's input scale (max |proj input| / 448) and keeps fc2's."""
    from qvit.vit.quantize import calibrate_inputs
    torch.manual_seed(3)
    images = torch.randn(8, 3, 32, 32)
    amax = calibrate_inputs(copy.deepcopy(base), images, ("mlp.fc2", "attn.proj"))
    assert set(amax) == {f"blocks.{i}.{n}" for i in range(4) for n in ("mlp.fc2", "attn.proj")}
    m = quantize(copy.deepcopy(base), QuantConfig.preset("fp8s2"), calib=images)
    for k in (1, 2):
        for n in ("mlp.fc2", "attn.proj"):
            assert float(m.blocks[k].get_submodule(n).x_static) == pytest.approx(amax[f"blocks.{k}.{n}"] / 448)
    assert m.blocks[1].attn.qkv.x_static is None and m.blocks[1].mlp.fc1.x_static is None


def test_weight_bytes_counts_what_a_tensor_subclass_stores():
    """weight_bytes of a parameter that is a wrapper subclass (torchao's quantized weights present a bf16 face over
    int8 data and scales) counts the tensors it stores: here TwoTensor, torch's own two-tensor wrapper, over an
    int8 and a float32 tensor, not numel x the face's dtype size."""
    from torch.testing._internal.two_tensor import TwoTensor
    a, b = torch.randint(-5, 5, (6, 10), dtype=torch.int8), torch.randn(6, 10)
    m = torch.nn.Linear(10, 6, bias=False)
    m.weight = torch.nn.Parameter(TwoTensor(a.float(), b), requires_grad=False)
    m.weight.a.data = a  # the stored tensors, as a quantized subclass keeps them
    assert weight_bytes(m) == a.numel() * 1 + b.numel() * 4
    assert weight_bytes(torch.nn.Linear(10, 6, bias=False)) == 60 * 4
