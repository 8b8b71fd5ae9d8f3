"""``segret-zoo convert-rmt`` / ``convert-segret``: official checkpoints -> Hub-ready folders."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from segret_zoo.convert import convert_rmt_checkpoint, convert_segret_checkpoint
from segret_zoo.data.classes import DATASET_DEFAULTS
from segret_zoo.errors import UserError

__all__ = ["add_cli"]


def _check_file(path: str, what: str) -> None:
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path} (give the path of {what})")


def _run_rmt(args: argparse.Namespace) -> int:
    _check_file(args.checkpoint, "the official RMT .pth")
    summary = convert_rmt_checkpoint(args.checkpoint, args.out_dir, use_ema=args.ema)
    print(json.dumps(summary, indent=2))
    print(f"wrote {summary['out_dir']}/model.safetensors and config.json; load with "
          f"timm.create_model('{summary['variant']}', pretrained=True, "
          f"pretrained_cfg_overlay=dict(file='{summary['out_dir']}/model.safetensors'))")
    return 0


def _run_segret(args: argparse.Namespace) -> int:
    _check_file(args.checkpoint, "a released SegRet .pth")
    summary = convert_segret_checkpoint(args.checkpoint, args.out_dir, dataset=args.dataset)
    print(json.dumps(summary, indent=2))
    repo = summary["hub_repo"] or "ORG/NAME"
    print(f"wrote {summary['out_dir']} ({summary['variant']}, {summary['dataset']}, {summary['num_classes']} "
          f"classes); publish it with `segret-zoo push {summary['out_dir']} {repo}` "
          "(steps: weights/README.md)")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert-rmt",
        help="convert an official RMT checkpoint to model.safetensors + config.json",
        description="Convert an official RMT checkpoint (classification .pth with 'model'/'model_ema', or the "
                    "mmsegmentation backbone with 'backbone.' keys) into this project's layout, ready to publish.")
    p.add_argument("checkpoint", help="official checkpoint (.pth/.pt/.safetensors)")
    p.add_argument("out_dir", help="output folder (created); receives model.safetensors and config.json")
    p.add_argument("--ema", action="store_true", help="use the 'model_ema' weights when the file has both")
    p.set_defaults(func=_run_rmt)

    p = subparsers.add_parser(
        "convert-segret",
        help="convert a released SegRet checkpoint into a save_pretrained folder, ready for push",
        description="Convert one of the authors' released SegRet checkpoints (mmsegmentation 0.x .pth: meta, "
                    "state_dict, optimizer) into a save_pretrained folder: model.safetensors, config.json (class "
                    "names from the file's meta.CLASSES, else the dataset's) and a model card naming the source. "
                    "The variant and class count are read from the weights.")
    p.add_argument("checkpoint", help="released SegRet checkpoint (.pth)")
    p.add_argument("out_dir", help="output folder (created or replaced)")
    p.add_argument("--dataset", choices=sorted(DATASET_DEFAULTS), default=None,
                   help="dataset the weights were trained on (default: from the class count: 150 ade20k, "
                        "19 cityscapes, 171 cocostuff)")
    p.set_defaults(func=_run_segret)
