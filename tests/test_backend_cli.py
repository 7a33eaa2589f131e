"""Backend resolution (explicit > env > auto) and the command line."""
import os
import subprocess
import sys

import pytest
import torch

from qvit.backend import AttnBackend, Backend, BackendUnavailable, resolve_attn_backend, resolve_backend
from qvit.vit import QuantConfig, ViT, quantize


def test_resolution_order(monkeypatch):
    monkeypatch.setenv("QVIT_BACKEND", "torch")
    assert resolve_backend(None, "cpu") is Backend.TORCH
    monkeypatch.setenv("QVIT_BACKEND", "auto")
    assert resolve_backend(None, "cpu") is Backend.TORCH  # auto on CPU: the reference, never the interpreter
    assert resolve_backend("torch", "cuda") is Backend.TORCH  # explicit wins
    monkeypatch.setenv("QVIT_ATTN", "sdpa")
    assert resolve_attn_backend(None, "cpu") is AttnBackend.SDPA
    assert resolve_attn_backend("torch", "cpu") is AttnBackend.TORCH


def test_unknown_and_unavailable_backends_raise():
    with pytest.raises(ValueError, match="unknown linear backend 'fast'"):
        resolve_backend("fast", "cpu")
    with pytest.raises(BackendUnavailable, match="cuda"):
        resolve_backend("cuda", "cpu")
    with pytest.raises(BackendUnavailable, match="sdpa-flash"):
        resolve_attn_backend("sdpa-flash", "cpu")


def test_explicit_backend_failure_names_the_reason():
    m = quantize(ViT.from_name("vit_tiny_patch4_32", depth=3).eval(), QuantConfig.preset("w8a8"))
    m.set_backend(linear="cuda")
    with pytest.raises(BackendUnavailable, match="backend 'cuda'"):
        with torch.no_grad():
            m(torch.randn(1, 3, 32, 32))


