"""Semantic-segmentation metrics computed exactly as mmsegmentation's ``IoUMetric`` does.

Why "exactly": the paper's numbers (and everyone's ADE20K / Cityscapes / COCO-Stuff tables) are
mmseg numbers, whose definition has choices that change results: areas are summed over the whole
dataset before dividing (not averaged per image); pixels labelled ``ignore_index`` are dropped
before counting; a prediction or label outside ``0..K-1`` is simply not counted (``torch.histc``
range); IoU = intersect / union and Acc = intersect / label area per class, NaN where the
denominator is 0, and the means skip NaN (so a class absent from both prediction and ground truth
does not count, while a class only predicted counts with IoU 0).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

__all__ = ["IoUMetric", "intersect_and_union"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        if x.dtype in (np.uint16, np.uint32, np.uint64) or not x.flags.writeable:
            x = x.astype(np.int64)  # torch has no such unsigned types / wants writable memory
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")


def intersect_and_union(pred: ArrayLike, target: ArrayLike, num_classes: int,
                        ignore_index: int = 255) -> torch.Tensor:
    """Per-class areas of one batch: int64 tensor (4, K) = (intersect, union, pred, label).

    ``pred`` and ``target`` are label maps of the same shape (any number of dims), tensors or arrays.
    """
    p = _as_tensor(pred)
    t = _as_tensor(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.is_floating_point() or t.is_floating_point():
        raise TypeError("pred and target must be integer label maps (take the argmax of logits first)")
    t = t.to(p.device)
    p = p.reshape(-1).to(torch.int64)
    t = t.reshape(-1).to(torch.int64)
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    pred_in = (p >= 0) & (p < num_classes)
    label_in = (t >= 0) & (t < num_classes)
    area_pred = torch.bincount(p[pred_in], minlength=num_classes)
    area_label = torch.bincount(t[label_in], minlength=num_classes)
    area_intersect = torch.bincount(p[pred_in & (p == t)], minlength=num_classes)
    area_union = area_pred + area_label - area_intersect
    return torch.stack([area_intersect, area_union, area_pred, area_label]).cpu()


class IoUMetric:
    """Dataset-level aAcc / mIoU / mAcc and per-class IoU / Acc, as mmsegmentation computes them.

    ``update(pred, target)`` adds the areas of a batch of label maps (any shape, tensor or array);
    ``compute()`` returns percentages: ``{"aAcc", "mIoU", "mAcc": float, "IoU", "Acc": list[float]}``
    with NaN for undefined classes. Areas are exact int64 counts (mmseg sums float32, which loses
    precision past 2**24 pixels per class). In distributed evaluation call ``sync()`` once, on every
    rank, before ``compute()``: it sums the areas over all processes.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.state = torch.zeros(4, self.num_classes, dtype=torch.int64)

    # the four area vectors (views into ``state``, which is what gets all-reduced)
    @property
    def area_intersect(self) -> torch.Tensor:
        return self.state[0]

    @property
    def area_union(self) -> torch.Tensor:
        return self.state[1]

    @property
    def area_pred(self) -> torch.Tensor:
        return self.state[2]

    @property
    def area_label(self) -> torch.Tensor:
        return self.state[3]

    def reset(self) -> None:
        self.state.zero_()

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Accumulate one image or a batch: ``pred`` and ``target`` label maps of the same shape."""
        self.state += intersect_and_union(pred, target, self.num_classes, self.ignore_index)

    def sync(self, group: Optional[Any] = None) -> None:
        """Sum the areas over all processes of ``group`` (no-op unless torch.distributed is initialized)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        state = self.state
        if dist.get_backend(group) == "nccl":
            state = state.cuda()
        dist.all_reduce(state, op=dist.ReduceOp.SUM, group=group)
        self.state = state.cpu()

    def compute(self, digits: Optional[int] = None) -> Dict[str, Any]:
        """Metrics in percent. ``digits`` rounds them (mmseg's printed tables use 2)."""
        inter, union, _, label = (row.to(torch.float64).numpy() for row in self.state)
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # nanmean of all-NaN -> NaN
            iou = inter / union
            acc = inter / label
            total = label.sum()
            a_acc = float(inter.sum() / total) if total > 0 else float("nan")
            m_iou = float(np.nanmean(iou))
            m_acc = float(np.nanmean(acc))

        def pct(v: float) -> float:
            v = v * 100.0
            return round(v, digits) if digits is not None and not np.isnan(v) else v

        return {
            "aAcc": pct(a_acc),
            "mIoU": pct(m_iou),
            "mAcc": pct(m_acc),
            "IoU": [pct(float(v)) for v in iou],
            "Acc": [pct(float(v)) for v in acc],
        }

    def per_class(self, class_names: Optional[List[str]] = None,
                  digits: Optional[int] = None) -> Dict[str, Dict[str, float]]:
        """``{class name: {"IoU": ..., "Acc": ...}}`` (names default to "0", "1", ...)."""
        res = self.compute(digits)
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        return {n: {"IoU": i, "Acc": a} for n, i, a in zip(names, res["IoU"], res["Acc"])}

    def __repr__(self) -> str:
        return f"IoUMetric(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
