"""The mmsegmentation training / test pipeline for (image, mask) pairs, in numpy + torch only.

Training (the order mmsegmentation's configs use for ADE20K, Cityscapes and COCO-Stuff)::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio)  image bilinear, mask nearest
    RandomCrop(crop_size, cat_max_ratio=0.75)   up to 10 re-draws while one class dominates
    RandomFlip(0.5)                             horizontal
    PhotoMetricDistortion()                     brightness, contrast, saturation, hue (mmseg's order)
    Normalize(mean, std)                        0-255 scale, RGB
    Pad(crop_size, 0, 255)                      after normalization (as mmseg), mask padded with ignore
    ToTensor()                                  -> (float32 3×H×W, int64 H×W)

Randomness: every random transform draws from its ``rng`` argument if one is given (a
``numpy.random.Generator`` or ``RandomState``) and otherwise from numpy's *global* RNG, exactly as
mmsegmentation does. The global RNG is what the trainer checkpoints and restores, so a resumed run
sees the same augmentations; in DataLoader worker processes use :func:`seed_worker` as
``worker_init_fn`` so that workers do not share one numpy stream. Python's ``random`` is not used.

One deliberate difference from mmseg (which uses OpenCV): masks are resized with *pixel-centre*
nearest neighbour (OpenCV's INTER_NEAREST_EXACT, torch's "nearest-exact"), the same sampling grid
bilinear image resizing uses, so labels never drift up to half a source pixel from the image.
"""
from __future__ import annotations

import random as _py_random
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from segret_zoo.data.classes import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "Pad",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "Resize",
    "ToTensor",
    "align_size",
    "build_eval_transform",
    "build_train_transform",
    "hsv_to_rgb",
    "resize_image",
    "resize_mask",
    "rescale_size",
    "rgb_to_hsv",
    "seed_worker",
]


RNGLike = Union[None, np.random.Generator, np.random.RandomState]
Pair = Tuple[Any, Any]


# --------------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------------
class _RandomStateAdapter:
    """Gives numpy's global RNG (``rs=None``) or a RandomState the Generator-style methods used here.

    The global RNG is looked up at every call, so ``np.random.set_state`` (resume) takes effect.
    """

    def __init__(self, rs: Optional[np.random.RandomState] = None) -> None:
        self.rs = rs

    def _src(self) -> Any:
        return np.random if self.rs is None else self.rs

    def random(self) -> float:
        return float(self._src().random_sample())

    def integers(self, low: int, high: int) -> int:
        return int(self._src().randint(low, high))

    def uniform(self, low: float, high: float) -> float:
        return float(self._src().uniform(low, high))


def _as_rng(rng: Any) -> Any:
    """None -> numpy's global RNG; RandomState wrapped; a Generator (or any object with ``random``,
    ``integers`` and ``uniform``) used as is."""
    if rng is None:
        return _RandomStateAdapter(None)
    if isinstance(rng, np.random.RandomState):
        return _RandomStateAdapter(rng)
    if all(hasattr(rng, name) for name in ("random", "integers", "uniform")):
        return rng
    raise TypeError(f"rng must be None, a numpy Generator or RandomState, got {type(rng).__name__}")


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy's and Python's global RNGs from the worker's torch seed.

    PyTorch seeds each worker's torch RNG (base seed drawn from the main process's torch RNG, plus the
    worker id) but leaves numpy's global RNG as forked, so without this all workers would draw the
    same augmentations. Deriving from the torch seed keeps runs reproducible and resumable.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    _py_random.seed(seed)


