"""The `qvit` command.

    qvit info                      versions, devices and which backends resolve here
    qvit check [--model NAME]      quantize a model with every preset and report accuracy vs float (default run)
    qvit quantize --out FILE ...   quantize a float model (config name, qvit file or timm checkpoint) to one file
    qvit bench [--out DIR]         GPU kernel benchmarks against their baselines -> JSON + markdown
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _cmd_info(args) -> int:
    import platform

    import torch

    import qvit
    from qvit import _ext
    from qvit.backend import cuda_ext_reason, resolve_attn_backend, resolve_backend, triton_reason
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    info = {
        "qvit": qvit.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "triton": _version("triton"), "timm": _version("timm"), "bitsandbytes": _version("bitsandbytes"),
        "flash_attn": _version("flash_attn"),
        "triton_ready": triton_reason(dev) or "yes", "cuda_ext": _ext.load_error() or "loaded",
        "cuda_backend": cuda_ext_reason(dev) or "yes",
        "linear_backend(auto)": resolve_backend(None, dev).value,
        "attn_backend(auto)": resolve_attn_backend(None, dev).value,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:22s} {v}")
    return 0


def _version(mod):
    import importlib.metadata as md
    try:
        return md.version(mod.replace("_", "-"))
    except md.PackageNotFoundError:
        return None


def _sqnr_db(ref, y):
    import torch
    err = (ref.float() - y.float()).pow(2).mean()
    return float(10 * torch.log10(ref.float().pow(2).mean() / err.clamp(min=1e-30)))


def _cmd_check(args) -> int:
    """Default run: every quantization preset on one model, logits vs the float model."""
    import copy

    import torch

    from qvit.vit import QuantConfig, ViT, quantize, weight_bytes
    torch.manual_seed(args.seed)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if dev == "cpu" else torch.float16
    base = ViT.from_name(args.model).eval().to(dev, dtype)
    x = torch.randn(args.batch, 3, base.cfg.img_size, base.cfg.img_size, device=dev, dtype=dtype)
    with torch.no_grad():
        ref = base(x)
    rows = [dict(variant="float", bytes=weight_bytes(base), sqnr_db=float("inf"), cosine=1.0, top1_agree=1.0,
                 ms=None)]
    for preset in args.presets:
        cfg = QuantConfig.preset(preset, keep=tuple(args.keep))
        # static activation scales (fp8s) calibrated on the same random batch the comparison runs
        m = quantize(copy.deepcopy(base), cfg, calib=x if cfg.needs_calibration else None)
        m.set_backend(linear=args.backend, attn=args.attn)
        with torch.no_grad():
            t0 = time.perf_counter()
            y = m(x)
            if dev == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
        rows.append(dict(variant=preset, bytes=weight_bytes(m), sqnr_db=_sqnr_db(ref, y),
                         cosine=float(torch.nn.functional.cosine_similarity(ref.flatten().float(), y.flatten().float(), 0)),
                         top1_agree=float((ref.argmax(-1) == y.argmax(-1)).float().mean()), ms=ms))
    print(f"model {args.model} (random weights), batch {args.batch}, device {dev}, "
          f"backend {args.backend or 'auto'}, kept in float: {', '.join(args.keep) or 'nothing'}")
    print(f"{'variant':8s} {'weights MB':>10s} {'SQNR dB':>8s} {'cosine':>8s} {'top1 agree':>10s} {'first call ms':>13s}")
    for r in rows:
        ms = f"{r['ms']:.1f}" if r["ms"] is not None else "-"
        print(f"{r['variant']:8s} {r['bytes'] / 1e6:10.2f} {r['sqnr_db']:8.1f} {r['cosine']:8.4f} "
              f"{r['top1_agree']:10.2f} {ms:>13s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def _cmd_quantize(args) -> int:
    import os

    from qvit.vit import QuantConfig, ViT, load_model, load_timm_checkpoint, quantize, save_quantized, weight_bytes
    src = args.model
    if os.path.isfile(src):
        if args.config:
            model = load_timm_checkpoint(ViT.from_name(args.config), src)
        else:
            model = load_model(src)
    else:
        model = ViT.from_name(src)
    before = weight_bytes(model)
    overrides = {} if args.group_size is None else {"group_size": args.group_size}
    cfg = QuantConfig.preset(args.preset, keep=tuple(args.keep), keep_format=args.keep_format, **overrides)
    calib = None
    if cfg.needs_calibration:
        if args.calib is None:
            raise SystemExit(f"qvit quantize: preset {args.preset} runs {', '.join(cfg.static_inputs())} at static fp8 "
                             f"scales calibrated on images: pass --calib cifar10 (32 px models) or --calib FOLDER")
        from qvit.vit.deploy import calibration_images
        try:
            calib = calibration_images(model, args.calib, args.calib_n)
        except ValueError as e:
            raise SystemExit(f"qvit quantize: {e}") from None
    quantize(model.eval(), cfg, calib=calib)
    save_quantized(model, args.out)
    print(f"{src} -> {args.out}: {args.preset}, weights {before / 1e6:.1f} MB -> {weight_bytes(model) / 1e6:.1f} MB, "
          f"file {os.path.getsize(args.out) / 1e6:.1f} MB")
    return 0


def _cmd_compare(args) -> int:
    from qvit.train.compare import STAGES, run
    stages = tuple(args.stages.split(",")) if args.stages else STAGES
    print(run(args.out, stages, tiny=True if args.tiny else None, device=args.device, e2e_file=args.e2e,
              sizes_file=args.sizes, study_file=args.study))
    return 0


def _cmd_demo(args) -> int:
    from qvit import demo
    return demo.main(args)


def _cmd_predict(args) -> int:
    import torch

    from qvit.vit.deploy import Predictor, load_any
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pred = Predictor(load_any(args.model), dev, linear=args.backend, attn=args.attn)
    preds = pred(args.images, k=args.top)
    failed = 0
    rows = []
    for r in preds:
        if r.error:
            failed += 1
            print(f"qvit predict: {r.error}", file=sys.stderr)
            rows.append({"image": r.path, "error": r.error})
            continue
        rows.append({"image": r.path, "top": [{"label": lb, "p": round(p, 5)} for lb, p in r.top],
                     "latency_ms": round(r.latency_ms, 3)})
        if not args.json:
            print(f"{r.path}  ({r.latency_ms:.2f} ms)")
            for lb, p in r.top:
                print(f"  {p:7.2%}  {lb}")
    if args.json:
        print(json.dumps({"model": args.model, "device": dev, "predictions": rows}, indent=1))
    if failed == len(preds):
        return 1
    return 0


def _cmd_bench(args) -> int:
    from qvit.profiling import bench_kernels
    return bench_kernels.main(["--out", args.out] + (["--quick"] if args.quick else []))


def _cmd_train(args) -> int:
    from dataclasses import replace

    from qvit.train.augment import AugmentConfig
    from qvit.train.trainer import TrainConfig, train
    cfg = TrainConfig()
    over = {k: getattr(args, k) for k in ("model", "data", "data_root", "epochs", "batch_size", "lr", "warmup_epochs",
                                          "weight_decay", "drop_path", "ema_decay", "seed", "amp", "compile", "attn", "pretrained",
                                          "out", "qat", "qlora_rank", "eval_every", "limit_train", "limit_test", "max_steps", "img_size")
            if getattr(args, k) is not None}
    cfg = replace(cfg, **over)
    if args.no_aug:
        cfg.aug = AugmentConfig(num_ops=0, erase_p=0.0, mix_p=0.0, label_smoothing=cfg.aug.label_smoothing)
    cfg.progress = not args.no_progress
    if args.profile_steps:
        cfg.profile_steps = tuple(args.profile_steps)
    s = train(cfg, resume=args.resume, device=args.device)
    print(json.dumps({"out": cfg.out, "test": s["test"], "train_seconds": round(s["train_seconds"], 1),
                      "steps": s["steps"]}))
    return 0


def _cmd_study(args) -> int:
    from qvit.train.study import study
    r = study(args.model, args.out, device=args.device, data_root=args.data_root, limit_test=args.limit_test,
              variants=args.variants, ablation=not args.no_ablation, ablation_rows=args.ablation_rows)
    print(json.dumps({k: {"top1": round(v["top1"], 2), "top5": round(v["top5"], 2), "macro_f1": round(v["macro_f1"], 2)}
                      for k, v in r["variants"].items()}, indent=1))
    return 0


def _cmd_report(args) -> int:
    from qvit.train.report import write
    for run in args.runs:
        print(write(run))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvit", description="Quantized Vision Transformers with fused Triton/CUDA kernels.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    s = sub.add_parser("info", help="versions, devices and which backends resolve here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("check", help="quantize a model with every preset and compare its logits with float (default run)")
    s.add_argument("--model", default="vit_small_patch4_32")
    s.add_argument("--presets", nargs="+", default=["w8a8", "fp8", "fp8s", "fp8s2t", "w4a8", "w4a8p", "w4f8s2t", "w4a16", "nf4"])
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--keep", nargs="*", default=["head", "blocks.0.", "blocks.-1."])
    s.add_argument("--backend", default=None, help="linear backend: torch | triton | cuda | auto")
    s.add_argument("--attn", default=None, help="attention backend: torch | qvit | sdpa | sdpa-flash | sdpa-noflash")
    s.add_argument("--device", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", default=None, help="also write the rows to this JSON file")
    s.set_defaults(fn=_cmd_check)

    s = sub.add_parser("quantize", aliases=["export"],
                       help="quantize a float model into one safetensors file (export: the same command)")
    s.add_argument("--model", default="vit_small_patch4_32", help="config name, qvit float file, or timm checkpoint")
    s.add_argument("--config", default=None, help="config name when --model is a timm checkpoint")
    s.add_argument("--preset", default="w8a8", choices=["w8a8", "w4a8", "w4a8p", "w4a16", "nf4", "fp8", "w8a8g", "w4a8pg",
                                                        "fp8s", "fp8s2", "fp8s2t", "w4f8s2t", "fp8s4t", "w4f8s4t"],
                   help="w8a8g / w4a8pg: w8a8 / w4a8p with fc1's epilogue quantizing fc2's input (per 128 channels); "
                        "fp8s2t / w4f8s2t: the study's 8-bit / 4-bit rows (static fp8 scales: --calib); fp8s4t / "
                        "w4f8s4t: the same with qkv's and fc1's inputs at static scales too")
    s.add_argument("--group-size", type=int, default=None, help="int4 group size (default: the preset's; 128, "
                                                                   "w4f8s2t 32)")
    s.add_argument("--calib", default=None, metavar="cifar10|FOLDER",
                   help="calibration images for the presets with static fp8 scales: the first --calib-n CIFAR-10 "
                        "training images (what `qvit study` uses) or image files of a folder")
    s.add_argument("--calib-n", type=int, default=256)
    s.add_argument("--keep", nargs="*", default=["head", "blocks.0.", "blocks.-1."])
    s.add_argument("--keep-format", default="int8", choices=["float", "int8"],
                   help="format of the kept layers (head, first/last blocks): int8 (W8A8, the study's default) or float")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_quantize)

    s = sub.add_parser("train", help="train the CIFAR-10 baseline (default) or finetune on an image folder")
    s.add_argument("--model", default=None, help="config name (default vit_cifar_patch4_32)")
    s.add_argument("--data", default=None, help="cifar10 (default) or folder:PATH with PATH/train and PATH/val")
    s.add_argument("--data-root", default=None, help="CIFAR-10 shard folder (default: datasets/cifar10)")
    s.add_argument("--img-size", type=int, default=None)
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--warmup-epochs", type=float, default=None)
    s.add_argument("--weight-decay", type=float, default=None)
    s.add_argument("--drop-path", type=float, default=None)
    s.add_argument("--ema-decay", type=float, default=None, help="weight EMA (e.g. 0.9998); evaluated and saved")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--amp", default=None, choices=["auto", "bf16", "fp16", "none"],
                   help="autocast; auto (the default): bf16 on CUDA and on CPUs with native bf16, else none")
    s.add_argument("--compile", default=None, choices=["auto", "on", "off"])
    s.add_argument("--attn", default=None, help="attention backend while training (default sdpa)")
    s.add_argument("--pretrained", default=None, help="timm or qvit checkpoint to finetune from")
    s.add_argument("--out", default=None, help="run folder (default runs/cifar10)")
    s.add_argument("--qat", default=None, choices=["w8a8", "w4a8", "w4a8p", "w4a16", "nf4"],
                   help="quantization-aware training (fake quant + STE) in this format; use with --pretrained")
    s.add_argument("--qlora-rank", type=int, default=None,
                   help="QLoRA: LoRA adapters of this rank on a bitsandbytes NF4 base; merged and re-quantized at the end")
    s.add_argument("--eval-every", type=int, default=None)
    s.add_argument("--limit-train", type=int, default=None)
    s.add_argument("--limit-test", type=int, default=None)
    s.add_argument("--max-steps", type=int, default=None)
    s.add_argument("--no-aug", action="store_true", help="crop+flip and label smoothing only")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--profile-steps", type=int, nargs=2, default=None, metavar=("FIRST", "END"),
                   help="torch.profiler over steps FIRST..END-1 -> OUT/profile_train.txt and a chrome trace")
    s.add_argument("--device", default=None)
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("study", help="PTQ variants of a trained CIFAR-10 model on the real kernels + sensitivity ablation")
    s.add_argument("--model", required=True, help="float model file written by `qvit train` (model.safetensors)")
    s.add_argument("--out", default="results/study")
    s.add_argument("--data-root", default=None)
    s.add_argument("--limit-test", type=int, default=None)
    s.add_argument("--variants", nargs="*", default=None, help="subset of the variant names")
    s.add_argument("--no-ablation", action="store_true")
    s.add_argument("--ablation-rows", nargs="+", default=None, metavar="PREFIX",
                   help="only the ablation rows whose label starts with one of these (e.g. head 'all linears' "
                        "default); `--variants` with no names skips the variants")
    s.add_argument("--device", default=None)
    s.set_defaults(fn=_cmd_study)

    s = sub.add_parser("report", help="REPORT.md (+ plot) of run folders from their JSON files")
    s.add_argument("runs", nargs="+")
    s.set_defaults(fn=_cmd_report)

    s = sub.add_parser("compare", help="the whole study protocol (train, PTQ study, QAT, QLoRA, ViT-L benchmark, "
                                       "RESULTS.md); tiny scale on a CPU")
    s.add_argument("--out", default="runs/compare")
    s.add_argument("--stages", default=None, help="comma-separated subset of train,study,qat,qlora,e2e,report")
    s.add_argument("--tiny", action="store_true", help="tiny scale even on a GPU")
    s.add_argument("--device", default=None)
    s.add_argument("--e2e", action="append", default=None,
                   help="report: a bench_e2e.json from another run folder; repeatable (for each variant and batch "
                        "size the last file that measured it wins; each ratio stays against its own run's baseline)")
    s.add_argument("--sizes", default=None, help="report: a `bench_e2e --sizes-only` JSON for the disk column")
    s.add_argument("--study", default=None, help="report: a study_ptq.json from another folder (a later study)")
    s.set_defaults(fn=_cmd_compare)

    s = sub.add_parser("demo", help="local web page racing the five variants live (upload or pick an image)")
    s.add_argument("--model", default=None, help="float model file (default: runs/cifar10 or the committed baseline)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--device", default=None)
    s.add_argument("--check", type=int, default=0, metavar="N",
                   help="no server: N requests per variant through the demo's path, compared with the benchmark "
                        "harness's timing of the same models")
    s.add_argument("--out", default=None, help="with --check: write the comparison JSON here")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("predict", help="classify image files with a qvit model file (float or quantized)")
    s.add_argument("images", nargs="+")
    s.add_argument("--model", required=True, help="model file from `qvit train` or `qvit export`")
    s.add_argument("--top", type=int, default=5)
    s.add_argument("--backend", default=None, help="linear backend: torch | triton | cuda | auto")
    s.add_argument("--attn", default=None, help="attention backend")
    s.add_argument("--device", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_predict)

    s = sub.add_parser("bench", help="GPU kernel benchmarks vs their baselines (JSON + markdown)")
    s.add_argument("--out", default="results")
    s.add_argument("--quick", action="store_true")
    s.set_defaults(fn=_cmd_bench)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not getattr(args, "fn", None):
        p.print_help()
        return 0
    try:
        return args.fn(args)
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        print(f"qvit {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
