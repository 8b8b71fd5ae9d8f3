"""Fault and bad-input tests for training and the commands' output: nothing lost, one line per problem.

Every fault is made for real: signals go to a real process group started with setsid, a real
read-only mount and a real full tmpfs (both skipped with the reason where mounting is not allowed),
truncated checkpoints, a file where a folder should be. Data and models are tiny (32-40 px images,
a one-block-per-stage backbone), so the whole module runs in well under two minutes.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from segret_zoo.cli import main
from segret_zoo.errors import (
    CheckpointError,
    DiskFullError,
    MaskValueError,
    OutputPathError,
    ResumeMismatchError,
    UserError,
)
from segret_zoo.train.checkpoint import find_last, list_checkpoints, load_checkpoint, save_checkpoint
from segret_zoo.train.engine import TrainConfig, resolve_config, train
from tests.fault_helpers import child_env, one_error_line
from tests.tiny_data import TensorSet
from tests.tiny_data import make_folder_dataset as _make_folder_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
TINY = dict(backbone=TINY_BACKBONE, decoder_channels=16, decoder_dropout=0.0)


# ------------------------------------------------------------------------------------------ helpers
def make_folder_dataset(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    return _make_folder_dataset(root, n_train, n_val, size=(32, 40), ignore_rows=3)


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    from segret_zoo.models.segret import SegRet

    torch.manual_seed(0)
    SegRet(backbone=TINY_BACKBONE, num_classes=3, decoder_channels=16, decoder_dropout=0.0).save_pretrained(
        tmp_path / "init")
    return tmp_path / "init"


def train_argv(model_dir: Path, data: Path, out: Path, *extra: str) -> list:
    return ["train", "--model", str(model_dir), "--data", f"folder:{data}", "--batch-size", "2",
            "--crop", "32", "32", "--scale", "40", "32", "--warmup-iters", "1", "--lr", "1e-3",
            "--log-interval", "1", "--out", str(out), "--no-progress", *extra]


def weights(run: Path) -> dict:
    return load_file(str(run / "last" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def cfg_for(out: Path, **kw) -> TrainConfig:
    base = dict(model="segret_tiny", model_kwargs=dict(TINY), train_dataset=TensorSet(), val_dataset=TensorSet(4, 1),
                iters=4, batch_size=4, warmup_iters=1, eval_interval=100, ckpt_interval=100, log_interval=1,
                out_dir=str(out), progress=False, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A real tmpfs mount (root only); skips the test with the reason when mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); the fault needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ------------------------------------------------------------------------------------------ recipes
def test_explicit_setting_wins_over_recipe_even_when_it_equals_the_default():
    cfg = resolve_config(TrainConfig(data="folder:x", recipe="tiny-ade20k", eval_interval=1000, lr=1e-4,
                                     batch_size=8, iters=1000))
    assert (cfg.eval_interval, cfg.batch_size, cfg.iters) == (1000, 8, 1000)
    assert cfg.ckpt_interval == 4000 and cfg.crop_size == (512, 512)  # not given: the recipe's
    assert cfg.sources["batch_size"] == "flag" and cfg.sources["ckpt_interval"] == "recipe tiny-ade20k"
    plain = resolve_config(TrainConfig(data="folder:x"))
    assert (plain.eval_interval, plain.iters, plain.lr, plain.scale) == (1000, 1000, 1e-4, (2048, 512))

    from segret_zoo.cli import build_parser
    from segret_zoo.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--data", "folder:x", "--out", "o", "--recipe", "ade20k-160k",
                                      "--eval-interval", "1000"])  # the old name: ADE20K's recipe for the model
    cli_cfg = resolve_config(config_from_args(args))
    assert cli_cfg.recipe == "tiny-ade20k"
    assert cli_cfg.eval_interval == 1000 and cli_cfg.ckpt_interval == 4000 and cli_cfg.iters == 160000


# ------------------------------------------------------------------------------------------ signals
def _start(argv: list, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segret_zoo", *argv], env=child_env(), cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=open(log, "w"), start_new_session=True, text=True)


def _wait_for_iterations(run: Path, proc: subprocess.Popen, n: int, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not log {n} iterations (exit {proc.poll()})")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_process_group_with_workers_saves_and_resumes_exactly(tmp_path, tiny_model_dir, sig, code):
    data = make_folder_dataset(tmp_path / "data", n_train=6)
    iters = 12
    run = tmp_path / "run"
    options = ("--iters", str(iters), "--workers", "2", "--eval-interval", "1000", "--ckpt-interval", "1000")
    argv = train_argv(tiny_model_dir, data, run, *options)
    # the uninterrupted reference runs alongside, in the same kind of process (same threads, same kernels)
    reference = None
    if sig == signal.SIGTERM:
        reference = _start(train_argv(tiny_model_dir, data, tmp_path / "full", *options), tmp_path / "full.txt")
    proc = _start(argv, tmp_path / "log.txt")
    _wait_for_iterations(run, proc, 3)
    os.killpg(proc.pid, sig)  # as timeout, scancel and kill -- -PGID deliver it: workers get it too
    out, _ = proc.communicate(timeout=120)
    log = (tmp_path / "log.txt").read_text()
    assert proc.returncode == code, log[-3000:]
    assert "killed by signal" not in log and "Traceback" not in log, log[-3000:]
    stopped_at = json.loads(out)["iters"]
    assert 3 <= stopped_at < iters
    last = find_last(run)
    assert last is not None and load_checkpoint(last, restore_rng=False)["iteration"] == stopped_at
    if reference is None:
        return  # SIGINT: the save is the point; the bitwise resume is checked once, for SIGTERM
    resumed = subprocess.run([sys.executable, "-m", "segret_zoo", *argv, "--resume", "auto"], env=child_env(),
                             cwd=str(ROOT), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["iters"] == iters
    reference.communicate(timeout=180)
    assert reference.returncode == 0, (tmp_path / "full.txt").read_text()[-3000:]
    assert_same_weights(weights(run), weights(tmp_path / "full"))


def test_worker_init_ignores_stop_signals_in_a_real_worker():
    """A forked worker that received SIGTERM keeps serving (the main process decides when to stop)."""
    from torch.utils.data import DataLoader

    from segret_zoo.train.engine import _blocked_stop_signals, _train_worker_init

    class Pids:
        def __len__(self) -> int:
            return 1000

        def __getitem__(self, i: int):
            if i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
            return torch.tensor(os.getpid())

    loader = DataLoader(Pids(), batch_size=1, num_workers=1, worker_init_fn=_train_worker_init)
    with _blocked_stop_signals():
        it = iter(loader)
    pids = [int(next(it)) for _ in range(5)]
    assert len(set(pids)) == 1 and pids[0] != os.getpid()
    del it


# ------------------------------------------------------------------------------------------ data checks
def test_bad_validation_mask_stops_before_the_first_iteration(tmp_path, tiny_model_dir, capsys):
    data = make_folder_dataset(tmp_path / "data")
    bad = data / "masks" / "val" / "1.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[5, 5] = 200
    Image.fromarray(mask).save(bad)
    run = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, data, run, "--iters", "2")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "200" in line
    assert not (run / "metrics.jsonl").exists() and not list_checkpoints(run)  # before iteration 1


def test_mask_size_mismatch_in_train_named_and_checks_cached(tmp_path):
    from segret_zoo.data.checks import check_dataset
    from segret_zoo.data.datasets import build_dataset

    data = make_folder_dataset(tmp_path / "data", n_train=6)
    ds = build_dataset(f"folder:{data}", split="train")
    cache = tmp_path / "cache"
    first = check_dataset(ds, "train", "full", cache_dir=cache)
    assert first.checked == 6 and not first.cached
    assert check_dataset(ds, "train", "full", cache_dir=cache).cached
    assert check_dataset(ds, "train", "quick", cache_dir=cache).cached  # a full pass answers a quick one
    small = data / "masks" / "train" / "3.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(small)
    os.utime(small, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a new mtime changes the key
    ds = build_dataset(f"folder:{data}", split="train")
    for mode in ("quick", "full"):
        with pytest.raises(MaskValueError, match="16x16 does not match") as info:
            check_dataset(ds, "train", mode, cache_dir=cache)
        assert str(small) in str(info.value) and "\n" not in str(info.value)
    assert check_dataset(ds, "train", "off").skipped_reason == "off"


def _bad_train_mask_run(tmp_path: Path, model_dir: Path, index: int) -> tuple:
    """A dataset whose train mask ``index`` holds the value 77, and the argv that trains on it with two
    workers and no up-front check (so the error comes from a worker)."""
    data = make_folder_dataset(tmp_path / "data", n_train=4)
    bad = data / "masks" / "train" / f"{index}.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[0, 0] = 77
    Image.fromarray(mask).save(bad)
    argv = train_argv(model_dir, data, tmp_path / "run", "--iters", "4", "--workers", "2", "--check-data",
                      "off", "--eval-interval", "1000")
    return bad, argv


def test_worker_traceback_in_a_mask_error_becomes_one_line(tmp_path, tiny_model_dir, capsys):
    bad, argv = _bad_train_mask_run(tmp_path, tiny_model_dir, 2)
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "77" in line and "DataLoader worker" not in line
    # the workers ignore SIGTERM, so one left behind would hang interpreter exit (multiprocessing joins it)
    assert multiprocessing.active_children() == []


def test_a_worker_error_lets_the_process_exit(tmp_path, tiny_model_dir):
    """A real process whose training died of a worker's error exits (it used to hang joining a worker)."""
    bad, argv = _bad_train_mask_run(tmp_path, tiny_model_dir, 1)
    proc = _start(argv, tmp_path / "log.txt")
    try:
        proc.communicate(timeout=60)  # it exits in a few seconds
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the training process did not exit after its error: " +
                             (tmp_path / "log.txt").read_text()[-2000:]) from None
    log = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 2, log[-2000:]
    assert str(bad) in one_error_line(log)


