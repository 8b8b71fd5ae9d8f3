"""The ZIR decoder: per-stage linear projections with zero-initialized residual paths.

For each encoder stage feature ``f_i`` (``d_i`` channels)::

    F'_i = Linear_i(f_i) + Z_i(f_i)             # Z_i: 1x1 conv, weight and bias start at 0
    M    = concat_i(upsample(F'_i, to stride 4))  # 4C channels
    y    = ReLU(BN(conv1x1(M, 4C -> C)))
    out  = conv1x1(dropout(y), C -> num_classes)  # logits at stride 4

Every step up to the BatchNorm is linear, and bilinear upsampling commutes with 1x1 convs, so
for inference :meth:`ZIRDecoder.fuse` folds ``Z_i`` into ``Linear_i``, the ``i``-th share of the fuse
conv and the BatchNorm into one ``d_i -> C`` conv per stage applied *before* upsampling: the
stride-32 map is projected at 1/64 of the pixels, and no ``4C``-channel tensor is ever built.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZIRDecoder"]


def _upsample_into(x: torch.Tensor, size: List[int], out: Optional[torch.Tensor]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) to ``size``, written into ``out`` when one is given
    (eager): the folded decoder reuses one stride-4 buffer for its three levels instead of a fresh one
    each (134 MiB apiece at 1024 x 2048, whose pages the kernel would zero every time)."""
    if out is None or torch.jit.is_scripting() or torch.jit.is_tracing() or not _eager():
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return torch._C._nn.upsample_bilinear2d(x, size, False, None, None, out=out)


@torch.jit.unused
def _eager() -> bool:
    return not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())


class ZIRDecoder(nn.Module):
    """Lightweight all-MLP decoder with zero-initialized residual (ZIR) paths."""

    def __init__(
            self,
            in_channels: Sequence[int],
            channels: int = 256,
            num_classes: int = 150,
            dropout: float = 0.1,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_channels = tuple(in_channels)
        self.channels = channels
        self.num_classes = num_classes
        self.fused = False
        self.linears = nn.ModuleList([nn.Conv2d(d, channels, 1, **dd) for d in in_channels])
        self.zir = nn.ModuleList([nn.Conv2d(d, channels, 1, **dd) for d in in_channels])
        self.fuse_conv = nn.Conv2d(channels * len(in_channels), channels, 1, bias=False, **dd)
        self.fuse_norm = nn.BatchNorm2d(channels, **dd)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1, **dd)
        # folded per-stage projections, built by fuse()
        self.folded = nn.ModuleList()
        self.reset_zir()

    def reset_zir(self) -> None:
        """Zero the residual paths: at initialization the decoder equals the plain linear decoder."""
        for conv in self.zir:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """New classifier for another label set (keeps device and dtype)."""
        w = self.classifier.weight
        self.classifier = nn.Conv2d(self.channels, num_classes, 1, device=w.device, dtype=w.dtype)
        self.classifier.train(self.training)
        self.num_classes = num_classes

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"the decoder takes {len(self.in_channels)} feature maps, got {len(features)}")
        size = features[0].shape[-2:]
        if self.fused:
            # folded = inference only: accumulate in place (no fresh stride-4 buffer per level)
            y = self.folded[0](features[0])
            upsampled: Optional[torch.Tensor] = None
            for proj, f in zip(self.folded[1:], features[1:]):
                upsampled = _upsample_into(proj(f), size, upsampled)
                y.add_(upsampled)
            y = F.relu_(y)
        else:
            levels: List[torch.Tensor] = []
            for i, (linear, zir, f) in enumerate(zip(self.linears, self.zir, features)):
                level = linear(f) + zir(f)
                if i > 0:  # unconditional: no shape-dependent branch for torch.export / ONNX
                    level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
                levels.append(level)
            y = F.relu(self.fuse_norm(self.fuse_conv(torch.cat(levels, dim=1))))
        return self.classifier(self.dropout(y))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Fold ZIR paths, the fuse conv and the BatchNorm (running statistics) into one conv per stage.

        Exact in eval mode; afterwards the decoder is for inference (its BatchNorm is frozen into
        the weights). Idempotent. Returns ``self``: ``timm.utils.reparameterize_model`` replaces each
        child that has ``fuse()`` with what it returns.
        """
        if self.fused:
            return self
        norm = self.fuse_norm
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        fuse_w = self.fuse_conv.weight.flatten(1)  # C x 4C
        folded = nn.ModuleList()
        for i, (linear, zir) in enumerate(zip(self.linears, self.zir)):
            share = fuse_w[:, i * self.channels:(i + 1) * self.channels]  # C x C
            weight = (linear.weight + zir.weight).flatten(1)  # C x d_i
            bias = linear.bias + zir.bias
            w = scale[:, None] * (share @ weight)
            b = scale * (share @ bias)
            if i == 0:
                b = b + shift
            conv = nn.Conv2d(weight.shape[1], self.channels, 1, device=w.device, dtype=w.dtype)
            conv.weight.copy_(w[:, :, None, None])
            conv.bias.copy_(b)
            folded.append(conv)
        self.folded = folded
        del self.linears, self.zir, self.fuse_conv, self.fuse_norm
        self.linears, self.zir = nn.ModuleList(), nn.ModuleList()
        self.fuse_conv, self.fuse_norm = nn.Identity(), nn.Identity()
        self.fused = True
        return self
