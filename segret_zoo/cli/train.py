"""``segret-zoo train``: fine-tune a SegRet model on a dataset, on one CPU, one GPU or many (torchrun).

Options left out on the command line keep the recipe's (or the engine's) values, so
``--recipe ade20k-160k --iters 2000`` changes only the length, and an option given always wins
(``--eval-interval 1000`` with a recipe whose interval is 16000 evaluates every 1000). Exit codes: 0 done, 2 user error,
130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint (resume with ``--resume auto``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict

from segret_zoo.cli.options import float_range, image_side, int_range, num_classes, positive_int
from segret_zoo.errors import UserError
from segret_zoo.train.engine import NonFiniteLossError, TrainConfig, train
from segret_zoo.train.recipes import list_recipes

__all__ = ["add_cli", "run_train", "config_from_args"]


def _bool_or_path(value: str) -> Any:
    return True if value.lower() in ("true", "1", "yes", "imagenet") else value


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` an argument namespace asks for (only given options override)."""

    if args.recipe is not None and args.recipe not in list_recipes():
        raise UserError(f"unknown recipe {args.recipe!r}; available: {', '.join(list_recipes())}")
    if args.pretrained_backbone not in (None, True) and not Path(args.pretrained_backbone).exists():
        raise UserError(f"--pretrained-backbone {args.pretrained_backbone} not found; pass a checkpoint file or 'true' "
                        "for the ImageNet RMT weights")
    if args.resume not in (None, "auto") and not Path(args.resume).exists():
        raise UserError(f"--resume {args.resume} not found; pass a checkpoint, a run folder or 'auto'")
    if args.init_from is not None and not Path(args.init_from).exists():
        raise UserError(f"--init-from {args.init_from} not found; pass a training checkpoint or a run folder")
    if args.init_from is not None and args.resume is not None:
        raise UserError("pass either --resume (continue a run exactly) or --init-from (its weights, a new schedule)")
    if args.data is None and args.resume is None:
        raise UserError("--data is required to start a run (ade20k:PATH, cityscapes:PATH, cocostuff:PATH or "
                        "folder:PATH); only --resume can take it from the run folder")
    if args.overwrite and args.resume is not None:
        raise UserError("pass either --resume (continue the run in --out) or --overwrite (start it over)")
    kwargs: Dict[str, Any] = dict(data=args.data, recipe=args.recipe, out_dir=args.out, resume=args.resume,
                                  init_from=args.init_from, progress=not args.no_progress, amp=args.amp,
                                  grad_checkpointing=args.grad_checkpointing, check_data=args.check_data,
                                  overwrite=args.overwrite)
    options = {"model": args.model, "iters": args.iters, "batch_size": args.batch_size, "lr": args.lr, "accum_steps": args.accum,
               "eval_interval": args.eval_interval, "ckpt_interval": args.ckpt_interval,
               "num_classes": args.num_classes, "workers": args.workers, "seed": args.seed,
               "device": args.device, "time_budget_s": args.time_budget, "head_lr_mult": args.head_lr_mult,
               "warmup_iters": args.warmup_iters, "log_interval": args.log_interval,
               "crop_size": tuple(args.crop) if args.crop else None,
               "scale": tuple(args.scale) if args.scale else None,
               "pretrained_backbone": args.pretrained_backbone, "pretrained": args.pretrained}
    kwargs.update({k: v for k, v in options.items() if v is not None})
    if args.class_weights:
        try:
            kwargs["class_weights"] = [float(w) for w in args.class_weights.split(",")]
        except ValueError as err:
            raise UserError(f"--class-weights must be comma-separated numbers: {err}") from None
    if args.sync_bn is not None:
        kwargs["sync_bn"] = args.sync_bn
    return TrainConfig(**kwargs)


