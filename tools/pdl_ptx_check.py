"""Without a GPU: compile qvit's PDL kernels (PDL=True) for sm_90 and report where griddepcontrol.wait sits in each
PTX against the first global load / async copy / store and the L2 prefetches (QVIT_PDL, NOTES.md session 14). The
wait must come before every load of a previous kernel's output and before every store.

    PYTHONPATH=<Triton 3.6 install> python tools/pdl_ptx_check.py
"""
import re

from qvit.profiling import sass as S

CASES = [("w8a8", "fp8_static_tanh"), ("w8a8", "fp8_fast"), ("w8a8", "w4f8_res"), ("attention", "fp8_static"),
         ("lnq", "fp8_static"), ("w8a8p", "fp8_static_tanh")]


def main():
    bad = 0
    for kernel, mode in CASES:
        fn, modes, floats = S.KERNELS[kernel]()
        consts, ptrs = modes[mode]
        orig = S.KERNELS[kernel]
        S.KERNELS[kernel] = lambda: (fn, {**modes, mode: ({**consts, "PDL": True}, ptrs)}, floats)
        try:
            cfg = [c for c in fn.configs if not c.kwargs.get("EPI_SPLIT") and not c.kwargs.get("PREFETCH_RES")][2]
            ptx = S.compile_config(kernel, mode, cfg).asm["ptx"].splitlines()
        finally:
            S.KERNELS[kernel] = orig
        first = {k: next((i for i, line in enumerate(ptx) if re.search(p, line)), None) for k, p in (
            ("wait", r"griddepcontrol\.wait"), ("launch_dependents", r"griddepcontrol\.launch"),
            ("prefetch", r"prefetch\.global"), ("ld.global", r"ld\.global"), ("cp.async", r"cp\.async"),
            ("st.global", r"st\.global"))}
        after = [k for k in ("ld.global", "cp.async", "st.global") if first[k] is not None and first[k] < first["wait"]]
        bad += bool(after)
        print(f"{kernel}/{mode} ({S.describe(cfg)}): " + ", ".join(f"{k} {v}" for k, v in first.items())
              + (f"  BEFORE THE WAIT: {after}" if after else "  ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
