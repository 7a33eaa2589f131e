"""Classification metrics: top-1, top-5 and macro-F1 from accumulated counts.

`Counts` keeps the confusion matrix and the top-5 hit count as tensors, so that ranks of a
distributed run add theirs with one all_reduce and the result is exact, not averaged.
"""
from __future__ import annotations

import contextlib

import torch


class Counts:
    def __init__(self, num_classes: int, device="cpu"):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # [true, pred]
        self.top5 = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (batch, {self.num_classes}), got {tuple(logits.shape)}")
        pred = logits.argmax(1)
        idx = y.to(self.confusion.device) * self.num_classes + pred.to(self.confusion.device)
        self.confusion += torch.bincount(idx, minlength=self.num_classes ** 2).view(self.num_classes, -1)
        k = min(5, self.num_classes)
        self.top5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum().to(self.top5.device)

    def all_reduce(self) -> None:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion)
            dist.all_reduce(self.top5)

    def result(self) -> dict:
        c = self.confusion.double().cpu()
        n = c.sum().item()
        tp = c.diag()
        precision = tp / c.sum(0).clamp(min=1)
        recall = tp / c.sum(1).clamp(min=1)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
        present = c.sum(1) > 0  # macro over the classes present in the labels
        return {
            "n": int(n),
            "top1": 100.0 * tp.sum().item() / max(n, 1),
            "top5": 100.0 * self.top5.item() / max(n, 1),
            "macro_f1": 100.0 * f1[present].mean().item() if present.any() else 0.0,
        }


@torch.no_grad()
def evaluate(model, loader, prep, num_classes: int, amp_dtype=None) -> dict:
    """Run `model` over `loader` (uint8 batches), `prep` turning a uint8 batch into model input."""
    was = model.training
    model.eval()
    counts = None
    try:
        for x, y in loader:
            if counts is None:
                counts = Counts(num_classes, x.device)
            xin = prep(x)
            ctx = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
            with ctx:
                logits = model(xin)
            counts.update(logits.float(), y)
    finally:
        model.train(was)
    if counts is None:
        raise ValueError("evaluate: the loader yielded no batches")
    counts.all_reduce()
    return counts.result()
