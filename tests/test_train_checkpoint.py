"""Atomic checkpoints (a crash mid-write leaves the previous file intact), RNG round trip, find_last."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segret_zoo.train import checkpoint as ckpt


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / ckpt.checkpoint_name(10)
    ckpt.atomic_save({"iteration": 10, "model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):  # write part of the data, then die
        f.write(b"partial garbage")
        raise OSError("disk full / killed")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"iteration": 20, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert torch.load(path, weights_only=False)["iteration"] == 10


def test_killed_writer_temp_file_is_ignored(tmp_path):
    folder = tmp_path / "checkpoints"
    ckpt.atomic_save({"iteration": 1, "model": {}}, folder / ckpt.checkpoint_name(1))
    ckpt.atomic_save({"iteration": 12, "model": {}}, folder / ckpt.checkpoint_name(12))
    (folder / ".iter_00000020.pt.abc.tmp").write_bytes(b"half")  # what a SIGKILL mid-write leaves
    assert ckpt.find_last(tmp_path).name == "iter_00000012.pt"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["iter_00000001.pt", "iter_00000012.pt"]
    assert ckpt.find_last(tmp_path / "nothing") is None


def test_full_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = ckpt.save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, iteration=7,
                                best_metric=42.0, config={"iters": 9})
    expected = (random.random(), np.random.rand(), torch.rand(1))

    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda t: 1.0 / (t + 1))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    state = ckpt.load_checkpoint(path, model2, opt2, sched2)
    assert state["iteration"] == 7 and state["best_metric"] == 42.0 and state["config"] == {"iters": 9}
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_load_by_folder_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path)
    torch.save({"weights": 1}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a segret-zoo training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "plain.pt")
