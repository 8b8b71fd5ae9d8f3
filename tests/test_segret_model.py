"""SegRet as released: sizes, the decoder against its equations, folding, BatchNorms, config."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F

from segret_zoo.models.decoder import FoldedZIRDecoder
from segret_zoo.models.segret import SEGRET_VARIANTS, SegRet
from tests.conftest import REFERENCE, TINY_BACKBONE

SEGRET_REF = REFERENCE / "segret"
SHORT = {"segret_tiny": "t", "segret_small": "s", "segret_base": "b", "segret_large": "l"}


def _official_listing(variant: str) -> dict:
    """name -> shape of the released checkpoint of ``variant`` (150 classes)."""
    rows = (SEGRET_REF / "keys" / f"segret_{SHORT[variant]}_ade20k_official.txt").read_text().splitlines()
    return {name: json.loads(shape) for name, shape, _ in (row.split("\t") for row in rows)}


@pytest.mark.parametrize("variant", list(SEGRET_VARIANTS))
def test_parameter_counts_equal_the_released_models_less_conv_seg(variant):
    """The official count (param_counts.json) minus the unused conv_seg, to the parameter."""
    official = json.loads((SEGRET_REF / "param_counts.json").read_text())[f"segret_{SHORT[variant]}"]
    listing = _official_listing(variant)
    conv_seg = sum(torch.Size(listing[f"decode_head.conv_seg.{p}"]).numel() for p in ("weight", "bias"))
    model = SegRet(**SEGRET_VARIANTS[variant], num_classes=150, device="meta")
    assert sum(p.numel() for p in model.parameters()) == official - conv_seg


@pytest.mark.parametrize("variant", list(SEGRET_VARIANTS))
def test_released_layout_converts_to_exactly_this_model(variant):
    """Every tensor of a released checkpoint finds its place, with its shape; nothing is left over."""
    listing = _official_listing(variant)
    official = {k: torch.zeros(shape) for k, shape in listing.items()}
    model = SegRet(**SEGRET_VARIANTS[variant], num_classes=150, device="meta")
    converted = SegRet.checkpoint_layouts()["official SegRet (mmsegmentation 0.x)"](official, None)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    used = {k for k in listing if "conv_seg" not in k and ".Relpos." not in k}
    assert len(used) - sum("q_proj" in k or "k_proj" in k for k in used) == len(own)  # q/k/v become one qkv


def test_encoder_options_are_the_released_ones_and_rmt_stays_imagenet():
    model = SegRet(TINY_BACKBONE, num_classes=5, decoder_channels=32)
    assert model.config["backbone_kwargs"] == {"use_rot_pos_emb": False, "use_mlp_dwconv": False}
    assert not any(".mlp.dwconv." in k for k in model.state_dict())
    assert not any(b.attn.rotary for s in model.encoder.stages for b in s.blocks)
    rmt = timm.create_model("rmt_t", device="meta")
    assert all(b.attn.rotary and b.mlp.dwconv is not None for s in rmt.stages for b in s.blocks)


def _randomize(model: SegRet, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _decoder_by_the_equations(model: SegRet, feats):
    """SegFormerHeadWithRes written out: r_i = ReLU(Lin_i f + BN_i(Z_i f)); concat(u4, u3, u2, u1); fuse; classify."""
    dec = model.decoder
    size = feats[0].shape[-2:]

    def bn(x, norm):
        x = (x - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        return x * norm.weight[:, None, None] + norm.bias[:, None, None]

    levels = []
    for level, f in zip(dec.levels, feats):
        lin = torch.einsum("bdhw,cd->bchw", f, level.linear.weight[:, :, 0, 0]) + level.linear.bias[:, None, None]
        z = torch.einsum("bdhw,cd->bchw", f, level.zir_conv.weight[:, :, 0, 0]) + level.zir_conv.bias[:, None, None]
        r = torch.relu(lin + bn(z, level.zir_norm))
        levels.append(F.interpolate(r, size=size, mode="bilinear", align_corners=False))
    m = torch.cat(levels[::-1], 1)
    y = torch.relu(bn(torch.einsum("bkhw,ck->bchw", m, dec.fuse_conv.weight[:, :, 0, 0]), dec.fuse_norm))
    return torch.einsum("bchw,kc->bkhw", y, dec.classifier.weight[:, :, 0, 0]) + dec.classifier.bias[:, None, None]


def test_forward_matches_equations_at_any_size(tiny_segret):
    model = tiny_segret.eval()
    _randomize(model)
    x = torch.randn(2, 3, 83, 121)
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = F.interpolate(_decoder_by_the_equations(model, feats), size=(83, 121), mode="bilinear",
                                 align_corners=False)
        out = model(x)
    assert out.shape == (2, 5, 83, 121)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_features_are_the_raw_stage_outputs(tiny_segret):
    model = tiny_segret.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = model.encoder.forward_intermediates(x, intermediates_only=True)
        feats = model.forward_features(x)
    for r, f in zip(raw, feats):
        assert torch.equal(r, f)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_zir_paths_start_at_zero_and_train(tiny_segret):
    model = tiny_segret
    assert all(torch.count_nonzero(p) == 0 for level in model.decoder.levels for p in level.zir_conv.parameters())
    model.train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert all(level.zir_conv.weight.grad.abs().sum() > 0 for level in model.decoder.levels)


def test_fuse_zir_is_exact_smaller_and_trainable(tiny_segret):
    model = tiny_segret.eval()
    _randomize(model)
    x = torch.randn(2, 3, 70, 90)
    n_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        before = model(x)
        model.fuse_zir()
        after = model(x)
    assert isinstance(model.decoder, FoldedZIRDecoder)
    assert (before - after).abs().max() <= 1e-5 * before.abs().max()
    assert sum(p.numel() for p in model.parameters()) < n_before
    assert model.config["zir_fused"] is True
    model.fuse_zir()  # idempotent
    with torch.no_grad():
        assert torch.equal(model(x), after)
    # with autograd on (no torch.no_grad): same values, and gradients reach every folded weight
    out = model(x)
    torch.testing.assert_close(out, after)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_all_batchnorms_train_by_default(tiny_segret):
    """The official training has no frozen norm_eval: the encoder's BatchNorms update their statistics."""
    model = tiny_segret.train()
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training for m in bns)
    stats = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(bns[0].running_mean, stats)
    frozen = SegRet(TINY_BACKBONE, num_classes=5, decoder_channels=32, freeze_backbone_bn=True).train()
    assert not any(m.training for m in frozen.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(m.training for m in frozen.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_config_round_trip_rebuilds_same_architecture():
    labels = {i: f"c{i}" for i in range(5)}
    model = SegRet(TINY_BACKBONE, num_classes=5, decoder_channels=32, id2label=labels)
    clone = SegRet.from_config(model.config)
    assert clone.config == model.config
    assert clone.load_state_dict(model.state_dict()) is not None
    assert clone.id2label == labels and model.pretrained_cfg["id2label"] == labels
    rotary = SegRet(TINY_BACKBONE, num_classes=5, decoder_channels=32, backbone_kwargs={"use_rot_pos_emb": True})
    assert SegRet.from_config(rotary.config).encoder.stages[0].blocks[0].attn.rotary


def test_a_numpy_class_count_is_stored_as_a_plain_int_everywhere():
    """An integer from numpy (a count computed from a label array) is accepted, and the model, its config
    and its pretrained_cfg all hold the same plain int, so they compare and serialise alike."""
    import numpy as np

    model = SegRet(TINY_BACKBONE, num_classes=np.int64(5), decoder_channels=32)
    for value in (model.num_classes, model.config["num_classes"], model.pretrained_cfg["num_classes"]):
        assert type(value) is int and value == 5
    assert sorted(model.id2label) == [0, 1, 2, 3, 4]


def test_reset_classifier_and_bad_arguments(tiny_segret):
    tiny_segret.reset_classifier(3, {0: "a", 1: "b", 2: "c"})
    assert tiny_segret.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="SegRet: backbone is 'rmt_x', expected one of \"rmt_t\""):
        SegRet("rmt_x")
    with pytest.raises(ValueError, match="num_classes is 3 but id2label names 1 class, expected one name for each "
                                         "class id from 0 to 2"):
        SegRet(TINY_BACKBONE, num_classes=3, id2label={0: "a"})
    with pytest.raises(ValueError, match="id2label has no name for class 2"):
        SegRet(TINY_BACKBONE, num_classes=3, id2label={0: "a", 1: "b", 3: "c"})
    with pytest.raises(ValueError, match="4-D image batch"):
        tiny_segret(torch.randn(3, 32, 32))
