"""create_model / list_models / list_pretrained: names, tags, pretrained configs, backbone weights."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from segret_zoo.errors import WeightsNotFoundError
from segret_zoo.factory import create_model, list_models, list_pretrained, parse_model_name
from segret_zoo.hub.download import seed_hub_cache

VECTORS = Path(__file__).resolve().parent / "data" / "reference" / "vectors"
MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
# the reference "mini" RMT (vectors/rmt_mini_config.json) in this project's constructor arguments
REF_MINI = dict(embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), heads_ranges=(4, 4, 6, 6),
                mlp_ratios=(3, 3, 3, 3), decomposed=(True, False, True, False),
                layer_scale=(False, True, False, True), init_values=(2, 2, 2, 2))

torch.set_num_threads(1)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_listing():
    assert list_models() == ["segret_tiny", "segret_small", "segret_base", "segret_large"]
    assert list_models("*large") == ["segret_large"]
    assert len(list_pretrained()) == 12 and list_pretrained()[:3] == [
        "segret_tiny.ade20k", "segret_tiny.cityscapes", "segret_tiny.cocostuff"]
    assert list_pretrained("*.cityscapes") == [f"segret_{s}.cityscapes" for s in ("tiny", "small", "base", "large")]
    assert list_models(pretrained=True) == list_pretrained()


@pytest.mark.parametrize("name, classes, scale, divisor, crop, first", [
    ("segret_tiny.ade20k", 150, (2048, 512), 32, (512, 512), "wall"),
    ("segret_small.cityscapes", 19, (2048, 1024), None, (512, 1024), "road"),
    ("segret_base.cocostuff", 171, (2048, 512), 32, (512, 512), "person"),
    ("segret_large.ade20k", 150, (2048, 640), 32, (640, 640), "wall"),  # the large model's ADE20K config
])
def test_pretrained_cfg_per_tag(name, classes, scale, divisor, crop, first, monkeypatch):
    monkeypatch.delenv("SEGRET_ZOO_HF_ORG", raising=False)
    model = create_model(name, device="meta")
    arch, tag = name.split(".")
    cfg = model.pretrained_cfg
    assert model.num_classes == classes and model.id2label[0] == first and len(model.id2label) == classes
    assert cfg["hf_hub_id"] == f"segret-zoo/{arch.replace('_', '-')}-{tag}"
    assert cfg["hf_hub_filename"] == "model.safetensors"
    assert cfg["test_scale"] == scale and cfg["crop_size"] == crop and cfg["dataset"] == tag
    assert cfg["test_size_divisor"] == divisor and cfg["test_mode"] == "whole"  # the authors' test pipelines
    assert cfg["stride"] == tuple(round(c * 2 / 3) for c in crop)
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406)) and cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    assert cfg["license"] and cfg["id2label"] == model.id2label and cfg["num_classes"] == classes
    assert cfg["architecture"] == arch


def test_default_tag_org_and_num_classes(monkeypatch):
    monkeypatch.setenv("SEGRET_ZOO_HF_ORG", "my-mirror")
    model = create_model("segret_tiny", device="meta")
    assert model.pretrained_cfg["dataset"] == "ade20k" and model.num_classes == 150
    assert model.pretrained_cfg["hf_hub_id"] == "my-mirror/segret-tiny-ade20k"
    seven = create_model("segret_tiny", num_classes=7, device="meta")
    assert seven.num_classes == 7 and seven.id2label == {i: f"class_{i}" for i in range(7)}
    named = create_model("segret_tiny", num_classes=2, id2label={0: "bg", 1: "fg"}, device="meta")
    assert named.pretrained_cfg["id2label"] == {0: "bg", 1: "fg"}


def test_name_parsing_and_errors():
    assert parse_model_name("segret_tiny", True) == ("segret_tiny", "ade20k")
    assert parse_model_name("segret_tiny", False) == ("segret_tiny", None)
    assert parse_model_name("segret_tiny", "cocostuff") == ("segret_tiny", "cocostuff")
    assert parse_model_name("segret_tiny", "segret_tiny.cityscapes") == ("segret_tiny", "cityscapes")
    assert parse_model_name("segret_base.cityscapes", True) == ("segret_base", "cityscapes")
    with pytest.raises(ValueError, match="Did you mean 'segret_tiny'"):
        create_model("segret_tiyn")
    with pytest.raises(ValueError, match="unknown pretrained tag 'voc'.*ade20k, cityscapes, cocostuff"):
        create_model("segret_tiny", pretrained="voc")
    with pytest.raises(ValueError, match="conflicting tags"):
        create_model("segret_tiny.ade20k", pretrained="cityscapes")
    with pytest.raises(ValueError, match="names another model"):
        create_model("segret_tiny", pretrained="segret_small.ade20k")


def test_kwargs_reach_the_model():
    model = create_model("segret_tiny", backbone=MINI, decoder_channels=32, decoder_dropout=0.0, drop_path_rate=0.1)
    assert model.decoder.channels == 32 and model.decoder.dropout.p == 0.0
    assert model.training  # timm convention: created models are in training mode


def _with_extra_norms(feats, official):
    """The RMT segmentation backbone's per-stage LayerNorms (which SegRet does not have) on raw stage outputs."""
    out = []
    for i, f in enumerate(feats):
        w, b = official[f"extra_norms.{i}.weight"], official[f"extra_norms.{i}.bias"]
        out.append(torch.nn.functional.layer_norm(f.permute(0, 2, 3, 1), w.shape, w, b, 1e-5).permute(0, 3, 1, 2))
    return out


