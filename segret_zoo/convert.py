"""Official RMT checkpoint (``.pth``) -> ``model.safetensors`` + ``config.json`` (``segret-zoo convert-rmt``).

The output folder is what the Hub repo ``<org>/rmt_<size>.in1k`` holds: timm loads it with
``timm.create_model("hf-hub:<org>/rmt_t.in1k", pretrained=True)`` (after ``import segret_zoo``),
or locally with ``pretrained_cfg_overlay=dict(file=".../model.safetensors")``. A segmentation
backbone checkpoint keeps its per-stage norms as ``feature_norms.*`` so that
``SegRet.load_backbone`` can use them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Union

import timm
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf

from segret_zoo.errors import CheckpointError
from segret_zoo.files import write_files_atomic
from segret_zoo.hub.download import CONFIG_NAME, WEIGHTS_NAME
from segret_zoo.hub.weights import read_state_dict
from segret_zoo.models.rmt import (
    RMT_CONFIGS,
    checkpoint_filter_fn,
    infer_rmt_variant,
    is_official_layout,
    remap_official_state_dict,
)

__all__ = ["convert_rmt_checkpoint"]


def convert_rmt_checkpoint(
        checkpoint: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        use_ema: bool = False,
) -> Dict[str, Any]:
    """Convert an official RMT checkpoint and write a Hub-ready folder; returns a summary dict.

    The converted weights are loaded into a freshly built timm model with ``strict=True``, so a
    checkpoint that does not convert losslessly fails here rather than at load time.
    """
    src = Path(checkpoint)
    raw = read_state_dict(src, use_ema=use_ema)
    if not is_official_layout(raw) and not any(k.startswith("stem.") for k in raw):
        raise CheckpointError(f"{src} is not an RMT checkpoint (no patch_embed./layers. or stem./stages. keys)")
    converted = remap_official_state_dict(raw) if is_official_layout(raw) else dict(raw)
    variant = infer_rmt_variant(converted)
    if variant not in RMT_CONFIGS:
        raise CheckpointError(f"{src} holds {variant}, which is none of the zoo's variants {sorted(RMT_CONFIGS)}")
    head = converted.get("head.fc.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    model = timm.create_model(variant, num_classes=num_classes)
    if head is None:
        model.reset_classifier(0, "", reset_other=True)  # segmentation backbone: no ImageNet head
    model.load_state_dict(checkpoint_filter_fn(raw, model), strict=True)

    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in converted.items() if k.startswith("feature_norms.")})
    out = Path(out_dir)
    write_files_atomic(out, [
        (WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt", "source": src.name})),
        (CONFIG_NAME, lambda p: save_config_for_hf(model, str(p))),
    ])
    summary = {
        "variant": variant,
        "num_classes": num_classes,
        "tensors": len(tensors),
        "has_feature_norms": any(k.startswith("feature_norms.") for k in tensors),
        "out_dir": str(out),
    }
    return summary
