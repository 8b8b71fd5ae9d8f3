"""The mmseg-style training / eval pipeline: image-mask alignment, resize rule, crop, pad, colour ops."""
from __future__ import annotations

import colorsys
from collections import deque
from typing import Iterable

import numpy as np
import pytest
import torch

from segret_zoo.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    build_eval_transform,
    build_train_transform,
    hsv_to_rgb,
    rescale_size,
    resize_image,
    resize_mask,
    rgb_to_hsv,
)

MEAN = np.array(IMAGENET_MEAN, np.float32) * 255  # the transforms normalise on the 0-255 scale
STD = np.array(IMAGENET_STD, np.float32) * 255


class ScriptedRNG:
    """Returns pre-set values, and fails if the transform draws more (or other) numbers than scripted."""

    def __init__(self, random: Iterable[float] = (), integers: Iterable[int] = (), uniform: Iterable[float] = ()):
        self.r, self.i, self.u = deque(random), deque(integers), deque(uniform)
        self.int_calls: list = []

    def random(self) -> float:
        return self.r.popleft()

    def integers(self, low: int, high: int) -> int:
        self.int_calls.append((low, high))
        v = self.i.popleft()
        assert low <= v < high, (v, low, high)
        return v

    def uniform(self, low: float, high: float) -> float:
        v = self.u.popleft()
        assert low <= v <= high
        return v

    def exhausted(self) -> bool:
        return not (self.r or self.i or self.u)


# colours far apart so that a label can be decoded from a pixel; index 11 encodes label 255
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                    [0, 255, 255], [255, 255, 255], [128, 0, 0], [0, 128, 0], [0, 0, 128], [128, 128, 128]],
                   np.uint8)
LABELS = np.array(list(range(11)) + [255])


def _block_scene(h: int, w: int, block: int, seed: int):
    """A mask of random labels in block×block tiles, and an image whose colour encodes the label."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, len(LABELS), (h // block + 1, w // block + 1))
    idx = np.kron(tiles, np.ones((block, block), np.int64))[:h, :w]
    return COLOURS[idx], LABELS[idx].astype(np.uint8)


def _decode(img_t: torch.Tensor) -> np.ndarray:
    """Normalized 3×H×W tensor -> label of the nearest code colour per pixel."""
    rgb = img_t.permute(1, 2, 0).numpy() * STD + MEAN
    d = ((rgb[:, :, None, :] - COLOURS[None, None].astype(np.float32)) ** 2).sum(-1)
    return LABELS[d.argmin(-1)]


def _uniform_window(mask: np.ndarray, r: int) -> np.ndarray:
    """True where the (2r+1)² neighbourhood of a pixel holds a single label."""
    h, w = mask.shape
    pad = np.pad(mask.astype(np.int32), r, constant_values=-1)
    ok = np.ones((h, w), bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            ok &= pad[dy:dy + h, dx:dx + w] == mask
    return ok


# ------------------------------------------------------------------------------------- alignment
def test_train_pipeline_keeps_image_and_mask_aligned() -> None:
    """Random resize (0.5-2x) + cat-max-ratio crop + flip + normalize + pad, 24 draws: wherever the label
    is locally constant the image colour still encodes exactly the mask's label; padding is 0 / 255."""
    image, mask = _block_scene(90, 120, block=20, seed=0)
    crop = (80, 96)
    t = build_train_transform(crop_size=crop, scale=(120, 90), ratio_range=(0.5, 2.0), photometric=False,
                              rng=np.random.default_rng(1))
    sizes = 0
    for _ in range(24):
        img_t, mask_t = t(image, mask)
        assert img_t.shape == (3, *crop) and img_t.dtype == torch.float32
        assert mask_t.shape == crop and mask_t.dtype == torch.int64
        m = mask_t.numpy()
        pad_rows = np.all(img_t.numpy() == 0, axis=(0, 2))
        pad_cols = np.all(img_t.numpy() == 0, axis=(0, 1))
        # padding region: image exactly 0 (normalized), mask ignore
        assert np.all(m[pad_rows] == 255) and np.all(m[:, pad_cols] == 255)
        valid = ~pad_rows[:, None] & ~pad_cols[None, :]
        check = _uniform_window(m, 2) & valid
        assert check.sum() > 0.2 * valid.sum()
        decoded = _decode(img_t)
        assert np.array_equal(decoded[check], m[check])
        sizes += int(valid.sum() < crop[0] * crop[1])
    assert sizes > 0  # some draws were smaller than the crop and got padded


