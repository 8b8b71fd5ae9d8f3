"""``segret-zoo convert-rmt``: official RMT checkpoint (``.pth``) -> ``model.safetensors`` + ``config.json``.

The output folder is what the Hub repo ``<org>/rmt_<size>.in1k`` holds: timm loads it with
``timm.create_model("hf-hub:<org>/rmt_t.in1k", pretrained=True)`` (after ``import segret_zoo``),
or locally with ``pretrained_cfg_overlay=dict(file=".../model.safetensors")``. A segmentation
backbone checkpoint keeps its per-stage norms as ``feature_norms.*`` so that
``SegRet.load_backbone`` can use them.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import timm

from segret_zoo.hub.io import read_state_dict
from segret_zoo.models.rmt import (
    RMT_CONFIGS,
    checkpoint_filter_fn,
    infer_rmt_variant,
    is_official_layout,
    remap_official_state_dict,
)

__all__ = ["convert_rmt_checkpoint", "add_cli"]


def convert_rmt_checkpoint(
        checkpoint: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        use_ema: bool = False,
) -> Dict[str, Any]:
    """Convert an official RMT checkpoint and write a Hub-ready folder; returns a summary dict.

    The converted weights are loaded into a freshly built timm model with ``strict=True``, so a
    checkpoint that does not convert losslessly fails here rather than at load time.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    src = Path(checkpoint)
    raw = read_state_dict(src, use_ema=use_ema)
    if not is_official_layout(raw) and not any(k.startswith("stem.") for k in raw):
        raise ValueError(f"{src} is not an RMT checkpoint (no patch_embed./layers. or stem./stages. keys)")
    converted = remap_official_state_dict(raw) if is_official_layout(raw) else dict(raw)
    variant = infer_rmt_variant(converted)
    if variant not in RMT_CONFIGS:
        raise ValueError(f"{src} holds {variant}, which is none of the zoo's variants {sorted(RMT_CONFIGS)}")
    head = converted.get("head.fc.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    model = timm.create_model(variant, num_classes=num_classes)
    if head is None:
        model.reset_classifier(0, "", reset_other=True)  # segmentation backbone: no ImageNet head
    model.load_state_dict(checkpoint_filter_fn(raw, model), strict=True)

    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in converted.items() if k.startswith("feature_norms.")})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".convert-") as tmp:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt", "source": src.name})
        save_config_for_hf(model, os.path.join(tmp, "config.json"))
        for name in ("model.safetensors", "config.json"):
            os.replace(os.path.join(tmp, name), out / name)
    summary = {
        "variant": variant,
        "num_classes": num_classes,
        "tensors": len(tensors),
        "has_feature_norms": any(k.startswith("feature_norms.") for k in tensors),
        "out_dir": str(out),
    }
    return summary


def _run(args: argparse.Namespace) -> int:
    from segret_zoo.cli import UserError

    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint not found: {args.checkpoint} (give the path of the official RMT .pth)")
    summary = convert_rmt_checkpoint(args.checkpoint, args.out_dir, use_ema=args.ema)
    print(json.dumps(summary, indent=2))
    print(f"wrote {summary['out_dir']}/model.safetensors and config.json; load with "
          f"timm.create_model('{summary['variant']}', pretrained=True, "
          f"pretrained_cfg_overlay=dict(file='{summary['out_dir']}/model.safetensors'))")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-rmt",
        help="convert an official RMT checkpoint to model.safetensors + config.json",
        description="Convert an official RMT checkpoint (classification .pth with 'model'/'model_ema', or the "
                    "mmsegmentation backbone with 'backbone.' keys) into this project's layout, ready to publish.")
    p.add_argument("checkpoint", help="official checkpoint (.pth/.pt/.safetensors)")
    p.add_argument("out_dir", help="output folder (created); receives model.safetensors and config.json")
    p.add_argument("--ema", action="store_true", help="use the 'model_ema' weights when the file has both")
    p.set_defaults(func=_run)

