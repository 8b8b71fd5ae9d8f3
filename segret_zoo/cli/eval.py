"""``segret-zoo eval``: score a model on a dataset split, print the per-class table, write metrics.json."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from segret_zoo.cli.options import positive_int
from segret_zoo.data.datasets import build_dataset
from segret_zoo.devices import resolve_device
from segret_zoo.errors import UserError
from segret_zoo.evaluate import evaluate, format_table, write_metrics
from segret_zoo.factory import load_model
from segret_zoo.files import prepare_output_dir
from segret_zoo.inference.predictor import Segmenter

__all__ = ["add_cli", "run_eval"]


def _load_model(name: str, checkpoint: Optional[str], num_classes: int) -> torch.nn.Module:
    """Build the model ``segret-zoo eval`` was asked for (the same resolution as ``predict``).

    A ``--checkpoint`` weights file brings its own class count and a saved folder its config, so
    eval never swaps in a randomly initialised classifier; a model whose class count is not the
    dataset's (``num_classes``) is refused, naming both.
    """
    model = load_model(name, checkpoint)
    found = int(getattr(model, "num_classes", num_classes))
    if found != num_classes:
        raise UserError(
            f"model {name}" + (f" with {checkpoint}" if checkpoint else "") + f" predicts {found} classes but the "
            f"dataset has {num_classes}; use a checkpoint trained on this dataset (with {num_classes} classes)")
    return model


def run_eval(args: argparse.Namespace) -> int:
    """``segret-zoo eval``: load the model and dataset, score, print the table, write metrics.json."""
    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of images")
    prepare_output_dir(args.out)  # before the evaluation: one line if --out cannot be written
    dataset = build_dataset(args.data, split=args.split)
    device = resolve_device(args.device)
    model = _load_model(args.model, args.checkpoint, dataset.num_classes)
    dtype = None if args.dtype == "fp32" else args.dtype
    segmenter = Segmenter(model, mode=args.mode, tta=args.tta, device=device, dtype=dtype, compile=args.compile)
    protocol = segmenter.describe()
    print(f"protocol: {protocol}", flush=True)  # before the run: a long evaluation says up front what it does
    results = evaluate(model, dataset, progress=not args.no_progress, limit=args.limit, predictor=segmenter.predict)
    print(format_table(results))
    out = write_metrics(results, Path(args.out) / "metrics.json", extra={
        "model": args.model, "checkpoint": args.checkpoint, "data": args.data, "split": args.split,
        "mode": segmenter.mode, "tta": bool(args.tta), "dtype": args.dtype, "device": str(device),
        "protocol": protocol,
    })
    print(f"metrics written to {out}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``segret-zoo eval``."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a dataset (aAcc, mIoU, mAcc, per-class IoU/Acc)",
        description="Evaluate a segmentation model with mmsegmentation's IoU protocol and write DIR/metrics.json. "
                    "Images are prepared as the model's dataset protocol says (the SegRet authors' test "
                    "pipelines: ADE20K and COCO-Stuff keep-ratio resize to fit 2048x512, 2048x640 for "
                    "segret_large on ADE20K, sides rounded up to a multiple of 32; Cityscapes 2048x1024; "
                    "whole inference); the protocol used is printed first.",
    )
    p.add_argument("--model", required=True,
                   help="zoo name (segret_tiny, segret_tiny.ade20k) or a save_pretrained folder")
    p.add_argument("--checkpoint", default=None, help="weights file or save_pretrained folder for --model")
    p.add_argument("--data", required=True,
                   help="dataset spec: ade20k:PATH, cityscapes:PATH, cocostuff10k:PATH, cocostuff:PATH (164k) "
                        "or folder:PATH")
    p.add_argument("--split", default="val", help="train or val (default: val)")
    p.add_argument("--mode", choices=("auto", "whole", "slide"), default=None,
                   help="whole-image or sliding-window inference (auto: slide for images much larger than the crop); "
                        "default: the model's test protocol (whole, as the SegRet authors evaluate)")
    p.add_argument("--tta", action="store_true",
                   help="multi-scale (0.5-1.75 of the test scale) + flip test-time augmentation (the 'MS' figures)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast dtype on GPU (default fp32, the reference setting)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--out", required=True, help="folder for metrics.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")
    p.set_defaults(func=run_eval)
