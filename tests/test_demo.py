"""The built-in demo (`segret-zoo demo`, the full run README's first command starts) end to end, and the
synthetic shapes set it trains on."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segret_zoo.data.synthetic import SHAPE_CLASSES, SyntheticShapes, make_split, save_samples


# ------------------------------------------------------------------------------------------ synthetic
def test_make_split_is_deterministic_from_seed():
    a_img, a_mask = make_split(6, 32, seed=3)
    b_img, b_mask = make_split(6, 32, seed=3)
    c_img, _ = make_split(6, 32, seed=4)
    assert a_img.dtype == np.uint8 and a_mask.dtype == np.uint8
    assert a_img.shape == (6, 32, 32, 3) and a_mask.shape == (6, 32, 32)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)


def test_all_classes_present_and_colour_does_not_decide_the_class():
    images, masks = make_split(600, 32, seed=0)
    assert len(SHAPE_CLASSES) >= 6 + 1  # background + at least six shapes
    counts = np.bincount(masks.ravel(), minlength=len(SHAPE_CLASSES))
    assert len(counts) == len(SHAPE_CLASSES) and (counts > 0).all()
    # every class shares one colour law: per-class mean colours are all close to each other (instance
    # colours are uniform on 0..255, std ~74; the spread left is sampling noise of ~200 instances per class)
    means = np.stack([images[masks == c].reshape(-1, 3).mean(0) for c in range(len(SHAPE_CLASSES))])
    assert np.abs(means - means.mean(0)).max() < 20.0, means
    # and a colour-only classifier (nearest class-mean colour per pixel) is near chance among the shapes
    fg = masks > 0
    pix, lab = images[fg].reshape(-1, 3).astype(np.float32), masks[fg]
    d = ((pix[:, None, :] - means[None, 1:, :]) ** 2).sum(-1)
    acc = float((d.argmin(1) + 1 == lab).mean())
    assert acc < 0.3, acc  # chance is 1/6


def test_occlusion_later_shapes_cover_earlier_ones():
    # with several shapes per scene, some scenes have shapes of >= 2 classes in contact (occlusion)
    _, masks = make_split(50, 48, seed=1, max_shapes=4)
    assert max(len(np.unique(m)) for m in masks) >= 4


def test_dataset_yields_normalized_tensors_and_flips_keep_alignment(tmp_path):
    images, masks = make_split(4, 32, seed=0)
    ds = SyntheticShapes(images, masks, flip=False)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.shape == (32, 32) and y.dtype == torch.long
    assert abs(float(x.mean())) < 1.5  # normalized, not 0..255
    flipped = SyntheticShapes(images, masks, flip=True, seed=1)
    for _ in range(8):
        fx, fy = flipped[1]
        ox, oy = ds[1]
        ok = [torch.equal(fy, t(oy)) and torch.equal(fx, t2(ox)) for t, t2 in (
            (lambda m: m, lambda m: m), (lambda m: m.flip(-1), lambda m: m.flip(-1)),
            (lambda m: m.flip(-2), lambda m: m.flip(-2)), (lambda m: m.flip(-1, -2), lambda m: m.flip(-1, -2)))]
        assert any(ok)
    paths = save_samples(tmp_path, images, masks, count=2)
    assert len(paths) == 2 and Image.open(paths[0]).size == (64, 32)


# ------------------------------------------------------------------------------------------ the demo
# (the full_demo fixture is in conftest.py: tests/test_deploy.py deploys its model too)


def _summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_full_demo_learns_within_five_minutes(full_demo):
    """The outcome README's first command promises: >= 60% held-out mIoU, on every run (the seed, the
    thread count and the precision the probe picks must not decide it). Its time is measured by
    benchmarks/, not asserted here."""
    summary = _summary(full_demo)
    where = (f"{summary['settings']['threads']} threads, {summary['settings']['amp']} autocast, "
             f"{summary['iters']} iterations, load average {summary['load_average']}")
    assert summary["mIoU"] >= 60.0, f"held-out mIoU {summary['mIoU']:.2f}% ({where})"


@pytest.mark.slow
def test_full_demo_summary(full_demo):
    summary = _summary(full_demo)
    assert isinstance(summary["mIoU"], float) and math.isfinite(summary["mIoU"])
    assert 0.0 <= summary["mIoU"] <= 100.0  # percent
    assert "held-out" in summary["evaluated_on"]
    for key in ("input", "prediction", "overlay", "ground_truth", "panel", "model_dir", "metrics_log"):
        assert Path(summary["paths"][key]).exists(), key
    size = tuple(summary["fresh_image"]["size"])
    with Image.open(summary["paths"]["overlay"]) as img:
        img.verify()
    with Image.open(summary["paths"]["overlay"]) as img:
        assert img.mode == "RGB" and img.size == (size[1], size[0])
    # the engine's metrics log holds the held-out evaluation the summary reports
    evals = [json.loads(line) for line in open(summary["paths"]["metrics_log"]) if '"eval"' in line]
    assert evals and abs(evals[-1]["mIoU"] - summary["mIoU"]) < 1e-6


@pytest.mark.slow
def test_full_demo_model_reloads_and_predicts_the_recorded_labels(full_demo):
    import segret_zoo

    summary = _summary(full_demo)
    model = segret_zoo.from_pretrained(summary["paths"]["model_dir"])
    assert model.num_classes == len(SHAPE_CLASSES)
    assert model.id2label[1] == "circle"
    image = np.asarray(Image.open(summary["paths"]["input"]).convert("RGB"))
    labels = segret_zoo.Segmenter(model, mode="whole")(image)
    recorded = np.asarray(Image.open(summary["paths"]["prediction"]))  # palette PNG: values are class ids
    assert labels.shape == recorded.shape == image.shape[:2]
    np.testing.assert_array_equal(labels, recorded)


@pytest.mark.slow
def test_full_demo_length_is_fixed_not_timed(full_demo):
    """The iteration count is fixed, never a measured step time (that made the demo a coin toss); the
    deadline is only a safety net and was not reached."""
    from segret_zoo.cli.demo import DEMO_SETTINGS, demo_iterations

    summary = _summary(full_demo)
    assert summary["stop_reason"] == "completed"
    assert summary["iters"] == demo_iterations(DEMO_SETTINGS) == 600