def _qvit(*args):
    return subprocess.run([sys.executable, "-m", "qvit.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_help_lists_subcommands():
    r = _qvit("--help")
    assert r.returncode == 0
    for cmd in ("info", "check", "quantize", "bench"):
        assert cmd in r.stdout


def test_cli_check_and_quantize(tmp_path):
    r = _qvit("check", "--presets", "w8a8", "nf4", "--batch", "2", "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    assert "w8a8" in r.stdout and "nf4" in r.stdout
    out = tmp_path / "q.safetensors"
    r = _qvit("quantize", "--preset", "w4a8", "--group-size", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0
    r = _qvit("quantize", "--model", str(tmp_path / "missing.pth"), "--config", "vit_tiny_patch4_32", "--out",
              str(tmp_path / "x.safetensors"))
    assert r.returncode == 2 and "missing.pth" in r.stderr


def test_cli_info_runs():
    r = _qvit("info")
    assert r.returncode == 0 and "torch" in r.stdout


def test_test_shards_partition_the_suite():
    """QVIT_TEST_SHARD=i/n (tests/conftest.py, used by tools/gpu_run.sh to run one shard per GPU): the
    shards are disjoint and together collect exactly the unsharded suite; a malformed value is refused."""
    import os

    def collect(shard=None):
        env = {k: v for k, v in os.environ.items() if k != "QVIT_TEST_SHARD"}
        if shard:
            env["QVIT_TEST_SHARD"] = shard
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider", "tests/test_formats.py"],
                           capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
        return r.returncode, [ln for ln in r.stdout.splitlines() if "::" in ln]
    rc, full = collect()
    assert rc == 0 and len(full) > 10
    shards = [collect(f"{i}/3") for i in range(3)]
    assert all(rc == 0 and ids for rc, ids in shards)
    got = [t for _, ids in shards for t in ids]
    assert sorted(got) == sorted(full) and len(set(got)) == len(got)
    rc, _ = collect("3/3")
    assert rc != 0


def test_cuda_w8a8_split_plan_and_cpu_refusal(monkeypatch):
    """The CUDA GEMM's launch plan (pure Python, no GPU): every timed candidate and the capture-time heuristic
    give K slices that are all non-empty, and CPU tensors are refused by name before the library is touched."""
    import torch

    from qvit.kernels import quant as Q
    from qvit.kernels.w8a8_cuda import (_BK, _MAX_SPLIT_MN, CONFIGS, _normalize_splits, candidates, heuristic,
                                        w8a8_linear_cuda)
    for m, n, k in [(197, 3072, 1024), (197, 1024, 4096), (1, 1000, 1024), (50432, 4096, 1024), (5, 16, 16)]:
        kt = -(-k // _BK)
        plans = candidates(m, n, k, range(len(CONFIGS))) + [heuristic(m, n, k)]
        assert (0, 1) in plans
        for cfg, s in plans:
            assert 0 <= cfg < len(CONFIGS) and 1 <= s <= kt and _normalize_splits(k, s) == s
            per = -(-kt // s)
            assert (s - 1) * per < kt  # the last slice has work
            assert s == 1 or m * n <= _MAX_SPLIT_MN < 2 ** 31  # split-K's workspace bound (32-bit offsets)
    from qvit.kernels.w8a8_cuda import WGMMA_CONFIGS, _plan
    with pytest.raises(ValueError, match="exceeds 8 for the wgmma config"):
        _plan(None, (197, 1024, 4096), WGMMA_CONFIGS[0], 16)
    assert _plan(None, (197, 1024, 4096), WGMMA_CONFIGS[0], 8) == (WGMMA_CONFIGS[0], 8)
    # the opt-in configs join the tuner only when asked for (measured slower at M = 197, sessions 19-20)
    from qvit.kernels.w8a8_cuda import OPT_IN_CONFIGS
    monkeypatch.setenv("QVIT_CUDA_OPT_IN", "0")
    assert not {cfg for cfg, _ in candidates(197, 1024, 4096, range(len(CONFIGS)))} & set(OPT_IN_CONFIGS)
    monkeypatch.setenv("QVIT_CUDA_OPT_IN", "2")
    with pytest.raises(ValueError, match="QVIT_CUDA_OPT_IN must be 0 or 1"):
        candidates(197, 1024, 4096, range(len(CONFIGS)))
    monkeypatch.setenv("QVIT_CUDA_OPT_IN", "1")
    # float8_e4m3fn operands: the wgmma configs only, their split-K within one cluster, refused by name otherwise
    for m, n, k in [(197, 3072, 1024), (197, 1024, 4096), (1, 1000, 1024), (5, 16, 16)]:
        plans = candidates(m, n, k, range(len(CONFIGS)), fp8=True) + [heuristic(m, n, k, fp8=True)]
        assert plans and all(cfg in WGMMA_CONFIGS and s <= 8 for cfg, s in plans)
        assert {cfg for cfg, _ in plans[:-1]} == set(WGMMA_CONFIGS)
    fp8_key = (197, 1024, 4096, torch.bfloat16, False, False, True, 0, torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="config=0 has no float8_e4m3fn form"):
        _plan(None, fp8_key, 0, 1)
    assert _plan(None, fp8_key, -1, 4)[0] in WGMMA_CONFIGS  # the capture-time heuristic's config for fp8
    xq, xs = Q.quantize_int8_per_token(torch.randn(3, 32))
    wq, ws = Q.quantize_int8_per_channel(torch.randn(8, 32))
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        w8a8_linear_cuda(xq, xs, wq, ws)
    with pytest.raises(ValueError, match="K=24 must be a multiple of 16"):
        w8a8_linear_cuda(xq[:, :24].contiguous(), xs, wq[:, :24].contiguous(), ws)


def test_cuda_w8a8_config_table_mirrors_the_kernel():
    """kernels/w8a8_cuda.CONFIGS (the tiles the tuner counts CTAs with and the tests walk) is the C table of
    csrc/w8a8_gemm_kernels.cuh, read from its X-macros: same indices, same (BLOCK_M, BLOCK_N), the wgmma ones flagged;
    the opt-in set is exactly the configs the table marks as tokens-in-N or TMA-fed (measured slower, sessions 19-20);
    the fixed-epilogue set is exactly the configs with tokens in M (TOK = 0: the ones csrc/w8a8_gemm_epi.inc
    instantiates them for)."""
    import re
    from pathlib import Path

    from qvit.kernels.w8a8_cuda import CONFIGS, FIXED_EPI_CONFIGS, OPT_IN_CONFIGS, WGMMA_CONFIGS
    src = (Path(__file__).resolve().parents[1] / "csrc" / "w8a8_gemm_kernels.cuh").read_text()

    def table(name):
        body = re.search(rf"#define {name}\(X\)((?:[^\n]*\\\n)*[^\n]*)", src).group(1)  # the continued lines
        return [tuple(int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in row.split(","))
                for row in re.findall(r"X\(([^)]*)\)", body)]

    tiles = {row[0]: (row[1], row[2]) for row in table("QVIT_W8A8_CONFIGS")}  # {i: (BM, BN)}
    wg = table("QVIT_W8A8_WGMMA_CONFIGS")  # (i, BN, STAGES, OVERLAP, TOK, BK, TMA)
    tiles.update({row[0]: (row[4] if row[4] > 0 else 64, row[1]) for row in wg})
    assert sorted(tiles) == list(range(len(CONFIGS)))
    assert [tiles[i] for i in range(len(CONFIGS))] == list(CONFIGS)
    assert sorted(row[0] for row in wg) == list(WGMMA_CONFIGS)
    assert sorted(OPT_IN_CONFIGS) == sorted(row[0] for row in wg if row[4] > 0 or row[6] == "true")
    assert sorted(FIXED_EPI_CONFIGS) == sorted(row[0] for row in wg if row[4] == 0)
    epi = (Path(__file__).resolve().parents[1] / "csrc" / "w8a8_gemm_epi.inc").read_text()
    assert "if constexpr (tok == 0)" in epi and "QVIT_W8A8_WGMMA_CONFIGS(QVIT_ECASE)" in epi


def test_cuda_w8a8_fixed_epilogue_rule():
    """Which launches take a fixed-epilogue kernel (bfloat16 out, pairs with N % 4 == 0, a bias, a tokens-in-M wgmma
    config; one slice with at most one of residual / GELU, or split-K with the residual) and that `runtime_epilogue()`
    turns it off and back on, also when its body raises; the tuner's shape key carries the flag."""
    from qvit.kernels import w8a8_cuda as W
    ok = dict(m=197, n=1024, cfg=25, splits=1, out_dtype=torch.bfloat16, bias=True, residual=True, gelu=False)
    assert W.fixed_epilogue(**ok)
    assert W.fixed_epilogue(**{**ok, "residual": False}) and W.fixed_epilogue(**{**ok, "residual": False, "gelu": True})
    assert W.fixed_epilogue(**{**ok, "splits": 2})  # split-K in a cluster: with the residual only
    assert W.fixed_epilogue(**{**ok, "splits": 2, "res_vec": False})  # (only the unsplit form stages the residual)
    assert W.fixed_epilogue(**{**ok, "residual": False, "res_vec": False})
    for bad in ({"splits": 2, "residual": False}, {"splits": 2, "gelu": True}, {"out_dtype": torch.float16},
                {"out_dtype": torch.float32}, {"n": 1022},
                {"bias": False}, {"gelu": True}, {"cfg": 16}, {"cfg": 30}, {"cfg": 3}, {"pair": False},
                {"res_vec": False}):
        assert not W.fixed_epilogue(**{**ok, **bad}), bad
    key = (197, 1024, 4096, torch.bfloat16, False, True, True, 0, torch.int8)
    with pytest.raises(KeyError):
        with W.runtime_epilogue():
            assert not W.fixed_epilogue(**ok)
            assert W.shape_key(*key) == key + (False,)  # the tuner keeps the two kernels' choices apart
            raise KeyError("x")
    assert W.fixed_epilogue(**ok) and W.shape_key(*key) == key + (True,)


def test_tune_shard_splits_every_config_exactly_once(monkeypatch):
    """n warm processes (QVIT_TUNE_SHARD=i/n) between them compile each autotuner config exactly once, and
    every process keeps at least one config; a malformed value is refused by name."""
    from qvit.backend import tune_shard
    configs = list(range(29))
    monkeypatch.delenv("QVIT_TUNE_SHARD", raising=False)
    assert tune_shard(configs) == configs
    for n in (1, 5, 14, 40):
        seen = []
        for i in range(n):
            monkeypatch.setenv("QVIT_TUNE_SHARD", f"{i}/{n}")
            part = tune_shard(configs)
            assert part, (i, n)
            seen += part
        assert sorted(set(seen)) == configs
        if n <= len(configs):
            assert len(seen) == len(configs)  # nothing compiled twice
    for bad in ("3/3", "x/2", "1", "-1/2"):
        monkeypatch.setenv("QVIT_TUNE_SHARD", bad)
        with pytest.raises(ValueError, match="QVIT_TUNE_SHARD"):
            tune_shard(configs)


def test_warm_copies_drop_the_runs_own_out_and_warm_flags():
    from qvit.profiling.warm import strip_warm_args
    argv = ["--out", "r/x", "--only", "attention", "--warm", "14", "--quick", "--warm=3", "--out=y",
            "--providers", "qvit fp16$"]
    assert strip_warm_args(argv) == ["--only", "attention", "--quick", "--providers", "qvit fp16$"]


def test_warm_runs_one_copy_per_shard_and_reports_failures(tmp_path):
    """warm() starts n copies of a module with --warm-shard i/n, QVIT_TUNE_SHARD=i/n and the CPU threads
    shared out (the copies here write what they saw) and names the copies that failed."""
    from qvit.profiling.warm import warm
    mod = tmp_path / "warmprobe.py"
    mod.write_text("import os, sys\n"
                   "i = sys.argv[-1]\n"
                   "open(os.path.join(sys.argv[1], i.replace('/', '_')), 'w').write(\n"
                   "    os.environ['QVIT_TUNE_SHARD'] + ' ' + os.environ['TRITON_CACHE_AUTOTUNING'] + ' '\n"
                   "    + os.environ['OMP_NUM_THREADS'])\n"
                   "sys.exit(1 if i == '2/3' else 0)\n")
    sys.path.insert(0, str(tmp_path))
    env_pp = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tmp_path) + (os.pathsep + env_pp if env_pp else "")
    try:
        r = warm("warmprobe", [str(tmp_path)], 3, log_dir=str(tmp_path / "logs"))
    finally:
        sys.path.remove(str(tmp_path))
        if env_pp is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env_pp
    assert r["processes"] == 3 and r["failed"] == [2]
    for i in range(3):
        assert (tmp_path / f"{i}_3").read_text() == f"{i}/3 0 {max(1, (os.cpu_count() or 1) // 3)}"


def test_bench_provider_selection(monkeypatch):
    """bench_kernels runs the baselines and the providers the expression names; a warm copy runs only qvit's
    Triton kernels (not the CUDA extension, not cuBLAS-backed providers, not peers)."""
    from qvit.profiling import bench_kernels as B
    P = dict.fromkeys(["torch bf16 (cuBLAS)", "qvit w8a8 (int8 in)", "qvit-cuda w8a8 (int8 in)",
                       "qvit w4a16 nf4 (dequant + cuBLAS)", "bnb NF4 Linear4bit"])
    monkeypatch.setattr(B, "_WARM", False)
    assert list(B._select(P)) == list(P)
    assert list(B._select(P, r"^qvit w8a8", ("torch bf16 (cuBLAS)",))) == ["torch bf16 (cuBLAS)", "qvit w8a8 (int8 in)"]
    monkeypatch.setattr(B, "_WARM", True)
    assert list(B._select(P)) == ["qvit w8a8 (int8 in)"]
    assert list(B._select(P, "bnb", ("torch bf16 (cuBLAS)",))) == []


def test_pdl_off_unless_asked_and_never_on_cpu_or_interpreter(monkeypatch):
    """Programmatic dependent launch is opt-in (QVIT_PDL=1) and never reaches a CPU tensor or the interpreter,
    which cannot run griddepcontrol: the kernels then get no PDL keywords (their constexpr stays False)."""
    import torch

    from qvit.backend import pdl_kwargs
    monkeypatch.delenv("QVIT_PDL", raising=False)
    assert pdl_kwargs(torch.device("cuda", 0)) == {}
    monkeypatch.setenv("QVIT_PDL", "1")
    assert pdl_kwargs(torch.device("cpu")) == {}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl_kwargs(torch.device("cuda", 0)) == {}
    monkeypatch.setenv("QVIT_PDL", "late")
    with pytest.raises(ValueError, match="QVIT_PDL='late': expected 0 or 1"):
        pdl_kwargs(torch.device("cpu"))
