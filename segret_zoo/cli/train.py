"""``segret-zoo train``: fine-tune a SegRet model on a dataset, on one CPU, one GPU or many (torchrun).

The recipe (the SegRet authors' settings for the model's size and the dataset, e.g. ``small-ade20k``)
is picked from ``--model`` and ``--data`` unless ``--recipe`` names one (or ``none``). Options left
out keep the recipe's (or the engine's) values, so ``--iters 2000`` changes only the length, and an
option given always wins (``--eval-interval 1000`` with a recipe whose interval is 4000 evaluates
every 1000). ``--print-config`` prints every resolved value, where it came from and the optimizer's
parameter groups, and trains nothing. Exit codes: 0 done, 2 user error, 130 / 143 stopped by
SIGINT / SIGTERM after saving a checkpoint (resume with ``--resume auto``).
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
from segret_zoo.train.engine import (
    NonFiniteLossError,
    TrainConfig,
    config_dict,
    planned_param_groups,
    resolve_config,
    train,
)
from segret_zoo.train.optim import PARAMWISE, PLAIN
from segret_zoo.train.recipes import LEGACY_RECIPES, NO_RECIPE, RECIPES, list_recipes

__all__ = ["add_cli", "run_train", "config_from_args", "format_config"]


def _bool_or_path(value: str) -> Any:
    return True if value.lower() in ("true", "1", "yes", "imagenet") else value


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` an argument namespace asks for (only given options override)."""

    if args.recipe is not None and args.recipe not in (*RECIPES, *LEGACY_RECIPES, NO_RECIPE):
        raise UserError(f"unknown recipe {args.recipe!r}; available: {', '.join(list_recipes())}, or {NO_RECIPE!r} "
                        "(left out, the one for --model and --data is picked)")
    if args.out is None and not args.print_config:
        raise UserError("--out is required: the run folder (checkpoints, metrics.jsonl, best/, last/)")
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
        raise UserError("--data is required to start a run (ade20k:PATH, cityscapes:PATH, cocostuff10k:PATH, "
                        "cocostuff:PATH or folder:PATH); only --resume can take it from the run folder")
    if args.overwrite and args.resume is not None:
        raise UserError("pass either --resume (continue the run in --out) or --overwrite (start it over)")
    kwargs: Dict[str, Any] = dict(data=args.data, recipe=args.recipe, out_dir=args.out or "runs/x", resume=args.resume,
                                  init_from=args.init_from, progress=not args.no_progress, amp=args.amp,
                                  grad_checkpointing=args.grad_checkpointing, check_data=args.check_data,
                                  overwrite=args.overwrite)
    options = {"model": args.model, "iters": args.iters, "batch_size": args.batch_size, "lr": args.lr, "accum_steps": args.accum,
               "eval_interval": args.eval_interval, "ckpt_interval": args.ckpt_interval,
               "num_classes": args.num_classes, "workers": args.workers, "seed": args.seed,
               "device": args.device, "time_budget_s": args.time_budget, "head_lr_mult": args.head_lr_mult,
               "warmup_iters": args.warmup_iters, "log_interval": args.log_interval,
               "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio, "poly_power": args.poly_power,
               "min_lr": args.min_lr, "encoder_norm_lr_mult": args.encoder_norm_lr_mult,
               "norm_decay_mult": args.norm_decay_mult, "bias_decay_mult": args.bias_decay_mult,
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


def _fmt(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) and len(value) == 2 \
            else json.dumps(list(value))
    return json.dumps(value) if isinstance(value, (dict, bool)) or value is None else str(value)


def _style(cfg: TrainConfig) -> str:
    """Which of the authors' two optimizer styles a resolved config's group settings are."""
    settings = {k: float(getattr(cfg, k)) for k in PARAMWISE}
    if settings == PARAMWISE:
        return "as the configs with paramwise_cfg: encoder norms lr x0.1, no decay on norms, the rest decayed"
    if settings == PLAIN:
        return "as the configs without paramwise_cfg: every parameter decayed at lr x1"
    return "custom multipliers"


def format_config(cfg: TrainConfig, groups: Any = None) -> str:
    """A resolved config as text: every value with where it came from, then the optimizer's groups."""
    values = config_dict(cfg)
    values.pop("sources", None)
    lines = [f"recipe: {cfg.recipe or 'none'}  [{cfg.sources.get('recipe', '?')}]"]
    width = max(len(k) for k in values)
    for key, value in values.items():
        if key == "recipe" or (key in ("train_dataset", "val_dataset") and value is None):
            continue
        note = ("  (no warm-up)" if key == "warmup_iters" and value == 0 else
                "  (the data's)" if key == "num_classes" and value is None else "")
        lines.append(f"  {key:<{width}}  {_fmt(value):<24} {cfg.sources.get(key, 'default')}{note}")
    if groups:
        lines.append(f"optimizer: AdamW (betas 0.9, 0.999), poly schedule per iteration; parameter groups "
                     f"({_style(cfg)}):")
        for g in groups:
            lines.append(f"  {g['name']:<16} {g['params']:>11,} params in {g['tensors']:>3} tensors  "
                         f"lr x{g['lr_mult']:g}  weight decay {g['weight_decay']:g}")
    else:
        lines.append("optimizer: AdamW; parameter groups are listed in train_config.json once the model is built")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    """Run training; print where the results are; map interruption signals to 128 + signal number."""

    cfg = config_from_args(args)
    if args.print_config:
        resolved = resolve_config(cfg)
        print(format_config(resolved, planned_param_groups(resolved)))
        return 0
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
        "train", help="fine-tune a SegRet model (the authors' recipes; DDP through torchrun)",
        description="Fine-tune a SegRet model with the SegRet authors' recipe for its size and dataset (picked "
                    "from --model and --data; --print-config shows every value and where it came from): "
                    "AdamW with the parameter groups of the config (mmcv's: with its paramwise_cfg, the "
                    "encoder's norms at lr x0.1 and no weight decay on any norm, biases and the rest decayed; "
                    "without it, every parameter decayed at lr x1), poly schedule "
                    "with optional linear warm-up, pixel cross-entropy; periodic evaluation and atomic "
                    "checkpoints; resumable. Launch with 'torchrun --nproc_per_node N -m segret_zoo train ...' "
                    "for several GPUs. --batch-size is the global batch (all processes and accumulation steps).")
    p.add_argument("--model", default=None,
                   help="factory name (segret_tiny ... segret_large, optionally .ade20k), hf-hub:org/repo, or a "
                        "save_pretrained folder (default: segret_tiny; when resuming, the run's)")
    p.add_argument("--data", default=None,
                   help="ade20k:PATH, cityscapes:PATH, cocostuff10k:PATH, cocostuff:PATH (164k) or folder:PATH "
                        "(a bare PATH is recognised by its layout); when resuming, the run's")
    p.add_argument("--recipe", default=None,
                   help="SIZE-DATASET with SIZE tiny/small/base/large and DATASET ade20k/cityscapes/cocostuff "
                        "(COCO-Stuff 10k's), or 'none'; default: the one for --model and --data")
    p.add_argument("--print-config", action="store_true",
                   help="print every resolved setting, where it came from (recipe / flag / default) and the "
                        "optimizer's parameter groups, then exit without training")
    p.add_argument("--out", default=None,
                   help="run folder (checkpoints, metrics.jsonl, curves.png, train_config.json, best/, last/)")
    p.add_argument("--iters", type=positive_int, default=None, help="total iterations (the schedule's length)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch size")
    p.add_argument("--lr", type=float_range(above=0.0), default=None, help="peak learning rate (recipe's; default 1e-4)")
    p.add_argument("--weight-decay", type=float_range(0.0), default=None, help="AdamW weight decay (recipe's; default 0.01)")
    p.add_argument("--head-lr-mult", type=float_range(above=0.0), default=None,
                   help="learning-rate multiplier for the whole decoder (default 1, as the authors' configs)")
    p.add_argument("--encoder-norm-lr-mult", type=float_range(0.0), default=None,
                   help="learning-rate multiplier for the encoder's LayerNorms and BatchNorms (recipe's: 0.1, or "
                        "1 where the config has no paramwise_cfg; default 0.1)")
    p.add_argument("--norm-decay-mult", type=float_range(0.0), default=None,
                   help="weight-decay multiplier for every norm layer's weight and bias (recipe's: 0, or 1 where "
                        "the config has no paramwise_cfg; default 0)")
    p.add_argument("--bias-decay-mult", type=float_range(0.0), default=None,
                   help="weight-decay multiplier for biases, layer-scale gammas and other 1-D parameters outside "
                        "norms (recipes: 1, as mmcv; default 1; 0 decays only weight matrices and kernels). "
                        "Without a recipe the groups are those of the nine configs with paramwise_cfg")
    p.add_argument("--warmup-iters", type=int_range(0), default=None,
                   help="linear warm-up length, 0 for none (recipe's; default 0)")
    p.add_argument("--warmup-ratio", type=float_range(maximum=1.0, above=0.0), default=None,
                   help="warm-up's starting fraction of the learning rate (default 1e-6)")
    p.add_argument("--poly-power", type=float_range(0.0), default=None, help="poly schedule power (recipe's; default 0.9)")
    p.add_argument("--min-lr", type=float_range(0.0), default=None, help="learning rate at the end of the schedule (default 0)")
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