def test_save_comes_before_evaluation(tmp_path):
    class BrokenVal(TensorSet):
        def __getitem__(self, i: int):
            if getattr(self, "armed", False):
                raise RuntimeError("evaluation broke")
            return super().__getitem__(i)

    val = BrokenVal(4, 1)
    cfg = cfg_for(tmp_path / "run", val_dataset=val, iters=3, eval_interval=2, ckpt_interval=2)

    import segret_zoo.train.engine as engine

    original = engine._Run._evaluate

    def arm_then_evaluate(self, iteration):
        val.armed = True
        return original(self, iteration)

    engine._Run._evaluate = arm_then_evaluate
    try:
        with pytest.raises(RuntimeError, match="evaluation broke"):
            train(cfg)
    finally:
        engine._Run._evaluate = original
    assert load_checkpoint(find_last(tmp_path / "run"), restore_rng=False)["iteration"] == 2


# ------------------------------------------------------------------------------------------ resume
def test_resume_refuses_changed_settings_and_init_from_starts_a_new_schedule(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    train(cfg_for(run, iters=4, stop_at=2))
    with pytest.raises(ResumeMismatchError, match=r"iters 4 -> 8, lr 0\.001 -> 0\.01; .*--init-from"):
        train(cfg_for(run, iters=8, lr=1e-2, resume="auto"))
    with pytest.raises(ResumeMismatchError, match="batch_size 4 -> 2"):
        train(cfg_for(run, batch_size=2, resume="auto"))
    # what is left out comes from the run: continuing needs no restated options
    resumed = train(TrainConfig(train_dataset=TensorSet(), val_dataset=TensorSet(4, 1), out_dir=str(run),
                                resume="auto", progress=False))
    assert resumed["iters"] == 4
    saved = json.loads((run / "train_config.json").read_text())
    assert (saved["lr"], saved["iters"], saved["batch_size"], saved["num_classes"]) == (1e-3, 4, 4, 3)

    # the command line: another model or class count is one line, not a state-dict traceback
    data = make_folder_dataset(tmp_path / "data")
    cli_run = tmp_path / "cli"
    assert main(train_argv(tiny_model_dir, data, cli_run, "--iters", "2", "--eval-interval", "100")) == 0
    capsys.readouterr()
    for extra in (["--model", "segret_small"], ["--num-classes", "5"], ["--lr", "0.5"]):
        assert main(["train", "--data", f"folder:{data}", "--out", str(cli_run), "--resume", "auto",
                     "--no-progress", *extra]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "cannot resume" in line and "--init-from" in line, line

    new = train(cfg_for(tmp_path / "new", iters=2, init_from=str(run), lr=5e-4))
    assert new["iters"] == 2 and "resumed" not in json.dumps(new["history"])
    first = [r for r in new["history"] if r["type"] == "train"][0]
    assert first["iter"] == 1 and first["lr"] == pytest.approx(5e-4 * 1e-6, rel=1e-3, abs=1e-12)  # warm-up from 0
    with pytest.raises(CheckpointError, match="another model or class count"):
        train(cfg_for(tmp_path / "new2", model_kwargs=dict(TINY, decoder_channels=8), init_from=str(run)))


def test_truncated_latest_checkpoint_falls_back_and_stale_temporaries_are_removed(tmp_path):
    full = train(cfg_for(tmp_path / "full", iters=5))
    run = tmp_path / "run"
    train(cfg_for(run, iters=5, stop_at=3, ckpt_interval=1, keep_checkpoints=3))
    latest = find_last(run)
    assert latest.name == "iter_00000003.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a save killed half-way
    stale = run / "checkpoints" / ".iter_00000004.pt.k1ll3d.tmp"
    stale.write_bytes(b"partial")
    with pytest.warns(UserWarning, match="iter_00000003.pt cannot be read"):
        resumed = train(cfg_for(run, iters=5, resume="auto", ckpt_interval=1, keep_checkpoints=3))
    assert resumed["iters"] == 5 and not stale.exists()
    assert [r["iter"] for r in resumed["history"] if r["type"] == "train"] == [1, 2, 3, 4, 5]
    assert_same_weights(weights(run), weights(tmp_path / "full"))
    assert full["iters"] == 5
    # an explicit file that cannot be read is one clear error
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot resume from"):
        train(cfg_for(tmp_path / "other", resume=str(bad)))


# ------------------------------------------------------------------------------------------ output folders
def test_out_that_cannot_be_created_is_one_line_for_every_command(tmp_path, tiny_model_dir, capsys):
    data = make_folder_dataset(tmp_path / "data")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    out = blocker / "sub"
    image = data / "images" / "val" / "0.png"
    commands = {
        "train": train_argv(tiny_model_dir, data, out, "--iters", "1"),
        "eval": ["eval", "--model", str(tiny_model_dir), "--data", f"folder:{data}", "--out", str(out),
                 "--no-progress"],
        "predict": ["predict", str(image), "--model", str(tiny_model_dir), "--out", str(out)],
        "demo": ["demo", "--quick", "--out", str(out)],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        line = one_error_line(capsys.readouterr().err)
        assert str(blocker) in line and "in the way" in line, (name, line)


def test_read_only_out_is_one_line(tmp_path, tiny_model_dir, capsys):
    data = make_folder_dataset(tmp_path / "data")
    with tmpfs(tmp_path / "ro", "64k", readonly=True) as ro:
        assert main(train_argv(tiny_model_dir, data, ro / "run", "--iters", "1")) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "read-only file system" in line and str(ro / "run") in line
        image = data / "images" / "val" / "0.png"
        assert main(["predict", str(image), "--model", str(tiny_model_dir), "--out", str(ro)]) == 2
        assert "read-only file system" in one_error_line(capsys.readouterr().err)


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path):
    from segret_zoo.models.segret import SegRet

    model = SegRet(backbone=TINY_BACKBONE, num_classes=3, decoder_channels=16)
    with tmpfs(tmp_path / "small", "4m") as disk:
        first = save_checkpoint(disk / "checkpoints" / "iter_00000001.pt", model=model, iteration=1)
        size = first.stat().st_size
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - size // 2))  # room for half a checkpoint
        with pytest.raises(DiskFullError) as info:
            save_checkpoint(disk / "checkpoints" / "iter_00000001.pt", model=model, iteration=2)
        msg = str(info.value)
        assert "no space left" in msg and str(first) in msg and "\n" not in msg
        assert isinstance(info.value, UserError) and isinstance(info.value, OSError)
        assert load_checkpoint(first, restore_rng=False)["iteration"] == 1  # the previous one is intact
        assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == ["iter_00000001.pt"]  # no temporaries


def _fill(disk: Path, leave: int) -> None:
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, free - leave))


