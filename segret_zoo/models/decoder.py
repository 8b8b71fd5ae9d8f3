"""The ZIR decoder of SegRet as released: per-stage projections with zero-initialized residual paths.

For each encoder stage feature ``f_i`` (``d_i`` channels, ``i = 1..4``)::

    r_i = ReLU(Linear_i(f_i) + BN_i(Z_i(f_i)))   # Z_i: 1x1 conv whose weight and bias start at 0
    u_i = upsample(r_i, to stride 4)             # bilinear, align_corners=False
    M   = concat(u_4, u_3, u_2, u_1)             # deepest first, as the released weights expect
    y   = ReLU(BN(conv1x1(M, 4C -> C, no bias)))
    out = conv1x1(dropout(y), C -> num_classes)  # logits at stride 4

For inference, :meth:`ZIRDecoder.fuse` returns a :class:`FoldedZIRDecoder` with the same outputs:
``Linear_i``, ``Z_i`` and ``BN_i`` (running statistics) are one ``d_i -> C`` conv; after the level's
ReLU, the level's ``C x C`` share of the fuse conv and the fuse BatchNorm's scale are linear, so they
commute with bilinear upsampling and run at the level's own resolution. At stride 4 only a sum, the
BatchNorm's shift (the bias of level 1's share), a ReLU and the classifier remain: no ``4C``-channel
tensor is built.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZIRDecoder", "FoldedZIRDecoder", "ZIRLevel"]


def _upsample_into(x: torch.Tensor, size: List[int], out: Optional[torch.Tensor]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) to ``size``, written into ``out`` when one is given
    and nothing records gradients (eager inference): the folded decoder reuses one stride-4 buffer for
    its three levels instead of a fresh one each (134 MiB apiece at 1024 x 2048, whose pages the kernel
    would zero every time). With autograd on, ``out=`` has no derivative, so a fresh tensor is made."""
    if out is None or torch.is_grad_enabled() or torch.jit.is_scripting() or torch.jit.is_tracing() or not _eager():
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return torch._C._nn.upsample_bilinear2d(x, size, False, None, None, out=out)


@torch.jit.unused
def _eager() -> bool:
    return not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())


class _Head(nn.Module):
    """What both decoder forms share: the classifier at stride 4 and its replacement."""

    def reset_classifier(self, num_classes: int) -> None:
        """New classifier for another label set (keeps device and dtype)."""
        w = self.classifier.weight
        self.classifier = nn.Conv2d(self.channels, num_classes, 1, device=w.device, dtype=w.dtype)
        self.classifier.train(self.training)
        self.num_classes = num_classes


class ZIRLevel(nn.Module):
    """``ReLU(Linear(f) + BN(Z(f)))`` for one stage feature; ``Z`` starts at zero."""

    def __init__(self, in_dim: int, channels: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.linear = nn.Conv2d(in_dim, channels, 1, **dd)  # token-wise Linear on an NCHW map
        self.zir_conv = nn.Conv2d(in_dim, channels, 1, **dd)
        self.zir_norm = nn.BatchNorm2d(channels, **dd)
        self.reset_zir()

    def reset_zir(self) -> None:
        nn.init.zeros_(self.zir_conv.weight)
        nn.init.zeros_(self.zir_conv.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(f) + self.zir_norm(self.zir_conv(f)))

    @torch.no_grad()
    def folded_projection(self) -> nn.Conv2d:
        """``Linear + BN(Z)`` (running statistics) as one 1x1 conv: exact in eval mode."""
        norm = self.zir_norm
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        weight = self.linear.weight.flatten(1) + scale[:, None] * self.zir_conv.weight.flatten(1)
        bias = self.linear.bias + scale * (self.zir_conv.bias - norm.running_mean) + norm.bias
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight[:, :, None, None])
        conv.bias.copy_(bias)
        return conv


class ZIRDecoder(_Head):
    """Lightweight all-MLP decoder with zero-initialized residual (ZIR) paths (training form)."""

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
        self.levels = nn.ModuleList([ZIRLevel(d, channels, **dd) for d in in_channels])
        self.fuse_conv = nn.Conv2d(channels * len(in_channels), channels, 1, bias=False, **dd)
        self.fuse_norm = nn.BatchNorm2d(channels, **dd)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1, **dd)

    def reset_zir(self) -> None:
        """Zero the residual paths: at initialization each level is ``ReLU(Linear(f) + BN.bias)``."""
        for level in self.levels:
            level.reset_zir()

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"the decoder takes {len(self.in_channels)} feature maps, got {len(features)}")
        size = features[0].shape[-2:]
        upsampled: List[torch.Tensor] = []
        for i, (level, f) in enumerate(zip(self.levels, features)):
            r = level(f)
            if i > 0:  # unconditional: no shape-dependent branch for torch.export / ONNX
                r = F.interpolate(r, size=size, mode="bilinear", align_corners=False)
            upsampled.insert(0, r)  # deepest first
        y = F.relu(self.fuse_norm(self.fuse_conv(torch.cat(upsampled, dim=1))))
        return self.classifier(self.dropout(y))

    @torch.no_grad()
    def fuse(self) -> FoldedZIRDecoder:
        """The folded inference form (exact with the BatchNorms' running statistics).

        timm's ``reparameterize_model`` replaces each child that has ``fuse()`` with what it returns.
        """
        norm = self.fuse_norm
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        fuse_w = self.fuse_conv.weight.flatten(1)  # C x 4C, deepest level first
        n, c = len(self.levels), self.channels
        folded = FoldedZIRDecoder(self.in_channels, c, self.num_classes, self.dropout.p, device=fuse_w.device,
                                  dtype=fuse_w.dtype)
        for i, (level, out) in enumerate(zip(self.levels, folded.levels)):
            share = fuse_w[:, (n - 1 - i) * c:(n - i) * c]  # C x C
            out.proj.load_state_dict(level.folded_projection().state_dict())
            out.mix.weight.copy_((scale[:, None] * share)[:, :, None, None])
            if i == 0:
                out.mix.bias.copy_(shift)
        folded.classifier.load_state_dict(self.classifier.state_dict())
        return folded.train(self.training)


class FoldedLevel(nn.Module):
    """``mix(ReLU(proj(f)))``: one stage's folded projection and its share of the fuse conv."""

    def __init__(self, in_dim: int, channels: int, bias: bool, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.proj = nn.Conv2d(in_dim, channels, 1, **dd)
        self.mix = nn.Conv2d(channels, channels, 1, bias=bias, **dd)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mix(F.relu(self.proj(f)))


class FoldedZIRDecoder(_Head):
    """The ZIR decoder folded for inference (:meth:`ZIRDecoder.fuse`): same outputs, less work.

    Its weights are trainable (autograd works), but it has no BatchNorm and no zero-initialized path
    left: fine-tuning it is fine-tuning a plain per-level MLP decoder.
    """

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
        # level 1 (stride 4) carries the fuse BatchNorm's shift as its bias
        self.levels = nn.ModuleList([FoldedLevel(d, channels, i == 0, **dd) for i, d in enumerate(in_channels)])
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1, **dd)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"the decoder takes {len(self.in_channels)} feature maps, got {len(features)}")
        size = features[0].shape[-2:]
        y = self.levels[0](features[0])
        upsampled: Optional[torch.Tensor] = None
        for level, f in zip(self.levels[1:], features[1:]):
            upsampled = _upsample_into(level(f), size, upsampled)
            y = y.add_(upsampled)  # y is a fresh conv output: accumulate in place
        return self.classifier(self.dropout(F.relu_(y)))
