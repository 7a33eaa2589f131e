"""Kernel attribution on a synthetic profiler trace: ranges via launch correlation, categories, gaps."""
import pytest
import torch

from qvit.profiling.attribution import CATEGORIES, attribute, categorize


@pytest.mark.parametrize("name,cat", [
    ("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NNN", "GEMM"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("_attn_fwd", "attention"),
    ("_w4a8_kernel", "GEMM"),
    ("_w8a8_kernel", "GEMM"),
    ("_ln_quant_kernel", "quantize"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16>", "normalization"),
    ("triton_poi_fused_gelu_view_10", "elementwise"),
])
def test_categorize(name, cat):
    assert categorize(name) == cat


def test_attribute_synthetic_trace():
    ann = lambda name, ts, dur: {"ph": "X", "cat": "user_annotation", "name": name, "ts": ts, "dur": dur, "tid": 1}  # noqa: E731
    launch = lambda c, ts: {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 1,  # noqa: E731
                            "tid": 1, "args": {"correlation": c}}
    kern = lambda c, name, ts, dur: {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "tid": 7,  # noqa: E731
                                     "args": {"correlation": c}}
    ev = [ann("patch_embed", 0, 10), ann("block0", 10, 50), ann("qkv", 11, 5), ann("attention", 20, 10),
          ann("mlp", 35, 20), ann("head", 70, 5),
          launch(1, 2), launch(2, 12), launch(3, 22), launch(4, 40), launch(5, 71),
          kern(1, "implicit_convolve_sgemm", 100, 10), kern(2, "nvjet_sm90_gemm", 110, 20),
          kern(3, "_attn_fwd", 140, 15), kern(4, "triton_poi_fused_gelu", 160, 5), kern(5, "nvjet_head", 200, 4)]
    r = attribute({"traceEvents": ev})
    assert r["kernels"] == 5 and r["span_us"] == 104 and r["busy_us"] == 54
    c = r["by_category"]
    assert c["GEMM"] == 34 and c["attention"] == 15 and c["elementwise"] == 5 and c["launch gaps"] == 50
    assert sum(c.values()) == pytest.approx(r["span_us"]) and set(c) == set(CATEGORIES)
    rng = r["by_range"]
    assert rng["patch_embed"]["GEMM"] == 10 and rng["block/qkv"]["GEMM"] == 20
    assert rng["block/attention"]["attention"] == 15 and rng["block/mlp"]["elementwise"] == 5
    assert rng["head"]["GEMM"] == 4


def test_profiling_report_from_committed_measurements(tmp_path):
    """The report generator on the H200 files committed under results/: every section renders, the ncu
    rows get their throughput against the same run's ceilings, and the numbers are the inputs'."""
    import json
    import os

    from qvit.profiling.ncu_report import parse
    from qvit.profiling.report import main
    root = os.path.join(os.path.dirname(__file__), "..", "results")
    attr = os.path.join(root, "h200-attr-1", "attribution", "attribution.json")
    ncu = os.path.join(root, "h200-gpu-2", "ncu_sol.csv")
    bench = os.path.join(root, "h200-gpu-2", "bench_kernels.json")
    out = tmp_path / "REPORT.md"
    assert main(["--attr", attr, "--ncu", ncu, "--bench", bench, "--out", str(out)]) == 0
    md = out.read_text()
    for section in ("Launch gaps", "GPU time by model part, batch 64", "Fused FA2-style attention",
                    "Where quantization saves", "Largest excess", "Nsight Compute"):
        assert section in md
    rows = parse(open(ncu).read())
    assert {r["range"] for r in rows} >= {"w8a8_fc1_M12608", "w4a8_fc1_M12608", "attention_B64_S197"}
    # W8A8 fc1: 2 * 12608 * 1024 * 4096 ops over ncu's duration, against the int8 ceiling of the same run
    r = next(r for r in rows if r["range"] == "w8a8_fc1_M12608")
    us = float(r["Duration"][0]) / 1e3
    tops = 2 * 12608 * 1024 * 4096 / us / 1e6
    ceil = json.load(open(bench))["int8_mm_TOPs"]
    assert f"| {tops:.0f} | {100 * tops / ceil:.0f}% |" in md


def test_peer_summary_from_committed_measurements():
    """The benchmark table's qvit-vs-fastest-peer rows on a committed H200 run: each row's times are the
    JSON's, the peer is the fastest provider of its kind that is not qvit's, and a slower qvit kernel is
    shown in bold, not hidden."""
    import json
    import os

    from qvit.profiling.bench_kernels import markdown, peer_summary
    path = os.path.join(os.path.dirname(__file__), "..", "results", "h200-gpu-6", "call1-linear-lnq",
                        "bench_kernels.json")
    res = json.load(open(path))
    rows = peer_summary(res)
    fc1 = next(r for r in res["linears"] if r["layer"] == "fc1" and r["M"] == 12608)["providers"]
    e = next(r for r in rows if r["layer"] == "fc1" and r["M"] == 12608 and r["kind"] == "int8 W8A8")
    peers = {p: v["ms"] for p, v in fc1.items() if p in ("torch._int_mm (raw int32)", "bnb LLM.int8 Linear8bitLt")}
    assert e["peer"] == min(peers, key=peers.get) and e["peer_ms"] == min(peers.values())
    assert e["qvit_ms"] == min(fc1["qvit w8a8 (int8 in)"]["ms"], fc1["qvit w8a8 (+act quant)"]["ms"])
    fp8 = next(r for r in rows if r["layer"] == "fc1" and r["M"] == 12608 and r["kind"] == "fp8 W8A8")
    assert fp8["speedup"] == fc1["torch._scaled_mm fp8 (raw)"]["ms"] / fp8["qvit_ms"] < 1
    assert f"**{fp8['speedup']:.2f}x**" in markdown(res)
    assert {r["kind"] for r in rows} == {"int8 W8A8", "fp8 W8A8", "4-bit weight-only"}


@pytest.mark.parametrize("module", ["qvit.profiling.attribution", "qvit.profiling.bench_e2e"])
def test_unknown_variant_name_is_an_error(tmp_path, capsys, module):
    """A --variants name neither tool knows stops it with the list of names, instead of measuring nothing."""
    import importlib
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--out", str(tmp_path), "--variants", "x fp8s+qvit-atn"])
    err = capsys.readouterr().err
    assert "unknown variant(s) ['x fp8s+qvit-atn']" in err and "x fp8s+qvit-attn-fp16qk" in err


def test_ncu_report_takes_speed_of_light_values_when_sections_share_a_name():
    """With more sections than Speed of Light (session 15's batch-1 run), "Memory Throughput" is both a % (Speed of
    Light) and a byte/s (Memory Workload Analysis): the table's "memory %" column is the former."""
    import os

    from qvit.profiling.ncu_report import parse
    csv = os.path.join(os.path.dirname(__file__), "..", "results", "h200-gpu-15", "call4-ncu-m197", "ncu_m197.csv")
    rows = {r["range"]: r for r in parse(open(csv).read())}
    assert rows["fp8fast_fc2_res_M197"]["Memory Throughput"] == ("13.62", "%")
    assert rows["fp8fast_fc2_res_M197"]["Duration"][0] == "11872"


def test_ncu_kernels_pin_specs():
    """`ncu_kernels --pin`: a config spec becomes the triton.Config the fc2 launch is pinned to; a malformed or
    incomplete one is refused by name before any GPU work."""
    import pytest

    from qvit.profiling.ncu_kernels import parse_pin
    c = parse_pin("BLOCK_M=64,BLOCK_N=32,BLOCK_K=128,SPLIT_K=4,warps=4,stages=3")
    assert c.kwargs == {"GROUP_M": 8, "BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 4}
    assert (c.num_warps, c.num_stages) == (4, 3)
    with pytest.raises(ValueError, match="unknown key 'BLOCK_X'"):
        parse_pin("BLOCK_M=64,BLOCK_X=3,BLOCK_K=128")
    with pytest.raises(ValueError, match="missing BLOCK_N"):
        parse_pin("BLOCK_M=64,BLOCK_K=128")
    with pytest.raises(ValueError, match="KEY=INT"):
        parse_pin("BLOCK_M=64;BLOCK_N=64")


def _tool(name: str):
    """tools/NAME.py loaded as a module (tools/ is not a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gemm_spread_summary_and_refusals():
    """tools/gemm_spread.py: per provider the trials' min / median (of an even count, the mean of the middle two) /
    max and max / min; no trials, no summary; the two operand switches exclude each other, and without a GPU the
    tool says so by name."""
    S = _tool("gemm_spread")
    rows = [{"us": {"cuda": 5.06, "triton": 5.20}}, {"us": {"cuda": 5.34, "triton": 5.28}},
            {"us": {"cuda": 5.10, "triton": 5.22}}, {"us": {"cuda": 5.20, "triton": 5.21}}]
    got = S.summarize(rows)
    assert got["cuda"] == pytest.approx({"min": 5.06, "median": 5.15, "max": 5.34, "spread": 5.34 / 5.06})
    assert got["triton"] == pytest.approx({"min": 5.20, "median": 5.215, "max": 5.28, "spread": 5.28 / 5.20})
    assert S.summarize([]) == {}
    with pytest.raises(SystemExit) as e:
        S.main(["--same-values", "--same-address"])
    assert e.value.code == 2
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            S.main(["--trials", "1"])


def test_l2_prefetch_ab_summary_settings_and_refusals():
    """tools/l2_prefetch_ab.py: per row the median of the rounds' p50 (odd and even counts), min, max and the
    ratios to the base and timm rows; `--setting` parses CTAS:THREADS:CHUNK and refuses anything else by name;
    `share_linears` makes every block run block 0's linears (and nothing else); without a GPU the tool says so."""
    import argparse
    from qvit.vit.model import ViT
    S = _tool("l2_prefetch_ab")
    rounds = [{"base": 1.0, "timm": 1.4, "prefetch 8:32:16384": 0.9}, {"base": 1.3, "timm": 1.5,
              "prefetch 8:32:16384": 0.8}, {"base": 1.1, "timm": 1.3, "prefetch 8:32:16384": 1.0}]
    got = S.summarize(rounds)  # medians, not means (base: mean 1.133)
    assert got["base"] == pytest.approx({"p50_ms": 1.1, "min_ms": 1.0, "max_ms": 1.3, "vs_base": 1.0,
                                         "vs_timm": 1.1 / 1.4})
    assert got["prefetch 8:32:16384"]["vs_base"] == pytest.approx(0.9 / 1.1)
    assert S.summarize(rounds[:2])["timm"]["p50_ms"] == pytest.approx(1.45)
    assert S.summarize([]) == {}
    assert S.parse_setting("16:64:4096") == {"ctas": 16, "threads": 64, "chunk": 4096}
    with pytest.raises(argparse.ArgumentTypeError, match="expected CTAS:THREADS:CHUNK"):
        S.parse_setting("16:64")
    m = ViT.from_name("vit_micro_patch4_32")
    norm1 = m.blocks[1].norm1
    S.share_linears(m)
    assert m.blocks[1].mlp.fc2 is m.blocks[0].mlp.fc2 and m.blocks[1].attn.qkv is m.blocks[0].attn.qkv
    assert m.blocks[1].norm1 is norm1
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            S.main(["--rounds", "1"])


def test_norm_fused_ab_rows_are_known_variants():
    """tools/norm_fused_ab.py: every row it captures names a variant bench_e2e can build (a typo would cost a device
    call), each fp8s4t variant appears with its LayerNorms fused (by exactly one switch) and unfused (by none), and
    without a GPU the tool says so."""
    from qvit.profiling.bench_e2e import QVIT_VARIANTS
    S = _tool("norm_fused_ab")
    rows = S.ROWS + S.ROWS_PROLOGUE + S.ROWS_4BIT
    assert all(v in QVIT_VARIANTS for _, v, _ in rows)
    assert all(set(env) == set(S.OFF) for _, _, env in rows)
    for v in {v for _, v, _ in rows if "s4t" in v}:
        on = sorted(sum(x == "1" for x in env.values()) for _, vv, env in rows if vv == v)
        assert on[0] == 0 and on[1:] and all(c == 1 for c in on[1:]), (v, on)
    assert len({label for label, _, _ in rows}) == len(rows)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            S.main(["--rounds", "1"])


def test_graph_timeline_replay_stats():
    """tools/graph_timeline.py: a replay's span, busy time as the union of overlapping kernel intervals (not their
    sum), idle = span - busy, gaps between consecutive starts and ends (negative where kernels overlap), per-class
    sums by kernel name; replays split evenly or refused; without a GPU the tool says so."""
    S = _tool("graph_timeline")
    ks = [(10.0, 14.0, "_w8a8_kernel"), (15.0, 20.0, "_attn_fwd"), (19.0, 22.0, "layernorm_quant_kernel"),
          (30.0, 31.0, "triton_poi_fused_add"), (0.0, 2.0, "nvjet_hsh_128x64")]
    r = S.replay_stats(ks)
    assert r["kernels"] == 5 and r["span_us"] == 31.0
    assert r["busy_us"] == 2.0 + 4.0 + 7.0 + 1.0 and r["idle_us"] == 31.0 - 14.0
    assert r["kernel_sum_us"] == 2 + 4 + 5 + 3 + 1
    assert r["gap_median_us"] == 4.5  # gaps 8, 1, -1, 8
    assert r["classes"] == {"gemm": {"us": 6.0, "count": 2}, "attention": {"us": 5.0, "count": 1},
                            "layernorm+quant": {"us": 3.0, "count": 1}, "other": {"us": 1.0, "count": 1}}
    assert list(r["names"]) == ["_attn_fwd", "_w8a8_kernel", "layernorm_quant_kernel", "nvjet_hsh_128x64",
                                "triton_poi_fused_add"]  # by summed time, longest first
    assert r["names"]["_w8a8_kernel"] == {"us": 4.0, "count": 1}
    parts = S.split_replays(ks + [(k[0] + 100, k[1] + 100, k[2]) for k in ks], 2)
    assert [len(p) for p in parts] == [5, 5] and parts[1][0][0] == 100.0
    with pytest.raises(ValueError, match="do not split into 3 equal replays"):
        S.split_replays(ks, 3)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            S.main(["--replays", "1"])


def test_sass_cuda_splits_a_listing_per_kernel():
    """tools/sass_cuda.py on a synthetic cuobjdump listing: one entry per `Function :` header with its own
    instructions only, registers from -res-usage, and the short name without namespaces or parameter list."""
    import shutil
    S = _tool("sass_cuda")
    from qvit.profiling.sass import instructions
    listing = """
        code for sm_90a
                Function : _Z1aILi1EEvv
        .headerflags    @"EF_CUDA_SM90"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                    /* 0x00000a00ff017b82 */
        /*0010*/                   IGMMA.64x32x32.S8.S8 R24, gdesc[UR4], RZ ;  /* 0x0000000000187b82 */
        /*0020*/                   EXIT ;                                      /* 0x000000000000794d */
                ..........
                Function : _Z1bv
        /*0000*/              @!P0 BRA 0x40 ;                                  /* 0x0000000000008947 */
        /*0010*/                   EXIT ;                                      /* 0x000000000000794d */
"""
    f = S.functions(listing)
    assert list(f) == ["_Z1aILi1EEvv", "_Z1bv"]
    assert [op for _, op, _ in instructions(f["_Z1aILi1EEvv"])] == ["LDC", "IGMMA.64x32x32.S8.S8", "EXIT"]
    assert [op for _, op, _ in instructions(f["_Z1bv"])] == ["BRA", "EXIT"]
    res = " Function _Z1aILi1EEvv:\n REG:80 STACK:0 SHARED:1024 LOCAL:0\n Function _Z1bv:\n REG:12 STACK:0"
    assert S.registers(res) == {"_Z1aILi1EEvv": 80, "_Z1bv": 12}
    if shutil.which("c++filt"):
        assert S.short_name("_ZN4qvit12_GLOBAL__N_117w8a8_wgmma_kernelI13__nv_bfloat16Li64ELi4ELb1ELi0ELb0ELi256ELb0"
                            "ELi1EEEvNS_8W8A8ArgsE14CUtensorMap_stS4_") == \
            "w8a8_wgmma_kernel<__nv_bfloat16, 64, 4, true, 0, false, 256, false, 1>"
