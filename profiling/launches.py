"""Kernel launches of one forward pass, counted per model range without a GPU (or with one).

Every launch a forward makes is either a Triton kernel (counted at its launcher: `JITFunction.run`, or the
interpreter's `InterpretedFunction.run` on a CPU) or a PyTorch op that computes (counted by a dispatch mode;
views, allocations and metadata launch nothing). Each is tied to the innermost model range open at the time
(the `range_ctx` names of `qvit.vit.model`: `block3/qkv`, `block3/attention`, ...; block numbers folded
into `block`). Host synchronizations (`.item()`, `.tolist()`, copies to the host) are counted separately:
they stall a CUDA graph capture and the launch queue.

    python -m qvit.profiling.launches [--variant "3 8bit+qvit-attn"] [--config vit_micro_patch4_32]

On a CPU the Triton kernels run under the interpreter (TRITON_INTERPRET=1, set by this command when there is
no GPU): the launch count is the GPU's, since the same launcher code runs; the PyTorch side is the same
code path only where it does not branch on the device (qvit's model does not, for a given backend).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that launch no kernel: allocations and metadata (views are recognised by `OpOverload.is_view`)
_FREE = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh",
         "set_", "resize_"}
# aten ops that synchronize with the host
_SYNC = {"_local_scalar_dense", "item", "equal", "is_nonzero", "nonzero"}


class _Recorder(TorchDispatchMode):
    def __init__(self, log, where, inside):
        super().__init__()
        self.log, self.where, self.inside = log, where, inside

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if self.inside[0]:  # the Triton interpreter's own tensor traffic, not a kernel of the model
            return out
        if name in _SYNC:
            self.log.append((self.where(), "sync", name))
        elif not (func.is_view or name in _FREE):
            if _to_host(args, out):
                self.log.append((self.where(), "sync", f"{name} to host"))
            else:
                self.log.append((self.where(), "torch", name))
        return out


def _to_host(args, out) -> bool:
    """A CUDA tensor in, a CPU tensor out: a copy the host waits for (`.cpu()`, `.tolist()`, ...)."""
    return (isinstance(out, torch.Tensor) and out.device.type == "cpu"
            and any(isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in args))


def _fold(path: list[str]) -> str:
    parts = []
    for p in path:
        parts += ["block" if (q.startswith("block") and q[5:].isdigit()) else q for q in p.split("/")]
    return "/".join(parts) or "(top)"


@contextlib.contextmanager
def recording():
    """Yields a list that fills with (range, kind, kernel) per launch ('triton' / 'torch') or host sync."""
    import triton.runtime.jit as jit
    import qvit.vit.model as model_mod
    log, stack, inside = [], [], [0]

    @contextlib.contextmanager
    def ctx(name):
        stack.append(name)
        try:
            yield
        finally:
            stack.pop()

    def where():
        return _fold(stack)

    patched = []

    def patch(cls):
        real = cls.run

        def run(self, *args, **kwargs):
            if not kwargs.get("warmup", False) and not inside[0]:
                log.append((where(), "triton", getattr(self, "__name__", None) or self.fn.__name__))
            inside[0] += 1
            try:
                return real(self, *args, **kwargs)
            finally:
                inside[0] -= 1
        cls.run = run
        patched.append((cls, real))

    patch(jit.JITFunction)
    try:
        from triton.runtime.interpreter import InterpretedFunction
        patch(InterpretedFunction)
    except ImportError:
        pass
    real_ctx = model_mod.range_ctx
    model_mod.range_ctx = ctx
    try:
        with _Recorder(log, where, inside):
            yield log
    finally:
        model_mod.range_ctx = real_ctx
        for cls, real in patched:
            cls.run = real


def count(model, x) -> list[tuple[str, str, str]]:
    """The launches of one `model(x)` under no_grad (after one untimed call, so that autotuning and lazy
    initialisation are not counted)."""
    with torch.no_grad():
        model(x)
        with recording() as log:
            model(x)
    return list(log)


def per_block(log, depth: int) -> dict:
    """{'per_block': launches per transformer block (the mean over blocks: the same in every block),
    'by_range': {range: [kernels of one block]}, 'outside': launches outside the blocks, 'syncs': [...]}"""
    by_range = collections.defaultdict(list)
    outside, syncs = [], []
    for rng, kind, name in log:
        if kind == "sync":
            syncs.append((rng, name))
        elif rng.startswith("block"):
            by_range[rng].append(f"{kind}:{name}")
        else:
            outside.append(f"{rng} {kind}:{name}")
    total = sum(len(v) for v in by_range.values())
    if total % depth:
        raise RuntimeError(f"{total} launches in {depth} blocks: the blocks differ (per range: "
                           f"{ {k: len(v) for k, v in by_range.items()} })")
    return {"per_block": total // depth,
            "by_range": {k: v[:len(v) // depth] for k, v in sorted(by_range.items())},
            "outside": outside, "syncs": syncs}


def build(variant: str, config: str, dtype=torch.float16, seed: int = 0, **overrides):
    """A ViT of `config` (random weights) quantized as the study's `variant` (`overrides`: QuantConfig fields,
    e.g. a smaller act_group for the tiny configs), on the GPU if there is one."""
    from qvit.variants import KEEP, VARIANTS
    from qvit.vit import QuantConfig, ViT, quantize
    torch.manual_seed(seed)
    preset, attn, int8_qk, keep_format = VARIANTS[variant]
    m = ViT.from_name(config).eval()
    if preset is not None:
        # every block quantized (keep only the head), so that all blocks run the variant's kernels
        cfg = QuantConfig.preset(preset, keep=tuple(k for k in KEEP if k == "head"), keep_format=keep_format,
                                 int8_attention=int8_qk, **overrides)
        calib = torch.randn(4, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size) if cfg.needs_calibration else None
        quantize(m, cfg, calib=calib)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and attn.startswith("sdpa"):
        attn = "sdpa"  # SDPA's backend choice is CUDA-only; on a CPU it is one op either way
    m = m.to(device=dev, dtype=dtype).set_backend(linear="triton" if preset is not None else None, attn=attn)
    x = torch.randn(1, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size, device=dev, dtype=dtype)
    return m, x


def main(argv=None) -> int:
    from qvit.variants import VARIANTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", help="a study variant (repeatable; default: the five main ones)")
    ap.add_argument("--config", default="vit_micro_patch4_32")
    args = ap.parse_args(argv)
    names = args.variant or [k for k in VARIANTS if k[0].isdigit()]
    for name in names:
        if name not in VARIANTS:
            print(f"launches: unknown variant {name!r}; known: {', '.join(VARIANTS)}", file=sys.stderr)
            return 2
        m, x = build(name, args.config)
        res = per_block(count(m, x), m.cfg.depth)
        print(f"## {name}: {res['per_block']} launches per block, {len(res['outside'])} outside the blocks, "
              f"{len(res['syncs'])} host syncs")
        for rng, ks in res["by_range"].items():
            print(f"- {rng}: {', '.join(ks)}")
    return 0


if __name__ == "__main__":
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.exit(main())
