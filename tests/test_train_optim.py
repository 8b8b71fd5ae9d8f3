"""AdamW parameter groups, the warm-up + poly schedule (numbers), and the recipes."""
from __future__ import annotations

import pytest
import torch

from segret_zoo.train.optim import WarmupPoly, build_optimizer, build_scheduler, no_decay_names, param_groups
from segret_zoo.train.recipes import get_recipe, list_recipes


def test_param_groups_exclude_norms_biases_gammas(tiny_segret):
    model = tiny_segret
    groups = {g["name"]: g for g in param_groups(model, lr=1e-4, weight_decay=0.01, head_lr_mult=10.0)}
    assert set(groups) == {"encoder_decay", "encoder_no_decay", "head_decay", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    for name, g in groups.items():
        members = [names[id(p)] for p in g["params"]]
        if name.endswith("no_decay"):
            assert g["weight_decay"] == 0.0
        else:
            assert g["weight_decay"] == 0.01
            assert all(not n.endswith(".bias") and "norm" not in n for n in members)
            assert all(dict(model.named_parameters())[n].ndim > 1 for n in members)
        assert g["lr"] == pytest.approx(1e-3 if name.startswith("head") else 1e-4)
        assert all(n.startswith("decoder.") == name.startswith("head") for n in members)
    no_decay = no_decay_names(model)
    assert "decoder.fuse_norm.weight" in no_decay and "decoder.classifier.bias" in no_decay
    assert "feature_norms.0.weight" in no_decay and "decoder.classifier.weight" not in no_decay
    # every trainable parameter is in exactly one group
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def test_layer_scale_gammas_not_decayed():
    from segret_zoo.models.segret import SegRet

    model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                                 layer_scale=(False, False, True, True)), num_classes=3, decoder_channels=16)
    gammas = [n for n, _ in model.named_parameters() if n.endswith(".gamma")]
    assert gammas and set(gammas) <= no_decay_names(model)
    opt = build_optimizer(model, 1e-4, 0.01)
    assert isinstance(opt, torch.optim.AdamW)


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


def test_recipes_match_the_paper():
    assert list_recipes() == ["ade20k-160k", "cityscapes-160k", "cocostuff-80k"]
    ade, city, coco = (get_recipe(n) for n in list_recipes())
    assert (ade["crop_size"], ade["batch_size"], ade["iters"], ade["scale"]) == ((512, 512), 16, 160000, (2048, 512))
    assert (city["crop_size"], city["batch_size"], city["iters"], city["scale"]) == ((512, 1024), 8, 160000,
                                                                                     (2048, 1024))
    assert (coco["crop_size"], coco["batch_size"], coco["iters"], coco["scale"]) == ((512, 512), 16, 80000,
                                                                                     (2048, 512))
    for r in (ade, city, coco):
        assert (r["lr"], r["weight_decay"], r["warmup_iters"], r["warmup_ratio"], r["poly_power"], r["min_lr"]) == \
            (1e-4, 0.01, 1500, 1e-6, 1.0, 0.0)
        assert r["eval_interval"] == r["ckpt_interval"] == 16000
    with pytest.raises(ValueError, match="ade20k-160k"):
        get_recipe("ade20k-16k")


def test_recipe_fills_only_defaults():
    from segret_zoo.train.engine import TrainConfig, resolve_config

    cfg = resolve_config(TrainConfig(data="folder:x", recipe="cityscapes-160k", iters=50, warmup_iters=5))
    assert cfg.iters == 50 and cfg.batch_size == 8 and cfg.crop_size == (512, 1024) and cfg.scale == (2048, 1024)
    with pytest.raises(ValueError, match="amp"):
        resolve_config(TrainConfig(data="folder:x", amp="fp8"))
