"""Class names, palettes and id mappings of ADE20K, Cityscapes and COCO-Stuff."""
from __future__ import annotations

import numpy as np
import pytest

from segret_zoo.data import classes as C


def test_class_counts_and_order() -> None:
    assert len(C.ADE20K_CLASSES) == 150
    assert C.ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert C.ADE20K_CLASSES[7] == "bed"  # mmseg's list has a stray trailing space here
    assert C.ADE20K_CLASSES[12] == "person" and C.ADE20K_CLASSES[-1] == "flag"
    assert C.ADE20K_CLASSES[-3:] == ("glass", "clock", "flag")

    assert C.CITYSCAPES_CLASSES == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    )

    assert len(C.COCOSTUFF_CLASSES) == 171
    assert C.COCOSTUFF_CLASSES[0] == "person" and C.COCOSTUFF_CLASSES[79] == "toothbrush"
    assert C.COCOSTUFF_CLASSES[80] == "banner" and C.COCOSTUFF_CLASSES[-1] == "wood"
    assert C.COCOSTUFF_CLASSES[C.COCOSTUFF_RAWID_TO_TRAINID[91]] == "banner"

    for names in C.DATASET_CLASSES.values():
        assert len(set(names)) == len(names)
        assert all(n == n.strip() and n for n in names)


def test_dataset_palettes() -> None:
    for key, names in C.DATASET_CLASSES.items():
        pal = C.get_palette(len(names), key)
        assert pal.shape == (len(names), 3) and pal.dtype == np.uint8
    assert C.get_palette(150, "ade20k")[0].tolist() == [120, 120, 120]
    assert C.get_palette(150, "ade20k")[-1].tolist() == [92, 0, 255]
    assert C.get_palette(19, "cityscapes")[0].tolist() == [128, 64, 128]
    assert C.get_palette(19, "cityscapes")[18].tolist() == [119, 11, 32]
    assert C.get_palette(171, "cocostuff")[0].tolist() == [0, 192, 64]
    assert C.get_palette(171, "coco-stuff")[-1].tolist() == [64, 64, 0]
    # fewer classes: truncated; more: extended with colours not already used
    assert np.array_equal(C.get_palette(5, "ADE20K"), C.ADE20K_PALETTE[:5])
    ext = C.get_palette(25, "cityscapes")
    assert np.array_equal(ext[:19], C.CITYSCAPES_PALETTE)
    base = {tuple(r) for r in C.CITYSCAPES_PALETTE.tolist()}
    extra = [tuple(r) for r in ext[19:].tolist()]
    assert len(set(extra)) == 6 and not base & set(extra)


def test_generated_palette_distinct_and_deterministic() -> None:
    pal = C.get_palette(1000)
    assert pal.shape == (1000, 3) and pal.dtype == np.uint8
    assert len({tuple(r) for r in pal.tolist()}) == 1000
    assert np.array_equal(pal, C.get_palette(1000))
    assert np.array_equal(C.get_palette(7), pal[:7])
    assert pal[1].tolist() == [128, 0, 0] and pal[2].tolist() == [0, 128, 0]  # VOC colour map
    assert C.get_palette(0).shape == (0, 3)


def test_id2label_and_names() -> None:
    assert C.id2label("cityscapes")[18] == "bicycle"
    assert C.id2label("ADE20K")[0] == "wall"
    assert list(C.id2label("coco_stuff")) == list(range(171))
    assert C.canonical_dataset_name("COCO-Stuff164k") == "cocostuff"
    with pytest.raises(ValueError, match="unknown dataset 'pascal'"):
        C.id2label("pascal")


def test_cityscapes_labelid_to_trainid() -> None:
    lut = C.CITYSCAPES_LABELID_TO_TRAINID
    assert lut.shape == (256,) and lut.dtype == np.uint8
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for raw in range(256):
        assert lut[raw] == expected.get(raw, 255), raw


def test_cocostuff_rawid_to_trainid() -> None:
    lut = C.COCOSTUFF_RAWID_TO_TRAINID
    assert lut.shape == (256,) and lut.dtype == np.uint8
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    assert all(lut[u] == 255 for u in unused)
    assert lut[0] == 0 and lut[10] == 10 and lut[12] == 11 and lut[26] == 24 and lut[91] == 80
    assert lut[181] == 170 and lut[182] == 255 and lut[255] == 255
    mapped = lut[[r for r in range(182) if r not in unused]]
    assert mapped.tolist() == list(range(171))  # order preserving bijection onto 0..170


def test_ade_reduce_zero_label() -> None:
    lut = C.ADE20K_REDUCE_ZERO_LABEL
    assert lut[0] == 255 and lut[1] == 0 and lut[150] == 149 and lut[255] == 255
