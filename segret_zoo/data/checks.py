"""Check every mask of a dataset before training starts: size against its image, values against the label set.

Why before iteration 1: a bad validation mask used to surface at the first evaluation, hours into a
run; a bad training mask whenever the sampler happened to reach it. Checking all of them up front
costs seconds (masks are small PNGs, read in parallel threads), and the result is cached under a key
made of the file list, sizes and modification times, so a resumed or repeated run skips it.

Modes: ``full`` decodes every mask; ``quick`` reads every image's and mask's size from the file
header and decodes an evenly spaced sample of masks (for very large sets); ``off`` checks nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from segret_zoo.data.classes import IGNORE_INDEX
from segret_zoo.data.datasets import check_mask_size
from segret_zoo.data.images import load_mask
from segret_zoo.errors import ImageReadError, MaskValueError
from segret_zoo.files import write_json_atomic

__all__ = ["CHECK_MODES", "CheckReport", "check_dataset"]

CHECK_MODES = ("full", "quick", "off")
QUICK_SAMPLE = 200  # masks decoded by a quick check
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class CheckReport:
    """What :func:`check_dataset` did: ``checked`` masks, whether the answer came from the cache."""

    split: str
    mode: str
    checked: int = 0
    cached: bool = False
    skipped_reason: Optional[str] = None


def _header_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot read ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                             ) from None


def _check_one(sample: Tuple[Path, Path, Any], num_classes: int, decode: bool) -> Optional[str]:
    """The one-line problem of one (image, mask) pair, or None when it is fine."""
    image_file, mask_file, mapping = sample
    try:
        iw, ih = _header_size(image_file)
        if decode:
            mask = mapping(load_mask(mask_file), mask_file, num_classes)  # raises on bad values
            mh, mw = mask.shape
        else:
            mw, mh = _header_size(mask_file)
        check_mask_size(image_file, mask_file, (ih, iw), (mh, mw))
    except (MaskValueError, ImageReadError) as err:
        return str(err)
    return None


def _cache_key(samples: Sequence[Tuple[Path, Path, Any]], num_classes: int, kind: str) -> str:
    h = hashlib.sha256(f"{kind}|{num_classes}".encode())
    for image_file, mask_file, mapping in samples:
        for p in (image_file, mask_file):
            st = os.stat(p)
            h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(str(getattr(mapping, "description", "")).encode())
    return h.hexdigest()[:24]


def _check_tensor_masks(dataset: Any, split: str, mode: str) -> CheckReport:
    """In-memory masks (e.g. the demo's synthetic set): one vectorised range check."""
    masks = np.asarray(dataset.masks)
    k = int(dataset.num_classes)
    bad = (masks >= k) & (masks != IGNORE_INDEX) | (masks < 0)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(len(masks), -1).any(1))[0])
        values = sorted({int(v) for v in np.unique(masks[i][bad[i]])})[:8]
        raise MaskValueError(f"{split} sample {i}: mask has values out of range: {values}; expected train ids "
                             f"0..{k - 1} ({k} classes, 255 = ignore)")
    return CheckReport(split, mode, checked=len(masks))


def check_dataset(dataset: Any, split: str = "train", mode: str = "full", cache_dir: Optional[PathLike] = None,
                  threads: Optional[int] = None) -> CheckReport:
    """Raise :class:`MaskValueError` (one line: file, value, count of other bad files) if any mask is bad.

    Works on the file datasets of :mod:`segret_zoo.data.datasets` (anything with ``samples`` of
    ``(image, mask, mapping)``) and on in-memory sets with a ``masks`` array; other datasets are
    skipped (``skipped_reason`` says so). ``cache_dir`` remembers a passed check.
    """
    if mode not in CHECK_MODES:
        raise ValueError(f"check_data must be one of {', '.join(CHECK_MODES)}, got {mode!r}")
    if mode == "off" or dataset is None:
        return CheckReport(split, mode, skipped_reason="off")
    if not hasattr(dataset, "samples"):
        if hasattr(dataset, "masks") and hasattr(dataset, "num_classes"):
            return _check_tensor_masks(dataset, split, mode)
        return CheckReport(split, mode, skipped_reason=f"{type(dataset).__name__} lists no mask files")
    samples = list(dataset.samples)
    num_classes = int(dataset.num_classes)
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(samples, num_classes, type(dataset).__name__)
        cache_file = Path(cache_dir) / f"{split}-{key}.json"
        accepted = ("full",) if mode == "full" else ("full", "quick")
        if cache_file.is_file() and _cached_mode(cache_file) in accepted:
            return CheckReport(split, mode, checked=len(samples), cached=True)
    if mode == "full":
        decode = [True] * len(samples)
    else:
        step = max(1, len(samples) // QUICK_SAMPLE)
        decode = [i % step == 0 for i in range(len(samples))]
    workers = threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems: List[str] = [p for p in pool.map(lambda a: _check_one(a[0], num_classes, a[1]),
                                                   zip(samples, decode)) if p]
    if problems:
        more = f" (and {len(problems) - 1} more bad masks in the {split} split)" if len(problems) > 1 else ""
        raise MaskValueError(f"{problems[0]}{more}; fix or remove these files before training "
                             f"(checked before iteration 1; --check-data off skips the check)")
    if cache_file is not None:
        try:
            write_json_atomic(cache_file, {"mode": mode, "split": split, "masks": len(samples)})
        except OSError:
            pass  # a cache that cannot be written only costs the next run the check
    return CheckReport(split, mode, checked=len(samples))


def _cached_mode(path: Path) -> Optional[str]:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("mode")
    except (OSError, ValueError, AttributeError):
        return None
