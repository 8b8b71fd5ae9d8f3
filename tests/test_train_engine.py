"""Training engine: resume equality, non-finite loss, signals, logs and plot (tiny model, CPU)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segret_zoo.train.checkpoint import find_last, load_checkpoint
from segret_zoo.train.engine import NonFiniteLossError, TrainConfig, train
from tests.tiny_data import TensorSet as _TensorSet

TINY = dict(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
            decoder_channels=32)


class TensorSet(_TensorSet):
    """Ready (image, mask) tensor pairs, with ignore pixels."""

    def __init__(self, n: int = 8, seed: int = 0, size: int = 32) -> None:
        super().__init__(n, seed, size, ignore_rows=3)


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model="segret_tiny", model_kwargs=dict(TINY, decoder_dropout=0.1), train_dataset=TensorSet(),
                val_dataset=TensorSet(4, 1), iters=6, batch_size=4, warmup_iters=2, eval_interval=100,
                ckpt_interval=100, log_interval=1, out_dir=str(out), progress=False, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def losses(history):
    return [(r["iter"], r["loss"]) for r in history if r["type"] == "train"]


def test_resume_equals_uninterrupted(tmp_path):
    full = train(tiny_cfg(tmp_path / "full", iters=4))
    half = train(tiny_cfg(tmp_path / "resumed", iters=4, stop_at=2))
    assert half["iters"] == 2 and half["stop_reason"] == "stop_at" and not half["interrupted"]
    resumed = train(tiny_cfg(tmp_path / "resumed", iters=4, resume="auto"))
    assert resumed["iters"] == 4 and len(losses(resumed["history"])) == 4
    # logged losses (the resumed run's history continues the first half's) and lrs are identical
    assert losses(resumed["history"]) == losses(full["history"])
    assert [r["lr"] for r in resumed["history"] if r["type"] == "train"] == \
        [r["lr"] for r in full["history"] if r["type"] == "train"]
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the full state (optimizer moments included) matches too
    ca = torch.load(find_last(tmp_path / "full"), weights_only=False)
    cb = torch.load(find_last(tmp_path / "resumed"), weights_only=False)
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_run_folder_outputs(tmp_path):
    res = train(tiny_cfg(tmp_path / "run", iters=4, eval_interval=2, ckpt_interval=2, keep_checkpoints=1))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]
    assert [r["iter"] for r in records if r["type"] == "eval"] == [2, 4]
    assert all({"loss", "lr", "img_s"} <= r.keys() for r in records if r["type"] == "train")
    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(run / "curves.png").size == (960, 320)
    for name in ("best", "last"):
        assert (run / name / "model.safetensors").is_file() and (run / name / "config.json").is_file()
    assert [p.name for p in (run / "checkpoints").glob("iter_*.pt")] == ["iter_00000004.pt"]
    assert res["best_dir"] == str(run / "best") and res["best_miou"] == max(r["mIoU"] for r in res["history"]
                                                                           if r["type"] == "eval")
    # the exported model reloads
    from segret_zoo.factory import from_pretrained

    model = from_pretrained(run / "last")
    assert model.num_classes == 3 and model.id2label == {0: "a", 1: "b", 2: "c"}
    # an existing run is not silently overwritten
    with pytest.raises(ValueError, match="already holds a training run"):
        train(tiny_cfg(run, iters=2))


class NaNAfter(TensorSet):
    """Returns NaN images once ``after`` samples have been served."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.served = after, 0

    def __getitem__(self, i: int):
        self.served += 1
        x, y = super().__getitem__(i)
        return (torch.full_like(x, float("nan")) if self.served > self.after else x), y


def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path):
    # batch 4: iterations 1-3 use samples 1..12; iteration 4 sees NaN (the type peek takes one sample)
    cfg = tiny_cfg(tmp_path / "nan", train_dataset=NaNAfter(13), ckpt_interval=2, iters=8)
    with pytest.raises(NonFiniteLossError, match="at iteration 4") as info:
        train(cfg)
    assert "iter_00000002.pt" in str(info.value)
    last = find_last(tmp_path / "nan")
    assert last is not None and last.name == "iter_00000002.pt"
    state = load_checkpoint(last, restore_rng=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "last").exists()  # nothing exported from the bad state


class SlowSet(TensorSet):
    def __getitem__(self, i: int):
        time.sleep(0.02)
        return super().__getitem__(i)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_step_and_saves(tmp_path, sig):
    cfg = tiny_cfg(tmp_path / "sig", train_dataset=SlowSet(), iters=10_000, log_interval=1)
    run = tmp_path / "sig"

    def send() -> None:  # once training has logged a step, signal this (main-thread) process
        deadline = time.time() + 60
        log = run / "metrics.jsonl"  # written empty during setup: wait for a logged training step
        while time.time() < deadline and not (log.exists() and '"train"' in log.read_text()):
            time.sleep(0.02)
        os.kill(os.getpid(), sig)

    threading.Thread(target=send, daemon=True).start()
    res = train(cfg)
    assert res["interrupted"] and res["stop_reason"] == signal.Signals(sig).name and res["signal"] == sig
    assert 1 <= res["iters"] < 10_000
    last = find_last(run)
    assert last is not None and load_checkpoint(last, restore_rng=False)["iteration"] == res["iters"]
    assert (run / "last" / "model.safetensors").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_time_budget_stops_then_evaluates_and_saves(tmp_path):
    res = train(tiny_cfg(tmp_path / "tb", train_dataset=SlowSet(), iters=10_000, time_budget_s=1.0))
    assert res["stop_reason"] == "time_budget" and not res["interrupted"]
    assert 1 <= res["iters"] < 10_000
    assert res["history"][-1]["type"] == "eval" and res["history"][-1]["iter"] == res["iters"]
    assert find_last(tmp_path / "tb").name == f"iter_{res['iters']:08d}.pt"


def test_raw_numpy_dataset_with_accumulation(tmp_path):
    """Raw uint8 pairs get the mmseg train transform and are evaluated with evaluate(); accumulation runs."""
    import numpy as np

    class Raw:
        num_classes = 3
        classes = ("a", "b", "c")

        def __init__(self) -> None:
            rs = np.random.RandomState(0)
            self.items = [(rs.randint(0, 255, (40, 48, 3), dtype=np.uint8), rs.randint(0, 3, (40, 48)).astype(np.uint8))
                          for _ in range(2)]

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return self.items[i]

    res = train(tiny_cfg(tmp_path / "raw", train_dataset=Raw(), val_dataset=Raw(), crop_size=(32, 32),
                         scale=(64, 32), iters=1, warmup_iters=1, accum_steps=2))
    assert np.isfinite(losses(res["history"])[0][1]) and np.isfinite(res["last_miou"])
    cfg = json.loads((tmp_path / "raw" / "last" / "config.json").read_text())["pretrained_cfg"]
    assert list(cfg["crop_size"]) == [32, 32] and list(cfg["test_scale"]) == [64, 32]
