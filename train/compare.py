"""`qvit compare`: the whole study protocol in one command, in stages that each leave small artifacts.

    qvit compare [--out results/compare] [--stages train,study,qat,qlora,e2e,report] [--tiny]

Stages (a stage whose artifact exists is skipped, so a run cut by a time limit resumes where it stopped):

    train   the CIFAR-10 baseline (`qvit train` defaults)                -> OUT/train/model.safetensors
    study   the PTQ variants on qvit's kernels + sensitivity ablation    -> OUT/study/study_ptq.json
    qat     4-bit QAT finetune from the baseline, then its study          -> OUT/qat-w4a8p/...
    qlora   QLoRA (NF4 base + LoRA rank 8), merged and re-quantized       -> OUT/qlora/summary.json
    e2e     ViT-L/16 speed, memory and size of the variants and the peers -> OUT/bench_e2e.json
    report  RESULTS.md: one table (accuracy from CIFAR-10, speed/size from ViT-L/16), plots

Without a GPU it runs the same stages at a tiny scale (a micro/CIFAR-sized model, a few hundred images,
one epoch, the reference backends) and says so in the report: that proves the pipeline, not a result.
"""
from __future__ import annotations

import os
import sys

import torch

from qvit.train.report import _load
from qvit.variants import FOUR_BIT, MAIN, VARIANTS

# the rows a QAT or QLoRA model is evaluated on: those whose 4-bit preset the finetune fake-quantized (FOUR_BIT, the
# int8 pipeline's; the study's own 4-bit rows run w4f8s2t, which QAT does not model)
QAT_ROWS = ("1 bf16",) + tuple(k for k in ("x 4bit-int8+qvit-attn", "x 4bit-int8+sdpa-noflash")
                               if VARIANTS[k][0] == FOUR_BIT)

STAGES = ("train", "study", "qat", "qlora", "e2e", "report")


def _qat_rows(variants: dict, preset: str) -> list[str]:
    """The rows of a QAT model's study that ran the preset it was finetuned for, under the names that study gave
    them (QAT_ROWS today; a study of session 8 named its w4a8 rows "2 4bit+..." / "4 4bit+...", which are now the
    fp8 rows), without the extra rows' variations (", kept float", ", smoothquant")."""
    return [k for k, r in variants.items() if k != "1 bf16" and "," not in k and r.get("preset") == preset]


def _say(msg):
    print(f"qvit compare: {msg}", file=sys.stderr)


