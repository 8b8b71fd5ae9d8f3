"""evaluate() and `segret-zoo eval`, with an "oracle" model that reads the class from the pixel colour."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segret_zoo import evaluate as ev
from segret_zoo.cli import eval as eval_cli
from segret_zoo.data.datasets import FolderDataset
from segret_zoo.metrics import IoUMetric

K = 4
NAMES = ("sky", "road", "car", "tree")  # class 3 never appears in the ground truth
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ColourOracle(torch.nn.Module):
    """Logits from the red channel: class k where R is nearest to 60·k. ``swap`` relabels one class as
    another, to produce known mistakes. Goes through the real predictor's normalisation."""

    def __init__(self, swap: tuple = ()) -> None:
        super().__init__()
        self.num_classes = K
        self.swap = swap
        self.pretrained_cfg = {"mean": MEAN, "std": STD, "test_scale": None, "crop_size": (64, 64),
                               "num_classes": K}
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1] * (STD[0] * 255) + MEAN[0] * 255
        centres = torch.arange(K, dtype=x.dtype, device=x.device).view(1, K, 1, 1) * 60
        logits = -((red - centres) ** 2) + self.anchor
        if self.swap:
            a, b = self.swap
            logits[:, b] = torch.maximum(logits[:, a], logits[:, b]) + 1
        return logits


def _make_folder(root: Path, n: int = 3, split: str = "val") -> list:
    rng = np.random.default_rng(0)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    masks = []
    for i in range(n):
        h, w = 20 + 4 * i, 30 - 2 * i  # different sizes
        mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
        mask[: 3 + i] = 255
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        image[..., 0] = np.where(mask == 255, 0, mask.astype(np.int64) * 60)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / split / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / split / f"img{i}.png")
        masks.append(mask)
    return masks


def test_evaluate_perfect_and_known_mistakes(tmp_path: Path) -> None:
    masks = _make_folder(tmp_path)
    ds = FolderDataset(tmp_path, "val")
    res = ev.evaluate(ColourOracle(), ds, mode="whole", progress=False)
    assert res["mIoU"] == 100.0 and res["aAcc"] == 100.0 and res["mAcc"] == 100.0
    assert res["IoU"][:3] == [100.0] * 3
    assert res["num_images"] == 3 and res["classes"] == list(NAMES)
    # class 3 is absent from ground truth; pixels under ignore may be predicted as anything

    res = ev.evaluate(ColourOracle(swap=(2, 1)), ds, mode="whole", progress=False)  # car -> road
    expected = IoUMetric(K)
    for m in masks:
        expected.update(np.where(m == 2, 1, m), m)
    want = expected.compute()
    assert res["mIoU"] == pytest.approx(want["mIoU"]) and res["aAcc"] == pytest.approx(want["aAcc"])
    assert res["IoU"][2] == 0.0 and math.isnan(res["IoU"][3]) and math.isnan(res["Acc"][3])
    assert res["per_class"]["road"]["IoU"] == pytest.approx(want["IoU"][1])
    assert res["per_class"]["road"]["Acc"] == 100.0


