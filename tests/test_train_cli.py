"""``segret-zoo train`` on a tiny folder dataset, and its exit codes."""
from __future__ import annotations

import json
import signal

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