def run(out: str, stages=STAGES, tiny: bool | None = None, device=None, e2e_file=None, sizes_file=None,
        study_file=None) -> str:
    from dataclasses import replace

    from qvit.train.trainer import TrainConfig, train
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if tuple(stages) == ("report",):
        # a report of stages run elsewhere (e.g. on a GPU): tiny only if the training ran at tiny scale
        tr = _load(os.path.join(out, "train", "summary.json")) or {}
        return write_results(out, tiny if tiny is not None else tr.get("device", "cpu") == "cpu", e2e_file, sizes_file,
                             study_file)
    tiny = (device == "cpu") if tiny is None else tiny
    if tiny:
        _say("no GPU (or --tiny): running the protocol at a tiny scale with the reference backends; "
             "the numbers prove the pipeline, they are not results")
    os.makedirs(out, exist_ok=True)
    base_cfg = TrainConfig(out=os.path.join(out, "train"), progress=False)
    limit_test = None
    if tiny:
        base_cfg = replace(base_cfg, epochs=1, batch_size=64, limit_train=512, limit_test=300, warmup_epochs=0,
                           eval_every=1, compile="off", ema_decay=0.0)
        limit_test = 300
    model_file = os.path.join(base_cfg.out, "model.safetensors")
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if "train" in stages and not os.path.exists(model_file):
        _say("stage train")
        train(base_cfg, resume=True, device=device)
    need_model = {"study", "qat", "qlora"} & set(stages)
    if need_model and not os.path.exists(model_file):
        raise FileNotFoundError(f"{model_file}: no trained model; run the train stage first")
    if "study" in stages and not os.path.exists(os.path.join(out, "study", "study_ptq.json")):
        _say("stage study")
        from qvit.train.study import study
        study(model_file, os.path.join(out, "study"), device=device, limit_test=limit_test,
              variants=list(MAIN) + list(QAT_ROWS[1:]) if tiny else None, ablation=not tiny)
    short = dict(epochs=1 if tiny else 15, lr=1e-4, warmup_epochs=0 if tiny else 1, eval_every=1 if tiny else 5,
                 pretrained=model_file)
    qdir = os.path.join(out, f"qat-{FOUR_BIT}")
    if "qat" in stages and not os.path.exists(os.path.join(qdir, "summary.json")):
        _say(f"stage qat ({FOUR_BIT})")
        train(replace(base_cfg, out=qdir, qat=FOUR_BIT, **short), resume=True, device=device)
        from qvit.train.study import study
        study(os.path.join(qdir, "model.safetensors"), os.path.join(qdir, "study"),
              device=device, limit_test=limit_test, variants=list(QAT_ROWS),
              ablation=False)
    if "qlora" in stages and not os.path.exists(os.path.join(out, "qlora", "summary.json")):
        _say("stage qlora (rank 8)")
        train(replace(base_cfg, out=os.path.join(out, "qlora"), qlora_rank=8, **{**short, "lr": 1e-3}),
              resume=True, device=device)
    if "e2e" in stages and not os.path.exists(os.path.join(out, "bench_e2e.json")):
        _say("stage e2e")
        from qvit.profiling import bench_e2e
        args = ["--out", out, "--device", device]
        if tiny:
            args += ["--model", "vit_micro_patch4_32", "--batches", "1", "4", "--iters", "5", "--only", "qvit"]
        bench_e2e.main(args)
    if "report" in stages:
        return write_results(out, tiny, e2e_file, sizes_file, study_file)
    return out


def _first(*paths):
    return next((d for d in map(_load, paths) if d is not None), None)


