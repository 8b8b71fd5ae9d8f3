"""Dataset constants: class names, colour palettes, label-id mappings, the evaluation protocol of
each dataset SegRet is trained on, and the input normalisation.

Kept in one module because the model config (``id2label``, ``pretrained_cfg``), the predictor, the
training loop and the datasets all need the same values in the same order. The names
and palettes are the ones mmsegmentation uses, so colourised outputs look the way users of that
ecosystem expect.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "COCOSTUFF_CLASSES",
    "DATASET_CLASSES",
    "DATASET_PALETTES",
    "ADE20K_PALETTE",
    "CITYSCAPES_PALETTE",
    "COCOSTUFF_PALETTE",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "COCOSTUFF_RAWID_TO_TRAINID",
    "ADE20K_REDUCE_ZERO_LABEL",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DATASET_DEFAULTS",
    "DATA_KINDS",
    "slide_stride",
    "canonical_dataset_name",
    "get_classes",
    "get_palette",
    "id2label",
]

IGNORE_INDEX = 255  # mask value that the loss and the metric skip
# input normalisation of every SegRet and RMT model (on a 0-1 scale): timm's ImageNet constants
IMAGENET_MEAN: Tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)  # type: ignore[assignment]
IMAGENET_STD: Tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)  # type: ignore[assignment]

# dataset tag -> label set and evaluation protocol (the SegRet authors' mmsegmentation configs).
# test_scale: keep-ratio rescale target (long, short) of mmcv's rule; test_size_divisor: each side of
# the rescaled image is then rounded UP to a multiple of it (SegFormer's AlignedResize, which the
# ADE20K and COCO-Stuff test pipelines use; None: no rounding, as Cityscapes'); test_mode: "whole"
# inference (one pass over the resized image) in every config. The "cocostuff" tag is the paper's
# COCO-Stuff 10k (its published weights were trained and scored on 10k; 164k shares the 171 classes).
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "ade20k": dict(num_classes=150, test_scale=(2048, 512), test_size_divisor=32, test_mode="whole",
                   crop_size=(512, 512), reduce_zero_label=True,
                   dataset_name="ADE20K (SceneParsing, 150 classes)", license="bsd-3-clause"),
    "cityscapes": dict(num_classes=19, test_scale=(2048, 1024), test_size_divisor=None, test_mode="whole",
                       crop_size=(512, 1024), reduce_zero_label=False,
                       dataset_name="Cityscapes (19 train ids)", license="other"),
    "cocostuff": dict(num_classes=171, test_scale=(2048, 512), test_size_divisor=32, test_mode="whole",
                      crop_size=(512, 512), reduce_zero_label=True,
                      dataset_name="COCO-Stuff 10k (171 classes)", license="cc-by-4.0"),
}

# ``--data KIND:PATH`` kinds of the known benchmarks -> the tag whose label set and test protocol they
# use, and what a model trained on them records (the annotation encoding differs between the splits:
# COCO-Stuff 10k as mmseg's converter writes it is 1-based with 0 = unlabeled, 164k is 0-based).
DATA_KINDS: Dict[str, Dict[str, Any]] = {
    "ade20k": dict(tag="ade20k", dataset_name="ADE20K (SceneParsing, 150 classes)", reduce_zero_label=True),
    "cityscapes": dict(tag="cityscapes", dataset_name="Cityscapes (19 train ids)", reduce_zero_label=False),
    "cocostuff10k": dict(tag="cocostuff", dataset_name="COCO-Stuff 10k (171 classes)", reduce_zero_label=True),
    "cocostuff": dict(tag="cocostuff", dataset_name="COCO-Stuff 164k (171 classes)", reduce_zero_label=False),
}


def slide_stride(crop_size: Sequence[int]) -> Tuple[int, int]:
    """Sliding-window step for a crop: two thirds of it, as mmsegmentation's configs use (512 -> 341)."""
    return tuple(max(int(round(c * 2 / 3)), 1) for c in crop_size)  # type: ignore[return-value]

# ADE20K SceneParsing (150 classes), in the benchmark's order (index 0 = raw label 1).
ADE20K_CLASSES: Tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# Cityscapes, the 19 evaluated classes in train-id order.
CITYSCAPES_CLASSES: Tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)

# COCO-Stuff 164k, 171 train ids: the 80 thing classes then the 91 stuff classes, in raw-id order.
COCOSTUFF_CLASSES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # stuff
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

_ADE20K_PALETTE = [
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112], [0, 255, 133],
    [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0], [0, 143, 255], [51, 255, 0],
    [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0], [0, 255, 153],
    [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255],
    [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255],
    [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255], [0, 255, 92], [184, 0, 255],
    [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255],
    [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255],
    [255, 255, 0], [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0],
    [173, 0, 255], [0, 245, 255], [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255],
    [184, 255, 0], [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
]

