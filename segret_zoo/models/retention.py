"""Manhattan self-attention (MaSA), the retention operator of the Vision RetNet (RMT) encoder.

Retention is softmax attention with two position terms:

* a rotary "theta shift" of queries and keys, indexed by the token's row-major flat index
  ``n = i * W + j``;
* an additive, per-head decay bias ``lambda_h * (|i - i'| + |j - j'|)`` (the Manhattan distance),
  either over the whole map ("full" mode) or split into a row pass and a column pass
  ("decomposed" mode, the official code's ``chunkwise_recurrent``).

Both are exactly what :func:`torch.nn.functional.scaled_dot_product_attention` computes with a float
mask, so that fused kernel does the work. The position tensors are not buffers: they are derived
from the stage's config and the feature-map size once per forward and stage
(:func:`retention_positions`) in the input's dtype and device, and shared by the stage's blocks.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

__all__ = ["retention_positions", "head_decays", "rotate_every_two", "theta_shift", "ManhattanSelfAttention"]


def head_decays(num_heads: int, init_value: float, heads_range: float, device: torch.device) -> torch.Tensor:
    """Per-head log-decay ``lambda_h = log(1 - 2^-(init_value + heads_range * h / N))`` (negative), float32."""
    heads = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log(1 - 2 ** (-init_value - heads_range * heads / num_heads))


def _rotary_angles(head_dim: int, device: torch.device) -> torch.Tensor:
    """``head_dim / 2`` frequencies ``1 / 10000^linspace(0, 1)``, each repeated twice (interleaved), float32."""
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2, device=device))
    return angle.unsqueeze(-1).repeat(1, 2).flatten()


@register_notrace_function
def retention_positions(
        height: int,
        width: int,
        num_heads: int,
        head_dim: int,
        init_value: float,
        heads_range: float,
        decomposed: bool,
        dtype: torch.dtype,
        device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotary tables and decay biases for one stage, computed in float32 and cast to ``dtype``.

    Returns ``(sin, cos, bias_a, bias_b)``: ``sin``/``cos`` are ``H x W x 1 x head_dim`` (broadcast
    over heads in the ``B x H x W x N x d`` layout). In decomposed mode ``bias_a`` is the row
    (width) bias ``1 x N x W x W`` and ``bias_b`` the column (height) bias ``1 x N x H x H``; in full
    mode both are the ``1 x N x HW x HW`` Manhattan bias. float32 arithmetic follows the official code, so the
    tables are bit-identical to those its released weights were trained with.
    """
    index = torch.arange(height * width, dtype=torch.float32, device=device)
    phase = index[:, None] * _rotary_angles(head_dim, device)[None, :]
    sin = torch.sin(phase).reshape(height, width, 1, head_dim).to(dtype)
    cos = torch.cos(phase).reshape(height, width, 1, head_dim).to(dtype)

    decay = head_decays(num_heads, init_value, heads_range, device)[None, :, None, None]
    rows = torch.arange(height, dtype=torch.float32, device=device)
    cols = torch.arange(width, dtype=torch.float32, device=device)
    dist_h = (rows[:, None] - rows[None, :]).abs()
    dist_w = (cols[:, None] - cols[None, :]).abs()
    # 4-D (1 x N x L x S) masks: with a 3-D mask torch's CPU dispatcher skips the fused
    # (flash) kernel and runs the unfused "math" path, which materializes every score matrix
    if decomposed:
        return sin, cos, (dist_w * decay).to(dtype), (dist_h * decay).to(dtype)
    length = height * width
    manhattan = (dist_h[:, None, :, None] + dist_w[None, :, None, :]).reshape(length, length)
    bias = (manhattan * decay).to(dtype)
    return sin, cos, bias, bias


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """``rot(x)[2k] = -x[2k+1]``, ``rot(x)[2k+1] = x[2k]`` along the last dim."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary position shift ``x * cos + rot(x) * sin``."""
    return x * cos + rotate_every_two(x) * sin


class ManhattanSelfAttention(nn.Module):
    """MaSA with a locally-enhanced position term: ``out_proj(retention(q, k, v) + dwconv5x5(v))``.

    Tokens are channels-last (``B x H x W x C``). ``q``, ``k`` and ``v`` come from one fused linear
    layer (one GEMM instead of three; the official checkpoints' separate projections are
    concatenated on load). The key scale ``head_dim^-0.5`` is given to the attention kernel instead
    of multiplying ``k``: the rotary shift is linear, so the result is the same.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            decomposed: bool,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for the rotary shift")
        self.scale = self.head_dim ** -0.5
        self.decomposed = decomposed
        self.qkv = nn.Linear(dim, dim * 3, **dd)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(
            self,
            x: torch.Tensor,
            sin: torch.Tensor,
            cos: torch.Tensor,
            bias_a: torch.Tensor,
            bias_b: torch.Tensor,
    ) -> torch.Tensor:
        B, H, W, C = x.shape
        N, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).unflatten(-1, (3, N, d)).unbind(3)  # each B x H x W x N x d (views)
        lepe = self.lepe(v.flatten(3).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        q = theta_shift(q, sin, cos)
        k = theta_shift(k, sin, cos)

        # All q/k/v below are strided views of B x H x W x N x d tensors: the CPU flash kernel takes
        # any strides with a unit last dim, so no permute copies are made (except for the column
        # pass with B > 1, where (B, W) cannot be merged into one batch dim without a copy).
        if self.decomposed:
            # along each row (sequence = W), then along each column (sequence = H) of that result
            q_row, k_row, v_row = (t.transpose(2, 3).reshape(B * H, N, W, d) for t in (q, k, v))
            rows = F.scaled_dot_product_attention(q_row, k_row, v_row, attn_mask=bias_a, scale=self.scale)
            rows = rows.reshape(B, H, N, W, d)
            q_col, k_col, v_col = (t.permute(0, 2, 3, 1, 4).reshape(B * W, N, H, d)
                                    for t in (q, k, rows.transpose(2, 3)))
            out = F.scaled_dot_product_attention(q_col, k_col, v_col, attn_mask=bias_b, scale=self.scale)
            out = out.reshape(B, W, N, H, d).permute(0, 3, 1, 2, 4).flatten(3)
        else:
            q_all, k_all, v_all = (t.reshape(B, H * W, N, d).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q_all, k_all, v_all, attn_mask=bias_a, scale=self.scale)
            out = out.transpose(1, 2).reshape(B, H, W, C)
        return self.proj(out + lepe)
