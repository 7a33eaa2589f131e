"""tools/device_env.sh's helpers for the one-off device scripts, run by bash with stub `python3` / `ncu` commands that
record their arguments: a quoting slip there costs a whole device call (the machines are scarce), so the command lines
they build are checked here, on the CPU."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STUB = """#!/bin/bash
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf '\\x1f%s' "$a"; done; printf '\\n'; } >> "$STUB_LOG"
if [ "$(basename "$0")" = ncu ]; then  # -o NAME writes NAME.ncu-rep
  prev=; for a in "$@"; do [ "$prev" = -o ] && [ -n "${STUB_NCU_REPORT:-}" ] && touch "$a.ncu-rep"; prev=$a; done
fi
[ "${2:-}" = qvit.profiling.bench_kernels ] && echo "linear qkv M=197: stub"
exit 0
"""


def _run(tmp_path, body: str, report: bool = True) -> list[list[str]]:
    """Source tools/device_env.sh (no install) in a copy of its inputs under tmp_path and run `body`; returns the
    stubbed commands' argument lists in call order."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("python3", "ncu", "nvidia-smi"):
        (bindir / name).write_text(STUB)
        (bindir / name).chmod(0o755)
    out, home, log = tmp_path / "out", tmp_path / "home", tmp_path / "calls"
    out.mkdir()
    home.mkdir()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "OUT": str(out), "HOME": str(home),
           "STUB_LOG": str(log), "QVIT_ENV_NO_INSTALL": "1"}
    if report:
        env["STUB_NCU_REPORT"] = "1"
    r = subprocess.run(["bash", "-c", f". tools/device_env.sh && {body}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []


def test_linear_m197_passes_the_provider_regex_intact(tmp_path):
    calls = _run(tmp_path, "linear_m197 linear 100")
    bench = [c for c in calls if c[:3] == ["python3", "-m", "qvit.profiling.bench_kernels"]]
    assert len(bench) == 1
    args = bench[0]
    assert args[args.index("--out") + 1].endswith("/out/r/linear")
    assert args[args.index("--ms") + 1] == "197" and args[args.index("--only") + 1] == "linear"
    keep = re.compile(args[args.index("--providers") + 1])
    wanted = ["qvit w8a8 (int8 in)", "qvit w8a8 (+gelu)", "qvit w8a8 (+residual)", "qvit-cuda w8a8 (int8 in)",
              "qvit-cuda w8a8 (+residual, run-time epilogue)", "qvit-cuda w8a8 fp8 (fp8 in)",
              "qvit w8a8 fp8 fast accum (fp8 in)"]
    unwanted = ["qvit w8a8 (+act quant)", "qvit w8a8 fp8 fast accum (+gelu)", "qvit w8a8 persistent (int8 in)",
                "qvit w4a8 g128 (int8 in)", "qvit w8a8 (+gelu, int8 out g128)"]
    assert [p for p in wanted if not keep.search(p)] == []
    assert [p for p in unwanted if keep.search(p)] == []


def test_ncu_gemm_profiles_the_pinned_configs_and_reads_the_report(tmp_path):
    calls = _run(tmp_path, "ncu_gemm 23:1,13:2 200")
    prof = [c for c in calls if c[0] == "ncu" and "-o" in c]
    assert len(prof) == 1 and prof[0][-3:] == ["tools/ncu_cuda_gemm.py", "--pinned", "23:1,13:2"]
    assert "SourceCounters" in prof[0] and prof[0][prof[0].index("-o") + 1].endswith("/out/r/gemm")
    pages = [c[c.index("--page") + 1] for c in calls if c[0] == "ncu" and "-i" in c]
    assert pages == ["details", "source"]
    assert any(c[:2] == ["python3", "tools/ncu_table.py"] for c in calls)
    assert any(c[:3] == ["python3", "-m", "qvit.profiling.ncu_source"] for c in calls)


def test_ncu_gemm_without_a_report_stops_after_the_profile(tmp_path):
    calls = _run(tmp_path, "ncu_gemm 23:1 200", report=False)
    assert [c[0] for c in calls] == ["ncu"]  # no post-processing of a report that was not written


def test_upto_counts_from_the_mark_and_stops_before_the_limit(tmp_path):
    """`upto N`: N seconds after the last `mark`, never past LIMIT - 15 seconds after the script's start, at least
    1 (a timeout of 0 would mean no limit at all)."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    env = {**os.environ, "OUT": str(tmp_path), "HOME": str(tmp_path), "QVIT_ENV_NO_INSTALL": "1", "LIMIT": "100"}
    r = subprocess.run(["bash", "-c", ". tools/device_env.sh && mark && echo $(upto 50) $(upto 500) $(upto -10)"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    near, capped, floor = (int(v) for v in r.stdout.split())
    assert 48 <= near <= 50 and 83 <= capped <= 85 and floor == 1, r.stdout


def test_cuda_tests_passes_the_expression_intact(tmp_path):
    calls = _run(tmp_path, 'cuda_tests "w8a8_cuda or tuner_times" 80')
    (pyt,) = [c for c in calls if c[:3] == ["python3", "-m", "pytest"]]
    assert pyt[pyt.index("-k") + 1] == "w8a8_cuda or tuner_times" and "tests/test_gpu.py" in pyt
    assert (tmp_path / "out" / "r" / "tests-cuda.log").exists()
