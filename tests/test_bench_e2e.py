"""The end-to-end benchmark harness on the CPU (tiny model, reference backends): rows, stats, files."""
import json

from qvit.profiling import bench_e2e


def test_stats_percentiles():
    s = bench_e2e._stats([float(i) for i in range(1, 101)])
    assert s["n"] == 100 and s["mean"] == 50.5 and s["p50"] in (50.0, 51.0) and s["p95"] == 95.0 and s["p99"] == 99.0


def test_e2e_cpu_run(tmp_path):
    rc = bench_e2e.main(["--out", str(tmp_path), "--device", "cpu", "--model", "vit_micro_patch4_32",
                         "--batches", "1", "3", "--iters", "3", "--only", "qvit",
                         "--variants", "1 bf16", "3 8bit+qvit-attn"])
    assert rc == 0
    res = json.loads((tmp_path / "bench_e2e.json").read_text())
    assert [r["variant"] for r in res["rows"]] == ["1 bf16", "3 8bit+qvit-attn"]
    for r in res["rows"]:
        assert "error" not in r, r
        assert r["batch1"]["eager_ms"]["n"] == 3 and r["batch3"]["img_per_s"] > 0
        assert 0 < r["disk_bytes"] and 0 < r["weight_bytes"]
    assert res["rows"][1]["weight_bytes"] < res["rows"][0]["weight_bytes"]
    md = (tmp_path / "bench_e2e.md").read_text()
    assert "| 3 8bit+qvit-attn |" in md


def test_sizes_only(tmp_path):
    assert bench_e2e.main(["--out", str(tmp_path), "--model", "vit_cifar_patch4_32", "--sizes-only"]) == 0
    rows = json.loads((tmp_path / "sizes.json").read_text())["rows"]
    by = {(r["variant"], r["keep_format"]): r for r in rows}
    assert by[("1 bf16", "float")]["disk_vs_bf16"] == 1.0
    four = by[("2 4bit+qvit-attn", "int8")]["disk_vs_bf16"]
    eight = by[("3 8bit+qvit-attn", "int8")]["disk_vs_bf16"]
    assert four < eight < 1.0