def test_full_disk_during_training_stops_with_one_line_and_keeps_checkpoints(tmp_path, tiny_model_dir, capsys):
    data = make_folder_dataset(tmp_path / "data")
    with tmpfs(tmp_path / "small", "8m") as disk:
        run = disk / "run"
        train(cfg_for(run, iters=4, stop_at=2, ckpt_interval=1, keep_checkpoints=2))
        before = {p.name: p.read_bytes() for p in list_checkpoints(run)}
        _fill(disk, leave=48 * 1024)  # the logs fit, a checkpoint does not
        with pytest.raises(DiskFullError) as info:
            train(cfg_for(run, iters=4, resume="auto", ckpt_interval=1, keep_checkpoints=2))
        msg = str(info.value)
        assert "no space left" in msg and "iter_00000003.pt" in msg and "\n" not in msg
        assert {p.name: p.read_bytes() for p in list_checkpoints(run)} == before
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        # the command line says it in one line
        capsys.readouterr()
        assert main(train_argv(tiny_model_dir, data, disk / "run2", "--iters", "2", "--ckpt-interval", "1",
                               "--eval-interval", "100")) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "no space left" in line and str(disk / "run2") in line


# ------------------------------------------------------------------------------------------ files and errors
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    from segret_zoo.files import write_text_atomic

    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
        ckpt = save_checkpoint(tmp_path / "c.pt", model=torch.nn.Linear(1, 1))
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777, ckpt.stat().st_mode & 0o777) == (mode, mode)


