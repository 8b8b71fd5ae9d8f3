"""Manhattan self-attention: the fast path (SDPA, 4-D masks, complex-product rotary, in-place ops)
against a plain reference written here from the RMT paper's equations, independently of retention.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import segret_zoo.models.rmt as rmt_module
from segret_zoo.models.retention import ManhattanSelfAttention, retention_positions, theta_shift, theta_shift_
from segret_zoo.models.rmt import RMT


# ----------------------------------------------------------------------------- plain reference
def reference_masa(attn: ManhattanSelfAttention, x: torch.Tensor, init_value: float, heads_range: float
                   ) -> torch.Tensor:
    """MaSA exactly as the RMT paper states it, in float64, with explicit softmax(q k^T + bias) v."""
    x = x.double()
    B, H, W, C = x.shape
    N = attn.num_heads
    d = C // N
    wq, wk, wv = attn.qkv.weight.double().chunk(3)
    bq, bk, bv = attn.qkv.bias.double().chunk(3)
    q, k, v = x @ wq.T + bq, (x @ wk.T + bk) * d ** -0.5, x @ wv.T + bv  # B H W C
    lepe = F.conv2d(v.permute(0, 3, 1, 2), attn.lepe.weight.double(), attn.lepe.bias.double(),
                    padding=2, groups=C).permute(0, 2, 3, 1)

    # rotary: theta_k = 1 / 10000^linspace(0, 1, d/2), repeated twice; position n = i * W + j (float32
    # tables, as the official code builds them)
    theta = (1.0 / 10000 ** torch.linspace(0, 1, d // 2)).repeat_interleave(2)
    n = torch.arange(H * W, dtype=torch.float32).reshape(H, W, 1, 1)
    sin, cos = torch.sin(n * theta).double(), torch.cos(n * theta).double()

    def rot(t: torch.Tensor) -> torch.Tensor:  # rot(t)[2k] = -t[2k+1], rot(t)[2k+1] = t[2k]
        out = torch.empty_like(t)
        out[..., 0::2] = -t[..., 1::2]
        out[..., 1::2] = t[..., 0::2]
        return out

    q, k, v = (t.reshape(B, H, W, N, d) for t in (q, k, v))
    if attn.rotary:  # SegRet's encoder has no theta shift: q and k enter as projected
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    decay = torch.tensor([math.log(1 - 2 ** (-init_value - heads_range * h / N)) for h in range(N)],
                         dtype=torch.float64)
    # loops over images and heads, results stacked (no in-place writes: the reference is also
    # differentiated in the gradient test)
    images = []
    for b in range(B):
        heads = []
        for h in range(N):
            qh, kh, vh = q[b, :, :, h], k[b, :, :, h], v[b, :, :, h]  # H x W x d
            if attn.decomposed:
                cols = torch.arange(W, dtype=torch.float64)
                rows = torch.arange(H, dtype=torch.float64)
                bias_w = decay[h] * (cols[:, None] - cols[None, :]).abs()
                bias_h = decay[h] * (rows[:, None] - rows[None, :]).abs()
                # along each row, then along each column of the row result
                row = torch.stack([torch.softmax(qh[i] @ kh[i].T + bias_w, -1) @ vh[i] for i in range(H)])
                res = torch.stack([torch.softmax(qh[:, j] @ kh[:, j].T + bias_h, -1) @ row[:, j]
                                   for j in range(W)], dim=1)
            else:
                ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
                ii, jj = ii.flatten().double(), jj.flatten().double()
                manhattan = (ii[:, None] - ii[None, :]).abs() + (jj[:, None] - jj[None, :]).abs()
                s = qh.reshape(H * W, d) @ kh.reshape(H * W, d).T + decay[h] * manhattan
                res = (torch.softmax(s, -1) @ vh.reshape(H * W, d)).reshape(H, W, d)
            heads.append(res)
        images.append(torch.stack(heads, dim=2))  # H x W x N x d
    out = torch.stack(images)
    out = out.reshape(B, H, W, C) + lepe
    return out @ attn.proj.weight.double().T + attn.proj.bias.double()


def make_attention(dim: int, heads: int, decomposed: bool, seed: int = 0, rotary: bool = True
                   ) -> ManhattanSelfAttention:
    torch.manual_seed(seed)
    attn = ManhattanSelfAttention(dim, heads, decomposed, rotary).eval()
    with torch.no_grad():  # q/k large enough that the softmax is far from uniform
        attn.qkv.weight[: 2 * dim].mul_(4)
        attn.qkv.bias.normal_(0, 0.2)
        attn.lepe.bias.normal_(0, 0.2)
    return attn


def fast_masa(attn: ManhattanSelfAttention, x: torch.Tensor, init_value: float, heads_range: float
              ) -> torch.Tensor:
    pos = retention_positions(x.shape[1], x.shape[2], attn.num_heads, attn.head_dim, init_value, heads_range,
                              attn.decomposed, x.dtype, x.device, attn.rotary)
    return attn(x, *pos)


CASES = [  # (batch, H, W, dim, heads)
    (1, 5, 7, 16, 2),
    (2, 3, 6, 12, 3),
    (1, 1, 9, 8, 1),
    (2, 7, 1, 16, 4),
    (1, 6, 6, 32, 2),
]


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("rotary", [True, False], ids=["rmt", "segret"])
@pytest.mark.parametrize("decomposed", [True, False], ids=["decomposed", "full"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_fast_path_matches_reference_float32(decomposed, case, rotary):
    B, H, W, C, N = case
    attn = make_attention(C, N, decomposed, rotary=rotary)
    x = torch.randn(B, H, W, C, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference_masa(attn, x, 2.0, 4.0)
        out = fast_masa(attn, x, 2.0, 4.0)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decomposed", [True, False], ids=["decomposed", "full"])
def test_fast_path_matches_reference_bfloat16(decomposed):
    attn = make_attention(16, 2, decomposed)
    x = torch.randn(2, 5, 6, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = reference_masa(attn, x, 2.0, 4.0)
        out = fast_masa(attn.to(torch.bfloat16), x.bfloat16(), 2.0, 4.0)
    assert out.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    assert (out.double() - ref).abs().max().item() <= 3e-2 * scale


@pytest.mark.parametrize("rotary", [True, False], ids=["rmt", "segret"])
@pytest.mark.parametrize("decomposed", [True, False], ids=["decomposed", "full"])
def test_gradients_match_reference(decomposed, rotary):
    """The in-place steps of the fast path (rotary, lepe add) must leave autograd correct (float64; the
    reference takes the decay in float64, the model in float32 like the official code: ~1e-8 apart)."""
    attn = make_attention(12, 3, decomposed, rotary=rotary).double()
    x = torch.randn(2, 3, 4, 12, dtype=torch.float64, requires_grad=True)
    fast_masa(attn, x, 2.0, 6.0).square().sum().backward()
    fast = {n: p.grad.clone() for n, p in attn.named_parameters()}
    fast_x = x.grad.clone()
    attn.zero_grad()
    x.grad = None
    reference_masa(attn, x, 2.0, 6.0).square().sum().backward()
    for name, p in attn.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(fast_x, x.grad, atol=1e-5, rtol=1e-5)


def test_complex_and_real_rotary_agree():
    """The eager complex product (in place) and the real formula (scripting, export, bf16) are the same map."""
    sin, cos, _, _ = retention_positions(5, 7, 2, 8, 2.0, 4.0, True, torch.float32, torch.device("cpu"))
    x = torch.randn(2, 5, 7, 2, 16)
    work = x.clone()
    fast = theta_shift_(work, sin, cos)  # interleaved tables, eager float32: the complex product, in place
    assert fast.data_ptr() == work.data_ptr()
    real = theta_shift(x, sin, cos)  # the real formula, a fresh tensor
    assert real.data_ptr() != x.data_ptr()
    fallback = theta_shift_(x.clone(), sin.clone(), cos.clone())  # separate buffers: the real formula
    torch.testing.assert_close(fallback, real, atol=0, rtol=0)
    torch.testing.assert_close(fast, real, atol=1e-6, rtol=1e-6)
    # and both equal x * cos + rot(x) * sin with per-channel tables
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
    full = x * cos.repeat_interleave(2, -1) + rotated * sin.repeat_interleave(2, -1)
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("decomposed", [True, False], ids=["decomposed", "full"])
def test_position_tables_dtype_device_and_shapes(dtype, decomposed):
    for device in (torch.device("cpu"), torch.device("meta")):
        sin, cos, bias_a, bias_b = retention_positions(3, 5, 4, 8, 2.0, 4.0, decomposed, dtype, device)
        for t in (sin, cos, bias_a, bias_b):
            assert t.dtype == dtype and t.device.type == device.type
        assert sin.shape == cos.shape == (3, 5, 1, 16)
        if decomposed:
            assert bias_a.shape == (1, 4, 5, 5) and bias_b.shape == (1, 4, 3, 3)
        else:
            assert bias_a.shape == (1, 4, 5, 5) and bias_b.shape == (1, 4, 3, 3)  # 1-D decays, summed per block


def test_tables_built_once_per_stage_per_forward_in_input_dtype(monkeypatch):
    calls = []
    original = rmt_module.retention_positions

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append({t.dtype for t in out})
        return out

    monkeypatch.setattr(rmt_module, "retention_positions", counting)
    model = RMT(embed_dims=(8, 16, 24, 32), depths=(2, 2, 3, 2), num_heads=(1, 2, 3, 4), head_hidden_size=16,
                num_classes=5).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 37, 45))
        assert calls == [{torch.float32}] * 4  # one call per stage, shared by the stage's blocks
        calls.clear()
        model.forward_intermediates(torch.randn(2, 3, 33, 29), intermediates_only=True)
        assert calls == [{torch.float32}] * 4
        calls.clear()
        model.to(torch.bfloat16)(torch.randn(1, 3, 37, 45, dtype=torch.bfloat16))
        assert calls == [{torch.bfloat16}] * 4


def test_no_floating_buffers_outside_batchnorm():
    from segret_zoo.models.segret import SegRet

    for model in (RMT(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), head_hidden_size=16),
                  SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
                         num_classes=3, decoder_channels=8)):
        modules = dict(model.named_modules())
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                owner = modules[name.rsplit(".", 1)[0]]
                assert isinstance(owner, torch.nn.modules.batchnorm._BatchNorm), name