_CITYSCAPES_PALETTE = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32],
]

_COCOSTUFF_PALETTE = [
    [0, 192, 64], [0, 192, 64], [0, 64, 96], [128, 192, 192], [0, 64, 64], [0, 192, 224],
    [0, 192, 192], [128, 192, 64], [0, 192, 96], [128, 192, 64], [128, 32, 192], [0, 0, 224],
    [0, 0, 64], [0, 160, 192], [128, 0, 96], [128, 0, 192], [0, 32, 192], [128, 128, 224],
    [0, 0, 192], [128, 160, 192], [128, 128, 0], [128, 0, 32], [128, 32, 0], [128, 0, 128],
    [64, 128, 32], [0, 160, 0], [0, 0, 0], [192, 128, 160], [0, 32, 0], [0, 128, 128],
    [64, 128, 160], [128, 160, 0], [0, 128, 0], [192, 128, 32], [128, 96, 128], [0, 0, 128],
    [64, 0, 32], [0, 224, 128], [128, 0, 0], [192, 0, 160], [0, 96, 128], [128, 128, 128],
    [64, 0, 160], [128, 224, 128], [128, 128, 64], [192, 0, 32], [128, 96, 0], [128, 0, 192],
    [0, 128, 32], [64, 224, 0], [0, 0, 64], [128, 128, 160], [64, 96, 0], [0, 128, 192],
    [0, 128, 160], [192, 224, 0], [0, 128, 64], [128, 128, 32], [192, 32, 128], [0, 64, 192],
    [0, 0, 32], [64, 160, 128], [128, 64, 64], [128, 0, 160], [64, 32, 128], [128, 192, 192],
    [0, 0, 160], [192, 160, 128], [128, 192, 0], [128, 0, 96], [192, 32, 0], [128, 64, 128],
    [64, 128, 96], [64, 160, 0], [0, 64, 0], [192, 128, 224], [64, 32, 0], [0, 192, 128],
    [64, 128, 224], [192, 160, 0], [0, 192, 0], [192, 128, 96], [192, 96, 128], [0, 64, 128],
    [64, 0, 96], [64, 224, 128], [128, 64, 0], [192, 0, 224], [64, 96, 128], [128, 192, 128],
    [64, 0, 224], [192, 224, 128], [128, 192, 64], [192, 0, 96], [192, 96, 0], [128, 64, 192],
    [0, 128, 96], [0, 224, 0], [64, 64, 64], [128, 128, 224], [0, 96, 0], [64, 192, 192],
    [0, 128, 224], [128, 224, 0], [64, 192, 64], [128, 128, 96], [128, 32, 128], [64, 0, 192],
    [0, 64, 96], [0, 160, 128], [192, 0, 64], [128, 64, 224], [0, 32, 128], [192, 128, 192],
    [0, 64, 224], [128, 160, 128], [192, 128, 0], [128, 64, 32], [128, 32, 64], [192, 0, 128],
    [64, 192, 32], [0, 160, 64], [64, 0, 0], [192, 192, 160], [0, 32, 64], [64, 128, 128],
    [64, 192, 160], [128, 160, 64], [64, 128, 0], [192, 192, 32], [128, 96, 192], [64, 0, 128],
    [64, 64, 32], [0, 224, 192], [192, 0, 0], [192, 64, 160], [0, 96, 192], [192, 128, 128],
    [64, 64, 160], [128, 224, 192], [192, 128, 64], [192, 64, 32], [128, 96, 64], [192, 0, 192],
    [0, 192, 32], [64, 224, 64], [64, 0, 64], [128, 192, 160], [64, 96, 64], [64, 128, 192],
    [0, 192, 160], [192, 224, 64], [64, 128, 64], [128, 192, 32], [192, 32, 192], [64, 64, 192],
    [0, 64, 32], [64, 160, 192], [192, 64, 64], [128, 64, 160], [64, 32, 192], [192, 192, 192],
    [0, 64, 160], [192, 160, 192], [192, 192, 0], [128, 64, 96], [192, 32, 64], [192, 64, 128],
    [64, 192, 96], [64, 160, 64], [64, 64, 0],
]


def _frozen(rows: list) -> np.ndarray:
    arr = np.asarray(rows, dtype=np.uint8)
    arr.setflags(write=False)
    return arr


ADE20K_PALETTE: np.ndarray = _frozen(_ADE20K_PALETTE)
CITYSCAPES_PALETTE: np.ndarray = _frozen(_CITYSCAPES_PALETTE)
COCOSTUFF_PALETTE: np.ndarray = _frozen(_COCOSTUFF_PALETTE)