# the ImageNet RMT's encoder options, so that its reference features can be checked through SegRet
IMAGENET_ENCODER = dict(use_rot_pos_emb=True, use_mlp_dwconv=True)


def test_pretrained_backbone_official_segmentation_layout():
    """The official mmseg RMT backbone loads through pretrained_backbone= and reproduces its reference
    features (its per-stage norms, which SegRet has no place for, are dropped and applied here)."""
    path = VECTORS / "rmt_mini_seg_official.safetensors"
    with pytest.warns(UserWarning, match=r"dropping 8 tensors.*feature_norms"):
        model = create_model("segret_tiny", backbone=REF_MINI, backbone_kwargs=IMAGENET_ENCODER, decoder_channels=32,
                             pretrained_backbone=path).eval()
    io = load_file(VECTORS / "rmt_mini_io.safetensors")
    with torch.no_grad():
        feats = _with_extra_norms(model.forward_features(io["input"]), load_file(path))
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, io[f"seg_feature{i}"], atol=1e-4, rtol=0)


def test_pretrained_backbone_project_layout_and_folder(tmp_path):
    source = create_model("segret_tiny", backbone=MINI, decoder_channels=32)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    own = source.state_dict()
    rmt = {k[len("encoder."):]: v.contiguous() for k, v in own.items() if k.startswith("encoder.")}
    (tmp_path / "rmt").mkdir()
    save_file(rmt, tmp_path / "rmt" / "model.safetensors")
    for where in (tmp_path / "rmt" / "model.safetensors", tmp_path / "rmt"):
        model = create_model("segret_tiny", backbone=MINI, decoder_channels=32, pretrained_backbone=where)
        loaded = model.state_dict()
        for key, value in own.items():
            if key.startswith("encoder."):
                assert torch.equal(loaded[key], value), key
        assert not torch.equal(loaded["decoder.classifier.weight"], own["decoder.classifier.weight"])


