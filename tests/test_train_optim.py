"""AdamW parameter groups (mmcv's, from the authors' configs: checked against mmcv's rule on the
official parameter names, counted on every variant in both config styles), the warm-up + poly
schedule (numbers), and the recipes: the authors' configs' table, picked from model and data."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from segret_zoo.train.engine import TrainConfig, resolve_config
from segret_zoo.train.optim import (
    PARAMWISE,
    PLAIN,
    WarmupPoly,
    bias_param_names,
    build_optimizer,
    build_scheduler,
    describe_groups,
    param_groups,
)
from segret_zoo.train.recipes import get_recipe, list_recipes, model_size

NORMS = (nn.LayerNorm, nn.BatchNorm2d)  # the norm types SegRet uses
VARIANTS = ["segret_tiny", "segret_small", "segret_base", "segret_large"]

# the custom keys of the authors' configs with paramwise_cfg, built as those configs build them
# (every block of stages with up to 4, 8, 25, 8 blocks; the stem's Sequential indices of its BNs)
AUTHORS_CUSTOM_KEYS = (
    [f"backbone.layers.{s}.blocks.{b}.{norm}" for norm in ("retention_layer_norm", "final_layer_norm")
     for s, n in enumerate([4, 8, 25, 8]) for b in range(n)]
    + [f"backbone.patch_embed.proj.{i}" for i in (1, 4, 7, 10)]
    + [f"backbone.layers.{s}.downsample.norm" for s in (0, 1, 2)]
)


def _meta_model(variant):
    from segret_zoo.models.segret import SEGRET_VARIANTS, SegRet

    return SegRet(architecture=variant, device="meta", **SEGRET_VARIANTS[variant])


def _owner_is_norm(model: nn.Module):
    """Parameter name -> whether the module holding it is a LayerNorm / BatchNorm (independently of optim.py)."""
    return {f"{mn}.{pn}" if mn else pn: isinstance(m, NORMS)
            for mn, m in model.named_modules() for pn, _ in m.named_parameters(recurse=False)}


def _mmcv_custom_key(official_name: str):
    """mmcv 1.x DefaultOptimizerConstructor's match: the longest key (then the alphabetically first)
    that is a substring of the parameter's name, or None."""
    for key in sorted(sorted(AUTHORS_CUSTOM_KEYS), key=len, reverse=True):
        if key in official_name:
            return key
    return None


def _expected_settings(model: nn.Module, style: str):
    """Name -> (lr_mult, decay_mult) as mmcv builds them from the authors' configs: ``plain`` (no
    paramwise_cfg) is (1, 1) for all; ``paramwise`` gives custom-key matches (0.1, 0) whatever else
    they are, other norm layers (1, 0), everything else, biases and gammas included, (1, 1)."""
    from tests.official_layout import to_official

    is_norm = _owner_is_norm(model)
    out = {}
    for name, param in model.named_parameters():
        if style == "plain":
            out[name] = (1.0, 1.0)
            continue
        keys = set()
        if name.startswith("encoder."):  # the authors' names of this parameter (qkv is three of theirs)
            official = [k for k in to_official(model.encoder, {name[len("encoder."):]: param}, seg=True)
                        if ".Relpos." not in k]
            assert official, name
            keys = {_mmcv_custom_key(k) for k in official}
            assert len(keys) == 1, (name, official)  # all of a parameter's official names agree
        key = keys.pop() if keys else None
        out[name] = (0.1, 0.0) if key is not None else (1.0, 0.0) if is_norm[name] else (1.0, 1.0)
    return out


@pytest.mark.parametrize("style, settings", [("paramwise", PARAMWISE), ("plain", PLAIN)])
def test_groups_are_mmcvs_on_the_authors_parameter_names(style, settings):
    model = _meta_model("segret_tiny")
    wd, lr = 0.01, 1e-4
    expected = _expected_settings(model, style)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)]: (g["lr_mult"], g["weight_decay"] / wd) for g in param_groups(model, lr, wd, **settings)
           for p in g["params"]}
    assert got == pytest.approx(expected)
    if style == "paramwise":
        # the custom keys name exactly the encoder's norm layers: by type here, by name in the configs
        is_norm = _owner_is_norm(model)
        assert {n for n, v in expected.items() if v == (0.1, 0.0)} == {
            n for n, norm in is_norm.items() if norm and n.startswith("encoder.")}
        assert got["encoder.stages.2.blocks.3.attn.qkv.bias"] == (1.0, 1.0)  # biases decayed, as mmcv
        assert got["decoder.fuse_norm.weight"] == (1.0, 0.0)  # a norm outside the keys: norm_decay_mult 0


