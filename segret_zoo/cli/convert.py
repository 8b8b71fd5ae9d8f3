"""``segret-zoo convert-rmt``: an official RMT checkpoint -> a Hub-ready ``model.safetensors`` + ``config.json``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from segret_zoo.convert import convert_rmt_checkpoint
from segret_zoo.errors import UserError

__all__ = ["add_cli"]


def _run(args: argparse.Namespace) -> int:
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint not found: {args.checkpoint} (give the path of the official RMT .pth)")
    summary = convert_rmt_checkpoint(args.checkpoint, args.out_dir, use_ema=args.ema)
    print(json.dumps(summary, indent=2))
    print(f"wrote {summary['out_dir']}/model.safetensors and config.json; load with "
          f"timm.create_model('{summary['variant']}', pretrained=True, "
          f"pretrained_cfg_overlay=dict(file='{summary['out_dir']}/model.safetensors'))")
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
    p.set_defaults(func=_run)