@pytest.mark.parametrize("err", [PermissionError(13, "Permission denied", "/x/y"),
                                 OSError(28, "No space left on device", "/x/z"),
                                 OSError(30, "Read-only file system", "/x/w")])
def test_any_oserror_reaching_main_is_one_line(monkeypatch, capsys, err):
    import segret_zoo.cli.demo as demo

    def boom(*args, **kwargs):
        raise err

    monkeypatch.setattr(demo, "run_demo", boom)
    assert main(["demo", "--quick", "--out", "x"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert err.strerror in line and err.filename in line


def test_output_path_error_types():
    assert issubclass(OutputPathError, UserError) and issubclass(OutputPathError, OSError)


def test_sigterm_to_a_torchrun_group_saves_the_current_iteration(tmp_path, tiny_model_dir):
    """torchrun forwards the signal its group already delivered: the copy must not abort the save."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = make_folder_dataset(tmp_path / "data", n_train=6)
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, data, run, "--iters", "200", "--workers", "1", "--eval-interval", "1000",
                      "--ckpt-interval", "1000", "--device", "cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "segret_zoo", *argv]
    proc = subprocess.Popen(cmd, env=child_env(), cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "log.txt", "w"), start_new_session=True, text=True)
    _wait_for_iterations(run, proc, 3, timeout=150)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=150)
    log = (tmp_path / "log.txt").read_text()
    assert "interrupted by SIGTERM" in log, log[-3000:]
    last = find_last(run)
    assert last is not None, log[-3000:]
    state = load_checkpoint(last, restore_rng=False)
    assert 3 <= state["iteration"] < 200 and state["world_size"] == 2
    assert len(state["rng"]) == 2