def run_train(args: argparse.Namespace) -> int:
    """Run training; print where the results are; map interruption signals to 128 + signal number."""

    cfg = config_from_args(args)
    try:
        result = train(cfg)
    except NonFiniteLossError as err:
        raise UserError(str(err)) from None
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per job, not per process
        summary = {k: v for k, v in result.items() if k != "history"}
        summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
        print(json.dumps(summary, indent=2))
    if result.get("interrupted"):
        signum = int(result.get("signal") or signal.SIGINT)
        print(f"segret-zoo train: stopped by {signal.Signals(signum).name}; checkpoint saved to {result['checkpoint']}"
              f"; continue with --resume auto --out {result['run_dir']}", file=sys.stderr)
        return 128 + signum
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``segret-zoo train``."""
    p = subparsers.add_parser(
        "train", help="fine-tune a SegRet model (recipes of the paper; DDP through torchrun)",
        description="Fine-tune a SegRet model with the paper's recipe: AdamW, linear warm-up + poly schedule, "
                    "pixel cross-entropy; periodic evaluation and atomic checkpoints; resumable. Launch with "
                    "'torchrun --nproc_per_node N -m segret_zoo train ...' for several GPUs. "
                    "--batch-size is the global batch (all processes and accumulation steps).")
    p.add_argument("--model", default=None,
                   help="factory name (segret_tiny ... segret_large, optionally .ade20k), hf-hub:org/repo, or a "
                        "save_pretrained folder (default: segret_tiny; when resuming, the run's)")
    p.add_argument("--data", default=None,
                   help="ade20k:PATH, cityscapes:PATH, cocostuff:PATH or folder:PATH (when resuming: the run's)")
    p.add_argument("--recipe", default=None, help="ade20k-160k, cityscapes-160k or cocostuff-80k")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, curves.png, best/, last/)")
    p.add_argument("--iters", type=positive_int, default=None, help="total iterations (the schedule's length)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch size")
    p.add_argument("--lr", type=float_range(above=0.0), default=None, help="peak learning rate (default 1e-4)")
    p.add_argument("--head-lr-mult", type=float_range(above=0.0), default=None, help="learning-rate multiplier for the decoder")
    p.add_argument("--warmup-iters", type=int_range(0), default=None,
                   help="linear warm-up length, at most --iters (default 1500)")
    p.add_argument("--crop", type=image_side, nargs=2, metavar=("H", "W"), default=None, help="training crop")
    p.add_argument("--scale", type=image_side, nargs=2, metavar=("LONG", "SHORT"), default=None,
                   help="base scale of the random resize (and the exported test scale)")
    p.add_argument("--accum", type=positive_int, default=None, help="gradient accumulation steps")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default="none", help="autocast on GPU")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute encoder blocks to save memory")
    p.add_argument("--resume", default=None,
                   help="checkpoint file, run folder, or 'auto' (the last in --out): continue that run exactly "
                        "(options left out keep the run's values; changed ones are refused)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that already holds a run (its checkpoints and metrics are deleted)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start a new schedule from the weights of a training checkpoint or run folder")
    p.add_argument("--check-data", choices=("full", "quick", "off"), default="full",
                   help="check every mask's size and labels before iteration 1 (quick: sizes of all, labels of "
                        "a sample; cached per file list)")
    p.add_argument("--eval-interval", type=positive_int, default=None, help="evaluate every N iterations")
    p.add_argument("--ckpt-interval", type=positive_int, default=None, help="checkpoint every N iterations")
    p.add_argument("--log-interval", type=positive_int, default=None, help="metrics.jsonl record every N iterations")
    p.add_argument("--time-budget", type=float_range(above=0.0), default=None, help="stop after this many seconds (then eval + save)")
    p.add_argument("--pretrained-backbone", type=_bool_or_path, default=None,
                   help="'true' for ImageNet RMT weights, or a path to an RMT checkpoint")
    p.add_argument("--pretrained", default=None, help="start from a published SegRet model (tag, e.g. ade20k)")
    p.add_argument("--num-classes", type=num_classes, default=None, help="classes (default: the dataset's)")
    p.add_argument("--class-weights", default=None, help="comma-separated per-class loss weights")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=None,
                   help="do not synchronize decoder BatchNorm across processes")
    p.add_argument("--workers", type=int_range(0), default=None, help="DataLoader worker processes")
    p.add_argument("--seed", type=int_range(0), default=None, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
