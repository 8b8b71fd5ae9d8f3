"""RMT as an encoder in other libraries that build on timm: segmentation_models_pytorch ("tu-" encoders)
and transformers' TimmBackbone. Both find rmt_* in timm's registry once ``segret_zoo`` is imported."""
import pytest
import segmentation_models_pytorch as smp  # the dev extra installs both libraries
import torch
import transformers

import segret_zoo  # noqa: F401  (registers rmt_* with timm)


def _backward_reaches_encoder(loss: torch.Tensor, encoder: torch.nn.Module) -> None:
    loss.backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize("arch", ["Unet", "FPN"])
def test_smp_timm_universal_encoder(arch):
    torch.manual_seed(0)
    model = getattr(smp, arch)("tu-rmt_t", encoder_weights=None, classes=3).train()
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    _backward_reaches_encoder(out.square().mean(), model.encoder)


def test_transformers_timm_backbone():
    config = transformers.TimmBackboneConfig(backbone="rmt_t", use_pretrained_backbone=False, out_indices=(0, 1, 2, 3))
    backbone = transformers.TimmBackbone(config).train()
    assert list(backbone.channels) == [64, 128, 256, 512]
    out = backbone(torch.randn(1, 3, 64, 64))
    shapes = [tuple(f.shape) for f in out.feature_maps]
    assert shapes == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    _backward_reaches_encoder(sum(f.square().mean() for f in out.feature_maps), backbone)
