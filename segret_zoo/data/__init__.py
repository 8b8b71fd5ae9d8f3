"""Datasets, label maps and the mmsegmentation-style augmentation pipeline.

``segret_zoo.data.classes`` is imported eagerly (numpy only; the model config and the predictor
need it); the dataset and transform modules are loaded on first use so that importing the
package for class names stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from segret_zoo.data.classes import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELID_TO_TRAINID,
    COCOSTUFF_CLASSES,
    COCOSTUFF_RAWID_TO_TRAINID,
    DATASET_CLASSES,
    DATASET_PALETTES,
    IGNORE_INDEX,
    canonical_dataset_name,
    get_classes,
    get_palette,
    id2label,
)

_LAZY = {
    "build_dataset": "segret_zoo.data.datasets",
    "SegDataset": "segret_zoo.data.datasets",
    "ADE20KDataset": "segret_zoo.data.datasets",
    "CityscapesDataset": "segret_zoo.data.datasets",
    "COCOStuffDataset": "segret_zoo.data.datasets",
    "COCOStuff10kDataset": "segret_zoo.data.datasets",
    "FolderDataset": "segret_zoo.data.datasets",
    "load_image": "segret_zoo.data.images",
    "load_mask": "segret_zoo.data.images",
    "to_rgb_array": "segret_zoo.data.images",
    "parse_spec": "segret_zoo.data.datasets",
    "build_train_transform": "segret_zoo.data.transforms",
    "build_eval_transform": "segret_zoo.data.transforms",
    "seed_worker": "segret_zoo.data.transforms",
}

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "COCOSTUFF_CLASSES",
    "COCOSTUFF_RAWID_TO_TRAINID",
    "DATASET_CLASSES",
    "DATASET_PALETTES",
    "IGNORE_INDEX",
    "canonical_dataset_name",
    "get_classes",
    "get_palette",
    "id2label",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segret_zoo.data' has no attribute {name!r}")
