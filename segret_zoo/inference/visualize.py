"""Turn label maps into things a person can look at: palette PNGs, overlays, legends, pixel shares.

The label PNG is written in palette ("P") mode so one file is both the exact label map (pixel value =
class id, readable by any tool) and a coloured picture; the overlay and legend are plain RGB.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["colorize", "overlay", "legend", "pixel_shares", "shares_record", "palette_for"]


def palette_for(num_classes: int, dataset: Optional[str] = None) -> np.ndarray:
    """K×3 uint8 colours: the dataset's own palette when known, else deterministic distinct colours.

    Delegates to :func:`segret_zoo.data.classes.get_palette` (imported lazily so inference does not
    pull in the data package until a picture is drawn).
    """
    from segret_zoo.data.classes import get_palette

    palette = np.asarray(get_palette(num_classes, dataset), dtype=np.uint8).reshape(-1, 3)
    if len(palette) < num_classes:
        raise ValueError(f"palette has {len(palette)} colours for {num_classes} classes")
    return palette


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected an H×W integer label map, got {labels.dtype} {labels.shape}")
    return labels


def colorize(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Label map -> palette-mode image (pixel values are class ids, colours from ``palette``).

    Label maps with ids >= 256 cannot be palette images; they become 16-bit grayscale ("I;16") so the
    ids still survive a PNG round trip (use :func:`overlay` to look at them).
    """
    labels = _check_labels(labels)
    h, w = labels.shape
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        if labels.min() < 0 or labels.max() > 65535:
            raise ValueError("label ids must lie in 0..65535 to be written as an image")
        return Image.frombytes("I;16", (w, h), labels.astype("<u2").tobytes())
    img = Image.frombytes("P", (w, h), labels.astype(np.uint8).tobytes())
    pal = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    pal[: len(colours)] = colours
    img.putpalette(pal.reshape(-1).tolist())
    return img


_BLEND_PIXELS = 1 << 20  # pixels blended at a time (a few MiB of float32)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            inplace: bool = False) -> Image.Image:
    """RGB blend ``(1 - alpha) * image + alpha * colour(label)``; image is H×W×3 uint8 of the same size.

    ``alpha`` is the colours' opacity, from 0 (the photo) to 1 (the colours alone). The blend runs a
    band of rows at a time, so a 144-megapixel photo needs no full-size float copies; ``inplace``
    writes it into ``image`` itself (which must be writable uint8), saving one more copy.
    """
    if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be a number from 0 to 1 (the colours' opacity), got {alpha!r}")
    labels = _check_labels(labels)
    image = np.asarray(image)
    if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be H×W×3 and H×W of one size")
    colours = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    if labels.size and labels.max() >= len(colours):
        raise ValueError(f"label {int(labels.max())} has no colour (palette has {len(colours)})")
    if inplace and (image.dtype != np.uint8 or not image.flags.writeable):
        raise ValueError("overlay(inplace=True) needs a writable uint8 image")
    out = image if inplace else np.empty(image.shape, dtype=np.uint8)
    rows = max(1, _BLEND_PIXELS // max(labels.shape[1], 1))
    keep, add = np.float32(1.0 - alpha), np.float32(alpha)
    for y in range(0, labels.shape[0], rows):
        blend = keep * image[y:y + rows].astype(np.float32)
        blend += add * colours[labels[y:y + rows]]
        np.clip(np.rint(blend, out=blend), 0, 255, out=blend)
        out[y:y + rows] = blend
    return Image.fromarray(out)


def _class_counts(labels: np.ndarray, num_classes: Optional[int]) -> Dict[int, int]:
    """Pixel count per present class, largest first (ties by id)."""
    if labels.size == 0:
        return {}
    flat = labels.reshape(-1)
    counts = np.zeros(max(num_classes or 0, int(flat.max()) + 1), dtype=np.int64)
    for start in range(0, flat.size, _BLEND_PIXELS):  # bincount copies to int64: a chunk at a time
        part = np.bincount(flat[start:start + _BLEND_PIXELS], minlength=len(counts))
        counts[:len(part)] += part
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    return {int(c): int(counts[c]) for c in order}


def pixel_shares(labels: np.ndarray, num_classes: Optional[int] = None) -> Dict[int, float]:
    """``{class_id: fraction of pixels}`` for the classes present, largest first (fractions sum to 1)."""
    labels = _check_labels(labels)
    total = float(labels.size)
    return {cid: n / total for cid, n in _class_counts(labels, num_classes).items()}


def shares_record(labels: np.ndarray, id2label: Optional[Mapping[int, str]] = None,
                  num_classes: Optional[int] = None, **extra: Any) -> Dict[str, Any]:
    """JSON-ready summary: image size and, per present class, id, name, pixel count and share."""
    labels = _check_labels(labels)
    names = id2label or {}
    classes = [
        {"id": cid, "name": names.get(cid, str(cid)), "pixels": n, "share": round(n / labels.size, 6)}
        for cid, n in _class_counts(labels, num_classes).items()
    ]
    return {**extra, "height": int(labels.shape[0]), "width": int(labels.shape[1]), "classes": classes}


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def legend(shares: Mapping[int, float], id2label: Optional[Mapping[int, str]], palette: np.ndarray,
           max_items: Optional[int] = None, font_size: int = 14) -> Image.Image:
    """A swatch + "name  12.3%" row per class in ``shares`` (e.g. from :func:`pixel_shares`), in order."""
    names = id2label or {}
    items: Sequence = list(shares.items())[: max_items or None]
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    font = _font(font_size)
    row_h, pad, swatch = font_size + 8, 6, font_size + 2
    texts = [f"{names.get(cid, str(cid))}  {100.0 * share:.1f}%" for cid, share in items]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(t, font=font) for t in texts), default=60)
    width = int(pad * 3 + swatch + text_w + pad)
    height = max(pad * 2 + row_h * len(items), row_h)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for row, ((cid, _), text) in enumerate(zip(items, texts)):
        y = pad + row * row_h
        colour = tuple(int(c) for c in colours[cid]) if cid < len(colours) else (0, 0, 0)
        draw.rectangle([pad, y + 2, pad + swatch, y + 2 + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((pad * 2 + swatch, y + 2), text, fill=(0, 0, 0), font=font)
    return img
