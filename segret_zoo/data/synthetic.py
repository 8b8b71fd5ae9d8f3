"""A synthetic scene-parsing set for the built-in demo: a pixel's class is the shape it belongs to.

Why this design: the demo must show real segmentation learning in minutes on a CPU with no download.
Every instance (and the background) gets a colour pair drawn from one distribution shared by all
classes and a random texture (flat, stripes, checker, blotchy noise), so neither colour nor texture
tells the class; only the geometry does (circle, square, triangle, ring, cross, star). Later shapes
cover earlier ones and the mask follows (occlusion), and Gaussian pixel noise is added on top.
Everything is drawn from one ``numpy.random.Generator`` seeded by the caller, so a seed gives the
same images and masks on every machine.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segret_zoo.data.classes import IMAGENET_MEAN, IMAGENET_STD, get_palette

__all__ = [
    "SHAPE_CLASSES",
    "SyntheticShapes",
    "make_image",
    "make_split",
    "save_samples",
]

# class id -> name; 0 is the (textured) background
SHAPE_CLASSES: Tuple[str, ...] = ("background", "circle", "square", "triangle", "ring", "cross", "star")
NUM_CLASSES = len(SHAPE_CLASSES)
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
_STD = np.array(IMAGENET_STD, dtype=np.float32) * 255.0


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the shape's own frame: (u, v) are pixel offsets rotated and divided by the radius."""
    r2 = u * u + v * v
    if cls == 1:  # circle
        return r2 <= 1.0
    if cls == 2:  # square (same area scale as the circle: half side 0.85 of the radius)
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if cls == 3:  # equilateral triangle with circumradius 1.1
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            inside &= (u * math.cos(a) + v * math.sin(a)) >= -0.6
        return inside
    if cls == 4:  # ring: a disc with a hole
        return (r2 <= 1.0) & (r2 >= 0.5 ** 2)
    if cls == 5:  # plus-shaped cross
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))
    if cls == 6:  # five-pointed star (radius varies linearly with angle between tips and notches)
        phi = np.arctan2(v, u)
        t = (phi * 5.0 / (2.0 * math.pi)) % 1.0
        edge = 0.5 + 0.65 * np.abs(2.0 * t - 1.0)
        return np.sqrt(r2) <= edge
    raise ValueError(f"no shape for class {cls}")


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int,
             kinds: Sequence[int] = (0, 1, 2, 3), contrast: float = 1.0,
             avoid: Optional[np.ndarray] = None, min_distance: float = 0.0) -> np.ndarray:
    """An H×W×3 float texture: two random colours mixed by a random pattern (same law for every class).

    ``avoid``/``min_distance``: the base colour is redrawn until it is at least that far (RGB
    distance) from ``avoid``, so a shape is never invisible on its background; the rule is the same
    for every class, so colour still says nothing about the class.
    """
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    for _ in range(20):
        if avoid is None or float(np.linalg.norm(c1 - avoid)) >= min_distance:
            break
        c1 = rng.uniform(0, 255, 3).astype(np.float32)
    c2 = c1 + contrast * (rng.uniform(0, 255, 3).astype(np.float32) - c1)
    kind = int(kinds[int(rng.integers(0, len(kinds)))])
    if kind == 0:  # flat colour with a mild shading gradient
        g = rng.normal(0, 1, 2)
        w = 0.15 * ((yy * g[0] + xx * g[1]) / size)
        mix = np.clip(0.5 + w, 0, 1)
        return c1 + (c2 - c1) * 0.25 * mix[..., None]
    if kind == 1:  # stripes at a random angle and period
        a = rng.uniform(0, math.pi)
        period = rng.uniform(3.0, 9.0)
        mix = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * (2 * math.pi / period)) > 0).astype(np.float32)
    elif kind == 2:  # rotated checkerboard
        a = rng.uniform(0, math.pi)
        period = rng.uniform(3.0, 9.0)
        p = xx * math.cos(a) + yy * math.sin(a)
        q = -xx * math.sin(a) + yy * math.cos(a)
        mix = ((np.floor(p / period) + np.floor(q / period)) % 2).astype(np.float32)
    else:  # blotchy noise: a coarse random grid upsampled bilinearly
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
        gy = yy / (size - 1) * cells
        gx = xx / (size - 1) * cells
        y0 = np.minimum(gy.astype(int), cells - 1)
        x0 = np.minimum(gx.astype(int), cells - 1)
        fy, fx = gy - y0, gx - x0
        mix = (grid[y0, x0] * (1 - fy) * (1 - fx) + grid[y0 + 1, x0] * fy * (1 - fx)
               + grid[y0, x0 + 1] * (1 - fy) * fx + grid[y0 + 1, x0 + 1] * fy * fx)
    return c1 + (c2 - c1) * mix[..., None]


