"""Evaluate a segmentation model on a dataset the way the papers do (``segret-zoo eval`` drives it).

Each image is predicted at its original resolution by the inference :class:`~segret_zoo.inference.
predictor.Segmenter` (by default the model's own test protocol: keep-ratio resize to the test scale,
sides rounded up to a multiple of 32 where the dataset's protocol does so, whole inference, optional
multi-scale + flip TTA, logits upsampled to the original size), and scored against the
original-resolution ground truth with :class:`~segret_zoo.metrics.IoUMetric`, i.e. mmsegmentation's
protocol. The CLI prints a per-class table and writes ``DIR/metrics.json`` (percentages; per-class
values keyed by class name; ``null`` where a class is undefined, because JSON has no NaN).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from segret_zoo.files import write_json_atomic
from segret_zoo.inference.predictor import Segmenter
from segret_zoo.metrics import IoUMetric

__all__ = ["evaluate", "format_table", "write_metrics"]


def _raw_sample(dataset: Any, index: int) -> tuple:
    """(uint8 H×W×3 image, H×W mask) of a sample, bypassing any training transform."""
    if hasattr(dataset, "get_raw"):
        image, mask = dataset.get_raw(index)
    else:
        image, mask = dataset[index]
    if isinstance(image, torch.Tensor):
        image = image.numpy()
    if isinstance(mask, torch.Tensor):
        mask = mask.numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(
            f"evaluate() needs raw samples (uint8 H×W×3 RGB image, H×W mask); sample {index} has an image "
            f"of dtype {image.dtype} and shape {image.shape}: give the dataset no transform or a get_raw()"
        )
    return image, np.asarray(mask)


def _class_names(dataset: Any, num_classes: int) -> List[str]:
    names = getattr(dataset, "classes", None)
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    *,
    mode: Optional[str] = None,
    tta: bool = False,
    device: Optional[Any] = None,
    progress: bool = True,
    limit: Optional[int] = None,
    dtype: Optional[Any] = None,
    scales: Optional[Sequence[float]] = None,
    distributed: bool = False,
    predictor: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    compile: bool = False,
) -> Dict[str, Any]:
    """Score ``model`` on ``dataset`` with mmseg's IoU protocol and return the metrics in percent.

    Args:
        model: a segmentation model accepted by ``Segmenter`` (``pretrained_cfg`` gives the test
            scale, crop and normalisation).
        dataset: yields raw ``(image, mask)`` pairs (a :mod:`segret_zoo.data.datasets` dataset, whose
            ``get_raw`` is used so its training transform, if any, is bypassed).
        mode: ``"whole"``, ``"slide"`` or ``"auto"`` (slide when the image is much larger than the crop);
            default: the model's ``pretrained_cfg["test_mode"]`` (the dataset's protocol), else auto.
        tta: multi-scale (0.5-1.75) + flip test-time augmentation (``scales`` overrides the ratios).
        device, dtype: where / in which autocast dtype the predictor runs.
        limit: score only the first ``limit`` images (quick checks).
        distributed: shard the images over the ranks of the initialized process group and sum the
            areas (every rank must call this); the result is the same on all ranks.
        predictor: a callable ``image -> label map`` used instead of building a ``Segmenter``.
        compile: ``torch.compile`` the predictor's model (opt-in).

    Returns:
        ``{"aAcc", "mIoU", "mAcc", "IoU": [...], "Acc": [...], "per_class": {name: {"IoU", "Acc"}},
        "classes": [...], "num_images", "seconds", "protocol"}`` (``protocol``: the predictor's
        one-line description, None for a custom ``predictor``); NaN marks classes without ground truth (Acc)
        or without ground truth and prediction (IoU).
    """
    num_classes = int(getattr(dataset, "num_classes", 0) or model.num_classes)
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and int(model_classes) != num_classes:
        raise ValueError(
            f"the model predicts {model_classes} classes but the dataset has {num_classes}; "
            "evaluate a model trained for this dataset (or fine-tune one with segret-zoo train)"
        )
    was_training = bool(getattr(model, "training", False))
    try:
        return _evaluate(model, dataset, num_classes, mode=mode, tta=tta, device=device, progress=progress,
                         limit=limit, dtype=dtype, scales=scales, distributed=distributed, predictor=predictor,
                         compile=compile)
    finally:
        if isinstance(model, torch.nn.Module):  # the predictor switched it to eval mode; a trainer expects it back
            model.train(was_training)


def _evaluate(model: torch.nn.Module, dataset: Any, num_classes: int, *, mode: Optional[str], tta: bool, device: Any,
              progress: bool, limit: Optional[int], dtype: Any, scales: Optional[Sequence[float]],
              distributed: bool, predictor: Optional[Callable[[np.ndarray], np.ndarray]],
              compile: bool = False) -> Dict[str, Any]:
    protocol = None
    if predictor is None:
        segmenter = Segmenter(model, mode=mode, tta=tta, device=device, dtype=dtype, scales=scales, compile=compile)
        predictor, protocol = segmenter.predict, segmenter.describe()

    indices: Sequence[int] = range(len(dataset) if limit is None else min(int(limit), len(dataset)))
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
    shard = list(indices)[rank::world]

    metric = IoUMetric(num_classes, ignore_index=int(getattr(dataset, "ignore_index", 255)))
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shard), desc="eval", unit="img", dynamic_ncols=True)
    start = time.perf_counter()
    for n, index in enumerate(shard, 1):
        image, mask = _raw_sample(dataset, index)
        pred = np.asarray(predictor(image))
        if pred.shape != mask.shape:
            raise ValueError(f"prediction for sample {index} has shape {pred.shape}, mask has {mask.shape}")
        metric.update(pred, mask)
        if bar is not None:
            bar.update(1)
            if n % 10 == 0 or n == len(shard):
                miou = metric.compute()["mIoU"]
                bar.set_postfix(mIoU=f"{miou:.2f}" if not math.isnan(miou) else "nan")
    if bar is not None:
        bar.close()
    if distributed:
        metric.sync()
    results = metric.compute()
    names = _class_names(dataset, num_classes)
    results["classes"] = names
    results["per_class"] = {name: {"IoU": i, "Acc": a} for name, i, a in zip(names, results["IoU"], results["Acc"])}
    results["num_images"] = len(indices)
    results["seconds"] = time.perf_counter() - start
    results["protocol"] = protocol
    return results


def _fmt(value: float, width: int = 7) -> str:
    return f"{'nan':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.2f}"


def format_table(results: Dict[str, Any]) -> str:
    """A plain-text per-class table (name, IoU, Acc) followed by aAcc / mIoU / mAcc, as mmseg prints."""
    names = results.get("classes") or [str(i) for i in range(len(results["IoU"]))]
    width = max([len("Class")] + [len(n) for n in names])
    lines = [f"{'Class':<{width}} | {'IoU':>7} | {'Acc':>7}", f"{'-' * width}-+-{'-' * 7}-+-{'-' * 7}"]
    for name, iou, acc in zip(names, results["IoU"], results["Acc"]):
        lines.append(f"{name:<{width}} | {_fmt(iou)} | {_fmt(acc)}")
    lines.append("")
    lines.append(f"aAcc: {_fmt(results['aAcc'], 0)}  mIoU: {_fmt(results['mIoU'], 0)}  "
                 f"mAcc: {_fmt(results['mAcc'], 0)}")
    return "\n".join(lines)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_metrics(results: Dict[str, Any], path: os.PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``metrics.json``: summary metrics and per-class dicts keyed by class name (atomically)."""
    names = results.get("classes") or [str(i) for i in range(len(results["IoU"]))]
    doc: Dict[str, Any] = {
        "aAcc": _json_number(results["aAcc"]),
        "mIoU": _json_number(results["mIoU"]),
        "mAcc": _json_number(results["mAcc"]),
        "IoU": {n: _json_number(v) for n, v in zip(names, results["IoU"])},
        "Acc": {n: _json_number(v) for n, v in zip(names, results["Acc"])},
        "num_images": results.get("num_images"),
        "seconds": results.get("seconds"),
    }
    doc.update(extra or {})
    return write_json_atomic(path, doc, allow_nan=False)
