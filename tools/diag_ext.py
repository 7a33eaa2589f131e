import faulthandler, sys, torch
faulthandler.enable()
from qvit import _ext
print("ext:", _ext.load_error() or "loaded", flush=True)
ops = _ext.ops()
x = torch.randn(4, 64, device='cuda', dtype=torch.float16)
print("good call:", [t.shape for t in ops.layernorm_quant(x, None, None, 1e-6)], flush=True)
for name, fn in [("cpu tensor", lambda: ops.layernorm_quant(torch.randn(4, 64), None, None, 1e-6)),
                 ("K=20", lambda: ops.layernorm_quant(torch.randn(4, 20, device='cuda', dtype=torch.float16), None, None, 1e-6))]:
    print("calling", name, flush=True)
    try:
        fn()
        print("no error?!", flush=True)
    except Exception as e:
        print("RAISED", type(e).__name__, str(e).splitlines()[0], flush=True)
