"""Training and finetuning of qvit's ViT: CIFAR-10 from scratch (the study's baseline) or an
ImageNet-style folder from a timm checkpoint (ViT-L/16 at 224 px).

One protocol for every run: the data order and every augmentation draw follow from
(seed, epoch, rank), the schedule from the config; bf16 autocast, fused AdamW, optional
torch.compile; DDP when started by torchrun (NCCL on GPUs, gloo on CPU).

Checkpoints: `last.pt` after every `ckpt_every` epochs, written to a temporary file and renamed
(a kill leaves the previous checkpoint intact), loaded with `torch.load(weights_only=True)` (no
code runs on load). `--resume` continues from it at the epoch boundary and replays the same
data order and augmentation as an uninterrupted run. The final model is `model.safetensors`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn.functional as F

from qvit.profiling.nvtx import range_ctx
from qvit.train.augment import IMAGENET_MEAN, IMAGENET_STD, Augment, AugmentConfig, mix
from qvit.train.data import DeviceLoader, load_cifar10, load_folder
from qvit.train.metrics import evaluate
from qvit.vit.checkpoint import CheckpointError, atomic_write, load_timm_checkpoint, read_state_dict, save_model
from qvit.vit.model import ViT, ViTConfig, count_params

CKPT_VERSION = 1


@dataclass
class TrainConfig:
    model: str = "vit_cifar_patch4_32"
    data: str = "cifar10"                 # "cifar10" or "folder:PATH" (PATH/train and PATH/val)
    data_root: str | None = None
    img_size: int | None = None           # default: the model config's
    epochs: int = 450
    batch_size: int = 512                 # global, over all ranks
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 15
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    clip_grad: float = 1.0                # 0: off
    ema_decay: float | None = None        # > 0: keep an exponential moving average of the weights; the EMA
                                          # model is evaluated and saved (raw accuracy logged beside it).
                                          # None: 0.9998 when training from scratch, off for finetunes
                                          # (pretrained / QAT / QLoRA), whose runs are too short for it
    drop_path: float = 0.1
    aug: AugmentConfig = field(default_factory=lambda: AugmentConfig(mix_p=0.5))
    seed: int = 0
    amp: str = "auto"                     # auto | bf16 | fp16 | none (auto: resolve_amp, recorded resolved)
    compile: str = "auto"                 # auto (on CUDA: CUDA graphs, falling back to plain) | graphs | on | off
    attn: str = "sdpa"                    # attention backend while training
    pretrained: str | None = None         # timm/qvit checkpoint to start from (finetuning)
    qat: str | None = None                # quantization-aware training in this preset (w8a8 | w4a8 | w4a8p | w4a16 | nf4)
    qat_keep: tuple = ("head", "blocks.0.", "blocks.-1.")  # layers QAT / QLoRA leave in higher precision
    qlora_rank: int = 0                   # > 0: QLoRA (LoRA adapters of this rank on a bitsandbytes NF4 base)
    out: str = "runs/cifar10"
    eval_every: int = 50                  # epochs; the last epoch always evaluates
    ckpt_every: int = 1
    limit_train: int | None = None        # first N training images (tiny runs, tests)
    limit_test: int | None = None
    max_steps: int | None = None          # stop after this many steps in total (tests, profiling)
    log_every: int = 50
    progress: bool = True
    profile_steps: tuple | None = None    # (first, last): torch.profiler over these steps -> out/profile_train.*

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        d = dict(d)
        if isinstance(d.get("aug"), dict):
            d["aug"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["aug"].items()})
        if isinstance(d.get("profile_steps"), list):
            d["profile_steps"] = tuple(d["profile_steps"])
        if isinstance(d.get("qat_keep"), list):
            d["qat_keep"] = tuple(d["qat_keep"])
        if isinstance(d.get("betas"), list):
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ helpers
def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def setup_distributed(device_type: str):
    """(rank, world, local_rank) from torchrun's environment; initializes the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return rank, world, local


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine down to cfg.min_lr."""
    if warmup > 0 and step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def param_groups(model, weight_decay: float):
    """No weight decay on biases, norms, position embedding and class token (timm's convention)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or n.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def soft_cross_entropy(logits, target):
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def _amp_dtype(amp: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def _cpu_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX tiles), as torch reports them."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast setting a run uses: `auto` is bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX),
    none on other CPUs, where autocast's bf16 matmuls are emulated (on an AVX2 CPU a 4160 x 256 x 768 linear took
    0.100 s in bf16 against 0.016 s in float32: NOTES.md session 26); bf16 / fp16 / none are kept as given."""
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise ValueError(f"amp={amp!r}: expected auto, bf16, fp16 or none")
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cuda" or _cpu_native_bf16() else "none"


def save_checkpoint(path, model, opt, epoch, step, cfg, extra=None, ema=None):
    if cfg.qlora_rank:  # the NF4 base is rebuilt from --pretrained on resume: keep the adapters only
        weights = {n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}
    else:
        weights = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()}
    state = {
        "version": CKPT_VERSION, "epoch": epoch, "step": step, "config": json.dumps(cfg.to_dict()),
        "model": weights,
        "optimizer": opt.state_dict(),
        "extra": json.dumps(extra or {}),
    }
    if ema is not None:
        state["ema"] = {k: v.detach().float().cpu() for k, v in ema.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: not a qvit training checkpoint of version {CKPT_VERSION} "
                              f"(found {state.get('version') if isinstance(state, dict) else type(state).__name__})")
    return state


class _Log:
    """metrics.jsonl always; TensorBoard when `tensorboard` is installed (rank 0 only)."""

    def __init__(self, out: str, enabled: bool):
        self.enabled = enabled
        self.tb = None
        self.f = None
        if not enabled:
            return
        os.makedirs(out, exist_ok=True)
        self.f = open(os.path.join(out, "metrics.jsonl"), "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(out, "tb"))
        except ImportError:
            print("qvit train: tensorboard is not installed; logging to metrics.jsonl only", file=sys.stderr)

    def __call__(self, step: int, **kv):
        if not self.enabled:
            return
        self.f.write(json.dumps({"step": step, **kv}) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in kv.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self):
        if self.f:
            self.f.close()
        if self.tb is not None:
            self.tb.close()


nvtx = range_ctx  # an NVTX range when a profiler is attached (QVIT_NVTX=1 or torch.profiler running), else nothing


def _start_profiler(device):
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    p = profile(activities=acts, record_shapes=False)
    p.__enter__()
    return p


def _stop_profiler(prof, out, steps):
    if device_sync := torch.cuda.is_available():
        torch.cuda.synchronize()
    prof.__exit__(None, None, None)
    n = steps[1] - steps[0]
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if device_sync else "self_cpu_time_total",
                                      row_limit=40)
    with open(os.path.join(out, "profile_train.txt"), "w") as f:
        f.write(f"torch.profiler over {n} training steps ({steps[0]}..{steps[1] - 1})\n{table}\n")
    prof.export_chrome_trace(os.path.join(out, "profile_train_trace.json"))


def _qlora_finish(model, cfg, test_dl, aug, num_classes, amp, device, before):
    """Merge the adapters into the dequantized NF4 base, re-quantize into qvit's 4-bit formats, and
    evaluate: the accuracy before the merge (bitsandbytes NF4 + LoRA) and after (qvit's kernels)."""
    import copy

    from qvit.train.qlora import merge_qlora
    from qvit.vit.quantize import QuantConfig, quantize
    merged = merge_qlora(model).to(device)
    out = {"before_merge": before, "merged_float": evaluate(merged, test_dl, aug.eval, num_classes, amp)}
    linear = "triton" if device.type == "cuda" else "torch"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for preset in ("nf4", "w4a8"):
        q = quantize(copy.deepcopy(merged).cpu(), QuantConfig.preset(preset, keep=cfg.qat_keep))
        q = q.to(device=device, dtype=dtype).eval().set_backend(linear=linear)
        out[f"merged_{preset}"] = evaluate(q, test_dl, lambda x: aug.eval(x).to(dtype), num_classes)
        out[f"merged_{preset}"]["linear_backend"] = linear
    for k, v in out.items():
        print(f"qvit train: QLoRA {k}: top1={v['top1']:.2f}", file=sys.stderr)
    out["model"] = merged.cpu()
    return out


# ------------------------------------------------------------------------------------------ data
def build_data(cfg: TrainConfig, model_cfg: ViTConfig, device, rank: int, world: int):
    """(train loader, test loader, augment, num_classes, class names)."""
    size = model_cfg.img_size
    if cfg.data == "cifar10":
        if size != 32:
            raise ValueError(f"CIFAR-10 images are 32 px; model {cfg.model} expects {size} px")
        xtr, ytr = load_cifar10("train", cfg.data_root)
        xte, yte = load_cifar10("test", cfg.data_root)
        aug_cfg = cfg.aug
        classes = None
    elif cfg.data.startswith("folder:"):
        root = cfg.data[len("folder:"):]
        tr = os.path.join(root, "train")
        te = os.path.join(root, "val") if os.path.isdir(os.path.join(root, "val")) else os.path.join(root, "test")
        workers = min(8, os.cpu_count() or 1)
        xtr, ytr, classes = load_folder(tr, size, 1.0, workers)
        xte, yte, classes_te = load_folder(te, size, 0.875, workers)
        if classes_te != classes:
            raise ValueError(f"{te}: class folders differ from {tr}'s")
        aug_cfg = AugmentConfig(**{**asdict(cfg.aug), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                   "pad": cfg.aug.pad * size // 32})
    else:
        raise ValueError(f"unknown dataset {cfg.data!r}: use 'cifar10' or 'folder:PATH'")
    # subsets are a fixed random sample (the test split is sorted by class: a prefix would be one class)
    if cfg.limit_train and cfg.limit_train < xtr.shape[0]:
        keep = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(0))[:cfg.limit_train].sort().values
        xtr, ytr = xtr[keep], ytr[keep]
    if cfg.limit_test and cfg.limit_test < xte.shape[0]:
        keep = torch.randperm(xte.shape[0], generator=torch.Generator().manual_seed(1))[:cfg.limit_test].sort().values
        xte, yte = xte[keep], yte[keep]
    if xtr.shape[0] < cfg.batch_size:
        raise ValueError(f"{xtr.shape[0]} training images are fewer than one batch of {cfg.batch_size}")
    train = DeviceLoader(xtr, ytr, cfg.batch_size, True, True, cfg.seed, rank, world, device)
    test = DeviceLoader(xte, yte, max(cfg.batch_size, 512), False, False, cfg.seed, rank, world, device)
    num_classes = int(max(ytr.max().item(), yte.max().item())) + 1 if classes is None else len(classes)
    return train, test, Augment(aug_cfg), num_classes, classes


# ------------------------------------------------------------------------------------------ main
def train(cfg: TrainConfig, resume: bool = False, device: str | None = None) -> dict:
    """Train per `cfg`; returns the summary (also written to out/summary.json)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, local = setup_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    main = rank == 0
    cfg = replace(cfg, amp=resolve_amp(cfg.amp, device))  # the summary and checkpoints record what ran
    torch.manual_seed(cfg.seed)

    model_cfg = ViTConfig.from_name(cfg.model, drop_path_rate=cfg.drop_path,
                                    **({"img_size": cfg.img_size} if cfg.img_size else {}))
    train_dl, test_dl, aug, num_classes, classes = build_data(cfg, model_cfg, device, rank, world)
    if num_classes != model_cfg.num_classes:
        model_cfg = ViTConfig(**{**model_cfg.to_dict(), "num_classes": num_classes})
    model_cfg.extra = {"recipe": "qvit.train", "data": cfg.data, "classes": list(classes) if classes else None,
                       "mean": list(aug.cfg.mean), "std": list(aug.cfg.std)}
    model = ViT(model_cfg)
    if cfg.pretrained:
        sd, _ = read_state_dict(cfg.pretrained)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.") or v.shape[0] == num_classes}
        load_timm_checkpoint(model, sd, strict=False)
    if cfg.ema_decay is None:
        cfg = replace(cfg, ema_decay=0.0 if (cfg.pretrained or cfg.qat or cfg.qlora_rank) else 0.9998)
    if cfg.qlora_rank and (cfg.qat or cfg.ema_decay):
        raise ValueError("qlora_rank cannot be combined with qat or ema_decay")
    qlora = None
    if cfg.qlora_rank:
        from qvit.train.qlora import prepare_qlora
        if not cfg.pretrained:
            raise ValueError("QLoRA finetunes a trained model: give --pretrained")
        vit = model
        model, qlora = prepare_qlora(model, cfg.qlora_rank, keep=cfg.qat_keep,
                                     compute_dtype=_amp_dtype(cfg.amp) or torch.float32)
        model_cfg.extra["qlora"] = {"rank": cfg.qlora_rank, "keep": list(cfg.qat_keep), "layers": len(qlora)}
    if cfg.qat:
        from qvit.train.qat import prepare_qat
        from qvit.vit.quantize import QuantConfig
        qat_layers = prepare_qat(model, QuantConfig.preset(cfg.qat, keep=cfg.qat_keep))
        model_cfg.extra["qat"] = {"preset": cfg.qat, "keep": list(cfg.qat_keep), "layers": len(qat_layers)}
    (vit if qlora else model).set_backend(attn=cfg.attn)
    model.to(device)  # bitsandbytes quantizes the QLoRA base here

    steps_per_epoch = len(train_dl)
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=fused)

    ema = None
    if cfg.ema_decay > 0:
        import copy
        ema = copy.deepcopy(model).float().eval()
        for p in ema.parameters():
            p.requires_grad_(False)
        ema_params, live_params = list(ema.parameters()), list(model.parameters())
    os.makedirs(cfg.out, exist_ok=True) if main else None
    ckpt = os.path.join(cfg.out, "last.pt")
    start_epoch, step, elapsed = 0, 0, 0.0
    if resume and os.path.exists(ckpt):
        state = load_checkpoint(ckpt)
        saved = json.loads(state["config"])
        for k in ("model", "epochs", "batch_size", "lr", "seed", "data", "qat", "ema_decay"):
            if saved.get(k) != cfg.to_dict().get(k):
                raise CheckpointError(f"{ckpt}: was written with {k}={saved.get(k)!r}, this run has {k}="
                                      f"{cfg.to_dict().get(k)!r}; use another --out or the same options")
        missing, unexpected = model.load_state_dict(state["model"], strict=qlora is None)
        if unexpected or (qlora and set(state["model"]) != {n for n, p in model.named_parameters() if p.requires_grad}):
            raise CheckpointError(f"{ckpt}: its weights do not match this run's trainable parameters")
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{ckpt}: holds no EMA weights but this run has ema_decay={cfg.ema_decay}")
            ema.load_state_dict(state["ema"])
        start_epoch, step = state["epoch"], state["step"]
        elapsed = json.loads(state["extra"]).get("elapsed_s", 0.0)
        if main:
            print(f"qvit train: resumed from {ckpt} at epoch {start_epoch} (step {step})", file=sys.stderr)
    elif resume and main:
        print(f"qvit train: no checkpoint at {ckpt}; starting from scratch", file=sys.stderr)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    use_compile = cfg.compile in ("on", "graphs") or (cfg.compile == "auto" and device.type == "cuda")
    if qlora and use_compile:
        print("qvit train: QLoRA runs eager (bitsandbytes layers under torch.compile are not supported here)",
              file=sys.stderr)
        use_compile = False
    # CUDA graphs ("reduce-overhead"): a small ViT's step is otherwise bound by the host launching
    # ~1000 kernels (profiled on the H200: 18 ms/step of host time against 7 ms of GPU time)
    mode = "reduce-overhead" if device.type == "cuda" and cfg.compile in ("auto", "graphs") else None
    fwd = torch.compile(net, mode=mode) if use_compile else net
    aug = Augment(aug.cfg, compile=use_compile)
    amp = _amp_dtype(cfg.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    log = _Log(cfg.out, main)
    if main:
        print(f"qvit train: {cfg.model} ({count_params(model) / 1e6:.2f}M params) on {device} x{world}, "
              f"{cfg.data}: {train_dl.x.shape[0]} train / {test_dl.x.shape[0]} test, {cfg.epochs} epochs of "
              f"{steps_per_epoch} steps, batch {cfg.batch_size}, compile={use_compile}", file=sys.stderr)

    history = []
    result = {}
    prof = None
    start_step = step
    if start_epoch >= cfg.epochs:  # resumed a finished run: report its final accuracy
        result = evaluate(ema if ema is not None else model, test_dl, aug.eval, num_classes, amp)
    t_start = time.perf_counter() - elapsed
    for epoch in range(start_epoch, cfg.epochs):
        train_dl.set_epoch(epoch)
        # every random draw of an epoch follows from (seed, epoch, rank): a resumed run replays it
        torch.manual_seed(cfg.seed * 1000003 + epoch * 1009 + rank + 13)  # drop path
        g = torch.Generator(device=device).manual_seed(cfg.seed * 1000003 + epoch * 1009 + rank)
        gc = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch * 1009 + rank + 7)
        net.train()
        loss_sum = torch.zeros((), device=device)
        nb = 0
        it = train_dl
        bar = None
        if main and cfg.progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                           file=sys.stderr, mininterval=2.0)
            except ImportError:
                bar = None
        t_epoch = time.perf_counter()
        for x_u8, y in it:
            if prof is None and cfg.profile_steps and step == cfg.profile_steps[0] and main:
                prof = _start_profiler(device)
            lr = lr_at(step, total, warmup, cfg)
            for pg in opt.param_groups:
                pg["lr"] = lr
            with nvtx("train/augment"):
                x = aug(x_u8, g)
                x, t = mix(x, y, gc, aug.cfg, num_classes)
            try:
                with nvtx("train/forward"), autocast():
                    logits = fwd(x)
                    loss = soft_cross_entropy(logits, t)
                with nvtx("train/backward"):
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
            except Exception as e:  # noqa: BLE001  (a compile failure at the first steps only)
                if not use_compile or step > start_step + 2:
                    raise
                fallback = "default" if mode is not None else "eager"
                print(f"qvit train: torch.compile (mode={mode or 'default'}) failed ({type(e).__name__}: "
                      f"{str(e)[:200]}); falling back to {fallback}", file=sys.stderr)
                if mode is not None:
                    mode = None
                    fwd = torch.compile(net)
                else:
                    use_compile = False
                    fwd = net
                with autocast():
                    logits = fwd(x)
                    loss = soft_cross_entropy(logits, t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with nvtx("train/optimizer"):
                if cfg.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad, foreach=True)
                opt.step()
                if ema is not None:
                    torch._foreach_lerp_(ema_params, [p.detach().float() for p in live_params], 1.0 - cfg.ema_decay)
            if prof is not None and step + 1 == cfg.profile_steps[1]:
                _stop_profiler(prof, cfg.out, cfg.profile_steps)
                prof = False
            loss_sum += loss.detach()
            nb += 1
            step += 1
            if bar is not None:
                bar.update(1)
            if main and step % cfg.log_every == 0:
                log(step, train_loss=loss.item(), lr=lr)
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if bar is not None:
            bar.close()
        train_loss = (loss_sum / max(nb, 1)).item()
        epoch_s = time.perf_counter() - t_epoch
        last = epoch + 1 == cfg.epochs or bool(cfg.max_steps and step >= cfg.max_steps)
        rec = {"epoch": epoch + 1, "train_loss": train_loss, "epoch_s": epoch_s,
               "elapsed_s": time.perf_counter() - t_start}
        if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            res = evaluate(model, test_dl, aug.eval, num_classes, amp)
            if ema is not None:
                rec.update({f"test_raw_{k}": v for k, v in res.items() if k != "n"})
                res = evaluate(ema, test_dl, aug.eval, num_classes, amp)
            rec.update({f"test_{k}": v for k, v in res.items() if k != "n"})
            result = res
        history.append(rec)
        if main:
            log(step, **{k: v for k, v in rec.items() if k != "epoch"}, epoch=epoch + 1)
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items())
            print(f"qvit train: {msg}", file=sys.stderr)
            if (epoch + 1) % cfg.ckpt_every == 0 or last:
                save_checkpoint(ckpt, model, opt, epoch + 1, step, cfg, {"elapsed_s": rec["elapsed_s"]}, ema)
        if last:
            break

    summary = {"config": cfg.to_dict(), "model_config": model_cfg.to_dict(), "params": count_params(model),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "world": world,
               "compile_mode": (mode or "default") if use_compile else "off",
               "steps": step, "train_seconds": time.perf_counter() - t_start, "test": result, "history": history}
    if main:
        model_cfg.extra["test"] = result
        final = ema if ema is not None else model
        if qlora:
            summary["qlora"] = _qlora_finish(model, cfg, test_dl, aug, num_classes, amp, device, result)
            final = summary["qlora"].pop("model")
            model_cfg.extra["qlora"].update({k: v for k, v in summary["qlora"].items()})
        final.cfg.extra = model_cfg.extra
        save_model(final, os.path.join(cfg.out, "model.safetensors"), {"train_summary": {
            k: summary[k] for k in ("steps", "train_seconds", "test", "device")}})
        atomic_write(os.path.join(cfg.out, "summary.json"),
                     lambda tmp: open(tmp, "w").write(json.dumps(summary, indent=1)))
    log.close()
    if world > 1:
        _dist().barrier()
    return summary
