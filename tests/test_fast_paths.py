"""Fast inference forms equal the plain formulation: folds (timm reparameterize_model), blocked and
flex full-mode retention, and the predictor running its folded copy (issue 9)."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from segret_zoo.inference.export import fused_copy
from segret_zoo.inference.fold import fold_for_inference, needs_folding
from segret_zoo.inference.predictor import Segmenter
from segret_zoo.models import retention as R
from segret_zoo.models.segret import SegRet
from tests.test_inference_predictor import MINI, SMALL_CFG, random_image

torch.set_num_threads(1)


@pytest.fixture
def sdpa_retention(monkeypatch):
    """Full-mode retention on SDPA with its masks and tables (the path without the compiled CPU kernel)."""
    monkeypatch.setenv("SEGRET_ZOO_CPU_KERNEL", "0")


def random_stats_segret(seed: int = 0, backbone=MINI) -> SegRet:
    """A model where every fold does something: non-zero ZIR paths, random BatchNorm statistics."""
    torch.manual_seed(seed)
    model = SegRet(backbone=backbone, num_classes=6, decoder_channels=32, pretrained_cfg=SMALL_CFG)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        for level in model.decoder.levels:
            level.zir_conv.weight.normal_(0, 0.05)
            level.zir_conv.bias.normal_(0, 0.05)
    return model.eval()


def plain_attention(q, k, v, height, width, decay, scale):
    """softmax(q k^T * scale + decay_h * (|di| + |dj|)) v with an explicit L x L bias, float64."""
    idx = torch.arange(height * width)
    dist = ((idx[:, None] // width - idx[None] // width).abs() + (idx[:, None] % width - idx[None] % width).abs())
    bias = decay.double()[:, None, None] * dist.double()
    scores = q.double() @ k.double().transpose(-1, -2) * scale + bias
    return torch.softmax(scores, -1) @ v.double()


# ------------------------------------------------------------------------------ folds
def test_timm_reparameterize_model_folds_decoder_and_encoder_exactly():
    model = random_stats_segret()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
        folded = timm.utils.reparameterize_model(model)
        out = folded(x)
    # named_children() skips None entries: look at the registered slots themselves
    assert not [f"{prefix}.{name}" for prefix, module in folded.named_modules()
                for name, child in module._modules.items() if child is None]
    assert isinstance(folded.decoder, nn.Module)
    assert folded.zir_fused and not model.zir_fused  # a copy: the model itself is untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.encoder.modules())  # stem + downsample folded
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules())
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert ref.abs().max() > 0.1  # not a trivially small output


def test_fold_for_inference_is_idempotent_and_leaves_the_model_alone():
    model = random_stats_segret(seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_for_inference(model)
    assert needs_folding(model) and not needs_folding(folded)
    assert fold_for_inference(folded) is folded  # nothing left to fold: no copy
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    exported = fused_copy(model)
    assert not needs_folding(exported)


def test_segmenter_runs_the_folded_copy_by_default():
    model = random_stats_segret(seed=2)
    model.train()
    rgb = random_image(120, 150, seed=2)
    seg = Segmenter(model)
    assert seg.model is not model and seg.model.zir_fused and not model.zir_fused
    assert model.training  # the user's model is not switched or modified
    labels, probs = seg(rgb, return_probs=True)
    ref_labels, ref_probs = Segmenter(copy.deepcopy(model), fold=False)(rgb, return_probs=True)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    assert (labels == ref_labels).mean() > 0.999


# ------------------------------------------------------------------------------ full-mode retention
@pytest.mark.parametrize("hw", [(7, 9), (12, 20)])
def test_blocked_full_retention_equals_plain(hw):
    height, width = hw
    heads, dim = 4, 16
    _, _, bias_w, bias_h = R.retention_positions(height, width, heads, dim, 2.0, 4.0, False, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(height)
    q, k, v = (torch.randn(2, heads, height * width, dim, generator=gen) for _ in range(3))
    ref = plain_attention(q, k, v, height, width, R.head_decays(heads, 2.0, 4.0, "cpu"), 0.25)
    row_table = heads * width * (2 * height - 1) * width * 4
    # row by row (nothing fits), tables of 1 and 3 rows, the whole mask
    for table_bytes in (1, row_table, 3 * row_table, 1 << 40):
        out = R.blocked_manhattan_attention(q, k, v, bias_h, bias_w, 0.25, table_bytes=table_bytes)
        torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=R.manhattan_bias(bias_h, bias_w), scale=0.25)
    torch.testing.assert_close(dense.double(), ref, atol=1e-4, rtol=0)


def test_flex_attention_matches_sdpa_on_cpu():
    pytest.importorskip("torch.nn.attention.flex_attention")
    height, width, heads, dim = 6, 10, 2, 16
    _, _, bias_w, bias_h = R.retention_positions(height, width, heads, dim, 2.0, 4.0, False, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, heads, height * width, dim, generator=gen) for _ in range(3))
    ref = plain_attention(q, k, v, height, width, R.head_decays(heads, 2.0, 4.0, "cpu"), 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex's eager reference path warns that it is unfused
        out = R.flex_manhattan_attention(q, k, v, bias_h, bias_w, 0.25, compiled=False)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("table_rows", [0, 2])  # row by row with no table; 2-row tables
def test_model_with_many_query_blocks_equals_one_block(sdpa_retention, monkeypatch, table_rows):
    """The whole encoder with its full-mode stages in blocks of query rows gives the single-mask result."""
    model = random_stats_segret(seed=3)
    x = torch.randn(1, 3, 160, 224)  # stage 3: 10 x 14 tokens, 3 heads
    with torch.no_grad():
        one_block = model(x)
        monkeypatch.setattr(R, "BIAS_TABLE_BYTES", max(1, table_rows * 3 * 14 * 19 * 14 * 4))
        built = []
        real = R.row_shift_table
        monkeypatch.setattr(R, "row_shift_table", lambda h, w, rows: built.append(rows) or real(h, w, rows))
        many = model(x)
    assert built == ([2] if table_rows else [])  # stage 3 (stage 4's whole mask fits the budget)
    torch.testing.assert_close(many, one_block, atol=1e-4, rtol=0)


def test_reparameterized_model_saves_and_loads_back(tmp_path):
    """A model saved after reparameterize_model (decoder and encoder BatchNorms folded) rebuilds the same
    module layout from config.json and gives the same logits."""
    from timm.utils import reparameterize_model

    from segret_zoo.factory import from_pretrained

    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
                   num_classes=3, decoder_channels=16).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding changes the weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
    folded = reparameterize_model(model)
    assert folded.encoder_bn_folded and folded.zir_fused
    folded.save_pretrained(tmp_path / "saved")
    loaded = from_pretrained(tmp_path / "saved")
    assert loaded.encoder_bn_folded and loaded.zir_fused
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)


def test_full_mask_is_built_once_per_stage_and_reused_exactly(sdpa_retention, monkeypatch):
    """The blocks of a full-mode stage share one mask (built for the first block), with the same outputs;
    a small mask is kept for the next forward at the same size, a large one is freed with its stage."""
    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 3, 2), num_heads=(1, 2, 3, 4),
                                 decomposed=(True, True, False, False)), num_classes=3, decoder_channels=16).eval()
    x = torch.randn(1, 3, 96, 128)
    monkeypatch.setattr(R, "_stage_bias", [])
    with torch.no_grad():
        with monkeypatch.context() as m:
            m.setattr(R, "_stage_cached", lambda h, w, key, build: build())  # one mask per block
            expected = model(x)
        built = []
        real = R.manhattan_bias
        monkeypatch.setattr(R, "manhattan_bias", lambda h, w: built.append(1) or real(h, w))
        got = model(x)
        assert len(built) == 2  # stages 3 and 4 (five full-mode blocks)
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
        assert len(R._stage_bias) == 2
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
        assert len(built) == 2  # the next forward at this size found both again
        model(torch.randn(1, 3, 64, 64))
        assert len(built) == 4  # another size: built anew

        monkeypatch.setattr(R, "KEEP_BIAS_BYTES", 0)  # nothing is small enough to keep
        monkeypatch.setattr(R, "_stage_bias", [])
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
    assert len(built) == 6 and R._stage_bias == []  # held weakly: freed with the stage's position tables


def test_a_mask_kept_from_inference_mode_is_not_reused_under_autograd(sdpa_retention, monkeypatch):
    """A bias cached by an ``inference_mode`` forward cannot be saved for backward: training rebuilds it."""
    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                                 decomposed=(True, True, False, False)), num_classes=3, decoder_channels=16)
    monkeypatch.setattr(R, "_stage_bias", [])
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        model.eval()(x)
    assert R._stage_bias and all(e.bias.is_inference() for e in R._stage_bias)
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)


def test_full_mode_biases_are_safe_across_threads(sdpa_retention, monkeypatch):
    """Forwards at two sizes in two threads at once share the bias cache and give their own results."""
    import threading

    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 2), num_heads=(1, 2, 3, 4),
                                 decomposed=(True, True, False, False)), num_classes=3, decoder_channels=16).eval()
    inputs = [torch.randn(1, 3, 96, 128), torch.randn(1, 3, 64, 160)]
    monkeypatch.setattr(R, "KEEP_BIAS_BYTES", 3000)  # some kept by value, some held weakly
    with torch.no_grad():
        expected = [model(x) for x in inputs]
        results: dict = {}

        def run(i: int) -> None:
            with torch.no_grad():
                results[i] = [model(inputs[i % 2]) for _ in range(3)]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, expected[i % 2], atol=1e-5, rtol=0)
    assert len(results) == 4
