"""`segret-zoo predict` over a batch with broken files; `segret-zoo export-onnx`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from segret_zoo.cli import predict as infer_cli
from segret_zoo.data.images import load_image
from segret_zoo.factory import load_model
from segret_zoo.inference.predictor import Segmenter
from segret_zoo.models.segret import SegRet

torch.set_num_threads(1)
MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


def tiny_segret(num_classes: int = 5, seed: int = 0) -> SegRet:
    torch.manual_seed(seed)
    model = SegRet(backbone=MINI, num_classes=num_classes, decoder_channels=32,
                   id2label={i: f"thing{i}" for i in range(num_classes)},
                   pretrained_cfg=dict(test_scale=(256, 128), crop_size=(96, 96), stride=(64, 64), dataset="ade20k"))
    with torch.no_grad():
        model.decoder.classifier.weight.mul_(20)
    return model.eval()


def run(argv) -> int:
    parser = argparse.ArgumentParser()
    infer_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return base.astype(np.uint8)


@pytest.fixture()
def images(tmp_path: Path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rgb = random_image(333, 500)
    Image.fromarray(rgb).save(src / "photo.png")
    Image.fromarray(random_image(90, 120, seed=1)).save(src / "sub" / "photo.jpg")  # same stem
    gray = random_image(70, 60, seed=2)[..., 0]
    Image.fromarray(gray.astype(np.uint16) * 257).save(src / "gray16.png")
    Image.fromarray(random_image(64, 80, seed=3)).convert("CMYK").save(src / "cmyk.jpg")
    (src / "empty.jpg").write_bytes(b"")
    (src / "readme.png").write_text("this is text, not a picture\n")
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(8) + b"\x08\x02\x00\x00\x00"
    (src / "zero.png").write_bytes(png + bytes(8))
    good = [src / "photo.png", src / "gray16.png", src / "cmyk.jpg", src / "sub" / "photo.jpg"]
    bad = [src / "empty.jpg", src / "readme.png", src / "zero.png", src / "missing.png"]
    return good, bad


def test_predict_batch_completes_despite_bad_files(images, tmp_path, monkeypatch, capsys):
    good, bad = images
    model = tiny_segret()
    monkeypatch.setattr(infer_cli, "load_model", lambda *a, **k: model)
    order = [good[0], bad[0], good[1], bad[1], good[2], bad[2], bad[3], good[3]]
    out = tmp_path / "out"
    rc = run(["predict", *map(str, order), "--model", "segret_tiny", "--out", str(out), "--device", "cpu",
              "--legend", "--quiet", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == len(bad)
    for path, reason in zip(bad, ("empty file", "not an image", "zero-size", "no such file")):
        [line] = [ln for ln in error_lines if str(path) in ln]
        assert reason in line
    assert "4 of 8 images" in err and "4 failed" in err

    seg = Segmenter(model)
    for path, stem in zip(good, ("photo", "gray16", "cmyk", "photo-2")):
        expected = seg(path)
        label_png = Image.open(out / f"{stem}_labels.png")
        assert label_png.mode == "P"
        np.testing.assert_array_equal(np.asarray(label_png), expected)  # pixel value = class id
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == label_png.size == Image.open(path).size
        assert Image.open(out / f"{stem}_legend.png").size[1] > 10
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image"] == str(path) and (record["height"], record["width"]) == expected.shape
        counts = np.bincount(expected.ravel(), minlength=5)
        assert {c["id"]: c["pixels"] for c in record["classes"]} == {i: int(n) for i, n in enumerate(counts) if n}
        assert abs(sum(c["share"] for c in record["classes"]) - 1) < 1e-4
        assert all(c["name"] == f"thing{c['id']}" for c in record["classes"])
    # the 16-bit image is predicted as its 8-bit equivalent, the CMYK one as its RGB conversion
    gray8 = np.asarray(Image.open(good[1]), dtype=np.uint16) // 257
    np.testing.assert_array_equal(seg(gray8.astype(np.uint8)), np.asarray(Image.open(out / "gray16_labels.png")))
    np.testing.assert_array_equal(seg(np.asarray(Image.open(good[2]).convert("RGB"))),
                                  np.asarray(Image.open(out / "cmyk_labels.png")))
    assert load_image(good[1]).max() > 200  # scaled, not truncated to the low byte


def test_predict_all_good_exit_zero_via_main(images, tmp_path, monkeypatch, capsys):
    from segret_zoo.cli import main

    good, _ = images
    monkeypatch.setattr(infer_cli, "load_model", lambda *a, **k: tiny_segret())
    rc = main(["predict", str(good[0]), str(good[2]), "--model", "segret_tiny", "--out", str(tmp_path / "o"),
               "--tta", "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "cmyk.json", "cmyk_labels.png", "cmyk_overlay.png", "photo.json", "photo_labels.png", "photo_overlay.png"]


def test_predict_user_errors(tmp_path, monkeypatch, capsys):
    from segret_zoo.cli import main

    monkeypatch.setattr(infer_cli, "load_model", lambda *a, **k: tiny_segret())
    (tmp_path / "empty_dir").mkdir()
    assert main(["predict", str(tmp_path / "empty_dir"), "--model", "m", "--out", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    if not torch.cuda.is_available():
        Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
        assert main(["predict", str(tmp_path / "a.png"), "--model", "m", "--out", str(tmp_path / "o"),
                     "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_export_onnx_cli_with_check(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_load(spec, checkpoint=None, num_classes=None, pretrained=None):
        seen.update(spec=spec, num_classes=num_classes, pretrained=pretrained)
        return tiny_segret(num_classes=num_classes or 5)

    monkeypatch.setattr(infer_cli, "load_model", fake_load)
    out = tmp_path / "m.onnx"
    rc = run(["export-onnx", "--model", "segret_tiny", str(out), "--num-classes", "7", "--opset", "18",
              "--exporter", "legacy", "--check", "--check-shape", "1x3x64x64", "--check-shape", "2x3x48x80"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert seen == {"spec": "segret_tiny", "num_classes": 7, "pretrained": False}
    assert "randomly initialized" in text.err
    assert "parity 1x3x64x64" in text.out and "parity 2x3x48x80" in text.out
    graph = onnx.load(str(out)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"pixel_values": np.zeros((3, 3, 40, 56), np.float32)})[0].shape == (3, 7, 40, 56)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # refused by the option's type, before any model is built
        run(["export-onnx", "--model", "segret_tiny", str(out), "--opset", "13"])
    assert "argument --opset: must be an integer at least 17, got 13" in capsys.readouterr().err


def test_predict_and_export_from_a_saved_model_folder(tmp_path, capsys):
    """End to end through the real model loading (no monkeypatch): a save_pretrained folder as --model."""
    from segret_zoo.cli import main

    model = tiny_segret(num_classes=4, seed=3)
    model.save_pretrained(tmp_path / "saved")
    Image.fromarray(random_image(48, 64, seed=4)).save(tmp_path / "a.png")
    rc = main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "saved"), "--out", str(tmp_path / "o"),
               "--quiet", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    reloaded = load_model(str(tmp_path / "saved"))
    assert reloaded.num_classes == 4
    expected = Segmenter(reloaded)(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "a_labels.png")), expected)
    assert json.loads((tmp_path / "o" / "a.json").read_text())["classes"][0]["name"].startswith("thing")