# --------------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------------
def _pair2(value: Union[int, Sequence[int]], what: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {value!r}")
    return int(value[0]), int(value[1])


def rescale_size(height: int, width: int, scale: Sequence[float]) -> Tuple[int, int]:
    """mmcv's keep-ratio rule: the largest size with long side <= max(scale) and short side <= min(scale).

    ``factor = min(max(scale) / max(h, w), min(scale) / min(h, w))``; new side ``int(side * factor + 0.5)``.
    Returns ``(new_height, new_width)``.
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def align_size(height: int, width: int, divisor: int) -> Tuple[int, int]:
    """Each side rounded UP to a multiple of ``divisor``: SegFormer's ``AlignedResize``, which the ADE20K
    and COCO-Stuff test pipelines of SegFormer-style configs apply after the keep-ratio rescale
    (a second resize, to this size), so every stage of a stride-32 encoder sees whole pixels."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def _target_size(height: int, width: int, scale: Sequence[float], keep_ratio: bool) -> Tuple[int, int]:
    if keep_ratio:
        return rescale_size(height, width, scale)
    return max(1, int(scale[1])), max(1, int(scale[0]))  # mmcv's fixed scale is (w, h)


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H×W×C uint8 (or float) image to ``size`` = (h, w).

    Half-pixel centres and no antialiasing, which is what OpenCV's INTER_LINEAR (mmseg's default)
    computes. uint8 images use torch's fixed-point uint8 kernel (channels-last, like OpenCV's; a
    few times faster than going through float and within 1 grey level of it).
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    squeeze = image.ndim == 2
    arr = np.ascontiguousarray(image[..., None] if squeeze else image)
    t = torch.from_numpy(arr).permute(2, 0, 1)[None]  # N×C×H×W view of H×W×C memory (channels-last)
    if arr.dtype != np.uint8:
        t = t.to(torch.float32)
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    res = out[0].permute(1, 2, 0).contiguous().numpy()
    res = res[..., 0] if squeeze else res
    return np.ascontiguousarray(res.astype(image.dtype, copy=False))


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def resize_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size`` = (h, w), sampling pixel centres."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    ys, xs = _nearest_index(h, mask.shape[0]), _nearest_index(w, mask.shape[1])
    return np.ascontiguousarray(mask[ys[:, None], xs[None, :]])


# --------------------------------------------------------------------------------------------------
# colour helpers (OpenCV's 8-bit HSV: H in 0..179, S and V in 0..255)
# --------------------------------------------------------------------------------------------------
def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV with OpenCV's 8-bit conventions (what mmseg's bgr2hsv produces).

    V = max, S = round(255 * (V - min) / V), H = round(30 * sector offset / (V - min)) in 0..179;
    integer arithmetic (``floor((2a + b) / 2b)`` is ``round(a / b)``), which is also the fast path.
    """
    rgb = image.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = (510 * diff + v) // (2 * np.maximum(v, 1))
    h_units = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    safe_d = np.maximum(diff, 1)
    h = np.where(diff == 0, 0, (60 * h_units + safe_d) // (2 * safe_d))
    h += np.where(h < 0, 180, 0)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (OpenCV 8-bit conventions) -> uint8 RGB, rounding like OpenCV's saturate_cast.

    Uses the closed form ``c = v * (1 - s * clip(min(k, 4 - k), 0, 1))`` with ``k = (n + h/30) mod 6``
    and n = 5, 3, 1 for R, G, B, which equals the six-sector table of the textbook algorithm.
    """
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32)  # keep V on the 0-255 scale: one multiply less
    out = np.empty(hsv.shape, dtype=np.float32)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = np.mod(h + np.float32(n), np.float32(6.0))
        c = np.clip(np.minimum(k, np.float32(4.0) - k), 0.0, 1.0)
        out[..., channel] = v * (np.float32(1.0) - s * c)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert``: ``uint8(clip(img * alpha + beta, 0, 255))`` (truncating, as mmseg does)."""
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# transforms: each is a callable (image, mask) -> (image, mask); mask may be None
# --------------------------------------------------------------------------------------------------
class Compose:
    """Apply transforms in order to an (image, mask) pair."""

    def __init__(self, transforms: Sequence[Callable[[Any, Any], Pair]]) -> None:
        self.transforms: List[Callable[[Any, Any], Pair]] = list(transforms)

    def __call__(self, image: Any, mask: Any = None) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(t) for t in self.transforms)
        return f"Compose([\n    {inner}\n])"


class Resize:
    """Deterministic resize to ``scale`` (keep-ratio (long, short) bound, or fixed (w, h)).

    ``resize_mask=False`` leaves the mask at its original size: mmseg evaluates against the
    original-resolution ground truth, with logits upsampled to it.
    """

    def __init__(self, scale: Sequence[int], keep_ratio: bool = True, resize_mask: bool = True) -> None:
        self.scale = _pair2(scale, "scale")
        self.keep_ratio = keep_ratio
        self.resize_mask = resize_mask

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        size = _target_size(image.shape[0], image.shape[1], self.scale, self.keep_ratio)
        image = resize_image(image, size)
        if mask is not None and self.resize_mask:
            mask = resize_mask(mask, size)
        return image, mask

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, keep_ratio={self.keep_ratio}, resize_mask={self.resize_mask})"


class RandomResize:
    """mmseg's RandomResize: ``scale * ratio`` with ``ratio ~ U(ratio_range)``, then keep-ratio rescale."""

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 keep_ratio: bool = True, rng: RNGLike = None) -> None:
        self.scale = _pair2(scale, "scale")
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"ratio_range must be 0 < low <= high, got {ratio_range}")
        self.keep_ratio = keep_ratio
        self.rng = _as_rng(rng)

    def sample_scale(self) -> Tuple[int, int]:
        lo, hi = self.ratio_range
        ratio = self.rng.random() * (hi - lo) + lo
        return int(self.scale[0] * ratio), int(self.scale[1] * ratio)

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        size = _target_size(image.shape[0], image.shape[1], self.sample_scale(), self.keep_ratio)
        image = resize_image(image, size)
        if mask is not None:
            mask = resize_mask(mask, size)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})"


