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

Speed notes (CPU, measured in ``benchmarks/bench_rmt.py``):

* the masks are 4-D (``1 x N x L x S``): with a 3-D mask torch dispatches to the unfused "math"
  SDPA, which materializes every score matrix; with 4-D it runs the fused flash kernel;
* q/k/v are passed to SDPA as strided views of the ``B x H x W x N x d`` projections (the kernel
  takes any strides with a unit last dim), so no permute copies are made;
* the rotary shift of a pair ``(a, b)`` is the complex product ``(a + ib)(cos + i sin)``: one
  in-place kernel over q and k together in eager mode, instead of the five of
  ``x*cos + rot(x)*sin`` (whose ``rot`` is a slow stride-2 shuffle). Scripting, tracing,
  ``torch.export``/``torch.compile``/ONNX and dtypes without a complex counterpart (bf16, fp16)
  use the same formula written with real tensors;
* the sin/cos tables span all heads (``C/2`` pairs, not ``head_dim/2``), so the elementwise
  kernels run over long contiguous rows instead of broadcasting over heads every 8-16 values.
"""
from typing import List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

__all__ = [
    "retention_positions", "head_decays", "rotate_every_two", "theta_shift", "manhattan_bias",
    "manhattan_attention", "ManhattanSelfAttention",
]

# bytes of one query block's bias (N x rows*W x HW) in the blocked full-mode path
BIAS_BLOCK_BYTES = 32 << 20
_flex_compiled = None


def head_decays(num_heads: int, init_value: float, heads_range: float, device: torch.device) -> torch.Tensor:
    """Per-head log-decay ``lambda_h = log(1 - 2^-(init_value + heads_range * h / N))`` (negative), float32."""
    heads = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log(1 - 2 ** (-init_value - heads_range * heads / num_heads))


def _rotary_frequencies(head_dim: int, device: torch.device) -> torch.Tensor:
    """The ``head_dim / 2`` rotary frequencies ``1 / 10000^linspace(0, 1)``, one per channel pair, float32.

    The official code repeats each twice (one per channel of the pair); the values are the same.
    """
    return 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2, device=device))


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

    Returns ``(sin, cos, bias_a, bias_b)``. ``sin``/``cos`` are ``H x W x 1 x C/2`` (``C = num_heads *
    head_dim``), one value per channel pair of all heads, for the ``B x H x W x 2 x C`` stack of q and
    k; they are the two interleaved halves of one ``H x W x 1 x C/2 x 2`` ``(cos, sin)`` table, so
    :func:`theta_shift` can view them as one complex table. In decomposed mode ``bias_a`` is the row
    (width) bias ``1 x N x W x W`` and ``bias_b`` the column (height) bias ``1 x N x H x H``, in both
    modes: the full Manhattan bias of query ``(i, j)`` and key ``(i', j')`` is ``bias_b[i, i'] +
    bias_a[j, j']`` (:func:`manhattan_bias`), which :func:`manhattan_attention` adds block by block.
    The float32 arithmetic follows the official
    code, so the tables are bit-identical to those its released weights were trained with.
    """
    index = torch.arange(height * width, dtype=torch.float32, device=device)
    phase = index[:, None] * _rotary_frequencies(head_dim, device)[None, :]  # HW x d/2
    table = torch.stack((torch.cos(phase), torch.sin(phase)), dim=-1)  # HW x d/2 x 2
    table = table.repeat(1, num_heads, 1).reshape(height, width, 1, num_heads * head_dim // 2, 2).to(dtype)
    cos, sin = table.unbind(-1)

    decay = head_decays(num_heads, init_value, heads_range, device)[None, :, None, None]
    rows = torch.arange(height, dtype=torch.float32, device=device)
    cols = torch.arange(width, dtype=torch.float32, device=device)
    dist_h = (rows[:, None] - rows[None, :]).abs()
    dist_w = (cols[:, None] - cols[None, :]).abs()
    # both modes: the 1-D decays; full mode adds them per (query, key) pair in the attention itself
    # (manhattan_attention), so no 1 x N x HW x HW tensor is built up front
    return sin, cos, (dist_w * decay).to(dtype), (dist_h * decay).to(dtype)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """``rot(x)[2k] = -x[2k+1]``, ``rot(x)[2k+1] = x[2k]`` along the last dim (reference helper)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def _complex_ok(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> bool:
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return _eager_complex_ok(x, sin, cos)


@torch.jit.unused
def _eager_complex_ok(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> bool:
    """The complex product needs an eager run, a dtype with a complex counterpart, and ``sin``/``cos``
    interleaved in one buffer (as :func:`retention_positions` makes them)."""
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    if x.dtype not in (torch.float32, torch.float64) or sin.dtype != x.dtype or cos.dtype != x.dtype:
        return False
    if x.device.type == "meta" or sin.shape != cos.shape or sin.stride() != cos.stride() or cos.stride(-1) != 2:
        return False
    if sin.data_ptr() != cos.data_ptr() + cos.element_size() or cos.storage_offset() % 2:
        return False
    return x.stride(-1) == 1 and x.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in x.stride()[:-1])


def _batch_major() -> bool:
    """Eager and TorchScript batch the decomposed passes (B, H)-major; compile/export (H, B)-major."""
    if torch.jit.is_scripting():
        return True
    return not _compiling()


@torch.jit.unused
def _compiling() -> bool:
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


@torch.jit.unused
def _theta_shift_complex(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    table = torch.view_as_complex(cos.as_strided(tuple(cos.shape) + (2,), tuple(cos.stride()) + (1,)))
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * table).flatten(-2)


@torch.jit.unused
def _theta_shift_complex_(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    table = torch.view_as_complex(cos.as_strided(tuple(cos.shape) + (2,), tuple(cos.stride()) + (1,)))
    torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(table)
    return x


@register_notrace_function
def theta_shift_(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """:func:`theta_shift` that may overwrite ``x`` (when the complex product applies); returns the result."""
    if _complex_ok(x, sin, cos):
        return _theta_shift_complex_(x, sin, cos)
    return theta_shift(x, sin, cos)


@register_notrace_function
def theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary position shift ``x * cos + rot(x) * sin``, with one ``sin``/``cos`` value per channel pair.

    Per pair ``(a, b)``: ``(a cos - b sin, b cos + a sin)``, i.e. ``(a + ib)(cos + i sin)``.
    """
    if _complex_ok(x, sin, cos):
        return _theta_shift_complex(x, sin, cos)
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)


