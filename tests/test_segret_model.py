"""SegRet: sizes, the ZIR decoder against its equations, folding, BatchNorm freezing, config."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segret_zoo.models.segret import SegRet
from tests.conftest import TINY_BACKBONE

# (backbone, C, total params M, decoder params M) with 150 classes: the SegRet paper's Table of variants
SIZES = [("rmt_t", 256, 13.58, 0.795), ("rmt_s", 256, 26.21, 0.795),
         ("rmt_b", 256, 53.46, 0.852), ("rmt_l", 512, 96.37, 2.589)]


@pytest.mark.parametrize("backbone,channels,total,decoder", SIZES)
def test_parameter_counts(backbone, channels, total, decoder):
    model = SegRet(backbone, num_classes=150, decoder_channels=channels, device="meta")
    n_total = sum(p.numel() for p in model.parameters()) / 1e6
    n_dec = sum(p.numel() for p in model.decoder.parameters()) / 1e6
    assert abs(n_total - total) / total < 0.005
    assert abs(n_dec - decoder) / decoder < 0.005


def _randomize_decoder(model: SegRet) -> None:
    g = torch.Generator().manual_seed(1)
    dec = model.decoder
    with torch.no_grad():
        for conv in dec.zir:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        dec.fuse_norm.running_mean.copy_(torch.randn(dec.channels, generator=g))
        dec.fuse_norm.running_var.copy_(torch.rand(dec.channels, generator=g) + 0.5)
        dec.fuse_norm.weight.copy_(torch.randn(dec.channels, generator=g))
        dec.fuse_norm.bias.copy_(torch.randn(dec.channels, generator=g))


def _decoder_by_the_equations(model: SegRet, feats):
    """The SegRet paper's decoder equations written out literally: F'_i = Lin_i(f) + Z_i(f); concat of upsampled; fuse; classify."""
    dec = model.decoder
    size = feats[0].shape[-2:]
    levels = []
    for lin, z, f in zip(dec.linears, dec.zir, feats):
        fi = torch.einsum("bdhw,cd->bchw", f, lin.weight[:, :, 0, 0]) + lin.bias[:, None, None]
        zi = torch.einsum("bdhw,cd->bchw", f, z.weight[:, :, 0, 0]) + z.bias[:, None, None]
        levels.append(F.interpolate(fi + zi, size=size, mode="bilinear", align_corners=False))
    m = torch.cat(levels, 1)
    y = torch.einsum("bkhw,ck->bchw", m, dec.fuse_conv.weight[:, :, 0, 0])
    bn = dec.fuse_norm
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    y = F.relu(y * bn.weight[:, None, None] + bn.bias[:, None, None])
    return torch.einsum("bchw,kc->bkhw", y, dec.classifier.weight[:, :, 0, 0]) + dec.classifier.bias[:, None, None]


def test_forward_matches_equations_at_any_size(tiny_segret):
    model = tiny_segret.eval()
    _randomize_decoder(model)
    x = torch.randn(2, 3, 83, 121)
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = F.interpolate(_decoder_by_the_equations(model, feats), size=(83, 121), mode="bilinear",
                                 align_corners=False)
        out = model(x)
    assert out.shape == (2, 5, 83, 121)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_features_are_layer_normed_encoder_stages(tiny_segret):
    model = tiny_segret.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = model.encoder.forward_intermediates(x, intermediates_only=True)
        feats = model.forward_features(x)
    for norm, r, f in zip(model.feature_norms, raw, feats):
        expected = F.layer_norm(r.permute(0, 2, 3, 1), r.shape[1:2], norm.weight, norm.bias, 1e-5)
        torch.testing.assert_close(f, expected.permute(0, 3, 1, 2))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_zir_paths_start_at_zero_and_train(tiny_segret):
    model = tiny_segret
    assert all(torch.count_nonzero(p) == 0 for z in model.decoder.zir for p in z.parameters())
    model.train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert all(z.weight.grad.abs().sum() > 0 for z in model.decoder.zir)


def test_fuse_zir_is_exact_and_smaller(tiny_segret):
    model = tiny_segret.eval()
    _randomize_decoder(model)
    x = torch.randn(2, 3, 70, 90)
    n_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        before = model(x)
        model.fuse_zir()
        after = model(x)
    assert (before - after).abs().max() <= 1e-5
    assert sum(p.numel() for p in model.parameters()) < n_before
    assert model.config["zir_fused"] is True
    model.fuse_zir()  # idempotent
    with torch.no_grad():
        assert torch.equal(model(x), after)


def test_backbone_batchnorm_stays_in_eval_mode(tiny_segret):
    model = tiny_segret.train()
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.decoder.fuse_norm.training
    stats = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(bns[0].running_mean, stats)
    free = SegRet(TINY_BACKBONE, num_classes=5, decoder_channels=32, freeze_backbone_bn=False).train()
    assert all(m.training for m in free.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_config_round_trip_rebuilds_same_architecture(tiny_segret):
    labels = {i: f"c{i}" for i in range(5)}
    model = SegRet(TINY_BACKBONE, num_classes=5, decoder_channels=32, id2label=labels)
    clone = SegRet.from_config(model.config)
    assert clone.config == model.config
    assert clone.load_state_dict(model.state_dict()) is not None
    assert clone.id2label == labels and model.pretrained_cfg["id2label"] == labels


def test_reset_classifier_and_bad_arguments(tiny_segret):
    tiny_segret.reset_classifier(3, {0: "a", 1: "b", 2: "c"})
    assert tiny_segret(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown backbone 'rmt_x'"):
        SegRet("rmt_x")
    with pytest.raises(ValueError, match="id2label must name classes 0..2"):
        SegRet(TINY_BACKBONE, num_classes=3, id2label={0: "a"})
    with pytest.raises(ValueError, match="4-D image batch"):
        tiny_segret(torch.randn(3, 32, 32))
