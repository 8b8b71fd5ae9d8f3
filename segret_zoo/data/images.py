"""Reading images and label masks: the one reader the predictor, the datasets and evaluation share.

``load_image`` turns a path, PIL image or numpy array into a contiguous H×W×3 uint8 RGB array,
``load_mask`` a label PNG into an H×W uint8 array of raw values. Every failure is an
:class:`~segret_zoo.errors.ImageReadError` whose one-line message starts with the file's name, so a
batch job can report it and go on.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from segret_zoo.errors import ImageReadError, MaskValueError

__all__ = ["ImageInput", "ImageReadError", "LargeImageWarning", "load_image", "load_mask", "to_rgb_array"]

ImageInput = Union[Image.Image, np.ndarray, str, "os.PathLike[str]"]


class LargeImageWarning(UserWarning):
    """A file above PIL's decompression-bomb threshold (but under its hard limit) that was read anyway.

    It replaces PIL's ``DecompressionBombWarning`` (two lines, naming no file); ``segret-zoo predict``
    prints it as one ``note:`` line."""


# --------------------------------------------------------------------------------------------------
# anything -> H×W×3 uint8 RGB
# --------------------------------------------------------------------------------------------------
def _gray_to_uint8(values: np.ndarray, bits: Optional[int] = None) -> np.ndarray:
    """Map a single-channel array of any numeric type onto 0..255.

    Why these rules: the bit depth is not always known (PIL's "I" mode and numpy ints carry no depth),
    so the value range decides: 0..1 floats are unit-scaled, 0..255 is taken as 8-bit, 0..65535 as
    16-bit (divided by 257, so 65535 -> 255 exactly), anything else is min-max stretched.
    """
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint8:
        return values
    v = values.astype(np.float64)
    if not np.all(np.isfinite(v)):
        v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if bits == 16:
        out = v / 257.0
    elif np.issubdtype(values.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        out = v * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        out = v
    elif lo >= 0.0 and hi <= 65535.0:
        out = v / 257.0
    else:
        out = (v - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 for every PIL mode; alpha is dropped (as OpenCV's imread does in mmseg's pipeline)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode.startswith("I;16"):  # 16-bit grayscale PNG/TIFF: scale properly, not truncate/clip
        return np.repeat(_gray_to_uint8(np.asarray(img), bits=16)[..., None], 3, axis=2)
    if mode in ("I", "F"):
        return np.repeat(_gray_to_uint8(np.asarray(img))[..., None], 3, axis=2)
    if mode in ("P", "PA"):  # palette (maybe with transparency): go through RGBA to keep the colours
        return np.asarray(img.convert("RGBA"))[..., :3]
    if mode in ("La", "LA"):
        return np.repeat(np.asarray(img.convert("LA"))[..., :1], 3, axis=2)
    return np.asarray(img.convert("RGB"))  # L, 1, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV


# modes whose RGB conversion is per pixel, so a strip converts exactly as the whole image would
# ("I" and "F" are stretched by the image's own value range)
_PER_PIXEL_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV",
                    "I;16", "I;16B", "I;16L", "I;16N")
_STRIP_PIXELS = 1 << 22  # pixels per strip: 12-16 MiB of RGB at a time


def _pil_to_rgb_strips(img: Image.Image) -> np.ndarray:
    """``_pil_to_rgb`` into one writable array, a strip of rows at a time.

    Why: ``np.asarray(image)`` goes through ``tobytes()`` (a read-only copy, which torch cannot
    take, so a second, writable copy followed): three full-size copies of a 144 MP photo at once.
    Here the only full-size arrays are PIL's own and the result.
    """
    w, h = img.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        with img.crop((0, y, w, min(y + rows, h))) as strip:
            out[y:y + rows] = _pil_to_rgb(strip)
    return out


def to_rgb_array(image: Union[Image.Image, np.ndarray], name: str = "<array>") -> np.ndarray:
    """Convert an in-memory PIL image or numpy array to a contiguous H×W×3 uint8 RGB array.

    numpy input is H×W (gray), H×W×1, H×W×3 (RGB) or H×W×4 (RGBA), channels last; uint8 is used
    as is, other dtypes follow the value-range rules of 16-bit / float images.
    """
    if isinstance(image, Image.Image):
        w, h = image.size
        if w == 0 or h == 0:
            raise ImageReadError(f"{name}: zero-size image ({w}x{h})")
        try:
            arr = _pil_to_rgb_strips(image) if image.mode in _PER_PIXEL_MODES else _pil_to_rgb(image)
        except Exception as err:  # PIL raises many types for odd modes; report them all per file
            raise ImageReadError(f"{name}: cannot convert PIL mode {image.mode!r} to RGB ({_one_line(err)})") from err
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim == 2:
            arr = np.repeat(_gray_to_uint8(arr)[..., None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[..., :3]
            if arr.dtype != np.uint8:
                bits = 16 if arr.dtype == np.uint16 else None
                arr = _gray_to_uint8(arr, bits=bits)
        else:
            raise ImageReadError(
                f"{name}: expected an H×W or H×W×3 (channels-last RGB) array, got shape {tuple(image.shape)}")
    else:
        raise TypeError(f"expected a PIL image, numpy array or path, got {type(image).__name__}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{name}: zero-size image ({arr.shape[1]}x{arr.shape[0]})")
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return arr if arr.flags.writeable else arr.copy()  # PIL's buffers are read-only; torch wants writable


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _png_header_size(path: Path) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG's IHDR chunk, or None if the file is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _open(source: Union[str, os.PathLike[str]]) -> Image.Image:
    """Open and decode an image file, turning every way it can fail into a one-line ImageReadError."""
    path = Path(source)
    name = str(source)
    try:
        if path.is_dir():
            raise ImageReadError(f"{name}: is a directory, not an image")
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except OSError as err:
        raise ImageReadError(f"{name}: cannot read ({_one_line(err)})") from err
    if size == 0:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: replaced by the one-line note below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
    except Image.UnidentifiedImageError:
        dims = _png_header_size(path)
        if dims is not None and 0 in dims:  # PIL refuses 0-sized PNGs as "unidentified"
            raise ImageReadError(f"{name}: zero-size image ({dims[0]}x{dims[1]})") from None
        raise ImageReadError(f"{name}: not an image (format not recognized)") from None
    except Exception as err:  # truncated data, decoder errors, decompression bombs, ...
        raise ImageReadError(f"{name}: cannot decode image ({_one_line(err)})") from err
    if img.size[0] == 0 or img.size[1] == 0:
        raise ImageReadError(f"{name}: zero-size image ({img.size[0]}x{img.size[1]})")
    pixels = img.size[0] * img.size[1]
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        warnings.warn(LargeImageWarning(
            f"{name}: {img.size[0]}x{img.size[1]} is {pixels / 1e6:.1f} megapixels, above PIL's "
            f"decompression-bomb threshold of {Image.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels; read anyway (images "
            f"over twice that are refused), about {pixels * 3 / 2 ** 30:.1f} GiB as RGB"), stacklevel=3)
    return img


def load_image(source: ImageInput, exif_transpose: bool = True) -> np.ndarray:
    """Load a path, PIL image or array as H×W×3 uint8 RGB, raising :class:`ImageReadError` (one line,
    naming the file) for empty, unreadable, non-image or zero-size inputs.

    ``exif_transpose``: rotate files as viewers display them, so a predicted label map lines up with
    the photo. Datasets pass False: their masks are stored in the image's raw pixel order, and
    rotating only the image would misalign the pair.
    """
    if isinstance(source, (str, os.PathLike)):
        with _open(source) as img:
            if exif_transpose:
                try:  # in place: without it Pillow returns a full copy even when nothing is to be turned
                    ImageOps.exif_transpose(img, in_place=True)
                except TypeError:  # Pillow < 9.4
                    img = ImageOps.exif_transpose(img) or img
            return to_rgb_array(img, str(source))
    if isinstance(source, Image.Image):
        return to_rgb_array(source, "<PIL image>")
    if isinstance(source, np.ndarray):
        return to_rgb_array(source, "<array>")
    raise TypeError(f"expected a PIL image, numpy array or path, got {type(source).__name__}")


# --------------------------------------------------------------------------------------------------
# label masks
# --------------------------------------------------------------------------------------------------
def load_mask(path: Union[str, os.PathLike[str]]) -> np.ndarray:
    """Read a label PNG as an H×W uint8 array of raw values.

    Accepted: single-channel masks (L, P: the palette *indices* are the labels, 1, 16/32-bit with
    values <= 255) and RGB(A) masks whose three channels are equal. A colour-coded RGB mask is an
    error, because its colours are not class indices and guessing a colour->class map would be
    silently wrong.
    """
    path = Path(path)
    with _open(path) as img:
        mode = img.mode
        arr = np.asarray(img)
    if mode in ("L", "P", "1"):
        pass
    elif mode.startswith("I") or mode == "F":
        if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(np.equal(np.mod(arr, 1), 0))):
            raise MaskValueError(
                f"{path}: mask values must be integers 0..255 (got a {mode} image with values "
                f"{arr.min()}..{arr.max()}); save masks as 8-bit PNG with 255 for ignore"
            )
    elif mode in ("RGB", "RGBA", "LA"):
        chans = arr[..., :3] if mode != "LA" else arr[..., :1]
        if mode != "LA" and not (np.array_equal(chans[..., 0], chans[..., 1])
                                 and np.array_equal(chans[..., 0], chans[..., 2])):
            raise MaskValueError(
                f"{path}: mask is a colour ({mode}) image; masks must be single-channel PNGs whose "
                "pixel values are class indices (255 = ignore)"
            )
        arr = chans[..., 0]
    else:
        raise MaskValueError(f"{path}: unsupported mask mode {mode!r}; use an 8-bit single-channel PNG")
    if arr.ndim != 2:
        raise MaskValueError(f"{path}: mask must be 2-D, got shape {arr.shape}")
    return np.array(arr, dtype=np.uint8, order="C")