def test_crop_and_flip_alignment_is_exact_without_resize() -> None:
    image, mask = _block_scene(70, 90, block=5, seed=2)
    t = build_train_transform(crop_size=(40, 50), scale=None, photometric=False, cat_max_ratio=0.75,
                              rng=np.random.default_rng(3))
    seen_flip = seen_plain = False
    for _ in range(20):
        img_t, mask_t = t(image, mask)
        assert np.array_equal(_decode(img_t), mask_t.numpy())  # every pixel, borders included
        # locate the crop in the source to tell flips apart
        m = mask_t.numpy()
        for y in range(0, 70 - 40 + 1):
            for x in range(0, 90 - 50 + 1):
                if np.array_equal(mask[y:y + 40, x:x + 50], m):
                    seen_plain = True
                elif np.array_equal(mask[y:y + 40, x:x + 50][:, ::-1], m):
                    seen_flip = True
    assert seen_flip and seen_plain


def test_photometric_distortion_is_pointwise_and_leaves_mask() -> None:
    """Same input colour -> same output colour anywhere in the image; mask unchanged."""
    rng = np.random.default_rng(4)
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (30, 40))
    image, mask = colours[idx], idx.astype(np.uint8)
    pmd = PhotoMetricDistortion(rng=np.random.default_rng(5))
    changed = 0
    for _ in range(10):
        out, m = pmd(image, mask)
        assert m is mask and out.dtype == np.uint8 and out.shape == image.shape
        for k in range(16):
            px = out[idx == k]
            assert np.all(px == px[0])
        changed += int(not np.array_equal(out, image))
    assert changed >= 5


# -------------------------------------------------------------------------------------- resizing
def test_rescale_rule_is_mmcv_keep_ratio() -> None:
    assert rescale_size(480, 640, (2048, 512)) == (512, 683)  # short side bound: 640*512/480 = 682.7
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long side bound: factor 2.048
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert rescale_size(512, 512, (512, 2048)) == (512, 512)  # (long, short) order does not matter


def test_random_resize_samples_ratio_times_base_scale() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    mask = np.zeros((480, 640), np.uint8)
    rng = ScriptedRNG(random=[0.25])
    t = RandomResize((2048, 512), (0.5, 2.0), rng=rng)
    out, m = t(image, mask)
    # ratio = 0.5 + 0.25 * 1.5 = 0.875 -> scale (1792, 448) -> factor min(2.8, 0.9333)
    assert out.shape == (448, 597, 3) and m.shape == (448, 597) and rng.exhausted()