DATASET_CLASSES: Dict[str, Tuple[str, ...]] = {
    "ade20k": ADE20K_CLASSES,
    "cityscapes": CITYSCAPES_CLASSES,
    "cocostuff": COCOSTUFF_CLASSES,
}
DATASET_PALETTES: Dict[str, np.ndarray] = {
    "ade20k": ADE20K_PALETTE,
    "cityscapes": CITYSCAPES_PALETTE,
    "cocostuff": COCOSTUFF_PALETTE,
}

_ALIASES = {
    "ade": "ade20k", "ade20k": "ade20k", "ade150": "ade20k", "adechallengedata2016": "ade20k",
    "cityscapes": "cityscapes", "city": "cityscapes",
    "cocostuff": "cocostuff", "cocostuff164k": "cocostuff", "cocostuff171": "cocostuff",
    "cocostuff10k": "cocostuff",
}


def canonical_dataset_name(dataset: str) -> str:
    """Map spellings such as "ADE20K", "coco-stuff" or "coco_stuff164k" to the keys of DATASET_CLASSES.

    Configs and CLI flags written by people are not consistent; normalising here keeps every lookup
    in one place. Raises ValueError naming the known datasets when the name is not one of them.
    """
    key = "".join(ch for ch in str(dataset).lower() if ch.isalnum())
    if key not in _ALIASES:
        raise ValueError(
            f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(DATASET_CLASSES))}"
        )
    return _ALIASES[key]


def get_classes(dataset: str) -> Tuple[str, ...]:
    """Class names of a known dataset, in train-id order."""
    return DATASET_CLASSES[canonical_dataset_name(dataset)]


def id2label(dataset: str) -> Dict[int, str]:
    """``{train_id: name}`` for a known dataset: the form model configs (timm / HF style) carry."""
    return dict(enumerate(get_classes(dataset)))


def _generated_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for any number of classes (the PASCAL VOC bit-interleaving colour map).

    Every class id maps to a different colour (the id's bits are spread over the three channels,
    most significant bit first), so classes never share a colour however many there are (< 2**24).
    Deterministic, so the same class gets the same colour in every run and on every machine.
    """
    ids = np.arange(num_classes, dtype=np.int64)
    palette = np.zeros((num_classes, 3), dtype=np.int64)
    remaining = ids.copy()
    for shift in range(7, -1, -1):  # up to 24 bits: 8 rounds of 3 bits each
        for channel in range(3):
            palette[:, channel] |= ((remaining >> channel) & 1) << shift
        remaining >>= 3
    return palette.astype(np.uint8)


def get_palette(num_classes: int, dataset: Optional[str] = None) -> np.ndarray:
    """Colours for ``num_classes`` classes as a (K, 3) uint8 array.

    With ``dataset`` the dataset's standard palette is used (truncated when the model predicts
    fewer classes, extended with generated colours not already used when it predicts more, e.g.
    after fine-tuning with an extra class). Without it, deterministic distinct colours.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if dataset is None:
        return _generated_palette(num_classes)
    base = DATASET_PALETTES[canonical_dataset_name(dataset)]
    if num_classes <= len(base):
        return base[:num_classes].copy()
    used = {tuple(int(v) for v in row) for row in base}
    extra = []
    candidates = _generated_palette(1 << 12)
    for row in candidates[1:]:  # skip black, which reads as "no class"
        if tuple(int(v) for v in row) not in used:
            extra.append(row)
            if len(base) + len(extra) == num_classes:
                break
    return np.concatenate([base, np.asarray(extra, dtype=np.uint8).reshape(-1, 3)], axis=0)


def _lut(pairs: Dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 lookup table: raw value -> train id, 255 (ignore) for everything unlisted."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, train in pairs.items():
        table[raw] = train
    table.setflags(write=False)
    return table


# Cityscapes labelIds (0..33, from cityscapesScripts' labels.py) -> the 19 train ids; others ignored.
CITYSCAPES_LABELID_TO_TRAINID: np.ndarray = _lut({
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
})

# COCO-Stuff 164k raw ids (0..181; 11 thing ids are unused) -> 171 train ids in order; 255 stays 255.
_COCOSTUFF_UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCOSTUFF_RAWID_TO_TRAINID: np.ndarray = _lut({
    raw: train
    for train, raw in enumerate(r for r in range(182) if r not in _COCOSTUFF_UNUSED_RAW_IDS)
})

# ADE20K raw annotations: 0 ("other") -> 255 (ignored), k -> k - 1; raw 255 stays ignored.
ADE20K_REDUCE_ZERO_LABEL: np.ndarray = _lut({k: k - 1 for k in range(1, 255)})