def test_param_groups_by_module_type(tiny_segret):
    model = tiny_segret
    lr = 1e-4
    groups = {g["name"]: g for g in param_groups(model, lr=lr, weight_decay=0.01, head_lr_mult=10.0)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {name: {names[id(p)] for p in g["params"]} for name, g in groups.items()}
    norm_names = {n for n, norm in _owner_is_norm(model).items() if norm}
    assert members["encoder_norm"] == {n for n in norm_names if n.startswith("encoder.")}
    assert members["head_norm"] == {n for n in norm_names if n.startswith("decoder.")}
    assert members.get("other_norm", set()) == {n for n in norm_names if not n.startswith(("encoder.", "decoder."))}
    expected = {  # (lr, weight decay), the default (paramwise) settings: encoder norms x0.1 and no norm
        # decayed; biases decayed as mmcv does; the whole head x10 here
        "encoder_weight": (lr, 0.01), "encoder_bias": (lr, 0.01), "encoder_norm": (0.1 * lr, 0.0),
        "other_norm": (lr, 0.0), "head_weight": (10 * lr, 0.01), "head_bias": (10 * lr, 0.01),
        "head_norm": (10 * lr, 0.0),
    }
    assert set(groups) <= set(expected)
    for name, g in groups.items():
        assert (g["lr"], g["weight_decay"]) == pytest.approx(expected[name]), name
    params = dict(model.named_parameters())
    assert all(params[n].ndim > 1 for g in ("encoder_weight", "head_weight") for n in members[g])
    assert all(params[n].ndim == 1 for g in ("encoder_bias", "head_bias") for n in members[g])
    assert "decoder.classifier.bias" in members["head_bias"]
    assert "decoder.classifier.weight" in members["head_weight"]
    # every trainable parameter is in exactly one group
    flat = [n for m in members.values() for n in m]
    assert len(flat) == len(set(flat)) == sum(1 for p in model.parameters() if p.requires_grad)
    # frozen parameters are left out; a model without encoder/decoder prefixes still groups by type
    model.encoder.stem.conv1.weight.requires_grad_(False)
    left = {names[id(p)] for g in param_groups(model, lr, 0.01) for p in g["params"]}
    assert "encoder.stem.conv1.weight" not in left
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True))
    assert [(g["name"], len(g["params"]), g["weight_decay"]) for g in param_groups(plain, lr, 0.01)] == [
        ("other_weight", 1, 0.01), ("other_bias", 1, 0.01), ("other_norm", 6, 0.0)]


def _expected_counts(model: nn.Module):
    """(part, kind) -> parameters, counted by isinstance / ndim (independently of optim.py)."""
    counts = {}
    for mn, module in model.named_modules():
        for pn, p in module.named_parameters(recurse=False):
            name = f"{mn}.{pn}"
            part = "encoder" if name.startswith("encoder.") else "head" if name.startswith("decoder.") else "other"
            kind = "norm" if isinstance(module, NORMS) else "bias" if p.ndim == 1 else "weight"
            counts[f"{part}_{kind}"] = counts.get(f"{part}_{kind}", 0) + p.numel()
    return counts


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("style, settings", [("paramwise", PARAMWISE), ("plain", PLAIN)])
def test_group_counts_on_every_variant(variant, style, settings):
    model = _meta_model(variant)
    summary = {g["name"]: g for g in describe_groups(param_groups(model, 1e-4, 0.01, **settings))}
    counts = {name: g["params"] for name, g in summary.items()}
    assert counts == _expected_counts(model)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    for name, g in summary.items():  # (lr multiplier, weight decay) of each group in this style
        if style == "plain":  # the configs without paramwise_cfg: one AdamW over everything
            want = (1.0, 0.01)
        else:  # with it: the encoder's norms (the custom keys) x0.1 and undecayed, other norms undecayed
            want = (0.1, 0.0) if name == "encoder_norm" else (1.0, 0.0) if name.endswith("_norm") else (1.0, 0.01)
        assert (g["lr_mult"], g["weight_decay"]) == pytest.approx(want), name
    if variant == "segret_tiny":
        # by hand: block LayerNorms 2 per block x (weight + bias) x dim over depths 2,2,8,2 and dims
        # 64,128,256,512 = 4 x (2x64 + 2x128 + 8x256 + 2x512) = 13824; stem BatchNorms 2 x (32+32+64+64)
        # = 384; downsample BatchNorms 2 x (128+256+512) = 1792
        assert counts["encoder_norm"] == 13824 + 384 + 1792 == 16000
        # biases: the stem's convs 32+32+64+64 = 192, the downsample convs 128+256+512 = 896, and per
        # block of width d: cpe d + qkv 3d + lepe d + proj d + fc1 3d + fc2 d = 10d (SegRet's FFN has no
        # conv), over 2x64 + 2x128 + 8x256 + 2x512 = 3456 -> 34560
        assert counts["encoder_bias"] == 192 + 896 + 10 * 3456 == 35648
        # the decoder's BatchNorms over C = 256: the fuse norm (2 x 256) and one per level after the
        # zero-initialized conv (4 x 2 x 256)
        assert counts["head_norm"] == 512 + 2048


