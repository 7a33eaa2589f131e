"""The end-to-end benchmark harness on the CPU (tiny model, reference backends): rows, stats, files."""
import json

import pytest

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


def test_e2e_l2_prefetch_rows(tmp_path):
    """--l2-prefetch both: each qvit variant with and without the prefetch, the second named '[l2 prefetch]' (on a
    CPU the prefetch is inert: the harness only); an unknown mode is refused."""
    rc = bench_e2e.main(["--out", str(tmp_path), "--device", "cpu", "--model", "vit_micro_patch4_32",
                         "--batches", "1", "--iters", "2", "--only", "qvit", "--variants", "3 8bit+qvit-attn",
                         "--l2-prefetch", "both"])
    assert rc == 0
    res = json.loads((tmp_path / "bench_e2e.json").read_text())
    assert [r["variant"] for r in res["rows"]] == ["3 8bit+qvit-attn", "3 8bit+qvit-attn [l2 prefetch]"]
    assert all("error" not in r for r in res["rows"])
    with pytest.raises(SystemExit):
        bench_e2e.main(["--out", str(tmp_path), "--l2-prefetch", "yes"])


def test_build_variant_one_row_or_a_named_refusal():
    """build_variant: a study variant quantized from the seed-0 base (the same weights at every call), in eval
    mode; an unknown name is refused with the names bench_e2e knows."""
    import torch
    a = bench_e2e.build_variant("3 8bit+qvit-attn", "torch", torch.device("cpu"), torch.float32, "vit_micro_patch4_32")
    b = bench_e2e.build_variant("3 8bit+qvit-attn", "torch", torch.device("cpu"), torch.float32, "vit_micro_patch4_32")
    assert not a.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="unknown variant '9 nope'; bench_e2e knows: 1 bf16"):
        bench_e2e.build_variant("9 nope", "torch", torch.device("cpu"), torch.float32)


def test_e2e_warm_copy_runs_the_variants_once_and_times_nothing(tmp_path, monkeypatch):
    """A --warm-shard copy (qvit.profiling.warm) runs each qvit variant's forward once per batch size and
    records no row, no timing and no safetensors write, whatever --only asked for."""
    calls = []
    real = bench_e2e.measure

    def spy(*a, **k):
        calls.append((a[0], k.get("warm_only")))
        return real(*a, **k)
    monkeypatch.setattr(bench_e2e, "measure", spy)
    monkeypatch.setattr(bench_e2e, "_disk", lambda write: (_ for _ in ()).throw(AssertionError("disk write")))
    rc = bench_e2e.main(["--out", str(tmp_path), "--device", "cpu", "--model", "vit_micro_patch4_32",
                         "--batches", "1", "3", "--only", "qvit,timm,bnb", "--warm-shard", "1/4",
                         "--variants", "1 bf16", "3 8bit+qvit-attn"])
    assert rc == 0
    assert calls == [("1 bf16", True), ("3 8bit+qvit-attn", True)]
    assert not any(tmp_path.iterdir())


def test_sizes_only(tmp_path):
    assert bench_e2e.main(["--out", str(tmp_path), "--model", "vit_cifar_patch4_32", "--sizes-only"]) == 0
    rows = json.loads((tmp_path / "sizes.json").read_text())["rows"]
    by = {(r["variant"], r["keep_format"]): r for r in rows}
    assert by[("1 bf16", "float")]["disk_vs_bf16"] == 1.0
    four = by[("2 4bit+qvit-attn", "int8")]["disk_vs_bf16"]
    eight = by[("3 8bit+qvit-attn", "int8")]["disk_vs_bf16"]
    assert four < eight < 1.0


