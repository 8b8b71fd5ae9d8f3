"""SegRet as released: the official code's outputs, and the authors' checkpoint files through every route."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from timm.utils import reparameterize_model

from segret_zoo.data.classes import ADE20K_CLASSES
from segret_zoo.errors import CheckpointError
from segret_zoo.factory import create_model, from_pretrained, load_model
from segret_zoo.hub.weights import load_weights, read_checkpoint
from segret_zoo.inference.fold import fold_for_inference
from segret_zoo.models.segret import SegRet
from tests.conftest import REFERENCE
from tests.official_layout import mmseg_checkpoint, randomize_, to_official, to_official_segret

VECTORS = REFERENCE / "segret" / "vectors"


def _mini() -> SegRet:
    """The reference's mini SegRet, built from its config file."""
    cfg = json.loads((VECTORS / "segret_mini_config.json").read_text())
    b, d = cfg["backbone"], cfg["decoder"]
    backbone = dict(embed_dims=b["embed_dims"], depths=b["depths"], num_heads=b["num_heads"],
                    init_values=b["init_values"], heads_ranges=b["heads_ranges"], mlp_ratios=b["mlp_ratios"],
                    decomposed=b["chunkwise_recurrents"], layer_scale=b["layerscales"],
                    layer_scale_init_value=b["layer_init_values"])
    return SegRet(backbone=backbone, num_classes=d["num_classes"], decoder_channels=d["embed_dim"],
                  decoder_dropout=d["dropout_ratio"]).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def io():
    return load_file(VECTORS / "segret_mini_io.safetensors")


@pytest.fixture(scope="module")
def official():
    model = _mini()
    load_weights(model, read_checkpoint(VECTORS / "segret_mini_official.safetensors").state_dict, source="official")
    return model


def test_official_weights_reproduce_the_official_outputs(official, io):
    """Features, stride-4 logits and logits of the official code (float64 reference), to 1e-4 relative."""
    with torch.no_grad():
        feats = official.forward_features(io["input"])
        for i, f in enumerate(feats):
            assert f.shape == io[f"backbone_feature{i}"].shape
            assert _rel(f, io[f"backbone_feature{i}"]) <= 1e-4, f"feature {i}"
        assert _rel(official.forward_head(feats), io["logits_stride4"]) <= 1e-4
        assert _rel(official(io["input"]), io["logits"]) <= 1e-4


def test_every_inference_form_reproduces_the_official_outputs(official, io):
    """fuse_zir, reparameterize_model and the predictor's fold keep the official logits (1e-4)."""
    folded = [SegRet.from_config(official.config).eval(), reparameterize_model(official),
              fold_for_inference(official)]
    folded[0].load_state_dict(official.state_dict())
    folded[0].fuse_zir()
    with torch.no_grad():
        for model in folded:
            assert model.zir_fused and _rel(model(io["input"]), io["logits"]) <= 1e-4
    assert not official.zir_fused  # folding works on copies


def test_mmseg_checkpoint_file_loads_through_the_safe_reader(official):
    """The released container (meta / state_dict / optimizer) is read with weights_only=True and the
    allowlist, its class names kept; conv_seg is dropped and q/k/v are joined."""
    checkpoint = read_checkpoint(VECTORS / "segret_mini_mmseg_checkpoint.pth")
    assert checkpoint.meta["CLASSES"] == tuple(f"class{i}" for i in range(7))
    model = _mini()
    dropped = load_weights(model, checkpoint.state_dict, source="mmseg")
    assert dropped == []
    raw = checkpoint.state_dict
    qkv = model.encoder.stages[2].blocks[1].attn.qkv.weight
    expected = torch.cat([raw[f"backbone.layers.2.blocks.1.retention.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(qkv, expected)
    assert torch.equal(model.decoder.levels[3].linear.weight[:, :, 0, 0], raw["decode_head.linear_c4.proj.weight"])
    assert torch.equal(model.decoder.classifier.weight, raw["decode_head.linear_pred.weight"])
    # this file holds the training state one AdamW step (lr 1e-4) after the .safetensors reference
    # weights: every weight within 1e-4 of them, so its outputs are not the reference vectors
    step = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(), official.state_dict().values())
               if a.is_floating_point())
    assert 0 < step


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A randomized segret_tiny written exactly as the authors' ADE20K checkpoints are (150 classes)."""
    torch.manual_seed(0)
    donor = SegRet("rmt_t", num_classes=150).eval()
    randomize_(donor)
    path = tmp_path_factory.mktemp("released") / "segret_t_ade20k.pth"
    torch.save(mmseg_checkpoint(to_official_segret(donor), ADE20K_CLASSES), path)
    return donor, path


def _same(model, donor, x) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), donor(x), rtol=0, atol=0)