class RandomCrop:
    """mmseg's RandomCrop: a random ``crop_size`` (h, w) window (smaller if the image is smaller).

    With ``cat_max_ratio < 1`` the window is re-drawn (at most 10 times) while the crop holds fewer
    than two labelled classes or its most frequent class covers ``>= cat_max_ratio`` of its labelled
    pixels (ignore pixels are not counted); the window drawn last is used in any case.
    """

    def __init__(self, crop_size: Union[int, Sequence[int]], cat_max_ratio: float = 1.0,
                 ignore_index: int = IGNORE_INDEX, rng: RNGLike = None) -> None:
        self.crop_size = _pair2(crop_size, "crop_size")
        if min(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.rng = _as_rng(rng)

    def _random_bbox(self, height: int, width: int) -> Tuple[int, int, int, int]:
        margin_h = max(height - self.crop_size[0], 0)
        margin_w = max(width - self.crop_size[1], 0)
        y1 = self.rng.integers(0, margin_h + 1)
        x1 = self.rng.integers(0, margin_w + 1)
        return y1, y1 + self.crop_size[0], x1, x1 + self.crop_size[1]

    def _acceptable(self, crop: np.ndarray) -> bool:
        counts = np.bincount(crop.ravel().astype(np.int64), minlength=256)
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def crop_bbox(self, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[int, int, int, int]:
        height, width = image.shape[:2]
        bbox = self._random_bbox(height, width)
        if self.cat_max_ratio < 1.0 and mask is not None:
            for _ in range(10):
                y1, y2, x1, x2 = bbox
                if self._acceptable(mask[y1:y2, x1:x2]):
                    break
                bbox = self._random_bbox(height, width)
        return bbox

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        y1, y2, x1, x2 = self.crop_bbox(image, mask)
        image = image[y1:y2, x1:x2]
        if mask is not None:
            mask = mask[y1:y2, x1:x2]
        return image, mask

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class RandomFlip:
    """Horizontal flip of image and mask together with probability ``prob``."""

    def __init__(self, prob: float = 0.5, rng: RNGLike = None) -> None:
        self.prob = float(prob)
        self.rng = _as_rng(rng)

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        if self.rng.random() < self.prob:
            image = np.ascontiguousarray(image[:, ::-1])
            if mask is not None:
                mask = np.ascontiguousarray(mask[:, ::-1])
        return image, mask

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion on a uint8 RGB image; each step applied with probability 0.5.

    Order: brightness (+U(-32, 32)); contrast (x U(0.5, 1.5)) here if ``mode == 1``; saturation
    (x U(0.5, 1.5) in HSV); hue (+randint(-18, 18) with numpy's exclusive upper bound, i.e. -18..17,
    mod 180 in OpenCV's half-degree units); contrast here if ``mode == 0``. The image stays uint8
    between steps (clip then truncate), as in mmseg. The mask is untouched.
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18,
                 rng: RNGLike = None) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_lower, self.contrast_upper = contrast_range
        self.saturation_lower, self.saturation_upper = saturation_range
        self.hue_delta = hue_delta
        self.rng = _as_rng(rng)

    def _coin(self) -> bool:
        return bool(self.rng.integers(0, 2))

    def brightness(self, img: np.ndarray) -> np.ndarray:
        if self._coin():
            return _convert(img, beta=self.rng.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def contrast(self, img: np.ndarray) -> np.ndarray:
        if self._coin():
            return _convert(img, alpha=self.rng.uniform(self.contrast_lower, self.contrast_upper))
        return img

    def saturation(self, img: np.ndarray) -> np.ndarray:
        if self._coin():
            hsv = rgb_to_hsv(img)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=self.rng.uniform(self.saturation_lower,
                                                                       self.saturation_upper))
            img = hsv_to_rgb(hsv)
        return img

    def hue(self, img: np.ndarray) -> np.ndarray:
        if self._coin():
            hsv = rgb_to_hsv(img)
            delta = self.rng.integers(-self.hue_delta, self.hue_delta)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
            img = hsv_to_rgb(hsv)
        return img

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        if image.dtype != np.uint8:
            raise TypeError("PhotoMetricDistortion expects a uint8 image (apply it before Normalize)")
        img = self.brightness(image)
        mode = self.rng.integers(0, 2)
        if mode == 1:
            img = self.contrast(img)
        img = self.saturation(img)
        img = self.hue(img)
        if mode == 0:
            img = self.contrast(img)
        return img, mask

    def __repr__(self) -> str:
        return (f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
                f"contrast_range=({self.contrast_lower}, {self.contrast_upper}), "
                f"saturation_range=({self.saturation_lower}, {self.saturation_upper}), "
                f"hue_delta={self.hue_delta})")


def _to_255_scale(mean: Sequence[float], std: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """mean/std on the 0-255 scale; values all <= 1 (timm's pretrained_cfg convention) are rescaled."""
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    s = np.asarray(std, dtype=np.float32).reshape(-1)
    if m.size != 3 or s.size != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
    if np.all(m <= 1.0) and np.all(s <= 1.0):
        m, s = m * 255.0, s * 255.0
    if np.any(s <= 0):
        raise ValueError(f"std must be positive, got {std}")
    return m, s


class Normalize:
    """``(image - mean) / std`` per RGB channel -> float32 (mean/std on the 0-255 scale)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = _to_255_scale(mean, std)

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        return (image.astype(np.float32) - self.mean) / self.std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Pad:
    """Pad bottom/right up to ``size`` (h, w): image with ``pad_val``, mask with ``seg_pad_val`` (ignore).

    Placed after Normalize, as in mmseg, so the image padding is 0 in normalized space.
    """

    def __init__(self, size: Union[int, Sequence[int]], pad_val: float = 0,
                 seg_pad_val: int = IGNORE_INDEX) -> None:
        self.size = _pair2(size, "size")
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        h, w = image.shape[:2]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph or pw:
            widths = ((0, ph), (0, pw)) + ((0, 0),) * (image.ndim - 2)
            image = np.pad(image, widths, constant_values=self.pad_val)
            if mask is not None:
                mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=self.seg_pad_val)
        return image, mask

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})"


class ToTensor:
    """H×W×3 array -> float32 3×H×W tensor; H×W mask -> int64 tensor."""

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Pair:
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)
        if mask is not None:
            mask = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.int64)
        return img, mask

    def __repr__(self) -> str:
        return "ToTensor()"


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------
def build_train_transform(
    crop_size: Union[int, Sequence[int]] = (512, 512),
    scale: Optional[Sequence[int]] = (2048, 512),
    ratio_range: Optional[Sequence[float]] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = IGNORE_INDEX,
    rng: RNGLike = None,
) -> Compose:
    """The mmseg training pipeline; returns a callable ``(image uint8 H×W×3, mask uint8 H×W) ->
    (float32 3×crop_h×crop_w tensor, int64 crop_h×crop_w tensor)``.

    ``crop_size`` is (h, w); ``scale`` the (long, short) base scale (``None``: no resize);
    ``ratio_range`` ``None`` resizes to ``scale`` exactly (keep ratio). ``mean``/``std`` on the 0-255
    scale (0-1 values are rescaled). ``rng``: one numpy Generator/RandomState shared by all random
    steps, or ``None`` for numpy's global RNG (see the module docstring).
    """
    crop = _pair2(crop_size, "crop_size")
    steps: List[Callable[[Any, Any], Pair]] = []
    if scale is not None:
        if ratio_range is None:
            steps.append(Resize(scale, keep_ratio=True))
        else:
            steps.append(RandomResize(scale, ratio_range, keep_ratio=True, rng=rng))
    steps.append(RandomCrop(crop, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index, rng=rng))
    if flip_prob > 0:
        steps.append(RandomFlip(flip_prob, rng=rng))
    if photometric:
        steps.append(PhotoMetricDistortion(rng=rng))
    steps += [Normalize(mean, std), Pad(crop, pad_val=0, seg_pad_val=ignore_index), ToTensor()]
    return Compose(steps)


def build_eval_transform(
    scale: Optional[Sequence[int]] = (2048, 512),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    keep_ratio: bool = True,
    resize_mask: bool = False,
) -> Compose:
    """The mmseg single-scale test pipeline: keep-ratio resize to ``scale`` (``None``: none),
    normalize, to tensors.

    The mask stays at the original size unless ``resize_mask`` (mmseg scores predictions at the
    original resolution): upsample the logits to the mask's size before taking the argmax.
    """
    steps: List[Callable[[Any, Any], Pair]] = []
    if scale is not None:
        steps.append(Resize(scale, keep_ratio=keep_ratio, resize_mask=resize_mask))
    steps += [Normalize(mean, std), ToTensor()]
    return Compose(steps)