def _run(tmp_path, name, ref_ips, rows, commit="abc"):
    """A bench_e2e.json with a timm baseline at `ref_ips` img/s (batch 4) and qvit `rows` {variant: img/s}."""
    def row(v, ips):
        return {"variant": v, "batch1": {"eager_ms": {"p50": 1.0}, "img_per_s": 1000.0}, "batch4": {"img_per_s": ips},
                "weight_bytes": 1}
    res = {"model": "m", "device": "cuda", "batches": [1, 4], "env": {"card": "H200", "commit": commit},
           "rows": [row("timm bf16 (sdpa)", ref_ips)] + [row(v, ips) for v, ips in rows.items()], "missing": {}}
    p = tmp_path / name
    p.mkdir()
    (p / "bench_e2e.json").write_text(json.dumps(res))
    return str(p / "bench_e2e.json")


def test_merge_keeps_each_runs_baseline(tmp_path):
    import pytest
    a = _run(tmp_path, "gpu0", 100.0, {"1 bf16": 100.0, "3 8bit": 150.0})
    b = _run(tmp_path, "gpu1", 200.0, {"5 8bit": 300.0})
    res = bench_e2e.merge([a, b])
    by = {r["variant"]: r for r in res["rows"]}
    assert set(by) == {"timm bf16 (sdpa)", "1 bf16", "3 8bit", "timm bf16 (sdpa) (run 2)", "5 8bit"}
    assert by["3 8bit"]["ref_img_per_s"]["batch4"] == 100.0 and by["5 8bit"]["ref_img_per_s"]["batch4"] == 200.0
    md = bench_e2e.to_markdown(res)
    assert "| 3 8bit |" in md and "1.50x" in md  # 150 / 100, its own run's baseline
    assert "| 5 8bit |" in md and "1.50x |" in md.split("| 5 8bit |")[1].split("\n")[0]  # 300 / 200, not / 100
    c = _run(tmp_path, "other", 100.0, {"2 4bit": 90.0}, commit="def")
    with pytest.raises(ValueError, match="commit"):
        bench_e2e.merge([a, c])


def test_merge_runs_of_different_batch_sizes(tmp_path):
    """Lanes that measured different batch sizes (one lane's peers at batch 64 only): the merged result has the
    union, a row shows '-' for a batch its run did not measure, and ratios stay against each run's baseline."""
    a = _run(tmp_path, "gpu0", 100.0, {"3 8bit": 150.0})
    b = _run(tmp_path, "gpu1", 200.0, {"torchao": 100.0})
    d = json.loads(open(b).read())
    d["batches"] = [4]
    for r in d["rows"]:
        del r["batch1"]
    open(b, "w").write(json.dumps(d))
    res = bench_e2e.merge([a, b])
    assert res["batches"] == [1, 4]
    md = bench_e2e.to_markdown(res)
    line = next(ln for ln in md.splitlines() if ln.startswith("| torchao |"))
    assert line.startswith("| torchao | - | - | - | - | - | 100 | 0.50x |"), line


def test_peer_failure_is_one_error_row(tmp_path):
    """Peers run in processes of their own: one that cannot run (here timm has no such model) becomes an error
    row naming the reason, and the rows before it are kept."""
    rc = bench_e2e.main(["--out", str(tmp_path), "--device", "cpu", "--model", "vit_micro_patch4_32",
                         "--batches", "1", "--iters", "2", "--only", "qvit,compile", "--variants", "1 bf16",
                         "--peers-on-cpu"])
    assert rc == 0
    rows = json.loads((tmp_path / "bench_e2e.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["1 bf16", "timm bf16 + torch.compile"]
    assert "error" not in rows[0]
    assert rows[1]["error"].startswith("exit ") and "vit_micro_patch4_32" in rows[1]["error"]


def test_unknown_peer_is_refused():
    import pytest
    with pytest.raises(ValueError, match="unknown peer 'nope'"):
        bench_e2e.build_peer("nope", "vit_micro_patch4_32", None, None)


def test_torchao_and_bnb_quantize_only_the_blocks():
    import torch.nn as nn
    assert bench_e2e._blocks_only(nn.Linear(2, 2), "blocks.3.mlp.fc1")
    assert not bench_e2e._blocks_only(nn.Linear(2, 2), "head")
    assert not bench_e2e._blocks_only(nn.LayerNorm(2), "blocks.3.norm1")
