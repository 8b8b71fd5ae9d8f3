"""``segret-zoo train`` on a tiny folder dataset, and its exit codes."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from segret_zoo.cli import main
from tests.tiny_data import make_folder_dataset

TINY_BACKBONE = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


@pytest.fixture
def tiny_model_dir(tmp_path):
    from segret_zoo.models.segret import SegRet

    SegRet(backbone=TINY_BACKBONE, num_classes=5, decoder_channels=16).save_pretrained(tmp_path / "init")
    return tmp_path / "init"


def test_train_cli_two_iterations(tmp_path, tiny_model_dir, capsys):
    data = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--data", f"folder:{data}", "--iters", "2", "--batch-size", "2",
            "--crop", "32", "32", "--scale", "64", "32", "--eval-interval", "2", "--ckpt-interval", "1",
            "--log-interval", "1", "--warmup-iters", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iters"] == 2 and summary["stop_reason"] == "completed"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["train", "train", "eval"]
    assert (out / "curves.png").is_file() and (out / "checkpoints" / "iter_00000002.pt").is_file()
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["num_classes"] == 3 and config["id2label"] == {"0": "sky", "1": "road", "2": "car"}
    # resuming a finished run is a no-op that still succeeds; a fresh run into it is refused
    assert main(argv + ["--resume", "auto"]) == 0
    assert main(argv) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_train_cli_user_errors(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", n_val=0)
    assert main(["train", "--data", f"folder:{data}", "--recipe", "ade20k-16k", "--out", str(tmp_path / "o")]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    assert main(["train", "--data", f"folder:{tmp_path / 'missing'}", "--warmup-iters", "10",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_train_cli_signal_exit_codes(tmp_path, monkeypatch, sig, code):
    import segret_zoo.cli.train as train_cli

    def fake_train(cfg):
        return {"run_dir": str(tmp_path), "iters": 3, "interrupted": True, "signal": int(sig),
                "checkpoint": str(tmp_path / "checkpoints" / "iter_00000003.pt"), "history": []}

    monkeypatch.setattr(train_cli, "train", fake_train)
    data = make_folder_dataset(tmp_path / "data")
    assert main(["train", "--data", f"folder:{data}", "--out", str(tmp_path / "o")]) == code


def test_print_config_shows_every_value_its_source_and_the_groups(capsys):
    # the data need not exist: nothing is built but the model, on the meta device
    assert main(["train", "--model", "segret_base", "--data", "cityscapes:/nowhere", "--iters", "3000",
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.startswith("  ")}
    assert out.splitlines()[0] == ("recipe: base-cityscapes  [auto: segret_base on cityscapes "
                                   "(SegRet.B.512x1024.city.160k.py)]")
    assert lines["iters"] == ["3000", "flag"]
    assert lines["warmup_iters"] == ["1500", "recipe", "base-cityscapes"]
    assert lines["poly_power"] == ["1.0", "recipe", "base-cityscapes"]
    assert lines["scale"] == ["4096x1024", "recipe", "base-cityscapes"]
    assert lines["crop_size"] == ["512x1024", "recipe", "base-cityscapes"]
    assert lines["batch_size"] == ["8", "recipe", "base-cityscapes"]
    # no paramwise_cfg in that config: plain AdamW, every parameter (norms included) decayed at lr x1
    assert lines["encoder_norm_lr_mult"] == ["1.0", "recipe", "base-cityscapes"]
    assert lines["norm_decay_mult"] == ["1.0", "recipe", "base-cityscapes"]
    assert lines["bias_decay_mult"] == ["1.0", "recipe", "base-cityscapes"]
    assert lines["head_lr_mult"] == ["1.0", "default"] and lines["min_lr"] == ["0.0", "recipe", "base-cityscapes"]
    assert "parameter groups (as the configs without paramwise_cfg: every parameter decayed at lr x1):" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "params in" in line}
    assert set(rows) >= {"encoder_weight", "encoder_bias", "encoder_norm", "head_weight", "head_bias", "head_norm"}
    assert all(row.endswith("lr x1  weight decay 0.01") for row in rows.values()), rows
    # a named (legacy) recipe, flags on top, and no recipe at all
    assert main(["train", "--model", "segret_small", "--data", "ade20k:/nowhere", "--recipe", "cocostuff-80k",
                 "--weight-decay", "0.05", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe: small-cocostuff  [flag (cocostuff-80k for segret_small)]")
    assert "  weight_decay          0.05                     flag" in out
    assert "  iters                 60000                    recipe small-cocostuff" in out
    # small-cocostuff has paramwise_cfg: encoder norms lr x0.1 undecayed, other norms undecayed, biases decayed
    assert "parameter groups (as the configs with paramwise_cfg: encoder norms lr x0.1" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "params in" in line}
    assert rows["encoder_norm"].endswith("lr x0.1  weight decay 0")
    assert rows["head_norm"].endswith("lr x1  weight decay 0")
    assert rows["encoder_bias"].endswith("lr x1  weight decay 0.05") and rows["head_weight"].endswith("decay 0.05")
    # flags win over the recipe's groups
    assert main(["train", "--model", "segret_small", "--data", "ade20k:/nowhere", "--norm-decay-mult", "1",
                 "--bias-decay-mult", "0", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  norm_decay_mult       1.0                      flag" in out and "(custom multipliers)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "params in" in line}
    assert rows["encoder_norm"].endswith("lr x0.1  weight decay 0.01") and rows["head_bias"].endswith("decay 0")
    assert main(["train", "--data", "ade20k:/nowhere", "--recipe", "none", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe: none  [flag]") and "  warmup_iters          0                        default" in out


def test_train_on_cocostuff10k_records_protocol_groups_and_sources(tmp_path):
    from segret_zoo.models.segret import SegRet

    fixture = Path(__file__).parent / "data" / "cocostuff10k"
    SegRet(backbone=TINY_BACKBONE, num_classes=171, decoder_channels=16).save_pretrained(tmp_path / "init")
    out = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / "init"), "--data", f"cocostuff10k:{fixture}", "--iters", "1",
                 "--batch-size", "2", "--crop", "32", "32", "--scale", "64", "32", "--out", str(out),
                 "--no-progress"]) == 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["recipe"] is None and cfg["sources"]["recipe"].startswith("auto: none (the size of model")
    assert cfg["sources"]["iters"] == "flag" and cfg["sources"]["weight_decay"] == "default"
    groups = {g["name"]: g for g in cfg["param_groups"]}
    named = {"encoder_weight", "encoder_bias", "encoder_norm", "head_weight", "head_bias", "head_norm"}
    assert named <= set(groups) <= named | {"other_norm"}  # other_norm: norms outside encoder and decoder, if any
    model = SegRet.from_pretrained(out / "last")
    assert sum(g["params"] for g in groups.values()) == sum(p.numel() for p in model.parameters())
    # no recipe: the paramwise configs' groups (encoder norms x0.1, norms undecayed, biases decayed)
    assert groups["encoder_norm"]["lr_mult"] == 0.1 and groups["head_norm"]["weight_decay"] == 0.0
    assert groups["encoder_bias"]["weight_decay"] == groups["head_weight"]["weight_decay"] == 0.01
    assert cfg["norm_decay_mult"] == 0.0 and cfg["bias_decay_mult"] == 1.0
    # the exported model carries COCO-Stuff 10k's test protocol, not the training resize's scale
    pcfg = model.pretrained_cfg
    assert pcfg["dataset"] == "cocostuff" and pcfg["dataset_name"] == "COCO-Stuff 10k (171 classes)"
    assert pcfg["reduce_zero_label"] is True and tuple(pcfg["test_scale"]) == (2048, 512)
    assert pcfg["test_size_divisor"] == 32 and pcfg["test_mode"] == "whole"


def test_train_from_a_folded_model_folder(tmp_path, capsys):
    """A folder saved after timm's reparameterize_model (folded decoder and encoder BatchNorms) trains:
    autograd goes through the folded decoder (no in-place output buffer) and the loss is finite."""
    import torch
    from timm.utils import reparameterize_model

    from segret_zoo.factory import from_pretrained
    from segret_zoo.models.segret import SegRet

    model = SegRet(backbone=TINY_BACKBONE, num_classes=3, decoder_channels=16).eval()
    folded = reparameterize_model(model)
    assert folded.zir_fused and folded.encoder_bn_folded
    folded.save_pretrained(tmp_path / "folded")
    data = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / "folded"), "--data", f"folder:{data}", "--iters", "2",
                 "--batch-size", "2", "--crop", "32", "32", "--scale", "64", "32", "--eval-interval", "2",
                 "--warmup-iters", "0", "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if r["type"] == "train")
    trained = from_pretrained(out / "last")
    assert trained.zir_fused  # still the folded layout, with weights that moved
    before = folded.decoder.levels[0].proj.weight
    assert not torch.equal(trained.decoder.levels[0].proj.weight, before)