def test_released_file_loads_through_every_route(released):
    donor, path = released
    x = torch.randn(1, 3, 64, 80)
    routes = {
        "create_model": create_model("segret_tiny", checkpoint_path=path),
        "create_model with its tag": create_model("segret_tiny", pretrained="ade20k", checkpoint_path=path),
        "from_pretrained": from_pretrained(path),
        "load_model + checkpoint": load_model("segret_tiny", path),
        "load_model of the file": load_model(str(path)),
    }
    for name, model in routes.items():
        assert model.num_classes == 150 and model.id2label[12] == "person", name
        assert model.pretrained_cfg["architecture"] == "segret_tiny", name
        _same(model, donor, x)


def test_released_file_of_another_variant_is_one_line(released):
    _, path = released
    with pytest.raises(CheckpointError, match="checkpoint is for rmt_t/segret_tiny, you built segret_base"):
        create_model("segret_base", checkpoint_path=path)


def test_files_of_other_models_say_what_they_are(tmp_path, released):
    import timm

    imagenet = timm.create_model("rmt_t", num_classes=10)
    torch.save({"model": to_official(imagenet, imagenet.state_dict())}, tmp_path / "RMT-T.pth")
    with pytest.raises(CheckpointError, match=r"ImageNet RMT checkpoint \(rmt_t\).*pretrained_backbone=PATH"):
        create_model("segret_tiny", checkpoint_path=tmp_path / "RMT-T.pth")
    with pytest.raises(CheckpointError, match=r"ImageNet RMT checkpoint \(rmt_t\).*--pretrained-backbone"):
        from_pretrained(tmp_path / "RMT-T.pth")
    # an mmsegmentation checkpoint with another decode head (UPerNet on the same backbone)
    _, path = released
    state = {k: v for k, v in read_checkpoint(path).state_dict.items() if k.startswith("backbone.")}
    state["decode_head.psp_modules.0.1.conv.weight"] = torch.zeros(8, 512, 1, 1)
    state["decode_head.conv_seg.weight"] = torch.zeros(150, 8, 1, 1)
    torch.save(mmseg_checkpoint(state), tmp_path / "upernet.pth")
    for call in (lambda: create_model("segret_tiny", checkpoint_path=tmp_path / "upernet.pth"),
                 lambda: from_pretrained(tmp_path / "upernet.pth")):
        with pytest.raises(CheckpointError, match="decode_head .*not SegRet's.*pretrained_backbone=PATH") as err:
            call()
        assert "\n" not in str(err.value)
    # a truncated download
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"cut.pth is not a readable checkpoint \(truncated, corrupted") as err:
        create_model("segret_tiny", checkpoint_path=tmp_path / "cut.pth")
    assert "\n" not in str(err.value)


def test_config_of_the_earlier_design_is_one_line(tmp_path, released):
    donor, _ = released
    donor.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["format_version"] = 1
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format_version 1.*earlier segret-zoo.*no weights were ever published"):
        from_pretrained(tmp_path / "old")


def test_convert_segret_writes_a_folder_ready_for_push(released, tmp_path, capsys):
    from segret_zoo.cli import main
    from segret_zoo.cli.push import verify_model_folder

    donor, path = released
    out = tmp_path / "segret-tiny-ade20k"
    assert main(["convert-segret", str(path), str(out)]) == 0
    assert f"segret-zoo push {out} segret-zoo/segret-tiny-ade20k" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "segret_tiny" and config["num_classes"] == 150
    assert config["pretrained_cfg"]["dataset"] == "ade20k" and config["id2label"]["12"] == "person"
    card = (out / "README.md").read_text()
    assert "segret_t_ade20k.pth" in card and "ZhiyuanLi218/segret" in card
    assert "48.76" in card and "paper's figures" in card and "has not measured" in card
    _same(from_pretrained(out), donor, torch.randn(1, 3, 48, 64))
    verify_model_folder(out)  # what `segret-zoo push` checks before uploading
    # the class count names the dataset; meta.CLASSES absent -> the dataset's names
    cs = SegRet("rmt_t", num_classes=19).eval()
    torch.save(mmseg_checkpoint(to_official_segret(cs)), tmp_path / "segret_t_cityscapes.pth")
    assert main(["convert-segret", str(tmp_path / "segret_t_cityscapes.pth"), str(tmp_path / "cs")]) == 0
    config = json.loads((tmp_path / "cs" / "config.json").read_text())
    assert config["pretrained_cfg"]["dataset"] == "cityscapes" and config["id2label"]["0"] == "road"
    # a --dataset that does not fit: one line, exit 2
    assert main(["convert-segret", str(path), str(tmp_path / "bad"), "--dataset", "cityscapes"]) == 2
    err = capsys.readouterr().err
    assert "predicts 150 classes but cityscapes has 19" in err and err.count("\n") == 1