def write_results(out: str, tiny: bool, e2e_file: str | None = None, sizes_file: str | None = None,
                  study_file: str | None = None) -> str:
    """OUT/RESULTS.md and the two plots from whatever stages have run.

    Reads the `qvit compare` layout (train/, study/, qat-<4-bit preset>/, qlora/, bench_e2e.json) and the gpu_run one
    (qat-qlora/, study/ablation_from_log.json). e2e_file: a bench_e2e.json measured elsewhere (another run
    folder); sizes_file: a `bench_e2e --sizes-only` JSON, used for the disk column and the size plot where
    the e2e run has no size for a variant (file sizes depend only on shapes and formats); study_file: a
    study_ptq.json from another folder (a later study of the same model)."""
    tr = _load(os.path.join(out, "train", "summary.json"))
    st = _load(study_file or os.path.join(out, "study", "study_ptq.json"))
    if st is not None and "ablation" not in st:
        ab = _load(os.path.join(out, "study", "ablation_from_log.json"))
        if ab is not None:
            st["ablation"] = ab
    e2e_files = [e2e_file] if isinstance(e2e_file, str) else list(e2e_file or [])
    e2e = _combine_e2e(e2e_files) if len(e2e_files) > 1 else _load(
        e2e_files[0] if e2e_files else os.path.join(out, "bench_e2e.json"))
    sizes = {r["variant"].split(" ")[0]: r for r in ((_load(sizes_file) or {}).get("rows", []) if sizes_file else [])
             if r.get("keep_format") == "int8" or r["variant"].startswith("1 ")}
    # the QAT of the study's 4-bit preset, else of the earlier one (w4a8: runs before w4a8p was the 4-bit row)
    qdir = next((os.path.join(out, f"qat-{p}") for p in (FOUR_BIT, "w4a8")
                 if os.path.exists(os.path.join(out, f"qat-{p}", "summary.json"))), os.path.join(out, f"qat-{FOUR_BIT}"))
    qat = _load(os.path.join(qdir, "summary.json"))
    qstudy = _load(os.path.join(qdir, "study", "study_ptq.json"))
    ql = _first(os.path.join(out, "qlora", "summary.json"), os.path.join(out, "qat-qlora", "summary.json"))
    qlstudy = _first(os.path.join(out, "qlora", "study", "study_ptq.json"),
                     os.path.join(out, "qat-qlora", "study", "study_ptq.json"))
    lines = ["# qvit study results", ""]
    if tiny:
        lines += ["**Tiny CPU run: the protocol at toy scale with reference backends. Not a result.**", ""]
    if tr:
        lines += [f"Baseline: {tr['model_config'].get('embed_dim')}-wide, {tr['model_config'].get('depth')}-deep "
                  f"ViT ({tr['params'] / 1e6:.2f}M params) trained on CIFAR-10 ({tr['history'][-1]['epoch']} epochs, "
                  f"{tr['train_seconds']:.0f} s on {tr['device']}): top-1 {tr['test']['top1']:.2f}.", ""]
    ref_acc = (st or {}).get("variants", {}).get("1 bf16")
    e2e_rows = {r["variant"].split(" ")[0]: r for r in (e2e or {}).get("rows", []) if "error" not in r}
    ref_speed = next((r for r in (e2e or {}).get("rows", []) if r["variant"].startswith("timm bf16 (sdpa)")), None) \
        or e2e_rows.get("1")
    lines += ["| variant | top-1 | top-5 | macro-F1 | d top-1 | b1 mean ms | p50 | p95 | p99 | img/s b64 | "
              "img/s b256 | x bf16 | disk MiB | GPU peak GiB |", "|" + "---|" * 14]
    keys = list((st or {}).get("variants", {}))
    main = [k for k in keys if k[0].isdigit()] or [k for k in e2e_rows]
    for k in main:
        a = (st or {}).get("variants", {}).get(k)
        s = e2e_rows.get(k.split(" ")[0])
        if s is None and k.split(" ")[0] in sizes:
            s = {"disk_bytes": sizes[k.split(" ")[0]]["disk_bytes"], "sizes_only": True}
        cells = [k]
        cells += [f"{a['top1']:.2f}", f"{a['top5']:.2f}", f"{a['macro_f1']:.2f}",
                  f"{a['top1'] - ref_acc['top1']:+.2f}"] if a and ref_acc else ["-"] * 4
        if s and s.get("sizes_only"):
            cells += ["-"] * 7 + [f"{s['disk_bytes'] / 2 ** 20:.1f}", "-"]
        elif s:
            b1 = s.get("batch1", {}).get("graphed_ms") or s.get("batch1", {}).get("eager_ms")
            cells += [f"{b1[q]:.3f}" for q in ("mean", "p50", "p95", "p99")] if b1 else ["-"] * 4
            cells += [f"{s[f'batch{b}']['img_per_s']:.0f}" if f"batch{b}" in s else "-" for b in (64, 256)]
            big = max(int(x[5:]) for x in s if x.startswith("batch"))
            base = (s.get("ref_img_per_s") or {}).get(f"batch{big}") or \
                (ref_speed or {}).get(f"batch{big}", {}).get("img_per_s")  # a merged run: its own baseline
            cells.append(f"{s[f'batch{big}']['img_per_s'] / base:.2f}x" if base else "-")
            cells += [f"{s['disk_bytes'] / 2 ** 20:.1f}" if s.get("disk_bytes") else "-",
                      f"{s['peak_mem_bytes'] / 2 ** 30:.2f}" if s.get("peak_mem_bytes") else "-"]
        else:
            cells += ["-"] * 9
        lines.append("| " + " | ".join(cells) + " |")
    ref_name = ref_speed["variant"] if ref_speed else "?"
    lines += ["", f"Accuracy: CIFAR-10 test images ({(st or {}).get('n_test', '?')}, real) on "
              f"{(st or {}).get('linear_backend', '?')} linears; speed, size and memory: "
              f"{(e2e or {}).get('model', '?')} with random weights on {(e2e or {}).get('env', {}).get('card', '?')} "
              f"(batch-1 latency graphed where capturable; x bf16 = img/s at the largest batch over '{ref_name}' "
              "in the same run). Source files: train/summary.json, "
              f"{os.path.relpath(study_file, out) if study_file else 'study/study_ptq.json'}, "
              + (", ".join(f"{os.path.relpath(f, out)} ({', '.join(f'b{b}' for b in bs) or 'nothing shown'})"
                           for f, bs in _e2e_sources(e2e, e2e_files, main).items()) if len(e2e_files) > 1 else
                 os.path.relpath(e2e_files[0], out) if e2e_files else "bench_e2e.json")
              + (f"; disk MiB where no e2e row has it: {os.path.relpath(sizes_file, out)} (safetensors files written on "
                 "a CPU; sizes depend only on shapes and formats)" if sizes else "") + ".", ""]
    if not any(k[0].isdigit() for k in e2e_rows) and not tiny:
        lines += ["**Speed columns: not measured yet.** The ViT-L/16 end-to-end benchmark "
                  "(`profiling/bench_e2e.py`) has not completed a run with the qvit variants on a GPU; '-' means "
                  "not measured, never zero.", ""]
    if qat or qstudy or ql:
        lines += ["## Recovery", ""]
        if qstudy:
            v = qstudy["variants"]
            for k in _qat_rows(v, qat["config"]["qat"] if qat else FOUR_BIT):
                if ref_acc:
                    r = v[k]
                    how = f"{r.get('preset', '?')} linears, {r.get('attn', '?')} attention" + (
                        ", int8 Q/K" if r.get("int8_qk") else "")
                    lines.append(f"- QAT {qat['config']['qat'] if qat else '?'} ({qat['config']['epochs'] if qat else '?'} "
                                 f"epochs) then {how} (its study's row '{k}'): top-1 "
                                 f"{r['top1']:.2f} ({r['top1'] - ref_acc['top1']:+.2f} vs bf16 baseline)")
        if ql and "qlora" in ql:
            q = ql["qlora"]
            lines.append(f"- QLoRA rank {ql['config']['qlora_rank']} ({ql['config']['epochs']} epochs): before merge "
                         f"(bitsandbytes NF4 + LoRA) top-1 "
                         f"{q['before_merge']['top1']:.2f}; merged float {q['merged_float']['top1']:.2f}; re-quantized "
                         f"qvit NF4 {q['merged_nf4']['top1']:.2f}, W4A8 {q['merged_w4a8']['top1']:.2f}")
        if qlstudy and ref_acc:
            v = qlstudy["variants"]
            for k in QAT_ROWS[1:]:
                if k in v:
                    lines.append(f"- QLoRA merged model then {k}: top-1 {v[k]['top1']:.2f} "
                                 f"({v[k]['top1'] - ref_acc['top1']:+.2f} vs bf16 baseline)")
        lines.append("")
    ab = (st or {}).get("ablation")
    if ab:
        lines += [f"## Layerwise sensitivity ({ab['preset']} on the named layers only, the rest float; drop vs float "
                  f"{ab['top1'].get('float', float('nan')):.2f})", "", "| quantized | top-1 | drop |", "|---|---:|---:|"]
        lines += [f"| {k} | {t:.2f} | {ab['drop'][k]:+.2f} |" for k, t in ab["top1"].items() if k != "float"]
        if ab.get("source"):
            lines += ["", f"Source: {ab['source']}."]
        lines += ["", "0.1 points is 10 test images: differences this small are at the noise level of one evaluation.", ""]
    pngs = _plots(out, st, {**{k: {"disk_bytes": r["disk_bytes"]} for k, r in sizes.items()}, **e2e_rows})
    lines += [f"![{os.path.splitext(p)[0]}]({p})" for p in pngs]
    path = os.path.join(out, "RESULTS.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _combine_e2e(paths: list[str]) -> dict:
    """One e2e result from several bench_e2e runs of the same model, for the report's columns: for each variant
    and batch size the last file that measured it wins; each batch entry keeps the img/s of its own run's
    baseline (`ref_img_per_s`), so every ratio is a same-run ratio, and the weight / disk / peak-memory fields come
    from the run that gave the row's largest batch. `won`: (variant, batch key) -> the file it came from."""
    runs = [_load(p) for p in paths]
    for p, r in zip(paths, runs):
        if r is None:
            raise FileNotFoundError(f"qvit compare --e2e {p}: no such file")
    if len({r["model"] for r in runs}) != 1:
        raise ValueError("qvit compare: the --e2e files measure different models: "
                         + ", ".join(f"{p}: {r['model']}" for p, r in zip(paths, runs)))
    rows, order, won = {}, [], {}
    for p, run in zip(paths, runs):
        ref = next((r for r in run["rows"] if r["variant"].startswith("timm bf16 (sdpa)") and "error" not in r), None)
        for r in run["rows"]:
            if "error" in r:
                continue
            key = r["variant"]
            if key not in rows:
                rows[key], _ = {"variant": key, "ref_img_per_s": {}}, order.append(key)
            for b in (k for k in r if k.startswith("batch")):
                base = (r.get("ref_img_per_s") or {}).get(b) or (ref or {}).get(b, {}).get("img_per_s")
                rows[key][b] = r[b]
                rows[key]["ref_img_per_s"][b] = base
                won[key, b] = p
            big = max(int(k[5:]) for k in rows[key] if k.startswith("batch"))
            if f"batch{big}" in r:
                rows[key].update({k: r[k] for k in ("weight_bytes", "disk_bytes", "peak_mem_bytes") if k in r})
    return {"model": runs[0]["model"], "env": runs[-1]["env"], "rows": [rows[k] for k in order],
            "batches": sorted({b for r in runs for b in r["batches"]}),
            "won": won}


def _e2e_sources(e2e: dict, paths: list[str], shown: list[str]) -> dict:
    """{file: the batch sizes it gave the rows shown} of a `_combine_e2e` result (`shown`: the table's variants,
    matched by their leading token as the table matches them)."""
    tokens = {k.split(" ")[0] for k in shown}
    return {p: sorted({int(b[5:]) for (v, b), q in e2e["won"].items() if q == p and v.split(" ")[0] in tokens})
            for p in paths}


def _plots(out, st, e2e_rows) -> list[str]:
    if not st:
        return []
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    pts = []
    for k, a in st["variants"].items():
        s = e2e_rows.get(k.split(" ")[0]) if k[0].isdigit() else None
        pts.append((k, a, s))
    for fname, xlabel, xfn in (
            ("accuracy_vs_size.png", "ViT-L/16 file size (MiB)",
             lambda a, s: s["disk_bytes"] / 2 ** 20 if s and s.get("disk_bytes") else None),
            ("accuracy_vs_latency.png", "ViT-L/16 batch-1 latency, p50 (ms)",
             lambda a, s: ((s.get("batch1", {}).get("graphed_ms") or s.get("batch1", {}).get("eager_ms") or {})
                           .get("p50") if s else None))):
        xs = [(k, xfn(a, s), a["top1"]) for k, a, s in pts]
        xs = [(k, x, y) for k, x, y in xs if x is not None]
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for k, x, y in xs:
            ax.scatter(x, y, s=30)
            ax.annotate(k, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CIFAR-10 top-1 (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.1)  # room for the labels
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=120)
        plt.close(fig)
        made.append(fname)
    return made