def test_pretrained_backbone_from_hub_cache(offline_cache, tmp_path):
    """pretrained_backbone=True reads the rmt_*.in1k repo named by timm's pretrained_cfg (full-size rmt_t)."""
    import timm
    from timm.models import get_pretrained_cfg

    rmt = timm.create_model("rmt_t")
    folder = tmp_path / "rmt_t"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in rmt.state_dict().items()}, folder / "model.safetensors")
    seed_hub_cache(folder, get_pretrained_cfg("rmt_t.in1k").hf_hub_id)
    model = create_model("segret_tiny", pretrained_backbone=True)
    expected = rmt.state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_pretrained_backbone_true_offline_without_cache(offline_cache):
    with pytest.raises(WeightsNotFoundError, match=r"rmt_t\.in1k.*segret-zoo convert-rmt"):
        create_model("segret_tiny", pretrained_backbone=True, device="meta")
    with pytest.raises(ValueError, match="registered backbone"):
        create_model("segret_tiny", backbone=MINI, pretrained_backbone=True)


def test_full_weights_supersede_backbone_weights(offline_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGRET_ZOO_HF_ORG", "testorg")
    create_model("segret_tiny", backbone=MINI, decoder_channels=32).save_pretrained(tmp_path / "m")
    seed_hub_cache(tmp_path / "m", "testorg/segret-tiny-ade20k")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        create_model("segret_tiny", pretrained=True, pretrained_backbone=True, backbone=MINI, decoder_channels=32)
    assert any("pretrained_backbone is ignored" in str(w.message) for w in record)


def test_hf_hub_name_without_pretrained_builds_from_config_only(offline_cache, tmp_path):
    saved = create_model("segret_tiny.cityscapes", backbone=MINI, decoder_channels=32)
    saved.save_pretrained(tmp_path / "m")
    seed_hub_cache(tmp_path / "m", "someone/city")
    model = create_model("hf-hub:someone/city")
    assert model.num_classes == 19 and model.id2label[0] == "road" and model.decoder.channels == 32
    assert not torch.equal(model.state_dict()["decoder.classifier.weight"],
                           saved.state_dict()["decoder.classifier.weight"])  # random init, no weights fetched
    with pytest.raises(ValueError, match="a tag cannot be combined"):
        create_model("hf-hub:someone/city", pretrained="ade20k")


def test_pretrained_backbone_true_downloads_from_the_configured_org(offline_cache, tmp_path, monkeypatch):
    """SEGRET_ZOO_HF_ORG names the org of the rmt_*.in1k repos too, not only of the SegRet repos."""
    import timm

    monkeypatch.setenv("SEGRET_ZOO_HF_ORG", "my-mirror")
    rmt = timm.create_model("rmt_t")
    with torch.no_grad():
        for p in rmt.parameters():
            p.normal_()
    folder = tmp_path / "rmt_t"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in rmt.state_dict().items()}, folder / "model.safetensors")
    seed_hub_cache(folder, "my-mirror/rmt_t.in1k")  # only the mirror has it; segret-zoo/rmt_t.in1k is not cached
    model = create_model("segret_tiny", pretrained_backbone=True)
    expected = rmt.state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_untagged_model_of_another_class_count_names_no_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGRET_ZOO_HF_ORG", raising=False)
    model = create_model("segret_tiny", num_classes=19, backbone=MINI, decoder_channels=32)
    cfg = model.pretrained_cfg
    assert cfg["dataset"] is None and cfg["dataset_name"] is None and cfg["reduce_zero_label"] is False
    assert cfg["hf_hub_id"] is None and cfg["paper_miou"] is None and cfg["tag"] is None
    assert model.id2label == {i: f"class_{i}" for i in range(19)}
    model.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "predicting 19 classes." in card and "ade20k" not in card.lower() and "paper reports" not in card
    config = (tmp_path / "m" / "config.json").read_text()
    assert '"reduce_zero_label": false' in config and "ade20k" not in config
    # a tag (or pretrained=True) keeps its dataset's metadata, whatever the class count
    tagged = create_model("segret_tiny.ade20k", num_classes=19, device="meta")
    assert tagged.pretrained_cfg["dataset"] == "ade20k" and tagged.pretrained_cfg["reduce_zero_label"] is True
    assert tagged.pretrained_cfg["hf_hub_id"] == "segret-zoo/segret-tiny-ade20k"
    city = create_model("segret_tiny", pretrained=False, num_classes=19, device="meta")
    assert city.pretrained_cfg["dataset"] is None
