"""Accuracy experiment: 4-bit weights on a grid that e4m3 holds exactly (so the fp8 GEMM runs them unchanged):
int4 or e2m1 codes x a power-of-two group scale x a float channel scale. CIFAR-10 test subset, CPU reference path."""
import copy, sys, time, torch
from qvit.train.study import build_variant, run_eval, KEEP
from qvit.train.data import load_cifar10, DeviceLoader
from qvit.train.augment import Augment, AugmentConfig
from qvit.vit.checkpoint import load_model
from qvit.train.augment import CIFAR_MEAN, CIFAR_STD
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])

def to_grid(v, grid):  # nearest value of a symmetric grid (|v| rounded to grid's magnitudes)
    mag = v.abs()
    idx = (mag.unsqueeze(-1) - grid).abs().argmin(-1)
    return grid[idx] * v.sign()

def round_w(w, g, kind, search):
    n, k = w.shape
    wg = w.reshape(n, k // g, g)
    top = 7.0 if kind == "int4" else 6.0
    s_c = w.abs().amax(1).clamp(min=1e-30)[:, None] / top            # (n, 1): the largest group uses 2^0
    amax_g = wg.abs().amax(2).clamp(min=1e-30)
    k0 = torch.floor(torch.log2(top * s_c / amax_g)).clamp(0, 9)     # finest step that keeps amax_g in range
    best, best_err = None, None
    for dk in ((0, 1) if search else (0,)):
        kk = (k0 + dk).clamp(0, 9)
        step = (s_c * torch.pow(2.0, -kk))[..., None]
        x = wg / step
        q = x.round().clamp(-7, 7) if kind == "int4" else to_grid(x.clamp(-6, 6), E2M1)
        r = q * step
        err = (r - wg).pow(2).sum(2)
        if best is None:
            best, best_err = r, err
        else:
            better = (err < best_err)[..., None]
            best = torch.where(better, r, best); best_err = torch.minimum(err, best_err)
    return best.reshape(n, k)

def rounded_model(base, g, kind, search):
    m = copy.deepcopy(base)
    depth = m.cfg.depth
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("blocks.") and name.split(".")[1] not in ("0", str(depth - 1)):
            with torch.no_grad():
                mod.weight.copy_(round_w(mod.weight.float(), g, kind, search))
    return m

base = load_model("results/h200-train-3/train/model-bf16.safetensors").float().eval()
xte, yte = load_cifar10("test", "/work/gpu-data/data/cifar10")
keep = torch.randperm(xte.shape[0], generator=torch.Generator().manual_seed(1))[:N].sort().values
xte, yte = xte[keep], yte[keep]
dev = torch.device("cpu")
loader = DeviceLoader(xte, yte, 500, False, False, device=dev)
aug = Augment(AugmentConfig(mean=CIFAR_MEAN, std=CIFAR_STD))
xtr, _ = load_cifar10("train", "/work/gpu-data/data/cifar10")
calib = aug.eval(xtr[:256]); del xtr
rows = [("bf16", base, None, "float"), ("fp8s2t", base, "fp8s2t", "int8"), ("w4a8p (study 4-bit)", base, "w4a8p", "int8")]
for g in (32, 128):
    for kind in ("int4", "e2m1"):
        for search in (False, True):
            rows.append((f"{kind} pow2 g{g}{' mse' if search else ''} + fp8s2t", (g, kind, search), "fp8s2t", "int8"))
for label, src, preset, kf in rows:
    m0 = rounded_model(base, *src) if isinstance(src, tuple) else src
    m = build_variant(m0, preset, "qvit", False, dev, keep_format=kf, calib=calib)
    r = run_eval(m, loader, aug)
    print(f"{label:34s} top1={r['top1']:.2f} top5={r['top5']:.2f} f1={r['macro_f1']:.2f} ({r['eval_s']:.0f}s)", flush=True)
