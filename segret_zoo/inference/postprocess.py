"""Logits at the model's resolution -> label map (and probabilities) at the image's size, in row tiles.

Upsampling 150-class logits of a 12 MP photo to full size takes 7 GB in float32, and an argmax
over the channel dim of an NCHW map is a slow strided reduction. Here the full-resolution scores
are never built: output rows are produced a tile at a time (a few MiB each), channels-last, so
the softmax and the argmax reduce along contiguous memory.

Bilinear upsampling with ``align_corners=False`` is separable. Each tile is the vertical blend (``lerp``) of
two source rows per output row, with the weights torch computes for the full map (``scale = in /
out`` in float32, ``src = scale * (dst + 0.5) - 0.5`` clamped at 0), at the logits' own width,
then ``interpolate`` along the width only (its height mapping is the identity). The values equal
one full-size ``interpolate`` to float rounding (the two passes round in another order) and
depend only on the output row, so tiles of any height give the same labels; probabilities agree to
float rounding (torch's softmax kernel rounds differently for different tile shapes).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_TILE_BYTES", "labels_from_views", "row_tiles", "vertical_weights"]

# scores per tile (one view); a tile's working set is a few of these
DEFAULT_TILE_BYTES = 16 << 20


def vertical_weights(in_size: int, out_size: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """``(i0, i1, w0, w1)`` per output index: bilinear (align_corners=False) source indices and weights."""
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    dst = torch.arange(out_size, dtype=torch.float32)
    src = (scale * (dst + 0.5) - 0.5).clamp_(min=0.0)
    i0 = src.to(torch.int64).clamp_(max=in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (src - i0.to(torch.float32)).clamp_(0.0, 1.0)
    w0 = 1.0 - w1
    return i0.to(device), i1.to(device), w0.to(device), w1.to(device)


def row_tiles(height: int, width: int, channels: int, tile_bytes: int = DEFAULT_TILE_BYTES) -> List[Tuple[int, int]]:
    """Output row ranges ``[r0, r1)`` whose ``channels x rows x width`` float32 scores fit ``tile_bytes``."""
    rows = max(1, int(tile_bytes // max(channels * width * 4, 1)))
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


class _Upsampler:
    """Rows of ``interpolate(logits, size, bilinear)`` (optionally flipped), channels-last, one tile at a time."""

    def __init__(self, logits: torch.Tensor, size: Tuple[int, int], flipped: bool) -> None:
        self.logits = logits  # 1 x K x h x w
        self.height, self.width = size
        self.flipped = flipped
        self.same_height = logits.shape[-2] == self.height
        self.i0, self.i1, self.w0, self.w1 = vertical_weights(logits.shape[-2], self.height, logits.device)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """``1 x K x (r1 - r0) x W`` float32 scores (channels-last strides)."""
        nhwc = self.logits.permute(0, 2, 3, 1)  # a view when the logits are channels-last
        if self.same_height:
            tall = nhwc[:, r0:r1].float()
        else:
            # one lerp kernel: top + w1 * (bottom - top); 1 x rows x w x K, contiguous
            top = nhwc.index_select(1, self.i0[r0:r1]).float()
            bottom = nhwc.index_select(1, self.i1[r0:r1]).float()
            tall = torch.lerp(top, bottom, self.w1[r0:r1].view(1, -1, 1, 1))
        out = tall.permute(0, 3, 1, 2)  # channels-last strides
        if out.shape[-1] != self.width:
            # width only: the height mapping is the identity (scale 1, weights 1 and 0)
            out = F.interpolate(out, size=(r1 - r0, self.width), mode="bilinear", align_corners=False)
        if self.flipped:
            out = out.flip(-1)
        return out


def labels_from_views(
    views: Sequence[Tuple[torch.Tensor, bool]],
    size: Tuple[int, int],
    label_dtype: torch.dtype,
    return_probs: bool = False,
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Labels ``H x W`` (and ``K x H x W`` probabilities when asked) from test-time views.

    ``views`` are ``(logits 1 x K x h x w, flipped)`` pairs. One view: argmax of the upsampled logits
    (the same as over its softmax). Several: argmax of the mean softmax (mmseg's aug_test), summed
    in view order. Memory beyond the views' logits is a few tiles, plus the probabilities if asked.
    """
    if not views:
        raise ValueError("no views to combine")
    height, width = size
    num_classes = views[0][0].shape[1]
    device = views[0][0].device
    ups = [_Upsampler(lg, size, flipped) for lg, flipped in views]
    labels = torch.empty(height, width, dtype=label_dtype, device=device)
    probs = torch.empty(num_classes, height, width, dtype=torch.float32, device=device) if return_probs else None
    single = len(ups) == 1
    for r0, r1 in row_tiles(height, width, num_classes, tile_bytes):
        if single:
            score = ups[0].rows(r0, r1)
        else:
            score = ups[0].rows(r0, r1).softmax(dim=1)
            for up in ups[1:]:
                score.add_(up.rows(r0, r1).softmax(dim=1))
        labels[r0:r1] = score[0].argmax(dim=0).to(label_dtype)
        if probs is not None:
            probs[:, r0:r1] = score[0].softmax(dim=0) if single else score[0] / len(ups)
    return labels, probs