# a leaf for a plain torch.fx.symbolic_trace too (timm's tracer knows it as a notrace function):
# the choice of formula inspects dtypes and strides, which a symbolic trace does not have
torch.fx.wrap("theta_shift_")


def manhattan_bias(bias_h: torch.Tensor, bias_w: torch.Tensor) -> torch.Tensor:
    """The full ``1 x N x HW x HW`` bias ``bias_h[i, i'] + bias_w[j, j']`` (row-major tokens) from the 1-D ones."""
    n, h, w = bias_h.shape[1], bias_h.shape[-1], bias_w.shape[-1]
    full = bias_h[:, :, :, None, :, None] + bias_w[:, :, None, :, None, :]  # 1 x N x H x W x H x W
    return full.reshape(1, n, h * w, h * w)


def _eager_only(q: torch.Tensor) -> bool:
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return _not_compiling()


@torch.jit.unused
def _not_compiling() -> bool:
    return not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())


@torch.jit.unused
def _compiling_for_cuda(q: torch.Tensor) -> bool:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return q.is_cuda and torch.compiler.is_compiling() and not exporting and _flex_available()


@torch.jit.unused
def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:  # torch < 2.5
        return False
    return True


@torch.jit.unused
def flex_manhattan_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor,
                             bias_w: torch.Tensor, scale: float, compiled: bool = True) -> torch.Tensor:
    """Full-mode retention with ``flex_attention``: the decay is a ``score_mod`` read from the 1-D
    tables, so no mask tensor exists at all. ``compiled=False`` runs flex's eager reference (any device)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _flex_compiled
    width = bias_w.shape[-1]
    bh, bw = bias_h[0], bias_w[0]  # N x H x H, N x W x W

    def decay(score, b, h, q_idx, kv_idx):
        return score + bh[h, q_idx // width, kv_idx // width] + bw[h, q_idx % width, kv_idx % width]

    fn = flex_attention
    if compiled and not torch.compiler.is_compiling():
        if _flex_compiled is None:
            _flex_compiled = torch.compile(flex_attention, dynamic=True)
        fn = _flex_compiled
    return fn(q, k, v, score_mod=decay, scale=scale)


# the last full mask built, with the 1-D tables it came from: (bias_h, bias_w, mask)
_last_full_bias: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


@torch.jit.unused
def _stage_full_bias(bias_h: torch.Tensor, bias_w: torch.Tensor) -> torch.Tensor:
    """The full mask of a map that fits one block, built once per stage rather than once per block.

    Every block of a stage gets the very same 1-D table objects, so the mask built for the first block
    is reused (checked by identity, which also keeps the tables alive so no other tensor can take their
    place). At most one mask of at most ``BIAS_BLOCK_BYTES`` stays referenced between forwards.
    """
    if _last_full_bias:
        h, w, full = _last_full_bias[0]
        if h is bias_h and w is bias_w:
            return full
    full = manhattan_bias(bias_h, bias_w)
    _last_full_bias[:] = [(bias_h, bias_w, full)]
    return full


@torch.jit.unused
def blocked_manhattan_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor,
                                bias_w: torch.Tensor, scale: float,
                                block_bytes: Optional[int] = None) -> torch.Tensor:
    """Full-mode retention a block of image rows of queries at a time: each block's bias
    ``N x rows*W x HW`` is built from the 1-D tables, so memory stays at one block however large
    the map. ``q/k/v``: ``B x N x HW x d`` (any strides, unit last dim); returns ``B x N x HW x d``."""
    B, N, L, d = q.shape
    height, width = bias_h.shape[-1], bias_w.shape[-1]
    budget = BIAS_BLOCK_BYTES if block_bytes is None else block_bytes
    rows = max(1, int(budget // max(N * width * L * bias_h.element_size(), 1)))
    if rows >= height:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_stage_full_bias(bias_h, bias_w), scale=scale)
    out = q.new_empty(B, L, N, d)  # written block by block; returned as the B x N x L x d view
    cols = bias_w[:, :, None, :, None, :]  # 1 x N x 1 x W x 1 x W
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        block = (bias_h[:, :, r0:r1, None, :, None] + cols).reshape(1, N, (r1 - r0) * width, L)
        s0, s1 = r0 * width, r1 * width
        res = F.scaled_dot_product_attention(q[:, :, s0:s1], k, v, attn_mask=block, scale=scale)
        out[:, s0:s1] = res.transpose(1, 2)
    return out.transpose(1, 2)


@register_notrace_function
def manhattan_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor,
                        bias_w: torch.Tensor, scale: float) -> torch.Tensor:
    """Full-mode retention ``softmax(q k^T * scale + manhattan_bias) v`` for ``B x N x HW x d`` inputs.

    On CUDA (eager or under ``torch.compile``): ``flex_attention`` with the decay as a ``score_mod``
    (no mask at all), falling back to SDPA where flex is missing. Eager elsewhere: query blocks whose
    bias is built from the 1-D tables (:func:`blocked_manhattan_attention`). Scripted, traced,
    exported or compiled for CPU: one SDPA with the full mask, a graph every backend takes.
    """
    if _eager_only(q):
        if q.is_cuda and _flex_available():
            return flex_manhattan_attention(q, k, v, bias_h, bias_w, scale, True)
        return blocked_manhattan_attention(q, k, v, bias_h, bias_w, scale, None)
    if not torch.jit.is_scripting():
        if _compiling_for_cuda(q):  # inside torch.compile: dynamo compiles flex itself
            return flex_manhattan_attention(q, k, v, bias_h, bias_w, scale, False)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=manhattan_bias(bias_h, bias_w), scale=scale)


# a leaf for a plain torch.fx.symbolic_trace as well: the block loop runs over the traced sizes
torch.fx.wrap("manhattan_attention")


class ManhattanSelfAttention(nn.Module):
    """MaSA with a locally-enhanced position term: ``out_proj(retention(q, k, v) + dwconv5x5(v))``.

    Tokens are channels-last (``B x H x W x C``). ``q``, ``k`` and ``v`` share one fused linear layer
    (the official checkpoints' separate projections are concatenated on load), applied as two GEMMs
    on its row blocks: ``[q; k]`` (rotated in place) and ``v`` (dense for the depthwise ``lepe``
    conv). The key scale ``head_dim^-0.5`` is given to the attention kernel instead of multiplying
    ``k``: the rotary shift is linear, so the result is the same.
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
        # q/k and v from two GEMMs on row blocks of the fused weight: v comes out dense for the
        # depthwise conv, and q/k can be rotated in place (the GEMM does not keep its output for backward)
        weight, bias = self.qkv.weight, self.qkv.bias
        qk = F.linear(x, weight[:2 * C], bias[:2 * C]).unflatten(-1, (2, C))  # B x H x W x 2 x C
        v = F.linear(x, weight[2 * C:], bias[2 * C:])
        lepe = self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        qk = theta_shift_(qk, sin, cos)
        q, k = qk.unflatten(-1, (N, d)).unbind(3)  # B x H x W x N x d views
        v = v.unflatten(-1, (N, d))

        # q/k/v stay strided views: the flash kernel takes any strides with a unit last dim, so no
        # permute copies are made (except in the column pass when B > 1: (B, W) is not one batch dim)
        if self.decomposed:
            # along each row (sequence = W), then along each column (sequence = H) of that result
            if _batch_major():
                # eager: (B, H)-major row batches are views of the projections for any B
                q_row, k_row, v_row = (t.transpose(2, 3).reshape(B * H, N, W, d) for t in (q, k, v))
                rows = F.scaled_dot_product_attention(q_row, k_row, v_row, attn_mask=bias_a, scale=self.scale)
                cols: List[torch.Tensor] = [
                    t.permute(0, 2, 3, 1, 4).reshape(B * W, N, H, d)
                    for t in (q, k, rows.reshape(B, H, N, W, d).transpose(2, 3))]
                out = F.scaled_dot_product_attention(cols[0], cols[1], cols[2], attn_mask=bias_b, scale=self.scale)
                out = out.reshape(B, W, N, H, d).permute(0, 3, 1, 2, 4).flatten(3)
            else:
                # compile/export: (H, B)- and (W, B)-major batches, the same values. With symbolic
                # sizes, merging B first guards H != 1 and W != 1, and the strided column views make
                # SDPA compare strides; torch.export cannot prove either for sizes derived from the
                # input's (the strided convs round up), so the columns are made contiguous
                q_row, k_row, v_row = (t.permute(1, 0, 3, 2, 4).reshape(H * B, N, W, d) for t in (q, k, v))
                rows = F.scaled_dot_product_attention(q_row, k_row, v_row, attn_mask=bias_a, scale=self.scale)
                cols = [
                    t.permute(2, 0, 3, 1, 4).contiguous().view(W * B, N, H, d)
                    for t in (q, k, rows.reshape(H, B, N, W, d).permute(1, 0, 3, 2, 4))]
                out = F.scaled_dot_product_attention(cols[0], cols[1], cols[2], attn_mask=bias_b, scale=self.scale)
                out = out.reshape(W, B, N, H, d).permute(1, 3, 0, 2, 4).flatten(3)
        else:
            q_all, k_all, v_all = (t.reshape(B, H * W, N, d).transpose(1, 2) for t in (q, k, v))
            out = manhattan_attention(q_all, k_all, v_all, bias_b, bias_a, self.scale)
            out = out.transpose(1, 2).reshape(B, H, W, C)
        return self.proj(lepe.add_(out))  # in place: the conv keeps no output for backward
