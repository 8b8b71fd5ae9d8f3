"""The timm model contract (the checks of timm's tests/test_models.py) for rmt_t/s/b/l."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet  # noqa: F401  (features_only uses it)
from timm.models._manipulate import group_parameters

import segret_zoo  # noqa: F401

VARIANTS = ("rmt_t", "rmt_s", "rmt_b", "rmt_l")
SMALL = dict(depths=(1, 1, 2, 1))  # full widths, fewer blocks: the slow checks stay quick


def test_registered_with_pretrained_tags():
    assert set(timm.list_models("rmt_*")) >= set(VARIANTS)
    assert {f"{v}.in1k" for v in VARIANTS} <= set(timm.list_pretrained("rmt_*"))
    cfg = timm.create_model("rmt_t", device="meta").pretrained_cfg
    assert cfg["hf_hub_id"].endswith("/rmt_t.in1k") and cfg["hf_hub_filename"].endswith(".safetensors")
    assert "NOT PUBLISHED" in " ".join(cfg["notes"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_cfg_contract_on_meta(variant):
    """Mirrors timm's test_model_default_cfgs (meta device: structure only)."""
    with torch.device("meta"):  # as timm's test: a device context, plus explicit device=
        model = timm.create_model(variant, device="meta", dtype=torch.float32).eval()
    cfg = model.pretrained_cfg
    assert model.num_features == model.embed_dims[-1] and model.head_hidden_size == 1024
    x = torch.randn(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"]) and feats.shape[1] == model.num_features
    assert model.forward_head(feats, pre_logits=True).shape == (1, 1024)
    model.reset_classifier(0)
    assert model(x).shape == (1, 1024)
    model.reset_classifier(0, "")
    assert model(x).shape[-2:] == tuple(cfg["pool_size"])
    assert cfg["classifier"] + ".weight" in timm.create_model(variant, device="meta").state_dict()
    assert cfg["first_conv"] + ".weight" in model.state_dict()
    with pytest.raises(TypeError):
        timm.create_model(variant, device="meta", not_a_model_arg=1)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    # reset_classifier keeps the parent's device and dtype
    model.to(device="meta", dtype=torch.float64)
    model.reset_classifier(2)
    assert model.get_classifier().weight.dtype == torch.float64
    assert not any(m.training for m in model.modules())  # the new classifier follows eval mode
    every = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in every)


def test_no_weight_decay_lists_layer_scales():
    names = timm.create_model("rmt_b", device="meta").no_weight_decay()
    assert names and all(n.endswith(".gamma") for n in names)
    assert timm.create_model("rmt_t", device="meta").no_weight_decay() == set()


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_every_parameter_gets_gradient(variant):
    model = timm.create_model(variant, num_classes=42, **SMALL).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 42) and not out.isnan().any()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_grad_checkpointing_gives_same_output_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("rmt_t", features_only=True)
    x = torch.randn(2, 3, 64, 64)
    grads, outs = [], []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        feats = model(x)
        sum(f.pow(2).mean() for f in feats).backward()
        outs.append([f.detach() for f in feats])
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_only(variant):
    model = timm.create_model(variant, features_only=True, **SMALL).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 97, 131)  # not a multiple of 32
    feats = model(x)
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    for f, r in zip(feats, model.feature_info.reduction()):
        assert f.shape[-2:] == (math.ceil(97 / r), math.ceil(131 / r))


def test_features_only_equal_forward_intermediates_and_out_indices():
    model = timm.create_model("rmt_t").eval()
    feats = timm.create_model("rmt_t", features_only=True, out_indices=(1, 3)).eval()
    # the wrapper holds the pruned model (stages 0-3, no head) under "model."
    feats.load_state_dict({f"model.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.")})
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(final), model(x))
        got = feats(x)
    assert len(got) == 2
    torch.testing.assert_close(got[0], inter[1], rtol=0, atol=0)
    torch.testing.assert_close(got[1], inter[3], rtol=0, atol=0)


def test_prune_intermediate_layers_contract():
    model = timm.create_model("rmt_t", **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([3], prune_head=False)
        torch.testing.assert_close(pruned(x), expected)
    for i in range(4):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
            pruned = copy.deepcopy(model)
            keep = pruned.prune_intermediate_layers([i], prune_norm=True)
            torch.testing.assert_close(pruned.forward_intermediates(x, indices=keep, intermediates_only=True)[0],
                                       taps[i])
            torch.testing.assert_close(pruned.forward_features(x), taps[i])
        pruned.train()
        sum(f.sum() for f in pruned.forward_intermediates(x, indices=keep, intermediates_only=True)).backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None]
    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([2])
    pruned.reset_classifier(0, "avg")
    torch.testing.assert_close(pruned(x), pruned.forward_features(x).mean((2, 3)))


def test_bfloat16_after_forward_has_no_float32_caches():
    model = timm.create_model("rmt_t", **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    model.to(torch.bfloat16)
    out = model(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    floating = [n for n, b in model.named_buffers() if b.is_floating_point() and "running_" not in n]
    assert floating == []


def test_bf16_autocast_keeps_the_residual_stream_in_float32(monkeypatch):
    """Under autocast the convs and linears hand over bf16, but every stage adds its residuals in
    float32 (``residual_add``): the stage outputs are float32 and nearer the float32 model than a
    stream rounded to bf16 at every block (what adding into the branch's bf16 output gave)."""
    import segret_zoo.models.rmt as rmt

    torch.manual_seed(0)
    model = timm.create_model("rmt_t", depths=(1, 1, 4, 1)).train()
    x = torch.randn(2, 3, 64, 64)
    ref = model.forward_intermediates(x, intermediates_only=True)

    def error() -> list:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = model.forward_intermediates(x, intermediates_only=True)
        assert all(f.dtype == torch.float32 for f in feats)  # a bf16 stream would come out as bf16
        return [float((f - r).norm() / r.norm()) for f, r in zip(feats, ref)]

    fp32_sums = error()
    monkeypatch.setattr(rmt, "residual_add", lambda branch, x: branch.add_(x).float())  # the bf16 stream
    bf16_sums = error()
    assert max(fp32_sums) < 0.02
    assert sum(fp32_sums) < 0.95 * sum(bf16_sums), (fp32_sums, bf16_sums)  # 0.87 here; 0.5 in a trained model


def test_torchscript():
    with timm.set_scriptable(True):
        model = timm.create_model("rmt_t", **SMALL).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_fx_forward_and_backward():
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    model = timm.create_model("rmt_t", num_classes=42, **SMALL).eval()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                  tracer_kwargs=tracer_kwargs)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(next(iter(fx(x).values())), model(x), rtol=1e-4, atol=1e-5)
    fx.train()
    next(iter(fx(torch.randn(2, 3, 64, 64)).values())).mean().backward()
    assert all(p.grad is not None for p in fx.parameters())