def test_evaluate_bypasses_training_transform_and_limit(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    ds = FolderDataset(tmp_path, "val", transform=lambda i, m: (torch.zeros(3, 2, 2), None))
    model = ColourOracle().train()
    res = ev.evaluate(model, ds, mode="slide", progress=False, limit=2)
    assert res["num_images"] == 2 and res["mIoU"] == 100.0
    assert model.training  # a trainer's periodic evaluation gets its model back in training mode
    model.eval()
    ev.evaluate(model, ds, progress=False, limit=1)
    assert not model.training


def test_evaluate_with_stand_in_predictor_and_plain_list() -> None:
    rng = np.random.default_rng(1)
    samples = [(rng.integers(0, 256, (5, 6, 3)).astype(np.uint8), rng.integers(0, 3, (5, 6)))
               for _ in range(4)]
    calls = []

    def predictor(image: np.ndarray) -> np.ndarray:
        calls.append(image.shape)
        return np.zeros(image.shape[:2], np.uint8)

    model = torch.nn.Identity()
    model.num_classes = 3
    res = ev.evaluate(model, samples, predictor=predictor, progress=False)
    m = IoUMetric(3)
    for _, t in samples:
        m.update(np.zeros_like(t), t)
    assert res["mIoU"] == pytest.approx(m.compute()["mIoU"]) and len(calls) == 4
    assert res["classes"] == ["0", "1", "2"]


def test_evaluate_rejects_class_count_mismatch(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    model = ColourOracle()
    model.num_classes = 150
    with pytest.raises(ValueError, match="150 classes but the dataset has 4"):
        ev.evaluate(model, FolderDataset(tmp_path, "val"), progress=False)


def test_eval_cli_writes_metrics_json(tmp_path: Path, monkeypatch, capsys) -> None:
    _make_folder(tmp_path / "data")
    seen = {}

    def fake_load(name, checkpoint, num_classes):
        seen.update(name=name, checkpoint=checkpoint, num_classes=num_classes)
        return ColourOracle(swap=(2, 1))

    monkeypatch.setattr(eval_cli, "_load_model", fake_load)
    parser = argparse.ArgumentParser()
    eval_cli.add_cli(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["eval", "--model", "segret_tiny", "--checkpoint", "w.safetensors",
                              "--data", f"folder:{tmp_path / 'data'}", "--device", "cpu", "--mode", "whole",
                              "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    assert seen == {"name": "segret_tiny", "checkpoint": "w.safetensors", "num_classes": 4}
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["IoU"]) == set(NAMES) and doc["IoU"]["car"] == 0.0 and doc["IoU"]["sky"] == 100.0
    assert doc["IoU"]["tree"] is None and doc["Acc"]["tree"] is None  # NaN -> null
    assert doc["num_images"] == 3 and doc["data"].startswith("folder:") and doc["mode"] == "whole"
    assert 0 < doc["mIoU"] < 100 and doc["aAcc"] > doc["mIoU"]
    printed = capsys.readouterr().out
    assert "road" in printed and "mIoU" in printed and f"{doc['mIoU']:.2f}" in printed
    assert "tree" in printed and "nan" in printed

    args = parser.parse_args(["eval", "--model", "x", "--data", f"folder:{tmp_path / 'data'}", "--limit", "1",
                              "--device", "cpu", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 1


def test_format_table() -> None:
    text = ev.format_table({"classes": ["a", "long name"], "IoU": [50.0, float("nan")], "Acc": [75.5, 1.0],
                            "aAcc": 80.0, "mIoU": 50.0, "mAcc": 38.25})
    lines = text.splitlines()
    assert lines[0].split() == ["Class", "|", "IoU", "|", "Acc"]
    assert lines[2].split() == ["a", "|", "50.00", "|", "75.50"]
    assert lines[3].split() == ["long", "name", "|", "nan", "|", "1.00"]
    assert "mIoU: 50.00" in text and "mAcc: 38.25" in text


def test_eval_cli_with_real_model_saved_by_save_pretrained(tmp_path: Path) -> None:
    """End to end with the real pieces: SegRet (mini backbone) -> save_pretrained -> `eval --model DIR`
    (from_pretrained + Segmenter, whole and TTA) -> metrics.json equal to evaluate() on the same model."""
    from segret_zoo.models.segret import SegRet

    torch.manual_seed(0)
    _make_folder(tmp_path / "data", n=2)
    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
                   num_classes=K, decoder_channels=32, id2label=dict(enumerate(NAMES)))
    with torch.no_grad():  # a non-trivial head so predictions are not all one class
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.pretrained_cfg.update(test_scale=(40, 32), crop_size=(32, 32))  # small, so TTA stays quick
    model.save_pretrained(tmp_path / "model")
    parser = argparse.ArgumentParser()
    eval_cli.add_cli(parser.add_subparsers())
    ds = FolderDataset(tmp_path / "data", "val")
    for extra in ([], ["--tta"]):
        out = tmp_path / ("out" + "".join(extra))
        args = parser.parse_args(["eval", "--model", str(tmp_path / "model"), "--data", f"folder:{tmp_path / 'data'}",
                                  "--mode", "whole", "--device", "cpu", "--out", str(out), "--no-progress", *extra])
        assert args.func(args) == 0
        doc = json.loads((out / "metrics.json").read_text())
        direct = ev.evaluate(model, ds, mode="whole", tta=bool(extra), device="cpu", progress=False)
        assert doc["mIoU"] == pytest.approx(direct["mIoU"]) and doc["aAcc"] == pytest.approx(direct["aAcc"])
        assert doc["tta"] is bool(extra) and list(doc["IoU"]) == list(NAMES)


def test_eval_cli_follows_and_prints_the_models_protocol(tmp_path: Path, capsys) -> None:
    """`eval` on the COCO-Stuff 10k fixture (mmseg's layout) with a model carrying the cocostuff tag's
    protocol: whole inference at 2048x512 rounded up to multiples of 32 unless told otherwise, said
    before the table and recorded in metrics.json."""
    from segret_zoo.cli import main
    from segret_zoo.data.classes import id2label
    from segret_zoo.models.segret import SegRet, default_pretrained_cfg

    fixture = Path(__file__).parent / "data" / "cocostuff10k"
    torch.manual_seed(0)
    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
                   num_classes=171, decoder_channels=16, id2label=id2label("cocostuff"),
                   pretrained_cfg=default_pretrained_cfg("segret_tiny", "cocostuff"))
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", f"cocostuff10k:{fixture}", "--device", "cpu",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    protocol = ("keep-ratio resize to fit 2048x512 (long x short), sides rounded up to a multiple of 32; whole "
                "inference; single scale; logits resized to the original size")
    assert printed.splitlines()[0] == f"protocol: {protocol}"
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["protocol"] == protocol and doc["mode"] == "whole" and doc["num_images"] == 2  # val = test2014
    assert "person" in doc["IoU"] and len(doc["IoU"]) == 171
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", f"cocostuff10k:{fixture}", "--device", "cpu",
                 "--out", str(out), "--no-progress", "--mode", "slide", "--limit", "1"]) == 0  # a flag wins
    printed = capsys.readouterr().out
    assert printed.startswith("protocol: keep-ratio resize to fit 2048x512") and "sliding 512x512 windows" in printed
    assert json.loads((out / "metrics.json").read_text())["mode"] == "slide"
