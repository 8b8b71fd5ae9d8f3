"""Manhattan self-attention (MaSA), the retention operator of the Vision RetNet (RMT) encoder.

Retention is softmax attention with two position terms:

* a rotary "theta shift" of queries and keys, indexed by the token's row-major flat index
  ``n = i * W + j`` (the ImageNet RMT; SegRet's released encoder has none: ``rotary=False``);
* an additive, per-head decay bias ``lambda_h * (|i - i'| + |j - j'|)`` (the Manhattan distance),
  either over the whole map ("full" mode) or split into a row pass and a column pass
  ("decomposed" mode, the official code's ``chunkwise_recurrent``).

Both are exactly what :func:`torch.nn.functional.scaled_dot_product_attention` computes with a float
mask, so that fused kernel does the work. The position tensors are not buffers: they are derived
from the stage's config and the feature-map size once per forward and stage
(:func:`retention_positions`) in the input's dtype and device, and shared by the stage's blocks.

Which path runs when (the one table of it; the functions below say why each exists). The
rotary rows concern the ImageNet ``rmt_*`` models (and a SegRet built with
``backbone_kwargs=dict(use_rot_pos_emb=True)``); every other row is reached by the ``segret_*``
models and the ``rmt_*`` models alike:

=======================================  ==================================================================
situation                                path
=======================================  ==================================================================
rotary shift, eager, float32/float64     :func:`theta_shift_`: the complex product, in place
rotary shift, anything else              :func:`theta_shift`, the real formula (scripted, traced,
                                         exported, compiled; bf16/fp16 weights or autocast)
no rotary (``segret_*``)                 none: q and k enter as projected
decomposed, eager, scripted, jit-traced  two SDPA calls over (B, H)- then (B, W)-major views, 1-D masks
decomposed, compiled or exported         the same over (H, B)/(W, B)-major batches (no stride guards)
(``torch.compile``/``export``, ONNX)
full, CUDA, eager (torch >= 2.5)         ``flex_attention`` (compiled once) with the decay as ``score_mod``,
                                         training and inference
full, CUDA, inside ``torch.compile``     ``flex_attention`` traced by dynamo (no mask)
full, CPU, eager, no autograd,           the compiled C++ kernel (:mod:`.cpu_kernel`, no mask): inference
float32, bf16 or fp16 (weights or        (``predict``, ``eval``, ``Segmenter``), bf16/fp16 widened to
autocast)                                float32 once per call; where it is off
                                         (``SEGRET_ZOO_CPU_KERNEL=0``) or cannot be built, the next row
full, eager, otherwise                   :func:`blocked_manhattan_attention`: CPU training, float64,
                                         the kernel off; CUDA with torch < 2.5 (no flex). By the
                                         mask's size: the whole mask (up to ``BIAS_TABLE_BYTES``),
                                         else row-shift table views
                                         (float32: inputs above ~1 MP for stage 3 of rmt_t, ~3 MP for
                                         the last stage of every variant), else one query row at a
                                         time (one table row beyond the budget: above ~10 MP, stage 3
                                         of rmt_t)
full, scripted / traced / exported;      :func:`graph_manhattan_attention`: one SDPA per group of heads
compiled for CPU (or without flex)       (four groups), each group's bias built from its 1-D tables:
                                         the form ONNX Runtime and OpenVINO fuse (ONNX's ``Attention``
                                         op at opset 23), a quarter of the memory at a time
=======================================  ==================================================================

Speed notes (CPU, measured in ``benchmarks/bench_rmt.py``):

* the masks are 4-D (``1 x N x L x S``): with a 3-D mask torch dispatches to the unfused "math"
  SDPA, which materializes every score matrix; with 4-D it runs the fused flash kernel;
* q/k/v are passed to SDPA as strided views of the ``B x H x W x N x d`` projections (the kernel
  takes any strides with a unit last dim), so no permute copies are made;
* the rotary shift (``rmt_*``) of a pair ``(a, b)`` is the complex product ``(a + ib)(cos + i sin)``: one
  in-place kernel over q and k together in eager mode, instead of the five of
  ``x*cos + rot(x)*sin`` (whose ``rot`` is a slow stride-2 shuffle). Scripting, tracing,
  ``torch.export``/``torch.compile``/ONNX and dtypes without a complex counterpart (bf16, fp16)
  use the same formula written with real tensors;
* the sin/cos tables span all heads (``C/2`` pairs, not ``head_dim/2``), so the elementwise
  kernels run over long contiguous rows instead of broadcasting over heads every 8-16 values;
* full mode in eager CPU inference: the compiled kernel of ``csrc/manhattan_attention.cpp``
  (:mod:`.cpu_kernel`), which adds the decay from the 1-D tables inside its tiles, so no mask exists
  (at 1024 x 2048, 0.84x the whole forward's time with SDPA and the tables below). In bf16/fp16 it
  widens q, k and v to float32 once per call: on a CPU without native bf16 matmul that ran stage 3's
  attention at 512 x 512 in 0.79x the time of SDPA's bf16 flash kernel with the mask
  (``bench_levers.py``, ``bf16``);
* full mode on the CPU otherwise (:func:`blocked_manhattan_attention`): a stage builds its bias once for all
  its blocks, as the whole ``N x L x L`` mask while that is small, else as a row-shift table of
  ``N x rows x W x (2H-1) x W`` whose strided views are the bias of every block of ``rows`` query
  rows (at 1024 x 2048, stage 3 of rmt_t: 508 MiB instead of 2 GiB, and nothing rebuilt per block).
  The flash kernel takes such a view as it is; blocks are as many rows as make ``QUERY_BLOCK``
  queries, from which the kernel takes its larger query tiles.
"""
import threading
import weakref
from typing import List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