def test_resize_interpolation() -> None:
    m = np.array([[1, 2], [3, 4]], np.uint8)
    assert resize_mask(m, (4, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    big = np.arange(36, dtype=np.uint8).reshape(6, 6)
    assert resize_mask(big, (3, 3)).tolist() == big[1::2, 1::2].tolist()  # pixel centres
    assert set(np.unique(resize_mask(big, (5, 7)))) <= set(range(36))
    img = np.array([[0, 100], [200, 50]], np.uint8)[..., None].repeat(3, 2)
    up = resize_image(img, (4, 4))[..., 0]
    # half-pixel-centre bilinear (OpenCV INTER_LINEAR): corners keep the source values
    assert up[0, 0] == 0 and up[0, 3] == 100 and up[3, 0] == 200 and up[3, 3] == 50
    assert up[0, 1] == 25 and up[0, 2] == 75
    flat = np.full((7, 9, 3), 77, np.uint8)
    assert np.all(resize_image(flat, (13, 4)) == 77)


# ------------------------------------------------------------------------------------------ crop
def test_crop_retries_until_no_class_dominates() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[:, 8:] = 1  # only crops reaching columns 8-9 hold class 1
    image = np.zeros((10, 10, 3), np.uint8)
    # crop 4x4: x offsets 0..6; x=6 -> 2 of 4 columns are class 1 (ratio 0.5 < 0.75): accepted
    offsets = [0, 0, 0, 1, 0, 2, 0, 6, 5, 5]
    rng = ScriptedRNG(integers=offsets)
    crop = RandomCrop((4, 4), cat_max_ratio=0.75, rng=rng)
    assert crop.crop_bbox(image, mask) == (0, 4, 6, 10)
    assert rng.i == deque([5, 5]) and rng.int_calls[0] == (0, 7)


def test_crop_gives_up_after_ten_redraws() -> None:
    mask = np.zeros((10, 10), np.uint8)
    image = np.zeros((10, 10, 3), np.uint8)
    offsets = [k % 7 for k in range(22)]  # 11 boxes = first draw + 10 re-draws
    rng = ScriptedRNG(integers=offsets)
    y1, y2, x1, x2 = RandomCrop((4, 4), 0.75, rng=rng).crop_bbox(image, mask)
    assert (y1, x1) == (offsets[20], offsets[21]) and rng.exhausted()
    # cat_max_ratio = 1 (disabled): exactly one draw
    rng = ScriptedRNG(integers=[3, 2])
    img, m = RandomCrop((4, 4), 1.0, rng=rng)(image, mask)
    assert img.shape == (4, 4, 3) and rng.exhausted()


def test_crop_ratio_ignores_ignore_pixels() -> None:
    crop = RandomCrop((10, 10), cat_max_ratio=0.75)
    m = np.zeros((10, 10), np.uint8)
    m[:3] = 255
    assert not crop._acceptable(m)  # one class + ignore: counts as a single class
    m[3] = 1  # class 0: 60 px, class 1: 10 px, ignore 30 -> 60/70 = 0.857 (0.6 if ignore counted)
    assert not crop._acceptable(m)
    m[4:6] = 1  # 40 / 30 -> 0.571
    assert crop._acceptable(m)


def test_crop_smaller_image_then_pad() -> None:
    image, mask = _block_scene(20, 30, 5, seed=7)
    img, m = RandomCrop((32, 40), rng=ScriptedRNG(integers=[0, 0]))(image, mask)
    assert img.shape == (20, 30, 3) and np.array_equal(m, mask)
    norm, m = Normalize()(img, m)
    padded, pm = Pad((32, 40))(norm, m)
    assert padded.shape == (32, 40, 3) and pm.shape == (32, 40)
    assert np.all(padded[20:] == 0) and np.all(padded[:, 30:] == 0) and np.all(pm[20:] == 255)
    assert np.all(pm[:, 30:] == 255) and np.array_equal(pm[:20, :30], mask)
    assert np.allclose(padded[:20, :30], (image.astype(np.float32) - MEAN) / STD)


# ------------------------------------------------------------------------------------- flip/colour
def test_flip_probability_draw() -> None:
    image, mask = _block_scene(6, 8, 2, seed=1)
    img, m = RandomFlip(0.5, rng=ScriptedRNG(random=[0.3]))(image, mask)
    assert np.array_equal(img, image[:, ::-1]) and np.array_equal(m, mask[:, ::-1])
    img, m = RandomFlip(0.5, rng=ScriptedRNG(random=[0.7]))(image, mask)
    assert np.array_equal(img, image) and np.array_equal(m, mask)


def test_normalize_accepts_0_1_scale_and_values() -> None:
    px = np.array([[[123.675, 116.28, 103.53], [255, 255, 255]]], np.float32).astype(np.uint8)
    a, _ = Normalize()(px, None)
    b, _ = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(px, None)
    assert np.allclose(a, b, atol=1e-4)
    assert np.allclose(a[0, 1], (255 - MEAN) / STD)


def test_hsv_conversions_match_colorsys() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    hsv = rgb_to_hsv(rgb[None])[0].astype(float)
    for (r, g, b), (h, s, v) in zip(rgb / 255.0, hsv):
        ch, cs, cv = colorsys.rgb_to_hsv(r, g, b)
        dh = abs(ch * 180 - h)
        assert min(dh, 180 - dh) <= 0.5 + 1e-6 and abs(cs * 255 - s) <= 0.5 + 1e-6 and cv * 255 == v
    pure = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [40, 40, 40]]], np.uint8)
    assert rgb_to_hsv(pure)[0, :, 0].tolist() == [0, 60, 120, 30, 0]
    assert np.array_equal(hsv_to_rgb(rgb_to_hsv(pure)), pure)
    back = hsv_to_rgb(rgb_to_hsv(rgb[None]))[0].astype(int)
    assert np.abs(back - rgb).max() <= 4  # 8-bit HSV quantisation, as OpenCV


