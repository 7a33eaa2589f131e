"""Static SASS of the hand-written CUDA kernels, without a GPU: compiles csrc/ translation units with nvcc for sm_90a
and prints, per kernel instantiation, its registers, its SASS instruction count and its instruction mix -- the count
behind NOTES.md's "static SASS" figures (session 20: the instruction-cache misses of the W8A8 GEMM; session 21: the
fixed epilogues). Static counts (each instruction once): compare instantiations with them, not against times.

    python tools/sass_cuda.py [--src csrc/w8a8_gemm_epi_s8.cu ...] [--match REGEX] [--arch sm_90a]

Needs nvcc (PATH or $CUDA_HOME/bin) and a cuobjdump (the CUDA toolkit's, else the one beside the installed Triton).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def functions(sass: str) -> dict[str, str]:
    """{mangled name: its listing} from a `cuobjdump -sass` listing (one `Function : name` header per kernel)."""
    parts = re.split(r"\n\s*Function : (\S+)", "\n" + sass)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def registers(res_usage: str) -> dict[str, int]:
    """{mangled name: registers} from a `cuobjdump -res-usage` listing."""
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"Function (\S+):\s*\n?\s*REG:(\d+)", res_usage)}


def short_name(mangled: str) -> str:
    """The demangled kernel with its template arguments, without namespaces and parameter list."""
    filt = shutil.which("c++filt")
    name = subprocess.run([filt, mangled], capture_output=True, text=True).stdout.strip() if filt else mangled
    name = name.replace("qvit::", "").replace("(anonymous namespace)::", "").replace("void ", "")
    return re.sub(r"\([^()]*\)$", "", name)  # the parameter list


def _tool(name: str) -> str:
    cand = [shutil.which(name)] + [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name)]
    for c in cand:
        if c and os.path.exists(c):
            return c
    if name == "cuobjdump":
        from qvit.profiling.sass import cuobjdump
        return cuobjdump()
    raise FileNotFoundError(f"{name}: not found (PATH, $CUDA_HOME/bin)")


def compile_and_count(src: str, arch: str, nvcc: str, objdump: str) -> list[dict]:
    """Every kernel of one translation unit: name, registers, instructions and the mix by class."""
    from qvit.profiling.sass import _klass, instructions
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        r = subprocess.run([nvcc, "-std=c++17", "-O3", f"-arch={arch}", "-cubin", "-o", cubin, src],
                           capture_output=True, text=True, cwd=os.path.dirname(src) or ".")
        if r.returncode:
            raise RuntimeError(f"nvcc failed on {src}:\n{r.stderr[-3000:]}")
        sass = subprocess.run([objdump, "-sass", cubin], capture_output=True, text=True).stdout
        regs = registers(subprocess.run([objdump, "-res-usage", cubin], capture_output=True, text=True).stdout)
    rows = []
    for mangled, body in functions(sass).items():
        ins = instructions(body)
        mix = collections.Counter(_klass(op) for _, op, _ in ins)
        rows.append({"src": os.path.basename(src), "kernel": short_name(mangled), "regs": regs.get(mangled),
                     "instructions": len(ins), **mix})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", nargs="+", default=sorted(glob.glob(os.path.join(ROOT, "csrc", "w8a8_gemm*.cu"))))
    ap.add_argument("--match", default=None, help="only kernels whose short name matches this regular expression")
    ap.add_argument("--arch", default="sm_90a")
    args = ap.parse_args(argv)
    nvcc, objdump = _tool("nvcc"), _tool("cuobjdump")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
        per_src = list(ex.map(lambda s: compile_and_count(os.path.abspath(s), args.arch, nvcc, objdump), args.src))
    rows = [r for rs in per_src for r in rs if not args.match or re.search(args.match, r["kernel"])]
    print("| source | kernel | regs | SASS instructions | tensor | shared | global | sync |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["src"], r["kernel"])):
        print(f"| {r['src']} | `{r['kernel']}` | {r['regs']} | {r['instructions']} | {r.get('tensor', 0)} | "
              f"{r.get('shared', 0)} | {r.get('global', 0)} | {r.get('sync', 0)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