def make_image(rng: np.random.Generator, size: int = 64, max_shapes: int = 3,
               noise: float = 8.0, radius: Tuple[float, float] = (0.15, 0.32),
               bg_kinds: Sequence[int] = (0, 3), bg_contrast: float = 0.4,
               shape_contrast: float = 0.35, min_distance: float = 80.0,
               rotation: float = math.pi) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: (image H×W×3 uint8, mask H×W uint8 class ids) with ``size`` = H = W.

    1 to ``max_shapes`` shapes of random class, position, radius (a fraction of the size drawn from
    ``radius``) and rotation are painted back to front on a background; each paints its texture and
    its class over whatever it covers. The background ("ground") has a random colour from the same
    law but, by default, only smooth textures (flat or blotchy) at ``bg_contrast`` of the full colour
    spread: that is what separates stuff from things in real scenes, while the shape classes stay
    indistinguishable by colour and texture. Shape textures mix their two colours at
    ``shape_contrast`` (full-contrast stripes would cut a shape into fragments that no longer show its
    outline) and their base colour keeps ``min_distance`` from the background's.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _texture(rng, yy, xx, size, kinds=bg_kinds, contrast=bg_contrast)
    bg_colour = image.reshape(-1, 3).mean(0)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, NUM_CLASSES))
        r = rng.uniform(radius[0], radius[1]) * size
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        theta = rng.uniform(-rotation, rotation)  # radians; 0 keeps shapes upright
        dy, dx = (yy - cy) / r, (xx - cx) / r
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        inside = _shape_mask(cls, u, v)
        if not inside.any():
            continue
        tex = _texture(rng, yy, xx, size, contrast=shape_contrast, avoid=bg_colour, min_distance=min_distance)
        image[inside] = tex[inside]
        mask[inside] = cls
    if noise > 0:
        image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def make_split(n: int, size: int = 64, seed: int = 0, **scene: Any) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` scenes from ``seed``: (images uint8 N×H×W×3, masks uint8 N×H×W). Same seed, same arrays.

    ``scene`` holds :func:`make_image`'s options (``max_shapes``, ``radius``, ``rotation``, ...).
    """
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        images[i], masks[i] = make_image(rng, size, **scene)
    return images, masks


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 -> float N×3×H×W normalized with the ImageNet mean/std (the model's pretrained_cfg)."""
    x = (images.astype(np.float32) - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class SyntheticShapes(Dataset):
    """Tensor dataset over a generated split: ``ds[i] -> (image 3×H×W float normalized, mask H×W long)``.

    Images are normalized once up front (no per-item work besides the optional flips), which keeps a
    CPU training loop bound by the model, not by data loading. ``flip=True`` applies a random
    horizontal flip, and ``vflip=True`` a vertical one too (the class of a shape does not change under
    flips, but vertical ones add orientations that upright scenes never show).
    """

    classes = SHAPE_CLASSES
    num_classes = NUM_CLASSES
    name = "synthetic-shapes"

    def __init__(self, images: np.ndarray, masks: np.ndarray, flip: bool = False, seed: int = 0,
                 vflip: bool = False) -> None:
        if images.shape[:3] != masks.shape:
            raise ValueError(f"images {images.shape} and masks {masks.shape} do not match")
        self.images = normalize(images)
        self.masks = torch.from_numpy(masks.astype(np.int64))
        self.flip = flip
        self.vflip = vflip  # off by default: upright scenes would gain upside-down triangles and stars
        self._gen = torch.Generator().manual_seed(seed)

    @classmethod
    def generate(cls, n: int, size: int = 64, seed: int = 0, flip: bool = False, **kwargs) -> SyntheticShapes:
        """Generate ``n`` scenes from ``seed`` and wrap them."""
        images, masks = make_split(n, size, seed, **kwargs)
        return cls(images, masks, flip=flip, seed=seed)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.flip:
            r = torch.randint(0, 4, (1,), generator=self._gen).item()
            if r & 1:
                image, mask = image.flip(-1), mask.flip(-1)
            if r & 2 and self.vflip:
                image, mask = image.flip(-2), mask.flip(-2)
        return image, mask


def save_samples(folder: Union[str, Path], images: np.ndarray, masks: np.ndarray, count: int = 4,
                 palette: Optional[np.ndarray] = None) -> List[Path]:
    """Write the first ``count`` scenes as ``sample_<i>.png`` (image | colourized mask side by side)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pal = np.asarray(palette if palette is not None else get_palette(NUM_CLASSES), dtype=np.uint8)
    paths = []
    for i in range(min(count, len(images))):
        row = np.concatenate([images[i], pal[masks[i]]], axis=1)
        path = folder / f"sample_{i}.png"
        Image.fromarray(row).save(path)
        paths.append(path)
    return paths


def class_names() -> Sequence[str]:
    """The class names, background first."""
    return list(SHAPE_CLASSES)
