"""Semantic-segmentation datasets in their standard folder layouts, plus a generic folder layout.

Every dataset yields ``(image, mask)``: an H×W×3 uint8 RGB image and an H×W uint8 mask of train ids
with 255 as "ignore", or whatever ``transform(image, mask)`` returns. Raw label encodings are mapped
on load (ADE20K and COCO-Stuff 10k reduce-zero-label, Cityscapes labelIds -> trainIds, COCO-Stuff
164k's 182 raw ids -> 171), so a model and its metric only ever see ``0..K-1`` and 255.

Why the checks: a wrong ``--data`` path or a half-extracted archive is the most common way a long
training run dies late (or, worse, trains on nothing). Each dataset therefore verifies its layout on
construction and raises :class:`DatasetLayoutError` naming what is missing, the expected layout and
the first offending files; a mask whose values do not fit the label set raises
:class:`MaskValueError` naming the file when it is loaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from segret_zoo.data.classes import (
    ADE20K_CLASSES,
    ADE20K_REDUCE_ZERO_LABEL,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELID_TO_TRAINID,
    COCOSTUFF_CLASSES,
    COCOSTUFF_RAWID_TO_TRAINID,
    IGNORE_INDEX,
    get_palette,
)
from segret_zoo.data.images import load_image, load_mask
from segret_zoo.errors import DatasetLayoutError, ImageReadError, MaskValueError

__all__ = [
    "ADE20KDataset",
    "COCOStuff10kDataset",
    "COCOStuffDataset",
    "CityscapesDataset",
    "DatasetLayoutError",
    "FolderDataset",
    "ImageReadError",
    "LabelMapping",
    "MaskValueError",
    "SegDataset",
    "build_dataset",
    "check_mask_size",
    "load_image",
    "load_mask",
    "parse_spec",
    "read_class_names",
    "DATASET_TYPES",
]

PathLike = Union[str, "os.PathLike[str]"]
Transform = Callable[[np.ndarray, np.ndarray], Any]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_SHOW = 5  # offending files named in an error message


# --------------------------------------------------------------------------------------------------
# label mapping
# --------------------------------------------------------------------------------------------------
class LabelMapping:
    """Raw mask values -> train ids through a 256-entry lookup table, with a validity check.

    ``valid_raw`` says which raw values may occur at all (e.g. Cityscapes labelIds 0..33 and 255),
    so a corrupt or wrong-dataset mask is reported instead of being silently mapped to "ignore".
    """

    def __init__(self, lut: Optional[np.ndarray], valid_raw: np.ndarray, description: str) -> None:
        self.lut = lut
        self.valid_raw = valid_raw
        self.description = description

    def __call__(self, raw: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
        counts = np.bincount(raw.ravel(), minlength=256)
        bad = np.flatnonzero((counts > 0) & ~self.valid_raw)
        if bad.size:
            shown = ", ".join(f"{v} ({counts[v]} px)" for v in bad[:8])
            more = f" and {bad.size - 8} more values" if bad.size > 8 else ""
            raise MaskValueError(
                f"{path}: mask has values out of range: {shown}{more}; expected {self.description} "
                f"({num_classes} classes, 255 = ignore)"
            )
        return raw if self.lut is None else self.lut[raw]

    @staticmethod
    def identity(num_classes: int) -> LabelMapping:
        valid = np.zeros(256, dtype=bool)
        valid[:num_classes] = True
        valid[IGNORE_INDEX] = True
        return LabelMapping(None, valid, f"train ids 0..{num_classes - 1}")

    @staticmethod
    def from_lut(lut: np.ndarray, valid_values: Sequence[int], description: str) -> LabelMapping:
        valid = np.zeros(256, dtype=bool)
        valid[list(valid_values)] = True
        valid[IGNORE_INDEX] = True
        return LabelMapping(lut, valid, description)


def check_mask_size(image_file: Path, mask_file: Path, image_hw: Sequence[int], mask_hw: Sequence[int]) -> None:
    """A mask must have its image's size (no resizing would make a label map line up with its pixels)."""
    if tuple(image_hw) != tuple(mask_hw):
        raise MaskValueError(f"{mask_file}: mask size {mask_hw[1]}x{mask_hw[0]} does not match "
                             f"image {image_file} ({image_hw[1]}x{image_hw[0]})")


