"""Does int8 attention need K smoothing on qvit's CIFAR-10 baseline? (the experiment behind QuantConfig.smooth_k)

    python tools/k_smoothing_experiment.py [N [MODES]]   # CPU, ~1.5 min: N = 2,000 test images, float linears
    python tools/k_smoothing_experiment.py 10000 float,dyn,block64   # K per 64-token block (session 8)

Quantizes only Q and K (int8 per token, the reference arithmetic) inside every block's attention and compares
top-1 and the logits' relative error against float for: K minus its token mean ("dyn", SageAttention's
smoothing), K minus a data-free static offset (K bias + W_k . LayerNorm beta: "static"), and K as is ("none").
Measured 2026-11-28 (NOTES.md, session 5): float 94.30, dyn 94.25 (1.74e-3), static 94.30 (2.11e-3),
none 94.30 (1.84e-3); block 4's K: rms 0.90, token-mean rms 0.36, after the static fold 0.44.
"""
import sys
import time

import torch

from qvit.vit.checkpoint import load_model
from qvit.vit import model as M
from qvit.kernels.attention import attention_int8_ref, attention_ref
from qvit.kernels.quant import quantize_int8_per_token
from qvit.train.data import load_cifar10
from qvit.train.augment import CIFAR_MEAN, CIFAR_STD
torch.manual_seed(0)
m = load_model("results/h200-train-3/train/model-bf16.safetensors").float().eval()
x, y = load_cifar10("test")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000  # test images (10,000: the whole test set)
MODES = sys.argv[2].split(",") if len(sys.argv) > 2 else ["float", "dyn", "static", "none"]
x = x[:n].float() / 255; y = y[:n]
x = (x - torch.tensor(CIFAR_MEAN).view(1,3,1,1)) / torch.tensor(CIFAR_STD).view(1,3,1,1)
MODE = {"m": "float"}
def attend(self, q, k, v):
    mode = MODE["m"]
    if mode == "float":
        return attention_ref(q, k, v)
    if mode == "dyn":
        k = k - k.mean(dim=1, keepdim=True)
    elif mode == "static":
        k = k - self._kstatic.view(1, 1, self.num_heads, self.head_dim)
    elif mode == "block64":  # smoothed K with one scale per 64 tokens and head (SageAttention's per-block K)
        k = k - k.mean(dim=1, keepdim=True)
        b, s, h, d = k.shape
        pad = (-s) % 64
        kp = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, pad)).view(b, (s + pad) // 64, 64, h, d)
        scale = (kp.abs().amax(dim=(2, 4)) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # (B, blocks, H)
        ks = scale.repeat_interleave(64, dim=1)[:, :s].contiguous()  # per token, constant within a block
        k8 = torch.round(k.float() / ks[..., None]).clamp(-127, 127).to(torch.int8)
        q8, qs = quantize_int8_per_token(q)
        return attention_int8_ref(q8, qs, k8, ks, v)
    q8, qs = quantize_int8_per_token(q); k8, ks = quantize_int8_per_token(k)
    return attention_int8_ref(q8, qs, k8, ks, v)
M.Attention.attend = attend
for blk in m.blocks:
    a = blk.attn; C = a.qkv.in_features
    wk = a.qkv.weight[C:2*C]; bk = a.qkv.bias[C:2*C]
    a._kstatic = (bk + wk @ blk.norm1.bias).detach()
res = {}
with torch.no_grad():
    for mode in MODES:
        MODE["m"] = mode; t = time.time()
        logits = torch.cat([m(x[i:i+250]) for i in range(0, n, 250)])
        res[mode] = logits
        ref = res["float"]
        print(mode, "top1", (logits.argmax(1) == y).float().mean().item()*100, "rel err", ((logits-ref).norm()/ref.norm()).item(), f"{time.time()-t:.0f}s", flush=True)
# how big is the residual mean after static fold vs before
with torch.no_grad():
    ks = []
    def hook(mod, inp, out):
        ks.append(out)
    blk = m.blocks[4]; h = blk.attn.qkv.register_forward_hook(hook)
    MODE["m"] = "float"; m(x[:64]); h.remove()
    C = blk.attn.qkv.in_features; k = ks[0][..., C:2*C]
    print("block4 |K| rms", k.pow(2).mean().sqrt().item(), "token-mean rms", k.mean(1).pow(2).mean().sqrt().item(),
          "after static fold token-mean rms", (k.mean(1) - blk.attn._kstatic).pow(2).mean().sqrt().item())