def test_group_lr_ratios_survive_the_schedule(tiny_segret):
    opt = build_optimizer(tiny_segret, lr=2e-4, weight_decay=0.01)
    sched = build_scheduler(opt, total_iters=100, warmup_iters=10, warmup_ratio=1e-6, power=0.9, base_lr=2e-4)
    for _ in range(37):
        opt.step()
        sched.step()
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    assert by_name["encoder_norm"] == pytest.approx(0.1 * by_name["encoder_weight"])
    assert by_name["encoder_weight"] == pytest.approx(2e-4 * (1 - 37 / 100) ** 0.9)
    assert {g["name"] for g in describe_groups(opt.param_groups)} == set(by_name)
    one = build_optimizer(tiny_segret, 1e-4, 0.01, **PLAIN)
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in one.param_groups}["encoder_norm"] == pytest.approx(
        (1e-4, 0.01))


def test_layer_scale_gammas_decayed_as_mmcv_unless_bias_decay_is_off():
    from segret_zoo.models.segret import SegRet

    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                                 layer_scale=(False, False, True, True)), num_classes=3, decoder_channels=16)
    gammas = {id(p) for n, p in model.named_parameters() if n.endswith(".gamma")}
    assert len(gammas) == 4 and gammas <= {id(p) for n, p in model.named_parameters() if n in bias_param_names(model)}

    def decay_of_gammas(opt):
        return {g["weight_decay"] for g in opt.param_groups for p in g["params"] if id(p) in gammas}

    opt = build_optimizer(model, 1e-4, 0.01)
    assert isinstance(opt, torch.optim.AdamW) and decay_of_gammas(opt) == {0.01}  # the recipes: mmcv decays them
    assert decay_of_gammas(build_optimizer(model, 1e-4, 0.01, bias_decay_mult=0.0)) == {0.0}  # the timm convention


def test_warmup_then_poly_values():
    f = WarmupPoly(total_iters=100, warmup_iters=10, warmup_ratio=1e-6, power=1.0)
    assert f(0) == pytest.approx(1e-6 * 1.0)  # poly(0) = 1, warm-up factor = ratio
    # t=5: poly = 0.95, warm-up = 1 - 0.5 * (1 - 1e-6)
    assert f(5) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert f(10) == pytest.approx(0.9)  # warm-up over: plain poly
    assert f(50) == pytest.approx(0.5)
    assert f(100) == 0.0
    g = WarmupPoly(total_iters=100, warmup_iters=0, power=2.0, min_ratio=0.1)
    assert g(50) == pytest.approx(0.9 * 0.25 + 0.1)


