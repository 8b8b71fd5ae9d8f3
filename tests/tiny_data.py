"""Tiny generated training data shared by the training, resume and fault tests."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from PIL import Image


class TensorSet:
    """Ready (image tensor, mask tensor) pairs of 3 classes; the first ``ignore_rows`` mask rows are 255."""

    num_classes = 3
    classes = ("a", "b", "c")

    def __init__(self, n: int = 8, seed: int = 0, size: int = 32, ignore_rows: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 3, (n, size, size), generator=g)
        self.y[:, :ignore_rows] = 255

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def make_folder_dataset(root: Path, n_train: int = 2, n_val: int = 2, size: Tuple[int, int] = (40, 48),
                        ignore_rows: int = 4) -> Path:
    """A ``folder:`` dataset (sky/road/car) of random images and masks whose first rows are ignore (255)."""
    rs = np.random.RandomState(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rs.randint(0, 255, size + (3,), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            mask = rs.randint(0, 3, size).astype(np.uint8)
            mask[:ignore_rows] = 255
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root