from .cpu_kernel import manhattan_kernel

__all__ = [
    "retention_positions", "head_decays", "rotate_every_two", "theta_shift", "manhattan_bias",
    "manhattan_attention", "graph_manhattan_attention", "row_shift_table", "ManhattanSelfAttention",
]

# bytes a full-mode stage may hold for its bias: the whole N x HW x HW mask, or a row-shift table
BIAS_TABLE_BYTES = 512 << 20
# queries per SDPA call the row-shift path aims at: the CPU flash kernel takes small query tiles
# below about 768 queries (benchmarks/bench_levers.py, "queries"); end to end at 1024 x 2048, blocks
# of 8 rows (1024 queries, a 508 MiB table) ran 6% faster than blocks of 2 rows (127 MiB)
QUERY_BLOCK = 1024
# full-mode biases up to this many bytes in all stay cached between forwards (stages 3 and 4 of
# rmt_t at 512 x 512: 36 MiB), so inference at one size builds them once, not once per image
KEEP_BIAS_BYTES = 64 << 20
_flex_compiled = None
# what the compiled CPU kernel takes: its products run in float32, bf16/fp16 inputs widened per call
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
        rotary: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotary tables and decay biases for one stage, computed in float32 and cast to ``dtype``.

    Without ``rotary`` (SegRet's encoder has no theta shift) ``sin``/``cos`` are empty tensors.

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
    if rotary:
        index = torch.arange(height * width, dtype=torch.float32, device=device)
        phase = index[:, None] * _rotary_frequencies(head_dim, device)[None, :]  # HW x d/2
        table = torch.stack((torch.cos(phase), torch.sin(phase)), dim=-1)  # HW x d/2 x 2
        table = table.repeat(1, num_heads, 1).reshape(height, width, 1, num_heads * head_dim // 2, 2).to(dtype)
        cos, sin = table.unbind(-1)
    else:
        sin = cos = torch.empty(0, dtype=dtype, device=device)

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

    Per pair ``(a, b)``: ``(a cos - b sin, b cos + a sin)``, i.e. ``(a + ib)(cos + i sin)``, written
    with real tensors: the portable formula every mode and dtype takes (a fresh output; the eager
    complex product is :func:`theta_shift_`, the one the model calls).
    """
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


class _BiasEntry:
    """One cached full-mode bias and the 1-D tables it was built from (strongly or weakly held)."""

    def __init__(self, bias_h: torch.Tensor, bias_w: torch.Tensor, key: Tuple[int, ...], bias: torch.Tensor,
                 keep: bool) -> None:
        self.key, self.bias, self.keep = key, bias, keep
        if keep:  # small: kept across forwards, found again by value
            self.tables: Tuple[torch.Tensor, torch.Tensor] = (bias_h, bias_w)
        else:  # stage-sized: lives as long as the stage's own tables do
            self.refs = (weakref.ref(bias_h, _drop_entry), weakref.ref(bias_w))

    def matches(self, bias_h: torch.Tensor, bias_w: torch.Tensor, key: Tuple[int, ...]) -> bool:
        if self.key != key:
            return False
        if self.bias.is_inference() and not torch.is_inference_mode_enabled():
            return False  # built under inference_mode: autograd may not save it for backward
        if not self.keep:
            return self.refs[0]() is bias_h and self.refs[1]() is bias_w
        return all(a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
                   for a, b in zip(self.tables, (bias_h, bias_w)))


# newest first; the kept entries together hold at most KEEP_BIAS_BYTES, plus at most one stage-sized entry
_stage_bias: List[_BiasEntry] = []
# re-entrant: a weakref callback (_drop_entry) may run inside the locked region of the same thread
_stage_lock = threading.RLock()


def _drop_entry(ref: weakref.ref) -> None:
    """Weakref callback (a plain function, so no entry is kept alive by a reference cycle)."""
    with _stage_lock:
        _stage_bias[:] = [e for e in _stage_bias if e.keep or e.refs[0] is not ref]


@torch.jit.unused
def _stage_cached(bias_h: torch.Tensor, bias_w: torch.Tensor, key: Tuple[int, ...], build) -> torch.Tensor:
    """The bias a stage's blocks share, built for its first block and reused by the others.

    Every block of a stage gets the very same 1-D table objects, so a stage finds its bias by their
    identity. A bias that fits ``KEEP_BIAS_BYTES`` is also found again by the tables' values in later
    forwards (the next image of the same size). A larger one is held only weakly: when the stage's
    forward is over and its tables are freed, the bias goes with them, so no stage-sized tensor
    outlives the stage (nor raises the peak memory of what comes after it, such as the decoder).
    """
    if bias_h.device.type == "meta":  # shapes only: nothing to share, and values cannot be compared
        return build()
    with _stage_lock:  # forwards may run in several threads (a server's predictor)
        for entry in list(_stage_bias):
            if entry.matches(bias_h, bias_w, key):
                if entry in _stage_bias:
                    _stage_bias.remove(entry)
                _stage_bias.insert(0, entry)
                return entry.bias
    bias = build()
    size = bias.numel() * bias.element_size()
    keep = size <= KEEP_BIAS_BYTES
    with _stage_lock:
        entries = [_BiasEntry(bias_h, bias_w, key, bias, keep)]
        if keep:
            entries += [e for e in _stage_bias if not e.keep]
        total = size if keep else 0
        for entry in (e for e in _stage_bias if e.keep):
            total += entry.bias.numel() * entry.bias.element_size()
            if total <= KEEP_BIAS_BYTES:
                entries.append(entry)
        _stage_bias[:] = entries
    return bias


def row_shift_table(bias_h: torch.Tensor, bias_w: torch.Tensor, rows: int) -> torch.Tensor:
    """``N x rows x W x (2H-1) x W`` table whose strided views are the full-mode bias of any block of
    ``rows`` query rows, with no ``N x L x L`` tensor built.

    Entry ``[n, r, j, e, j']`` is ``bias_h[n, |r + H-1 - e|] + bias_w[n, j, j']``. For the block starting
    at query row ``r0``, key row ``i'`` sits at ``e = i' + H-1 - r0``: the bias of query ``(r0 + r, j)`` and
    key ``(i', j')`` is then ``bias_h[r0 + r, i'] + bias_w[j, j']``, bit for bit the value
    :func:`manhattan_bias` adds. Keys ``(i', j')`` of one query are contiguous (``e`` steps by ``W``)
    and the queries ``(r, j)`` of a block share one stride, so :func:`_row_block_bias` is a view.
    """
    height = bias_h.shape[-1]
    local = torch.arange(rows, device=bias_h.device)[:, None]
    shift = torch.arange(2 * height - 1, device=bias_h.device)[None, :]
    # distances beyond H-1 fall where no key row is (never read); clamped to stay inside the table
    dist = (local + height - 1 - shift).abs().clamp_(max=height - 1)  # rows x (2H-1)
    decay_h = bias_h[0, :, 0][:, dist]  # N x rows x (2H-1): bias_h[n, 0, d] is the decay over distance d
    return decay_h[:, :, None, :, None] + bias_w[0][:, None, :, None, :]


def _row_block_bias(table: torch.Tensor, r0: int, r1: int, height: int, width: int) -> torch.Tensor:
    """The ``1 x N x (r1-r0)*W x HW`` bias of query rows ``[r0, r1)``: a view of :func:`row_shift_table`."""
    n = table.shape[0]
    return table.as_strided((1, n, (r1 - r0) * width, height * width), (0, table.stride(0), table.stride(2), 1),
                            table.storage_offset() + (height - 1 - r0) * width)


@torch.jit.unused
def _cpu_kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor,
                          bias_w: torch.Tensor, scale: float) -> Optional[torch.Tensor]:
    """Full mode through the compiled CPU kernel where it applies (CPU inference in float32, bfloat16
    or float16: it has no backward) and is built; None otherwise. Its one caller has already checked
    for an eager run."""
    tensors = (q, k, v, bias_h, bias_w)
    if any(t.device.type != "cpu" or t.dtype not in _KERNEL_DTYPES for t in tensors):
        return None
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if bias_h.shape[0] != 1 or bias_w.shape[0] != 1 or any(t.stride(-1) != 1 for t in (q, k, v)):
        return None
    kernel = manhattan_kernel()
    return None if kernel is None else kernel(q, k, v, bias_h[0], bias_w[0], scale)


@torch.jit.unused
def blocked_manhattan_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor,
                                bias_w: torch.Tensor, scale: float,
                                table_bytes: Optional[int] = None) -> torch.Tensor:
    """Full-mode retention with a stage-sized bias, for ``B x N x HW x d`` inputs (any strides, unit last dim).

    * the whole ``1 x N x HW x HW`` mask when it fits ``table_bytes`` (one SDPA call);
    * else blocks of query rows whose bias is a view of one :func:`row_shift_table` (``2H/rows`` times
      smaller than the whole mask), with as many rows per block as fit ``table_bytes``, up to the
      ``QUERY_BLOCK`` queries from which the CPU flash kernel takes its larger query tiles;
    * else (a map so large that even one row's table does not fit) one query row at a time, its bias
      built from the 1-D tables.

    Each is built once per stage (:func:`_stage_cached`) and shared by the stage's blocks.
    """
    B, N, L, d = q.shape
    height, width = bias_h.shape[-1], bias_w.shape[-1]
    budget = BIAS_TABLE_BYTES if table_bytes is None else table_bytes
    item = bias_h.element_size()
    if N * L * L * item <= budget:
        full = _stage_cached(bias_h, bias_w, (0,), lambda: manhattan_bias(bias_h, bias_w))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=scale)
    per_row = N * width * (2 * height - 1) * width * item
    rows = min(height, -(-QUERY_BLOCK // width), budget // per_row)
    out = q.new_empty(B, L, N, d)  # written block by block; returned as the B x N x L x d view
    if rows >= 1:
        table = _stage_cached(bias_h, bias_w, (rows,), lambda: row_shift_table(bias_h, bias_w, rows))

        def block_bias(r0: int, r1: int) -> torch.Tensor:
            return _row_block_bias(table, r0, r1, height, width)
    else:  # one query row at a time, its bias built from the 1-D tables
        rows = 1
        cols = bias_w[:, :, :, None, :]  # 1 x N x W x 1 x W

        def block_bias(r0: int, r1: int) -> torch.Tensor:
            return (bias_h[:, :, r0, None, :, None] + cols).reshape(1, N, width, L)
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        s0, s1 = r0 * width, r1 * width
        out[:, s0:s1] = F.scaled_dot_product_attention(q[:, :, s0:s1], k, v, attn_mask=block_bias(r0, r1),
                                                       scale=scale).transpose(1, 2)
    return out.transpose(1, 2)


def graph_manhattan_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor,
                              bias_w: torch.Tensor, scale: float, groups: int = 4) -> torch.Tensor:
    """Full-mode retention for graphs (ONNX, torch.export, TorchScript, torch.compile on the CPU), on
    ``B x N x HW x d`` inputs: one SDPA per group of heads (``groups`` of them), each with its heads'
    ``HW x HW`` bias built from their 1-D tables.

    Why this form (``benchmarks/README.md``, "Deployed graphs"): the runtimes fuse SDPA (ONNX's
    ``Attention`` from opset 23, or its MatMul-Add-Softmax-MatMul pattern) only with an additive
    mask input; the two 1-D tables broadcast over a 6-D view of the scores instead is not fused by
    OpenVINO with dynamic shapes and costs ONNX Runtime two extra passes over every score. In groups,
    the bias and the scores a runtime materializes at a time are a fraction of all heads' (at stage 3
    of a 1024 x 2048 input, 512 MiB each instead of 2 GiB), and a group's bias is the same expression
    in every block of a stage, so the runtimes' common-subexpression elimination builds it once per
    stage. Groups rather than single heads: the same memory bound within 25%, and a graph a quarter
    the size to export.
    """
    heads = q.shape[1]
    size = -(-heads // groups)
    outs: List[torch.Tensor] = []
    qs, ks, vs = q.split(size, 1), k.split(size, 1), v.split(size, 1)
    bhs, bws = bias_h.split(size, 1), bias_w.split(size, 1)
    for g in range(len(qs)):
        outs.append(F.scaled_dot_product_attention(qs[g], ks[g], vs[g], attn_mask=manhattan_bias(bhs[g], bws[g]),
                                                   scale=scale))
    return torch.cat(outs, 1)


@register_notrace_function
def manhattan_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor,
                        bias_w: torch.Tensor, scale: float) -> torch.Tensor:
    """Full-mode retention ``softmax(q k^T * scale + manhattan_bias) v`` for ``B x N x HW x d`` inputs.

    On CUDA (eager or under ``torch.compile``): ``flex_attention`` with the decay as a ``score_mod``
    (no mask at all), falling back to SDPA where flex is missing. Eager elsewhere: the compiled CPU
    kernel, else query blocks whose bias is built from the 1-D tables
    (:func:`blocked_manhattan_attention`). Scripted, traced, exported or compiled for the CPU:
    :func:`graph_manhattan_attention` (SDPA per group of heads: the form the runtimes fuse).
    """
    if _eager_only(q):
        if q.is_cuda and _flex_available():
            return flex_manhattan_attention(q, k, v, bias_h, bias_w, scale, True)
        out = _cpu_kernel_attention(q, k, v, bias_h, bias_w, scale)
        if out is not None:
            return out
        return blocked_manhattan_attention(q, k, v, bias_h, bias_w, scale, None)
    if not torch.jit.is_scripting():
        if _compiling_for_cuda(q):  # inside torch.compile: dynamo compiles flex itself
            return flex_manhattan_attention(q, k, v, bias_h, bias_w, scale, False)
    return graph_manhattan_attention(q, k, v, bias_h, bias_w, scale)


# a leaf for a plain torch.fx.symbolic_trace as well: the block loop runs over the traced sizes
torch.fx.wrap("manhattan_attention")


class ManhattanSelfAttention(nn.Module):
    """MaSA with a locally-enhanced position term: ``out_proj(retention(q, k, v) + dwconv5x5(v))``.

    Tokens are channels-last (``B x H x W x C``). ``q``, ``k`` and ``v`` share one fused linear layer
    (the official checkpoints' separate projections are concatenated on load), applied as two GEMMs
    on its row blocks: ``[q; k]`` (rotated in place) and ``v`` (dense for the depthwise ``lepe``
    conv). The key scale ``head_dim^-0.5`` is given to the attention kernel instead of multiplying
    ``k``: the rotary shift is linear, so the result is the same. ``rotary=False`` leaves out the
    theta shift (SegRet's encoder): q and k enter the attention as projected.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            decomposed: bool,
            rotary: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if rotary and self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for the rotary shift")
        self.scale = self.head_dim ** -0.5
        self.decomposed = decomposed
        self.rotary = rotary
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
        if self.rotary:
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