def test_scheduler_steps_per_iteration():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 2e-4}], lr=2e-4)
    sched = build_scheduler(opt, total_iters=1000, warmup_iters=100, warmup_ratio=1e-6, base_lr=2e-4)
    lrs = []
    for _ in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-4 * 1e-6)
    assert lrs[50] == pytest.approx(2e-4 * 0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert lrs[100] == pytest.approx(2e-4 * 0.9)
    assert lrs[200] == pytest.approx(2e-4 * 0.8)
    assert max(lrs) == pytest.approx(lrs[100])  # the peak is at the end of warm-up
    state = sched.state_dict()
    sched2 = build_scheduler(opt, total_iters=1000, warmup_iters=100, base_lr=2e-4)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 300


# ------------------------------------------------------------------------------------------ recipes
# the authors' configs (local_configs/SegRet/{T,S,B,L}): crop, global batch, lr, weight decay,
# warm-up iterations (0 = none; ratio 1e-6 where there is one), poly power, iterations, random-resize
# base scale, and the parameter groups: PW = paramwise_cfg (encoder norms lr x0.1, norms undecayed,
# biases decayed), PL = no paramwise_cfg (S/B Cityscapes, L COCO-Stuff: everything decayed at lr x1)
PW, PL = (0.1, 0.0, 1.0), (1.0, 1.0, 1.0)  # encoder_norm_lr_mult, norm_decay_mult, bias_decay_mult
TABLE = {
    "tiny-ade20k": ((512, 512), 16, 1e-4, 1e-4, 0, 0.9, 160000, (2048, 512), *PW),
    "small-ade20k": ((512, 512), 16, 1e-4, 0.01, 1500, 0.9, 160000, (2048, 512), *PW),
    "base-ade20k": ((512, 512), 16, 1e-4, 0.01, 0, 0.9, 160000, (2048, 512), *PW),
    "large-ade20k": ((640, 640), 16, 1e-4, 0.01, 0, 0.9, 160000, (2048, 640), *PW),
    "tiny-cityscapes": ((512, 1024), 8, 1e-4, 0.01, 0, 0.9, 160000, (4096, 1024), *PW),
    "small-cityscapes": ((512, 1024), 8, 1e-4, 0.01, 1500, 1.0, 160000, (4096, 1024), *PL),
    "base-cityscapes": ((512, 1024), 8, 1e-4, 0.01, 1500, 1.0, 160000, (4096, 1024), *PL),
    "large-cityscapes": ((512, 1024), 8, 1e-4, 0.01, 0, 0.9, 160000, (4096, 1024), *PW),
    "tiny-cocostuff": ((512, 512), 16, 2e-4, 1e-4, 1500, 0.9, 80000, (2048, 512), *PW),
    "small-cocostuff": ((512, 512), 32, 1e-4, 0.01, 0, 0.9, 60000, (2048, 512), *PW),
    "base-cocostuff": ((512, 512), 16, 1e-4, 0.01, 1500, 0.9, 80000, (2048, 512), *PW),
    "large-cocostuff": ((512, 512), 16, 1e-4, 0.01, 1500, 0.9, 80000, (2048, 512), *PL),
}
FIELDS = ("crop_size", "batch_size", "lr", "weight_decay", "warmup_iters", "poly_power", "iters", "scale",
          "encoder_norm_lr_mult", "norm_decay_mult", "bias_decay_mult")


def test_recipes_are_the_configs_table():
    assert sorted(list_recipes()) == sorted(TABLE)
    for name, row in TABLE.items():
        r = get_recipe(name)
        assert tuple(r[f] for f in FIELDS) == row, name
        assert r["warmup_ratio"] == 1e-6 and r["min_lr"] == 0.0 and r["eval_interval"] == 4000
        assert r["dataset"] == name.split("-")[1]
    with pytest.raises(ValueError, match="unknown recipe 'ade20k-16k'.*tiny-ade20k"):
        get_recipe("ade20k-16k")


@pytest.mark.parametrize("model, data, recipe", [
    ("segret_small", "ade20k:/d", "small-ade20k"),
    ("segret_large.ade20k", "ade20k:/d", "large-ade20k"),
    ("segret_base", "cityscapes:/d", "base-cityscapes"),
    ("segret_tiny", "cocostuff10k:/d", "tiny-cocostuff"),
    ("segret_small", "cocostuff:/d", "small-cocostuff"),  # 164k shares the 10k recipe
    (None, "ade20k:/d", "tiny-ade20k"),  # the default model
    ("segret_tiny", "folder:/d", None),
    ("hf-hub:org/repo", "ade20k:/d", None),  # size unknown without downloading
])
def test_recipe_is_picked_from_model_and_data(model, data, recipe):
    cfg = resolve_config(TrainConfig(model=model, data=data))
    assert cfg.recipe == recipe
    if recipe:
        assert tuple(getattr(cfg, f) for f in FIELDS) == TABLE[recipe]
        assert cfg.sources["recipe"].startswith("auto") and cfg.sources["iters"] == f"recipe {recipe}"
    else:
        assert "none" in cfg.sources["recipe"] and cfg.sources["iters"] == "default"


def test_flags_win_and_sources_say_where_values_came_from():
    cfg = resolve_config(TrainConfig(model="segret_small", data="ade20k:/d", iters=2000, weight_decay=0.05,
                                     eval_interval=4000, warmup_iters=100))
    assert (cfg.iters, cfg.weight_decay, cfg.warmup_iters, cfg.eval_interval) == (2000, 0.05, 100, 4000)
    assert cfg.sources["iters"] == cfg.sources["weight_decay"] == cfg.sources["eval_interval"] == "flag"
    assert cfg.sources["lr"] == "recipe small-ade20k" and cfg.sources["head_lr_mult"] == "default"
    assert cfg.sources["model"] == "flag" and cfg.sources["workers"] == "default"
    # a named recipe wins over the automatic one; 'none' turns recipes off
    named = resolve_config(TrainConfig(model="segret_small", data="ade20k:/d", recipe="base-cityscapes"))
    assert named.recipe == "base-cityscapes" and named.crop_size == (512, 1024) and named.sources["recipe"] == "flag"
    off = resolve_config(TrainConfig(model="segret_small", data="ade20k:/d", recipe="none"))
    assert off.recipe is None and off.iters == 1000 and off.sources["iters"] == "default"


def test_legacy_recipe_names_mean_the_dataset_recipe_for_the_model():
    cfg = resolve_config(TrainConfig(model="segret_base", data="folder:/d", recipe="cityscapes-160k"))
    assert cfg.recipe == "base-cityscapes" and cfg.sources["recipe"] == "flag (cityscapes-160k for segret_base)"
    with pytest.raises(ValueError, match="one recipe per model size: tiny-ade20k, small-ade20k"):
        resolve_config(TrainConfig(model="hf-hub:org/repo", data="folder:/d", recipe="ade20k-160k"))


def test_model_size_of_a_saved_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"architecture": "segret_base"}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"architecture": "segret", "backbone": "rmt_l"}))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(json.dumps({"architecture": "segret", "backbone": {"depths": [1]}}))
    assert [model_size(str(tmp_path / x)) for x in "abc"] == ["base", "large", None]
    assert model_size("segret_tiny.cityscapes") == "tiny" and model_size("segret_huge") is None
    cfg = resolve_config(TrainConfig(model=str(tmp_path / "a"), data="ade20k:/d"))
    assert cfg.recipe == "base-ade20k"


