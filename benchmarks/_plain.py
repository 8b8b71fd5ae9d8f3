"""The plain formulation of Manhattan self-attention, for benchmarks: same weights, same position
tables, but ``softmax(q k^T * scale + bias) v`` written out with explicit matmuls over the whole
``L x L`` mask (full mode) or the 1-D masks (decomposed mode) — what the fast paths replace.

The rotary theta shift, where a model has it (the ImageNet ``rmt_*`` models; SegRet's released
encoder has none), is written as ``x * cos + rot(x) * sin``.

``use_plain_attention(model)`` swaps every ``ManhattanSelfAttention`` of a model in place.
"""
from __future__ import annotations

import torch
from torch import nn

from segret_zoo.models.retention import ManhattanSelfAttention, manhattan_bias, rotate_every_two


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) * scale + bias
    return torch.softmax(scores, dim=-1) @ v


class PlainManhattanSelfAttention(ManhattanSelfAttention):
    """``ManhattanSelfAttention`` with the explicit (materialized scores) formulation."""

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor,
                bias_a: torch.Tensor, bias_b: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).unflatten(-1, (3, N, d)).unbind(3)  # B x H x W x N x d
        lepe = self.lepe(v.flatten(3).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.rotary:
            # the tables hold one value per channel pair of all heads: repeat per channel, split per head
            sin_full = sin.repeat_interleave(2, dim=-1).reshape(H, W, N, d)
            cos_full = cos.repeat_interleave(2, dim=-1).reshape(H, W, N, d)
            q = q * cos_full + rotate_every_two(q) * sin_full
            k = k * cos_full + rotate_every_two(k) * sin_full
        if not self.decomposed:  # the full 1 x N x HW x HW mask, built up front as the plain form does
            bias_a = manhattan_bias(bias_b, bias_a)
        bias_a, bias_b = bias_a.squeeze(0), bias_b.squeeze(0)  # N x L x S
        if self.decomposed:
            rows = _attend(*(t.permute(0, 1, 3, 2, 4) for t in (q, k, v)), bias_a, self.scale)  # B H N W d
            out = _attend(q.permute(0, 2, 3, 1, 4), k.permute(0, 2, 3, 1, 4), rows.permute(0, 3, 2, 1, 4),
                          bias_b, self.scale)  # B W N H d
            out = out.permute(0, 3, 1, 2, 4).reshape(B, H, W, C)
        else:
            out = _attend(*(t.reshape(B, H * W, N, d).transpose(1, 2) for t in (q, k, v)), bias_a, self.scale)
            out = out.transpose(1, 2).reshape(B, H, W, C)
        return self.proj(out + lepe)


def use_plain_attention(model: nn.Module) -> nn.Module:
    """Switch every MaSA module of ``model`` to the plain formulation (in place; weights unchanged)."""
    for module in model.modules():
        if isinstance(module, ManhattanSelfAttention):
            module.__class__ = PlainManhattanSelfAttention
    return model
