"""RMT reproduces the official implementation: reference outputs, checkpoint layouts, conversion."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import segret_zoo  # noqa: F401  (registers rmt_*)
from segret_zoo.hub.weights import read_state_dict
from segret_zoo.models.rmt import RMT, checkpoint_filter_fn, remap_official_state_dict
from segret_zoo.models.segret import SegRet
from tests.official_layout import randomize_, to_official

VARIANTS = ("rmt_t", "rmt_s", "rmt_b", "rmt_l")


def _official_keys(reference_dir: Path, name: str) -> dict:
    rows = (reference_dir / "keys" / name).read_text().splitlines()
    return {r.split("\t")[0]: tuple(int(s) for s in r.split("\t")[1].strip("[]").split(",") if s.strip())
            for r in rows}


def test_mini_classification_logits_match_reference(reference_dir, mini_config):
    model = RMT(**mini_config).eval()
    official = load_file(reference_dir / "vectors" / "rmt_mini_cls_official.safetensors")
    model.load_state_dict(checkpoint_filter_fn(official, model), strict=True)
    io = load_file(reference_dir / "vectors" / "rmt_mini_io.safetensors")
    with torch.no_grad():
        logits = model(io["input"])
    assert (logits - io["cls_logits"]).abs().max() <= 1e-4


def test_mini_segmentation_features_match_reference(reference_dir, mini_config):
    backbone = {k: v for k, v in mini_config.items() if k not in ("num_classes", "head_hidden_size")}
    model = SegRet(backbone=backbone, num_classes=3).eval()
    missing = model.load_backbone(read_state_dict(reference_dir / "vectors" / "rmt_mini_seg_official.safetensors"))
    assert missing == []  # encoder and per-stage norms all came from the checkpoint
    io = load_file(reference_dir / "vectors" / "rmt_mini_io.safetensors")
    with torch.no_grad():
        feats = model.forward_features(io["input"])
    for i, f in enumerate(feats):
        ref = io[f"seg_feature{i}"]
        assert f.shape == ref.shape
        assert (f - ref).abs().max() <= 1e-4, f"stage {i}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_matches_official_key_listings(reference_dir, variant):
    """Every official key and shape maps onto this project's model (classification and segmentation)."""
    model = timm.create_model(variant, device="meta")
    ours = model.state_dict()
    cls_keys = _official_keys(reference_dir, f"{variant}_in1k_official.txt")
    official = to_official(model, ours)
    assert {k: tuple(v.shape) for k, v in official.items()} == cls_keys
    seg_keys = _official_keys(reference_dir, f"{variant}_seg_backbone_official.txt")
    norms = {f"feature_norms.{i}.{p}": torch.empty(d, device="meta")
             for i, d in enumerate(model.embed_dims) for p in ("weight", "bias")}
    seg = to_official(model, {**ours, **norms}, seg=True)
    assert {k: tuple(v.shape) for k, v in seg.items()} == {
        k: v for k, v in seg_keys.items() if ".Relpos." not in k} | {
        k: v for k, v in seg_keys.items() if ".Relpos." in k}
    # and back: the official layout converts to exactly our keys and shapes
    back = remap_official_state_dict(official)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_official_checkpoint_round_trip_is_lossless(tmp_path):
    model = timm.create_model("rmt_t", num_classes=7).eval()
    randomize_(model)
    official = to_official(model, model.state_dict())
    # the released .pth layout: dict under "model" (and "model_ema"), DDP "module." prefix
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "model_ema": official},
               tmp_path / "rmt_t.pth")
    loaded = timm.create_model("rmt_t", num_classes=7, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "rmt_t.pth"), num_classes=7)).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(1, 3, 75, 99)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_of_another_variant_is_named(tmp_path):
    small = timm.create_model("rmt_s", device="meta")
    official = to_official(small, {k: torch.zeros(v.shape) for k, v in small.state_dict().items()})
    torch.save({"model": official}, tmp_path / "rmt_s.pth")
    with pytest.raises(ValueError, match="checkpoint is for rmt_s but the model is rmt_t"):
        timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "rmt_s.pth")))
    seg = SegRet("rmt_t", num_classes=4)
    with pytest.raises(ValueError, match="rmt_s.*rmt_t"):
        seg.load_backbone(read_state_dict(tmp_path / "rmt_s.pth"))


def test_segmentation_backbone_checkpoint_loads_norms_into_segret(tmp_path):
    donor = SegRet("rmt_t", num_classes=4).eval()
    randomize_(donor)
    enc = {**donor.encoder.state_dict(),
           **{f"feature_norms.{k}": v for k, v in donor.feature_norms.state_dict().items()}}
    ckpt = to_official(donor.encoder, enc, seg=True)
    ckpt["decode_head.conv_seg.weight"] = torch.zeros(4, 8, 1, 1)  # mmseg extras are ignored
    save_file(ckpt, tmp_path / "seg.safetensors")
    model = SegRet("rmt_t", num_classes=4).eval()
    assert model.load_backbone(read_state_dict(tmp_path / "seg.safetensors")) == []
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model.forward_features(x), donor.forward_features(x)):
            assert torch.equal(a, b)


def test_bad_input_names_expected_and_received_shape():
    model = timm.create_model("rmt_t", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"4-D image batch B x 3 x H x W.*\[64, 64\]"):
        model(torch.randn(64, 64))
    with pytest.raises(ValueError, match=r"3 input channels.*\[1, 4, 64, 64\]"):
        model(torch.randn(1, 4, 64, 64))


def test_pretrained_without_weights_fails_fast_with_instructions(monkeypatch, tmp_path):
    # timm fetches through huggingface_hub, which reads HF_HUB_OFFLINE / HF_HUB_CACHE when it is
    # imported: set its constants as a user's environment would have set them at start-up
    from huggingface_hub import constants

    monkeypatch.delenv("SEGRET_ZOO_HF_ORG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    # FileNotFoundError: what timm users catch (the zoo's WeightsNotFoundError is one too)
    with pytest.raises(FileNotFoundError, match="convert-rmt") as err:
        timm.create_model("rmt_t", pretrained=True)
    assert time.monotonic() - start < 10
    assert "segret-zoo/rmt_t.in1k" in str(err.value) and "not on the Hub yet" in str(err.value)


def test_convert_cli_writes_a_loadable_folder(tmp_path):
    from segret_zoo.cli import main

    model = timm.create_model("rmt_t").eval()
    randomize_(model, seed=3)
    torch.save({"model_ema": to_official(model, model.state_dict()), "epoch": 1}, tmp_path / "RMT-T.pth")
    assert main(["convert-rmt", str(tmp_path / "RMT-T.pth"), str(tmp_path / "out"), "--ema"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    loaded = timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(
        file=str(tmp_path / "out" / "model.safetensors"))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert main(["convert-rmt", str(tmp_path / "missing.pth"), str(tmp_path / "o2")]) == 2