def test_photometric_steps_order_and_values() -> None:
    img = np.array([[[255, 0, 0], [100, 150, 200], [10, 20, 30]]], np.uint8)
    # all coins tails: identity; draws = brightness coin, mode, saturation coin, hue coin, contrast coin
    rng = ScriptedRNG(integers=[0, 0, 0, 0, 0])
    out, _ = PhotoMetricDistortion(rng=rng)(img)
    assert np.array_equal(out, img) and rng.exhausted()
    # brightness +10.7: clip then truncate, like mmseg's convert()
    rng = ScriptedRNG(integers=[1, 0, 0, 0, 0], uniform=[10.7])
    out, _ = PhotoMetricDistortion(rng=rng)(img)
    assert out.tolist() == [[[255, 10, 10], [110, 160, 210], [20, 30, 40]]] and rng.exhausted()
    # mode 1: contrast comes right after brightness (x0.5), and hue +60 (120 degrees): red -> green
    rng = ScriptedRNG(integers=[0, 1, 1, 0, 1, 60], uniform=[0.5])
    out, _ = PhotoMetricDistortion(hue_delta=90, rng=rng)(img[:, :1])
    assert out.tolist() == [[[0, 127, 0]]] and rng.exhausted()
    # default hue draw: numpy randint(-18, 18) (upper bound exclusive, as mmseg); -18 wraps mod 180
    rng = ScriptedRNG(integers=[0, 0, 0, 1, -18, 0])
    out, _ = PhotoMetricDistortion(rng=rng)(img[:, :1])
    assert rng.int_calls[-2] == (-18, 18) and rgb_to_hsv(out)[0, 0, 0] == 162
    # saturation x0.5 on a pure colour: S 255 -> 127
    rng = ScriptedRNG(integers=[0, 0, 1, 0, 0], uniform=[0.5])
    out, _ = PhotoMetricDistortion(rng=rng)(img[:, :1])
    assert out.tolist() == [[[255, 128, 128]]]


# ------------------------------------------------------------------------------- rng & eval pipeline
def test_rng_reproducibility_global_and_generator() -> None:
    image, mask = _block_scene(60, 80, 6, seed=3)
    t = build_train_transform(crop_size=(32, 32), scale=(80, 60))
    np.random.seed(123)
    a = t(image, mask)
    state = np.random.get_state()
    b = t(image, mask)
    np.random.seed(123)
    assert all(torch.equal(x, y) for x, y in zip(a, t(image, mask)))
    np.random.set_state(state)  # what a resumed run does
    assert all(torch.equal(x, y) for x, y in zip(b, t(image, mask)))
    g1 = build_train_transform(crop_size=(32, 32), scale=(80, 60), rng=np.random.default_rng(9))
    g2 = build_train_transform(crop_size=(32, 32), scale=(80, 60), rng=np.random.default_rng(9))
    for _ in range(3):
        assert all(torch.equal(x, y) for x, y in zip(g1(image, mask), g2(image, mask)))


def test_eval_transform() -> None:
    image, mask = _block_scene(48, 64, 8, seed=5)
    img_t, mask_t = build_eval_transform(scale=(128, 96))(image, mask)
    assert img_t.shape == (3, 96, 128) and img_t.dtype == torch.float32
    assert mask_t.shape == (48, 64) and mask_t.dtype == torch.int64  # scored at original size
    assert np.array_equal(mask_t.numpy(), mask)
    img_t, mask_t = build_eval_transform(scale=None)(image, mask)
    assert torch.allclose(img_t, torch.from_numpy((image - MEAN) / STD).permute(2, 0, 1).float(), atol=1e-5)
    _, mask_t = build_eval_transform(scale=(128, 96), resize_mask=True)(image, mask)
    assert mask_t.shape == (96, 128)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RandomResize(ratio_range=(2.0, 0.5))
    with pytest.raises(TypeError):
        RandomFlip(rng=42)
    with pytest.raises(TypeError):
        PhotoMetricDistortion()(np.zeros((2, 2, 3), np.float32))
