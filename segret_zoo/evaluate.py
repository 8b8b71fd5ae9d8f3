"""Evaluate a segmentation model on a dataset the way the papers do: ``evaluate()`` and ``segret-zoo eval``.

Each image is predicted at its original resolution by the inference :class:`~segret_zoo.inference.
predictor.Segmenter` (keep-ratio resize to the test scale, whole or sliding-window inference,
optional multi-scale + flip TTA, logits upsampled to the original size), and scored against the
original-resolution ground truth with :class:`~segret_zoo.metrics.IoUMetric`, i.e. mmsegmentation's
protocol. The CLI prints a per-class table and writes ``DIR/metrics.json`` (percentages; per-class
values keyed by class name; ``null`` where a class is undefined, because JSON has no NaN).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from segret_zoo.metrics import IoUMetric

__all__ = ["add_cli", "evaluate", "format_table", "run_eval", "write_metrics"]


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
    mode: str = "auto",
    tta: bool = False,
    device: Optional[Any] = None,
    progress: bool = True,
    limit: Optional[int] = None,
    dtype: Optional[Any] = None,
    scales: Optional[Sequence[float]] = None,
    distributed: bool = False,
    predictor: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> Dict[str, Any]:
    """Score ``model`` on ``dataset`` with mmseg's IoU protocol and return the metrics in percent.

    Args:
        model: a segmentation model accepted by ``Segmenter`` (``pretrained_cfg`` gives the test
            scale, crop and normalisation).
        dataset: yields raw ``(image, mask)`` pairs (a :mod:`segret_zoo.data.datasets` dataset, whose
            ``get_raw`` is used so its training transform, if any, is bypassed).
        mode: ``"whole"``, ``"slide"`` or ``"auto"`` (slide when the image is much larger than the crop).
        tta: multi-scale (0.5-1.75) + flip test-time augmentation (``scales`` overrides the ratios).
        device, dtype: where / in which autocast dtype the predictor runs.
        limit: score only the first ``limit`` images (quick checks).
        distributed: shard the images over the ranks of the initialized process group and sum the
            areas (every rank must call this); the result is the same on all ranks.
        predictor: a callable ``image -> label map`` used instead of building a ``Segmenter``.

    Returns:
        ``{"aAcc", "mIoU", "mAcc", "IoU": [...], "Acc": [...], "per_class": {name: {"IoU", "Acc"}},
        "classes": [...], "num_images", "seconds"}``; NaN marks classes without ground truth (Acc)
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
                         limit=limit, dtype=dtype, scales=scales, distributed=distributed, predictor=predictor)
    finally:
        if isinstance(model, torch.nn.Module):  # the predictor switched it to eval mode; a trainer expects it back
            model.train(was_training)


def _evaluate(model: torch.nn.Module, dataset: Any, num_classes: int, *, mode: str, tta: bool, device: Any,
              progress: bool, limit: Optional[int], dtype: Any, scales: Optional[Sequence[float]],
              distributed: bool, predictor: Optional[Callable[[np.ndarray], np.ndarray]]) -> Dict[str, Any]:
    if predictor is None:
        from segret_zoo.inference.predictor import Segmenter

        predictor = Segmenter(model, mode=mode, tta=tta, device=device, dtype=dtype, scales=scales).predict

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _load_model(name: str, checkpoint: Optional[str], num_classes: int) -> torch.nn.Module:
    """Build the model ``segret-zoo eval`` was asked for (the same resolution as ``predict``).

    A ``--checkpoint`` weights file for a zoo name gets a head with the dataset's class count, since
    fine-tuned checkpoints rarely have 150 classes; a saved folder brings its own config.
    """
    from segret_zoo.cli import UserError
    from segret_zoo.inference.cli import load_model

    if checkpoint is not None and (Path(name).exists() or ("/" in name and not name.startswith("hf-hub:"))):
        raise UserError(f"--model {name} already names saved weights; do not also pass --checkpoint")
    weights_file = checkpoint is not None and not Path(checkpoint).is_dir()
    return load_model(name, checkpoint, num_classes=num_classes if weights_file else None)


def run_eval(args: argparse.Namespace) -> int:
    """``segret-zoo eval``: load the model and dataset, score, print the table, write metrics.json."""
    from segret_zoo.cli import UserError
    from segret_zoo.data.datasets import build_dataset
    from segret_zoo.inference.cli import resolve_device

    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of images")
    dataset = build_dataset(args.data, split=args.split)
    device = resolve_device(args.device)
    model = _load_model(args.model, args.checkpoint, dataset.num_classes)
    if int(getattr(model, "num_classes", dataset.num_classes)) != dataset.num_classes:
        raise UserError(
            f"model {args.model} predicts {model.num_classes} classes but {args.data} has "
            f"{dataset.num_classes}; use a checkpoint trained on this dataset"
        )
    dtype = None if args.dtype == "fp32" else args.dtype
    results = evaluate(model, dataset, mode=args.mode, tta=args.tta, device=device, dtype=dtype,
                       progress=not args.no_progress, limit=args.limit)
    print(format_table(results))
    out = write_metrics(results, Path(args.out) / "metrics.json", extra={
        "model": args.model, "checkpoint": args.checkpoint, "data": args.data, "split": args.split,
        "mode": args.mode, "tta": bool(args.tta), "dtype": args.dtype, "device": str(device),
    })
    print(f"metrics written to {out}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``segret-zoo eval``."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a dataset (aAcc, mIoU, mAcc, per-class IoU/Acc)",
        description="Evaluate a segmentation model with mmsegmentation's IoU protocol and write DIR/metrics.json.",
    )
    p.add_argument("--model", required=True,
                   help="zoo name (segret_tiny, segret_tiny.ade20k) or a save_pretrained folder")
    p.add_argument("--checkpoint", default=None, help="weights file or save_pretrained folder for --model")
    p.add_argument("--data", required=True,
                   help="dataset spec: ade20k:PATH, cityscapes:PATH, cocostuff:PATH or folder:PATH")
    p.add_argument("--split", default="val", help="train or val (default: val)")
    p.add_argument("--mode", choices=("auto", "whole", "slide"), default="auto",
                   help="whole-image or sliding-window inference (auto: slide for images much larger than the crop)")
    p.add_argument("--tta", action="store_true", help="multi-scale (0.5-1.75) + flip test-time augmentation")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast dtype on GPU (default fp32, the reference setting)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--out", required=True, help="folder for metrics.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)
