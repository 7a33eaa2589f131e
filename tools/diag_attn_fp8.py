"""Session 12 diagnostic (GPU): qvit attention's fp8 static-scale output against `quantize_fp8_static` of the
same config's fp16 output, every autotuner config pinned, B x S in (1, 197), (2, 577). Prints per config the
largest code distance and the worst elements (value / scale, the kernel's code, the reference code), and the
same with the quotient as one div.rn per element (argv[3] == "divrn", the form before session 11's change) for
comparison. Configs i with i % n == r for argv[2] = "r/n" (one process per shard). JSON to argv[1]."""
import json
import sys

import torch

from qvit.kernels import attention as A
from qvit.kernels import quant as Q
from qvit.kernels.quant import e4m3_ordinal

if len(sys.argv) > 3 and sys.argv[3] == "divrn":
    import triton
    import triton.language as tl

    @triton.jit
    def _div_rn_codes(y, s_ptr):
        return tl.clamp(tl.math.div_rn(y, tl.load(s_ptr)), -448.0, 448.0)

    A._fp8_static_codes = _div_rn_codes
r, n = map(int, sys.argv[2].split("/"))
out = {"rows": [], "form": sys.argv[3] if len(sys.argv) > 3 else "fast"}
kern = A._attn_fwd
configs = list(kern.configs)
torch.manual_seed(0)
for b, s in [(1, 197), (2, 577)]:
    q, k, v = torch.randn(b, s, 3, 16, 64, device="cuda", dtype=torch.float16).unbind(2)
    for i, c in enumerate(configs):
        if i % n != r:
            continue
        kern.configs, kern.cache = [c], {}
        try:
            o = A.attention(q, k, v)
            scale = (o.float().abs().max() / 448 * 0.7).reshape(())
            o8, _ = A.attention_fp8_static_out(q, k, v, 64 ** -0.5, scale)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001  (a config that does not build is a finding)
            out["rows"].append({"b": b, "s": s, "config": i, "error": f"{type(e).__name__}: {str(e)[:160]}"})
            continue
        qr, _ = Q.quantize_fp8_static(o.float(), scale)
        d = (e4m3_ordinal(o8) - e4m3_ordinal(qr)).abs()
        worst = torch.topk(d.flatten(), 4).indices
        row = {"b": b, "s": s, "config": i, "desc": str(c), "max": int(d.max()), "n_gt1": int((d > 1).sum()),
               "worst": [{"idx": list(map(int, torch.unravel_index(j, d.shape))), "o_over_s": float(o.flatten()[j].float() / scale),
                          "kernel": float(o8.flatten()[j].float()), "ref": float(qr.flatten()[j].float())} for j in worst]}
        out["rows"].append(row)
        print(f"b={b} s={s} cfg {i} ({c}): max {row['max']} n>1 {row['n_gt1']} worst {row['worst'][:2]}", flush=True)
kern.configs, kern.cache = configs, {}
json.dump(out, open(sys.argv[1], "w"), indent=1)
