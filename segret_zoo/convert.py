"""Official checkpoints -> Hub-ready folders: ``segret-zoo convert-rmt`` and ``segret-zoo convert-segret``.

``convert_rmt_checkpoint``: an official RMT checkpoint (ImageNet ``.pth`` or the mmsegmentation
backbone) -> ``model.safetensors`` + ``config.json``, what the Hub repo ``<org>/rmt_<size>.in1k``
holds (timm loads it with ``timm.create_model("hf-hub:<org>/rmt_t.in1k", pretrained=True)``).

``convert_segret_checkpoint``: a released SegRet checkpoint (the authors' mmsegmentation 0.x files)
-> a ``save_pretrained`` folder (safetensors, config.json with the file's class names, model card
naming the source), ready for ``segret-zoo push``.

Both load the converted weights into a freshly built model strictly, so a checkpoint that does not
convert losslessly fails here rather than at a user's load time.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import timm
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf

from segret_zoo.data.classes import DATASET_DEFAULTS
from segret_zoo.errors import CheckpointError
from segret_zoo.factory import create_model
from segret_zoo.files import write_files_atomic
from segret_zoo.hub.download import CONFIG_NAME, WEIGHTS_NAME
from segret_zoo.hub.weights import read_checkpoint, read_state_dict
from segret_zoo.models.rmt import RMT_CONFIGS, as_rmt_state, checkpoint_filter_fn, infer_rmt_variant
from segret_zoo.models.segret import SegRet

__all__ = ["convert_rmt_checkpoint", "convert_segret_checkpoint", "SEGRET_RELEASE_URL"]

PathLike = Union[str, "os.PathLike[str]"]
SEGRET_RELEASE_URL = "https://github.com/ZhiyuanLi218/segret"


def convert_rmt_checkpoint(checkpoint: PathLike, out_dir: PathLike, use_ema: bool = False) -> Dict[str, Any]:
    """Convert an official RMT checkpoint and write a Hub-ready folder; returns a summary dict.

    An mmsegmentation backbone's per-stage norms (``extra_norms``) are left out: no model here has them.
    """
    src = Path(checkpoint)
    raw = read_state_dict(src, use_ema=use_ema)
    converted = as_rmt_state(raw)
    if converted is None:
        raise CheckpointError(f"{src} is not an RMT checkpoint (no patch_embed./layers. or stem./stages. keys)")
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
    out = Path(out_dir)
    write_files_atomic(out, [
        (WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt", "source": src.name})),
        (CONFIG_NAME, lambda p: save_config_for_hf(model, str(p))),
    ])
    return {"variant": variant, "num_classes": num_classes, "tensors": len(tensors), "out_dir": str(out)}


def dataset_for_classes(num_classes: int) -> Optional[str]:
    """The zoo's dataset tag with this class count (150 ADE20K, 19 Cityscapes, 171 COCO-Stuff), or None."""
    return next((tag for tag, d in DATASET_DEFAULTS.items() if d["num_classes"] == num_classes), None)


def convert_segret_checkpoint(checkpoint: PathLike, out_dir: PathLike, dataset: Optional[str] = None) -> Dict[str, Any]:
    """Convert a released SegRet checkpoint into a ``save_pretrained`` folder; returns a summary dict.

    The variant and class count come from the weights; the dataset from ``dataset`` or else the class
    count; class names from the file's ``meta["CLASSES"]`` when present, else the dataset's.
    """
    src = Path(checkpoint)
    ckpt = read_checkpoint(src)
    config = SegRet.config_from_state_dict(ckpt.state_dict, source=str(src), meta=ckpt.meta)
    arch, num_classes = config["architecture"], config["num_classes"]
    tag = dataset or dataset_for_classes(num_classes)
    if tag is None:
        known = ", ".join(f"{t}: {d['num_classes']}" for t, d in DATASET_DEFAULTS.items())
        raise CheckpointError(f"{src} predicts {num_classes} classes, which is no dataset the zoo knows ({known}): "
                              "pass --dataset to name it")
    if tag not in DATASET_DEFAULTS:
        raise CheckpointError(f"unknown dataset {tag!r}; choose one of {', '.join(DATASET_DEFAULTS)}")
    if DATASET_DEFAULTS[tag]["num_classes"] != num_classes:
        raise CheckpointError(f"{src} predicts {num_classes} classes but {tag} has "
                              f"{DATASET_DEFAULTS[tag]['num_classes']}: pass the --dataset it was trained on")
    labels_from = "the file's meta.CLASSES" if config.get("id2label") else f"the {tag} class list"
    model = create_model(arch, pretrained=tag, checkpoint_path=src, id2label=config.get("id2label")).eval()
    model.pretrained_cfg["converted_from"] = (
        f"{src.name}, the authors' released checkpoint ({SEGRET_RELEASE_URL}), converted with "
        "`segret-zoo convert-segret`")
    out = Path(out_dir)
    model.save_pretrained(out)
    return {
        "variant": arch, "dataset": tag, "num_classes": num_classes, "labels_from": labels_from,
        "dropped": sorted(k for k in ckpt.state_dict if k.startswith("decode_head.conv_seg.")),
        "hub_repo": model.pretrained_cfg.get("hf_hub_id"), "out_dir": str(out),
    }
