"""Dataset layouts, label mappings, layout errors and image/mask loading, on tiny fake trees."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image

from segret_zoo.data.datasets import (
    ADE20KDataset,
    CityscapesDataset,
    COCOStuff10kDataset,
    COCOStuffDataset,
    DatasetLayoutError,
    FolderDataset,
    ImageReadError,
    MaskValueError,
    build_dataset,
    load_image,
    load_mask,
    parse_spec,
)

H, W = 6, 8


def _img(path: Path, seed: int = 0, mode: str = "RGB", size=(H, W)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return arr


def _mask(path: Path, values, size=(H, W)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.asarray(values, dtype=np.uint8), size)
    Image.fromarray(arr, mode="L").save(path)
    return arr


# ------------------------------------------------------------------------------------------ ADE20K
def _ade(root: Path, n: int = 2, split: str = "validation", raw=(0, 1, 2, 150, 255)) -> Path:
    base = root / "ADEChallengeData2016"
    for i in range(n):
        _img(base / "images" / split / f"ADE_val_{i:08d}.jpg", seed=i)
        _mask(base / "annotations" / split / f"ADE_val_{i:08d}.png", raw)
    return base


def test_ade20k_reduce_zero_label_and_root_forms(tmp_path: Path) -> None:
    base = _ade(tmp_path)
    for root in (tmp_path, base):  # parent folder or ADEChallengeData2016 itself
        ds = ADE20KDataset(root, split="val")
        assert len(ds) == 2 and ds.num_classes == 150 and ds.classes[0] == "wall" and ds.name == "ade20k"
        image, mask = ds[0]
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert mask.dtype == np.uint8
        assert np.array_equal(mask, np.resize(np.array([255, 0, 1, 149, 255], np.uint8), (H, W)))
        assert ds.image_path(1).name == "ADE_val_00000001.jpg"
    ds = build_dataset(f"ade20k:{tmp_path}", "val", transform=lambda i, m: ("t", i.shape, m.max()))
    assert ds[0] == ("t", (H, W, 3), 255)


def test_ade20k_train_split_folder(tmp_path: Path) -> None:
    _ade(tmp_path, n=3, split="training")
    assert len(build_dataset(f"ade20k:{tmp_path}", "train")) == 3
    with pytest.raises(DatasetLayoutError, match=r"annotations/validation|images/validation"):
        build_dataset(f"ade20k:{tmp_path}", "val")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        build_dataset(f"ade20k:{tmp_path}", "test")


def test_ade20k_missing_masks_named(tmp_path: Path) -> None:
    base = _ade(tmp_path, n=3)
    (base / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        ADE20KDataset(tmp_path, "val")
    msg = str(err.value)
    assert "1 of 3 images have no mask" in msg
    assert "ADE_val_00000001.jpg" in msg and "ADE_val_00000001.png" in msg
    assert "ADE_val_00000000" not in msg
    assert "Expected layout" in msg


def test_ade20k_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="not found.*Expected layout: ADEChallengeData2016"):
        ADE20KDataset(tmp_path / "nope", "val")
    (tmp_path / "ADEChallengeData2016" / "images" / "validation").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="annotations"):
        ADE20KDataset(tmp_path, "val")
    (tmp_path / "ADEChallengeData2016" / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no images"):
        ADE20KDataset(tmp_path, "val")


def test_ade20k_out_of_range_raw_label(tmp_path: Path) -> None:
    _ade(tmp_path, n=2)
    bad = tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000001.png"
    _mask(bad, (3, 151, 200))
    ds = ADE20KDataset(tmp_path, "val")  # checked when loaded, not on construction
    ds[0]
    with pytest.raises(MaskValueError) as err:
        ds[1]
    msg = str(err.value)
    assert str(bad) in msg and "151" in msg and "200" in msg


# -------------------------------------------------------------------------------------- Cityscapes
def _city(root: Path, split: str = "val", kind: Optional[str] = "labelTrainIds", values=(0, 1, 18, 255)):
    names = []
    for city, idx in (("frankfurt", 0), ("frankfurt", 1), ("lindau", 2)):
        stem = f"{city}_000000_{idx:06d}"
        _img(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=idx)
        if kind:
            _mask(root / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png", values)
        names.append((city, stem))
    return names


def test_cityscapes_train_ids(tmp_path: Path) -> None:
    _city(tmp_path)
    ds = build_dataset(f"cityscapes:{tmp_path}", "val")
    assert isinstance(ds, CityscapesDataset) and len(ds) == 3 and ds.num_classes == 19
    image, mask = ds[2]
    assert ds.image_path(2).parent.name == "lindau"
    assert np.array_equal(image, _img(tmp_path / "x.png", seed=2))
    assert np.array_equal(mask, np.resize(np.array([0, 1, 18, 255], np.uint8), (H, W)))


def test_cityscapes_label_ids_fallback(tmp_path: Path) -> None:
    _city(tmp_path, kind="labelIds", values=(7, 26, 0, 33, 9, 255))
    ds = CityscapesDataset(tmp_path, "val")
    assert ds.mask_path(0).name.endswith("_gtFine_labelIds.png")
    _, mask = ds[0]
    assert np.array_equal(mask, np.resize(np.array([0, 13, 255, 18, 255, 255], np.uint8), (H, W)))


def test_cityscapes_prefers_train_ids_and_checks_label_ids(tmp_path: Path) -> None:
    names = _city(tmp_path, kind="labelIds", values=(7,))
    city, stem = names[0]
    _mask(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png", (5,))
    ds = CityscapesDataset(tmp_path, "val")
    assert np.all(ds[0][1] == 5)  # trainIds used as they are
    assert np.all(ds[1][1] == 0)  # labelIds 7 -> road
    city, stem = names[2]
    _mask(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", (7, 40))
    with pytest.raises(MaskValueError, match=r"labelIds.*40 \("):
        ds[2]


def test_cityscapes_missing_gt(tmp_path: Path) -> None:
    _city(tmp_path, kind=None)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as err:
        CityscapesDataset(tmp_path, "val")
    msg = str(err.value)
    assert "3 of 3 images have no mask" in msg and "frankfurt_000000_000000_leftImg8bit.png" in msg
    assert "frankfurt_000000_000000_gtFine_labelTrainIds.png" in msg


def test_cityscapes_train_id_out_of_range(tmp_path: Path) -> None:
    _city(tmp_path, values=(0, 19))
    with pytest.raises(MaskValueError, match=r"19 \(.*train ids 0\.\.18"):
        CityscapesDataset(tmp_path, "val")[0]


# -------------------------------------------------------------------------------------- COCO-Stuff
def _coco(root: Path, split: str = "val2017", raw=(0, 12, 91, 181, 255, 11)) -> None:
    for i in range(2):
        _img(root / "images" / split / f"{i:012d}.jpg", seed=i)
        _mask(root / "annotations" / split / f"{i:012d}.png", raw)


def test_cocostuff_raw_id_mapping(tmp_path: Path) -> None:
    _coco(tmp_path)
    ds = build_dataset(f"cocostuff:{tmp_path}", "val")
    assert isinstance(ds, COCOStuffDataset) and len(ds) == 2 and ds.num_classes == 171
    assert np.array_equal(ds[0][1], np.resize(np.array([0, 11, 80, 170, 255, 255], np.uint8), (H, W)))


def test_cocostuff_converted_train_ids_preferred(tmp_path: Path) -> None:
    _coco(tmp_path)
    _mask(tmp_path / "annotations" / "val2017" / "000000000001_labelTrainIds.png", (170, 3))
    ds = COCOStuffDataset(tmp_path, "val")
    assert len(ds) == 2  # the _labelTrainIds file is not an extra sample
    assert np.array_equal(ds[1][1], np.resize(np.array([170, 3], np.uint8), (H, W)))


def test_cocostuff_invalid_raw_id(tmp_path: Path) -> None:
    _coco(tmp_path, raw=(0, 182))
    with pytest.raises(MaskValueError, match=r"000000000000\.png.*182"):
        COCOStuffDataset(tmp_path, "val")[0]


# ------------------------------------------------------------------------------------------ COCO-Stuff 10k
COCO10K = Path(__file__).parent / "data" / "cocostuff10k"  # mmseg's converter layout, see its README


def test_cocostuff10k_fixture_in_mmseg_layout() -> None:
    train = build_dataset(f"cocostuff10k:{COCO10K}", "train")
    val = build_dataset(f"coco-stuff10k:{COCO10K}", "val")  # val is the 10k test split, as the configs use
    assert isinstance(train, COCOStuff10kDataset) and isinstance(val, COCOStuff10kDataset)
    assert [image.name for image, _, _ in train.samples] == [
        "COCO_train2014_000000000077.jpg", "COCO_train2014_000000000078.jpg"]
    assert val.image_path(0).parent.name == "test2014" and len(val) == 2
    assert val.mask_path(0).name == "COCO_train2014_000000000110_labelTrainIds.png"
    assert train.num_classes == 171 and train.classes[0] == "person" and train.classes[170] == "wood"
    image, mask = val[0]
    assert image.shape == (20, 30, 3) and mask.shape == (20, 30)
    # the converter's 1-based ids with 0 = unlabeled, reduced: 1 -> 0, 92 -> 91, 171 -> 170, 0 -> 255
    assert mask[0, 0] == 0 and mask[10, 0] == 91 and mask[19, 0] == 170 and mask[19, 29] == 255
    assert sorted(np.unique(mask).tolist()) == [0, 91, 170, 255]
    assert train.palette.shape == (171, 3)
    assert parse_spec(str(COCO10K)) == ("cocostuff10k", COCO10K)  # detected from images/{train,test}2014


def test_cocostuff10k_older_converter_names_and_bad_values(tmp_path: Path) -> None:
    # older converters wrote the test split's masks as <name>.png
    _img(tmp_path / "images" / "test2014" / "COCO_train2014_000000000001.jpg")
    _mask(tmp_path / "annotations" / "test2014" / "COCO_train2014_000000000001.png", (0, 1, 171, 172))
    ds = COCOStuff10kDataset(tmp_path, "test")
    assert len(ds) == 1 and ds.mask_path(0).name == "COCO_train2014_000000000001.png"
    with pytest.raises(MaskValueError, match=r"000000000001\.png.*172.*0\.\.171"):
        ds[0]
    _img(tmp_path / "images" / "test2014" / "COCO_train2014_000000000002.jpg")
    with pytest.raises(DatasetLayoutError, match="000000000002_labelTrainIds.png"):
        COCOStuff10kDataset(tmp_path, "val")
    with pytest.raises(DatasetLayoutError, match="train2014"):
        build_dataset(f"cocostuff10k:{tmp_path}", "train")


# ------------------------------------------------------------------------------------------ folder
def _folder(root: Path, n: int = 3, classes=("bg", "cat", "dog"), split: str = "train") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n\n")
    for i in range(n):
        ext = (".png", ".jpg", ".jpeg")[i % 3]
        _img(root / "images" / split / f"s{i}{ext}", seed=i)
        _mask(root / "masks" / split / f"s{i}.png", (0, 1, 2, 255))


def test_folder_dataset(tmp_path: Path) -> None:
    _folder(tmp_path)
    ds = build_dataset(f"folder:{tmp_path}", "train")
    assert isinstance(ds, FolderDataset)
    assert ds.classes == ("bg", "cat", "dog") and ds.num_classes == 3 and len(ds) == 3
    assert ds.id2label == {0: "bg", 1: "cat", 2: "dog"} and ds.palette.shape == (3, 3)
    image, mask = ds[0]
    assert np.array_equal(image, _img(tmp_path / "ref.png", seed=0))  # png: lossless
    assert np.array_equal(mask, np.resize(np.array([0, 1, 2, 255], np.uint8), (H, W)))
    assert ds[-1][0].shape == (H, W, 3)
    with pytest.raises(IndexError):
        ds[3]


def test_folder_mask_value_out_of_range(tmp_path: Path) -> None:
    _folder(tmp_path)
    _mask(tmp_path / "masks" / "train" / "s1.png", (0, 3))
    ds = FolderDataset(tmp_path, "train")
    with pytest.raises(MaskValueError) as err:
        ds[1]
    assert "s1.png" in str(err.value) and "3 (" in str(err.value)


def test_folder_missing_masks_count_and_first_few(tmp_path: Path) -> None:
    _folder(tmp_path, n=9)
    for i in range(7):
        (tmp_path / "masks" / "train" / f"s{i}.png").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        FolderDataset(tmp_path, "train")
    msg = str(err.value)
    assert "7 of 9 images have no mask" in msg
    assert all(f"s{i}." in msg for i in range(5)) and "s5." not in msg and "s6." not in msg


def test_folder_layout_errors(tmp_path: Path) -> None:
    _folder(tmp_path)
    with pytest.raises(DatasetLayoutError, match="available splits: train"):
        FolderDataset(tmp_path, "val")
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="classes.txt not found"):
        FolderDataset(tmp_path, "train")
    (tmp_path / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="duplicate class names: a"):
        FolderDataset(tmp_path, "train")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    _img(tmp_path / "images" / "train" / "s0.jpg")
    with pytest.raises(DatasetLayoutError, match="share a stem.*s0"):
        FolderDataset(tmp_path, "train")


def test_mask_image_size_mismatch(tmp_path: Path) -> None:
    _folder(tmp_path)
    _mask(tmp_path / "masks" / "train" / "s2.png", (0,), size=(H + 1, W))
    with pytest.raises(MaskValueError, match="s2.png: mask size 8x7 does not match"):
        FolderDataset(tmp_path, "train")[2]


def test_spec_parsing(tmp_path: Path) -> None:
    _folder(tmp_path / "mine")
    _coco(tmp_path / "coco")
    assert parse_spec(f"folder:{tmp_path / 'mine'}") == ("folder", tmp_path / "mine")
    assert parse_spec(f"coco-stuff:{tmp_path / 'coco'}")[0] == "cocostuff"
    assert parse_spec(str(tmp_path / "mine"))[0] == "folder"  # detected from the layout
    assert parse_spec(str(tmp_path / "coco"))[0] == "cocostuff"
    with pytest.raises(ValueError, match="cannot tell which dataset"):
        parse_spec(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no path"):
        parse_spec("ade20k:")


# ------------------------------------------------------------------------------- image/mask loading
def test_load_image_modes(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    grey16 = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (1, 4, 3) and out[0, :, 0].tolist() == [0, 100, 255, 4]
    assert np.array_equal(out[..., 0], out[..., 2])

    rgba = np.concatenate([rgb, np.zeros((4, 5, 1), np.uint8)], axis=2)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, colours kept

    la = np.stack([rgb[..., 0], rgb[..., 1]], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.array_equal(load_image(tmp_path / "la.png"), np.repeat(rgb[..., :1], 3, axis=2))

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png")[0].tolist() == [[10, 20, 30], [200, 100, 50]]

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = load_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (4, 5, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 20

    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    assert np.array_equal(load_image(tmp_path / "l.png"), np.repeat(rgb[..., :1], 3, axis=2))


def test_load_broken_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("empty.png", "text.jpg"):
        with pytest.raises(ImageReadError, match=name):
            load_image(tmp_path / name)


def test_load_mask_modes(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 255]], np.uint8)
    pal = Image.fromarray(idx, "P")
    pal.putpalette(list(range(256)) * 3)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(load_mask(tmp_path / "p.png"), idx)  # palette indices are the labels
    Image.fromarray(np.repeat(idx[..., None], 3, axis=2)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(load_mask(tmp_path / "grey_rgb.png"), idx)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(MaskValueError, match="colour.png: mask is a colour"):
        load_mask(tmp_path / "colour.png")
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "m16.png")
    with pytest.raises(MaskValueError, match="m16.png"):
        load_mask(tmp_path / "m16.png")