def test_defaults_are_coherent_and_warmup_cannot_exceed_the_run():
    plain = resolve_config(TrainConfig(data="folder:x"))
    assert plain.warmup_iters <= plain.iters and plain.min_lr == 0.0
    # no recipe: the groups of the nine configs with paramwise_cfg
    assert (plain.encoder_norm_lr_mult, plain.norm_decay_mult, plain.bias_decay_mult) == (0.1, 0.0, 1.0)
    assert plain.sources["norm_decay_mult"] == "default"
    with pytest.raises(ValueError, match=r"warmup_iters \(--warmup-iters\) 1500 \(from recipe small-ade20k\) is "
                                         r"longer than iters \(--iters\) 200 \(given\)"):
        resolve_config(TrainConfig(model="segret_small", data="ade20k:/d", iters=200))
    ok = resolve_config(TrainConfig(model="segret_small", data="ade20k:/d", iters=200, warmup_iters=0))
    assert ok.warmup_iters == 0
    for bad in (dict(weight_decay=-1.0), dict(warmup_ratio=0.0), dict(encoder_norm_lr_mult=-0.1),
                dict(norm_decay_mult=-1.0), dict(bias_decay_mult=float("nan"))):
        with pytest.raises(ValueError, match="must be|is not a finite number"):
            resolve_config(TrainConfig(data="folder:x", **bad))
    with pytest.raises(ValueError, match="amp"):
        resolve_config(TrainConfig(data="folder:x", amp="fp8"))
