"""RMT reproduces the official implementation: reference outputs, checkpoint layouts, conversion."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import segret_zoo  # noqa: F401  (registers rmt_*)
from segret_zoo.errors import CheckpointError
from segret_zoo.factory import load_backbone
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
    """The official RMT segmentation backbone: stage outputs, then its per-stage LayerNorms (eps 1e-5)."""
    backbone = {k: v for k, v in mini_config.items() if k not in ("num_classes", "head_hidden_size")}
    model = RMT(**backbone, num_classes=0).eval()
    model.reset_classifier(0, "", reset_other=True)
    official = load_file(reference_dir / "vectors" / "rmt_mini_seg_official.safetensors")
    model.load_state_dict(checkpoint_filter_fn(official, model), strict=True)
    io = load_file(reference_dir / "vectors" / "rmt_mini_io.safetensors")
    with torch.no_grad():
        feats = model.forward_intermediates(io["input"], intermediates_only=True)
    for i, f in enumerate(feats):
        w, b = official[f"extra_norms.{i}.weight"], official[f"extra_norms.{i}.bias"]
        f = F.layer_norm(f.permute(0, 2, 3, 1), w.shape, w, b, 1e-5).permute(0, 3, 1, 2)
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
    with pytest.raises(CheckpointError, match="rmt_s.*rmt_t"):
        load_backbone(seg, tmp_path / "rmt_s.pth")


def test_official_backbones_initialise_segret_as_the_official_training_does(tmp_path):
    """An ImageNet RMT (official .pth) or the RMT mmseg backbone loads non-strictly into SegRet's encoder:
    the FFN convs, the ImageNet head and the per-stage norms are dropped, and one warning names them."""
    donor = timm.create_model("rmt_t", num_classes=10).eval()
    randomize_(donor)
    torch.save({"model": to_official(donor, donor.state_dict())}, tmp_path / "RMT-T.pth")
    norms = {f"feature_norms.{i}.{p}": torch.ones(d) for i, d in enumerate(donor.embed_dims) for p in ("weight", "bias")}
    save_file(to_official(donor, {**donor.state_dict(), **norms}, seg=True), tmp_path / "seg.safetensors")
    for path, extra in ((tmp_path / "RMT-T.pth", "head"), (tmp_path / "seg.safetensors", "feature_norms")):
        model = SegRet("rmt_t", num_classes=4)
        with pytest.warns(UserWarning, match=r"(?=.*mlp\.dwconv \(28 tensors\))(?=.*" + extra + ")") as record:
            dropped = load_backbone(model, path)
        assert len([w for w in record if "dropping" in str(w.message)]) == 1
        assert {k.split(".")[0] for k in dropped} == {"stages", extra}
        assert all(".mlp.dwconv." in k for k in dropped if k.startswith("stages"))
        theirs = donor.state_dict()
        for key, value in model.encoder.state_dict().items():
            assert torch.equal(value, theirs[key]), key


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
    assert "pretrained_cfg_overlay=dict(file=" in str(err.value)  # advice in the spelling timm users type


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