# --------------------------------------------------------------------------------------------------
# base dataset
# --------------------------------------------------------------------------------------------------
class SegDataset:
    """A list of (image file, mask file, label mapping) with loading, checks and an optional transform.

    ``ds[i]`` -> ``transform(image, mask)`` if a transform is set, else the raw numpy pair.
    ``ds.get_raw(i)`` always returns the numpy pair (what evaluation uses).
    """

    name: str = "dataset"
    dataset_key: Optional[str] = None  # "ade20k" | "cityscapes" | "cocostuff" | None
    layout: str = ""

    def __init__(self, root: Path, split: str, classes: Sequence[str],
                 samples: List[Tuple[Path, Path, LabelMapping]], transform: Optional[Transform] = None) -> None:
        self.root = Path(root)
        self.split = split
        self.classes: Tuple[str, ...] = tuple(classes)
        self.num_classes = len(self.classes)
        self.samples = samples
        self.transform = transform
        self.ignore_index = IGNORE_INDEX

    # -- info ---------------------------------------------------------------------------------
    @property
    def id2label(self) -> Dict[int, str]:
        return dict(enumerate(self.classes))

    @property
    def palette(self) -> np.ndarray:
        return get_palette(self.num_classes, self.dataset_key)

    def image_path(self, index: int) -> Path:
        return self.samples[index][0]

    def mask_path(self, index: int) -> Path:
        return self.samples[index][1]

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root='{self.root}', split='{self.split}', "
                f"images={len(self)}, classes={self.num_classes})")

    # -- loading ------------------------------------------------------------------------------
    def load_mask(self, index: int) -> np.ndarray:
        """The mask of sample ``index`` as train ids (0..K-1, 255 ignore); MaskValueError if invalid."""
        _, mask_file, mapping = self.samples[index]
        return mapping(load_mask(mask_file), mask_file, self.num_classes)

    def get_raw(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(image uint8 H×W×3 RGB, mask uint8 H×W)`` without the transform."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image = load_image(self.samples[index][0], exif_transpose=False)
        mask = self.load_mask(index)
        check_mask_size(self.samples[index][0], self.samples[index][1], image.shape[:2], mask.shape)
        return image, mask

    def __getitem__(self, index: int) -> Any:
        image, mask = self.get_raw(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask


# --------------------------------------------------------------------------------------------------
# layout helpers
# --------------------------------------------------------------------------------------------------
def _list_files(folder: Path, suffixes: Sequence[str], recursive: bool = False) -> List[Path]:
    pattern = "**/*" if recursive else "*"
    lowered = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.name.lower().endswith(lowered))


def _require_dir(path: Path, what: str, layout: str) -> None:
    if not path.is_dir():
        parent = path.parent
        found = sorted(p.name for p in parent.iterdir() if p.is_dir())[:10] if parent.is_dir() else []
        hint = f"; {parent} contains: {', '.join(found)}" if found else ""
        raise DatasetLayoutError(f"{what}: folder {path} not found{hint}. Expected layout: {layout}")


def _pair(images: List[Path], mask_for: Callable[[Path], Optional[Path]], expected_for: Callable[[Path], Path],
          mapping_for: Callable[[Path], LabelMapping], what: str, layout: str,
          image_dir: Path) -> List[Tuple[Path, Path, LabelMapping]]:
    """Match each image with its mask; any image without one is a layout error naming the first few."""
    if not images:
        raise DatasetLayoutError(
            f"{what}: no images ({', '.join(IMAGE_EXTENSIONS)}) found in {image_dir}. Expected layout: {layout}"
        )
    samples, missing = [], []
    for img in images:
        mask = mask_for(img)
        if mask is None:
            missing.append(img)
        else:
            samples.append((img, mask, mapping_for(mask)))
    if missing:
        shown = "; ".join(f"{m} (expected {expected_for(m)})" for m in missing[:_SHOW])
        raise DatasetLayoutError(
            f"{what}: {len(missing)} of {len(images)} images have no mask, e.g. {shown}. "
            f"Expected layout: {layout}"
        )
    return samples


def _split_folder(split: str, names: Dict[str, str], what: str) -> str:
    key = split.lower()
    if key in names:
        return names[key]
    if key in names.values():
        return key
    raise ValueError(f"{what}: unknown split {split!r}; use one of {', '.join(sorted(set(names)))}")


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------
class ADE20KDataset(SegDataset):
    """ADE20K SceneParsing (150 classes). Raw label 0 ("other") -> 255, k -> k - 1 (reduce_zero_label)."""

    name = "ade20k"
    dataset_key = "ade20k"
    layout = "ADEChallengeData2016/{images,annotations}/{training,validation}/<name>.{jpg,png}"
    SPLITS = {"train": "training", "val": "validation"}

    def __init__(self, root: PathLike, split: str = "val", transform: Optional[Transform] = None) -> None:
        root = Path(root).expanduser()
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        what = f"ADE20K ({root})"
        folder = _split_folder(split, self.SPLITS, what)
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        _require_dir(root, what, self.layout)
        _require_dir(img_dir, what, self.layout)
        _require_dir(ann_dir, what, self.layout)
        mapping = LabelMapping.from_lut(ADE20K_REDUCE_ZERO_LABEL, range(151), "raw ADE20K labels 0..150")

        def mask_for(img: Path) -> Optional[Path]:
            m = ann_dir / (img.stem + ".png")
            return m if m.is_file() else None

        samples = _pair(_list_files(img_dir, IMAGE_EXTENSIONS), mask_for, lambda i: ann_dir / (i.stem + ".png"),
                        lambda m: mapping, what, self.layout, img_dir)
        super().__init__(root, split, ADE20K_CLASSES, samples, transform)


class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations (19 classes).

    Uses ``*_gtFine_labelTrainIds.png`` when present (created by cityscapesScripts'
    createTrainIdLabelImgs), otherwise maps ``*_gtFine_labelIds.png`` through the official 34 -> 19
    table on load, so the raw download works without a conversion step.
    """

    name = "cityscapes"
    dataset_key = "cityscapes"
    layout = ("leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png and "
              "gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png (or _gtFine_labelIds.png)")
    SPLITS = {"train": "train", "val": "val", "test": "test"}
    IMG_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: PathLike, split: str = "val", transform: Optional[Transform] = None) -> None:
        root = Path(root).expanduser()
        what = f"Cityscapes ({root})"
        folder = _split_folder(split, self.SPLITS, what)
        img_dir, gt_dir = root / "leftImg8bit" / folder, root / "gtFine" / folder
        _require_dir(root, what, self.layout)
        _require_dir(img_dir, what, self.layout)
        _require_dir(gt_dir, what, self.layout)
        train_ids = LabelMapping.identity(len(CITYSCAPES_CLASSES))
        label_ids = LabelMapping.from_lut(CITYSCAPES_LABELID_TO_TRAINID, range(34), "Cityscapes labelIds 0..33")

        def stem_of(img: Path) -> Path:
            rel = img.relative_to(img_dir)
            return gt_dir / rel.parent / rel.name[: -len(self.IMG_SUFFIX)]

        def mask_for(img: Path) -> Optional[Path]:
            base = stem_of(img)
            for suffix in ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"):
                m = base.with_name(base.name + suffix)
                if m.is_file():
                    return m
            return None

        def mapping_for(mask: Path) -> LabelMapping:
            return train_ids if mask.name.endswith("_labelTrainIds.png") else label_ids

        images = _list_files(img_dir, (self.IMG_SUFFIX,), recursive=True)
        samples = _pair(images, mask_for,
                        lambda i: stem_of(i).with_name(stem_of(i).name + "_gtFine_labelTrainIds.png"),
                        mapping_for, what, self.layout, img_dir)
        super().__init__(root, split, CITYSCAPES_CLASSES, samples, transform)


class COCOStuffDataset(SegDataset):
    """COCO-Stuff 164k (171 classes).

    Raw stuffthingmaps (``<id>.png``, values 0..181 with 11 unused thing ids, 255 unlabeled) are
    mapped to the 171 train ids on load; pre-converted ``<id>_labelTrainIds.png`` files (as written
    by mmsegmentation's converter) are preferred when present and used as they are.
    """

    name = "cocostuff"
    dataset_key = "cocostuff"
    layout = "images/{train2017,val2017}/<id>.jpg and annotations/{train2017,val2017}/<id>.png"
    SPLITS = {"train": "train2017", "val": "val2017"}

    def __init__(self, root: PathLike, split: str = "val", transform: Optional[Transform] = None) -> None:
        root = Path(root).expanduser()
        what = f"COCO-Stuff ({root})"
        folder = _split_folder(split, self.SPLITS, what)
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        _require_dir(root, what, self.layout)
        _require_dir(img_dir, what, self.layout)
        _require_dir(ann_dir, what, self.layout)
        train_ids = LabelMapping.identity(len(COCOSTUFF_CLASSES))
        raw_ids = LabelMapping.from_lut(COCOSTUFF_RAWID_TO_TRAINID, range(182), "raw COCO-Stuff ids 0..181")

        def mask_for(img: Path) -> Optional[Path]:
            for name in (img.stem + "_labelTrainIds.png", img.stem + ".png"):
                m = ann_dir / name
                if m.is_file():
                    return m
            return None

        def mapping_for(mask: Path) -> LabelMapping:
            return train_ids if mask.name.endswith("_labelTrainIds.png") else raw_ids

        samples = _pair(_list_files(img_dir, IMAGE_EXTENSIONS), mask_for, lambda i: ann_dir / (i.stem + ".png"),
                        mapping_for, what, self.layout, img_dir)
        super().__init__(root, split, COCOSTUFF_CLASSES, samples, transform)


class COCOStuff10kDataset(SegDataset):
    """COCO-Stuff 10k (171 classes), the split the SegRet paper reports, in mmsegmentation's layout.

    mmseg's converter (``tools/convert_datasets/coco_stuff10k.py``) moves the images to
    ``images/{train2014,test2014}`` and writes ``annotations/{train2014,test2014}/<name>_labelTrainIds.png``
    (older versions: ``<name>.png`` for the test split) holding the 1-based class ids 1..171 with
    0 = unlabeled; mmseg's configs then reduce the zero label (0 -> 255, k -> k - 1), as done here.
    """

    name = "cocostuff10k"
    dataset_key = "cocostuff"
    layout = ("images/{train2014,test2014}/<name>.jpg and "
              "annotations/{train2014,test2014}/<name>_labelTrainIds.png (or <name>.png)")
    SPLITS = {"train": "train2014", "val": "test2014", "test": "test2014"}

    def __init__(self, root: PathLike, split: str = "val", transform: Optional[Transform] = None) -> None:
        root = Path(root).expanduser()
        what = f"COCO-Stuff 10k ({root})"
        folder = _split_folder(split, self.SPLITS, what)
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        _require_dir(root, what, self.layout)
        _require_dir(img_dir, what, self.layout)
        _require_dir(ann_dir, what, self.layout)
        mapping = LabelMapping.from_lut(ADE20K_REDUCE_ZERO_LABEL, range(len(COCOSTUFF_CLASSES) + 1),
                                        "COCO-Stuff 10k ids 0..171 (0 = unlabeled)")

        def mask_for(img: Path) -> Optional[Path]:
            for name in (img.stem + "_labelTrainIds.png", img.stem + ".png"):
                m = ann_dir / name
                if m.is_file():
                    return m
            return None

        samples = _pair(_list_files(img_dir, IMAGE_EXTENSIONS), mask_for,
                        lambda i: ann_dir / (i.stem + "_labelTrainIds.png"), lambda m: mapping, what, self.layout,
                        img_dir)
        super().__init__(root, split, COCOSTUFF_CLASSES, samples, transform)


def read_class_names(path: Path) -> Tuple[str, ...]:
    """Class names from a text file, one per line (line ``i`` is class id ``i - 1``); ValueError if unusable.

    Read as editors write text: UTF-8 with or without a byte-order mark, LF or CRLF line ends, blank
    lines at the end ignored. A blank line *between* names is an error naming it: skipping it would
    shift every later class id by one, and keeping it would make a class without a name.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        shown = ", ".join(str(n) for n in blank[:_SHOW]) + (" ..." if len(blank) > _SHOW else "")
        raise ValueError(f"{path}: line {shown} is blank; class ids are line numbers (line 1 is class 0), so "
                         "a blank line would shift every later class: delete it, or name that class")
    names = tuple(lines)
    if not names:
        raise ValueError(f"{path}: no class names (expected one name per line)")
    if len(names) > 255:
        raise ValueError(f"{path}: {len(names)} classes; at most 255 fit an 8-bit mask with 255 = ignore")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate class names: {', '.join(dupes[:_SHOW])}")
    return names


class FolderDataset(SegDataset):
    """A user's own data: ``PATH/images/<split>/*.{jpg,jpeg,png}``, ``PATH/masks/<split>/<stem>.png``
    holding class indices (255 = ignore) and ``PATH/classes.txt`` with one class name per line."""

    name = "folder"
    dataset_key = None
    layout = "PATH/images/<split>/<stem>.{jpg,jpeg,png}, PATH/masks/<split>/<stem>.png, PATH/classes.txt"

    def __init__(self, root: PathLike, split: str = "val", transform: Optional[Transform] = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        root = Path(root).expanduser()
        what = f"folder dataset ({root})"
        _require_dir(root, what, self.layout)
        if classes is None:
            class_file = root / "classes.txt"
            if not class_file.is_file():
                raise DatasetLayoutError(f"{what}: {class_file} not found (one class name per line). "
                                         f"Expected layout: {self.layout}")
            classes = read_class_names(class_file)
        img_dir, mask_dir = root / "images" / split, root / "masks" / split
        if not img_dir.is_dir() and (root / "images").is_dir():
            found = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
            raise DatasetLayoutError(f"{what}: split folder {img_dir} not found; available splits: "
                                     f"{', '.join(found) or 'none'}. Expected layout: {self.layout}")
        _require_dir(img_dir, what, self.layout)
        _require_dir(mask_dir, what, self.layout)
        images = _list_files(img_dir, IMAGE_EXTENSIONS)
        by_stem: Dict[str, List[Path]] = {}
        for img in images:
            by_stem.setdefault(img.stem, []).append(img)
        clashes = [paths for paths in by_stem.values() if len(paths) > 1]
        if clashes:
            shown = "; ".join(" and ".join(p.name for p in c) for c in clashes[:_SHOW])
            raise DatasetLayoutError(f"{what}: {len(clashes)} image names share a stem, so their mask is "
                                     f"ambiguous: {shown}")
        mapping = LabelMapping.identity(len(classes))

        def mask_for(img: Path) -> Optional[Path]:
            m = mask_dir / (img.stem + ".png")
            return m if m.is_file() else None

        samples = _pair(images, mask_for, lambda i: mask_dir / (i.stem + ".png"), lambda m: mapping,
                        what, self.layout, img_dir)
        super().__init__(root, split, classes, samples, transform)


DATASET_TYPES: Dict[str, type] = {
    "ade20k": ADE20KDataset,
    "cityscapes": CityscapesDataset,
    "cocostuff": COCOStuffDataset,
    "cocostuff10k": COCOStuff10kDataset,
    "folder": FolderDataset,
}
_SPEC_ALIASES = {"ade": "ade20k", "coco-stuff": "cocostuff", "coco_stuff": "cocostuff",
                 "cocostuff164k": "cocostuff", "coco-stuff10k": "cocostuff10k", "coco_stuff10k": "cocostuff10k",
                 "cocostuff-10k": "cocostuff10k", "coco-stuff-10k": "cocostuff10k"}


def _detect(root: Path) -> Optional[str]:
    """Guess the layout of a bare path, so ``--data /data/ADEChallengeData2016`` also works."""
    if (root / "ADEChallengeData2016").is_dir() or (root / "images" / "training").is_dir():
        return "ade20k"
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if (root / "images" / "train2017").is_dir() or (root / "images" / "val2017").is_dir():
        return "cocostuff"
    if (root / "images" / "train2014").is_dir() or (root / "images" / "test2014").is_dir():
        return "cocostuff10k"
    if (root / "classes.txt").is_file():
        return "folder"
    return None


def parse_spec(spec: str) -> Tuple[str, Path]:
    """``"ade20k:/data/ade"`` -> ``("ade20k", Path("/data/ade"))``; a bare path is detected by layout."""
    kind, sep, rest = str(spec).partition(":")
    kind = _SPEC_ALIASES.get(kind.lower(), kind.lower())
    if sep and kind in DATASET_TYPES:
        if not rest:
            raise ValueError(f"dataset spec {spec!r} has no path; write {kind}:PATH")
        return kind, Path(rest).expanduser()
    root = Path(spec).expanduser()
    detected = _detect(root) if root.is_dir() else None
    if detected is None:
        raise ValueError(
            f"cannot tell which dataset {spec!r} is; write TYPE:PATH with TYPE one of "
            f"{', '.join(DATASET_TYPES)} (e.g. ade20k:/data/ADEChallengeData2016, folder:/data/mine)"
        )
    return detected, root


def build_dataset(spec: str, split: str = "val", transform: Optional[Transform] = None) -> SegDataset:
    """Build a dataset from a CLI-style spec: ``ade20k:PATH``, ``cityscapes:PATH``, ``cocostuff10k:PATH``,
    ``cocostuff:PATH`` (164k) or ``folder:PATH``. ``split`` is "train" or "val" (mapped to each dataset's own folder names)."""
    kind, root = parse_spec(spec)
    return DATASET_TYPES[kind](root, split=split, transform=transform)
