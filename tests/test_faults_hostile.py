"""Hostile and careless input (issue 16): every fault made for real, every refusal one line.

Real files (a damaged ``.pt``, 450 fuzzed ones, a ``classes.txt`` with a BOM), real signals to real
processes (SIGKILL during ``save_pretrained`` and during ``predict``), real second processes on the
same ``--out``, real environment variables read by real child processes. Models are tiny, so the
whole module runs in well under a minute.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segret_zoo.cli import main
from tests.fault_helpers import child_env, one_error_line

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


def tiny_model(num_classes: int = 3, **kw):
    from segret_zoo.models.segret import SegRet

    torch.manual_seed(0)
    return SegRet(backbone=TINY_BACKBONE, num_classes=num_classes, decoder_channels=16, decoder_dropout=0.0, **kw)


# ------------------------------------------------------------------------------ group 3: data lost
_SAVE_UNDER_KILL = r'''
import json, os, random, signal, sys, time
import torch
torch.set_num_threads(1)
from segret_zoo.models.segret import SegRet

folder, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parent = os.path.dirname(folder)
torch.manual_seed(0)
model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
               num_classes=3, decoder_channels=16)
SLOW = {"os.rename": 0.004, "os.remove": 0.001, "os.rmdir": 0.001, "os.link": 0.001, "os.mkdir": 0.001,
        "shutil.rmtree": 0.002, "os.chmod": 0.001, "ctypes.dlsym": 0.002}

def mark(i):
    with torch.no_grad():
        model.decoder.classifier.bias.fill_(float(i))
    model.id2label = {0: f"save{i}", 1: "b", 2: "c"}

slow = [False]
sys.addaudithook(lambda event, args: time.sleep(SLOW[event]) if slow[0] and event in SLOW else None)
mark(0)
model.save_pretrained(folder)
slow[0] = True  # how long one slowed-down save takes on this machine now: kills land within the first few
t0 = time.perf_counter()
for _ in range(3):
    model.save_pretrained(folder)
one_save = (time.perf_counter() - t0) / 3
slow[0] = False
rng = random.Random(seed)
results, start = [], 1
for k in range(kills):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: saves forever, a little slower at every file-system step
        os.close(r)
        slow[0] = True
        i = start
        while True:
            mark(i)
            model.save_pretrained(folder)
            os.write(w, b".")
            i += 1
    os.close(w)
    time.sleep(rng.uniform(0.0, 2.5 * one_save))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done = 0
    while chunk := os.read(r, 4096):
        done += len(chunk)
    os.close(r)
    hidden = sorted(p for p in os.listdir(parent) if p.startswith(".")) + \
        sorted(p for p in os.listdir(folder) if p.startswith("."))
    try:
        loaded = SegRet.from_pretrained(folder)
        label = loaded.id2label[0]
        bias = sorted(set(loaded.decoder.classifier.bias.tolist()))
        results.append(dict(kill=k, label=label, bias=bias, first=start, last=start + done, hidden=hidden))
    except Exception as err:
        results.append(dict(kill=k, error=f"{type(err).__name__}: {err}", hidden=hidden))
    start += done + 1
model.save_pretrained(folder)  # a complete save after the last kill cleans up after it
results.append(dict(final_hidden=sorted(p for p in os.listdir(parent) if p.startswith("."))
                    + sorted(p for p in os.listdir(folder) if p.startswith("."))))
print(json.dumps(results))
'''


def test_save_pretrained_killed_at_random_moments_leaves_a_complete_save(tmp_path):
    """SIGKILL a real process in the middle of ``save_pretrained`` 25 times: the folder always loads
    and is exactly one complete save (weights and config.json of the same save), and a killed save
    leaves at most its own staging folder, which the next save removes."""
    script = tmp_path / "driver.py"
    script.write_text(_SAVE_UNDER_KILL)
    folder = tmp_path / "saves" / "model"
    folder.parent.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(folder), "25", "16"], env=child_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    final = results.pop()
    for r in results:
        assert "error" not in r, r
        number = int(r["label"][len("save"):])
        assert r["bias"] == [float(number)], f"weights of one save beside the config of another: {r}"
        assert number <= r["last"], r
        assert len(r["hidden"]) <= 1, f"temporaries pile up: {r}"
    assert final["final_hidden"] == []
    assert len({r["label"] for r in results}) >= 5  # the kills did land on many different saves


def test_save_pretrained_follows_the_umask_and_keeps_other_files(tmp_path):
    """model.safetensors was written 0600 (safetensors' own mode) beside a 0644 config.json; a file the user
    put in the folder survives a re-save, a leftover of the other weights format does not."""
    folder = tmp_path / "m"
    old = os.umask(0o022)
    try:
        tiny_model().save_pretrained(folder, safe_serialization=False)
        (folder / "notes.txt").write_text("mine")
        tiny_model().save_pretrained(folder)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert modes == {"model.safetensors": "0o644", "config.json": "0o644", "README.md": "0o644",
                     "notes.txt": "0o644"}
    assert (folder / "notes.txt").read_text() == "mine"
    assert oct(folder.stat().st_mode & 0o777) == "0o755"


# ------------------------------------------------------------------------------ one run per --out
def _train_argv(model_dir: Path, data: Path, out: Path, *extra: str) -> list:
    return ["train", "--model", str(model_dir), "--data", f"folder:{data}", "--batch-size", "2", "--crop", "32", "32",
            "--scale", "40", "32", "--warmup-iters", "1", "--lr", "1e-3", "--log-interval", "1", "--out", str(out),
            "--no-progress", *extra]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    tiny_model().save_pretrained(tmp_path / "init")
    return tmp_path / "init"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    from tests.tiny_data import make_folder_dataset

    return make_folder_dataset(tmp_path / "data", 4, 2, size=(32, 40), ignore_rows=3)


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, model_dir, data_dir,
                                                                                    capsys):
    out = tmp_path / "run"
    argv = _train_argv(model_dir, data_dir, out, "--iters", "100000", "--ckpt-interval", "2",
                       "--eval-interval", "100000")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, "-m", "segret_zoo", *argv], env=child_env(), cwd=str(ROOT),
                             stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 90
        while not list((out / "checkpoints").glob("iter_*.pt")):
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        # the same job started again while the first still runs (a re-submitted job, a second terminal)
        assert main(argv + ["--resume", "auto", "--time-budget", "3"]) == 2  # (bounded, should it start)
        line = one_error_line(capsys.readouterr().err)
        assert f"--out {out} is in use by another training run still running (pid {first.pid} on " in line
        assert "choose another --out" in line
        assert first.poll() is None  # the first run goes on untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
    # killed with SIGKILL: no handler ran, yet the folder is free again
    assert main(argv + ["--resume", "auto", "--time-budget", "0.5"]) == 0
    assert "resumed from" in capsys.readouterr().err


def test_overwrite_is_a_real_flag_and_the_advice_names_it(tmp_path, model_dir, data_dir, capsys):
    out = tmp_path / "run"
    argv = _train_argv(model_dir, data_dir, out, "--iters", "1", "--eval-interval", "5")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already holds a training run" in line and "--overwrite (overwrite=True)" in line
    assert "--resume auto" in line
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    assert main(argv + ["--overwrite", "--resume", "auto"]) == 2
    assert "either --resume" in one_error_line(capsys.readouterr().err)


def test_resume_auto_takes_the_data_from_the_run_folder(tmp_path, model_dir, data_dir, capsys):
    out = tmp_path / "run"
    argv = _train_argv(model_dir, data_dir, out, "--iters", "2", "--ckpt-interval", "1", "--eval-interval", "5")
    assert main(argv) == 0
    capsys.readouterr()
    without_data = [a for a in argv if a not in ("--data", f"folder:{data_dir}")]
    assert main(without_data + ["--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().err
    # nothing to resume in a fresh folder: then the run needs its data, and says so
    fresh = [a if a != str(out) else str(tmp_path / "fresh") for a in without_data]
    assert main(fresh + ["--resume", "auto"]) == 2
    assert "needs --data" in one_error_line(capsys.readouterr().err)
    assert main(fresh) == 2
    assert "--data is required" in one_error_line(capsys.readouterr().err)


def test_resuming_a_checkpoint_with_other_optimizer_groups_is_one_line(tmp_path, model_dir, data_dir, capsys):
    """A checkpoint whose optimizer state has other parameter groups (what an earlier segret-zoo wrote:
    one group for everything) is refused in one line naming the groups and --init-from, not with the
    optimizer's ValueError. The file is rewritten for real, as the earlier version saved it."""
    from segret_zoo.train.checkpoint import find_last

    out = tmp_path / "run"
    argv = _train_argv(model_dir, data_dir, out, "--iters", "2", "--ckpt-interval", "1", "--eval-interval", "5")
    assert main(argv) == 0
    last = find_last(out)
    state = torch.load(last, weights_only=False)
    groups = state["optimizer"]["param_groups"]
    merged = dict(groups[0], params=[i for g in groups for i in g["params"]])
    state["optimizer"]["param_groups"] = [merged]
    torch.save(state, last)
    capsys.readouterr()
    assert main(argv + ["--resume", "auto"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{last} was written with 1 optimizer parameter groups" in line and f"--init-from {last}" in line, line
    assert len(groups) > 1


# ------------------------------------------------------------------------------ group 1: arguments
_HOSTILE_CLI = r'''
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a run that would allocate 112 GiB fails fast
from segret_zoo.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    except BaseException as exc:
        rc = f"{type(exc).__name__}: {exc}"
    results.append(dict(argv=argv, rc=rc, err=err.getvalue()))
print(json.dumps(results))
'''


def test_hostile_option_values_are_refused_up_front_in_one_line(tmp_path, model_dir, data_dir):
    """Each value is refused before any work (no --out created, no file written), in one line naming the
    option and its limits. Run in a child whose address space is capped at 6 GiB, so that a version that
    does not check --crop fails instead of taking the machine's memory."""
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(img)
    cases = {
        "--crop": (["--crop", "100000", "100000"], "must be an integer from 32 to 8192, got 100000"),
        "--scale": (["--scale", "0", "0"], "must be an integer from 32 to 8192, got 0"),
        "--num-classes": (["--num-classes", "0"], "must be an integer from 1 to 65536, got 0"),
        "--head-lr-mult": (["--head-lr-mult", "-1"], "must be a finite number above 0, got -1"),
        "--warmup-iters": (["--warmup-iters", "-3"], "must be an integer at least 0, got -3"),
        "warm-up": (["--warmup-iters", "5"], "warmup_iters (--warmup-iters) 5 (given) is longer than iters (--iters) 2 (given)"),
    }
    argvs, expected = [], []
    for i, (option, (extra, message)) in enumerate(cases.items()):
        argvs.append(_train_argv(model_dir, data_dir, tmp_path / f"run{i}", "--iters", "2", *extra))
        expected.append((option, message, tmp_path / f"run{i}"))
    for value in ("nan", "-3"):
        argvs.append(["predict", str(img), "--model", str(model_dir), "--out", str(tmp_path / f"p{value}"),
                      "--alpha", value])
        expected.append(("--alpha", f"must be a finite number from 0 to 1, got {value}", tmp_path / f"p{value}"))
    argvs.append(["export-onnx", str(tmp_path / "m.onnx"), "--model", str(model_dir), "--opset", "999"])
    expected.append(("--opset", "opset 999 cannot be written", tmp_path / "m.onnx"))
    script = tmp_path / "cases.py"
    script.write_text(_HOSTILE_CLI)
    proc = subprocess.run([sys.executable, str(script), json.dumps(argvs)], env=child_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for result, (option, message, made) in zip(json.loads(proc.stdout.strip().splitlines()[-1]), expected):
        assert result["rc"] == 2, (option, result)
        line = one_error_line(result["err"])
        assert message in line, (option, line)
        assert option in line or option == "warm-up", (option, line)
        assert not made.exists(), f"{option}: work started before the refusal ({made} exists)"
    opset_line = one_error_line(json.loads(proc.stdout.strip().splitlines()[-1])[-1]["err"])
    assert "opset" in opset_line and "torch" in opset_line


def test_torch_hub_num_classes_of_the_wrong_type_is_one_clear_error():
    with pytest.raises(ValueError, match=r"num_classes must be an integer from 1 to 65536, got '19' \(a string\); "
                                         r"pass num_classes=19"):
        torch.hub.load(str(ROOT), "segret_tiny", source="local", num_classes="19", trust_repo=True)
    with pytest.raises(ValueError, match="num_classes must be an integer from 1 to 65536, got 0"):
        torch.hub.load(str(ROOT), "segret_tiny", source="local", num_classes=0, trust_repo=True)


def test_export_writes_exactly_the_opset_asked_for(tmp_path):
    from segret_zoo.errors import OptionError
    from segret_zoo.inference.export import _check_opset, export_onnx

    model = tiny_model().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, opset=18, exporter="legacy")
    _check_opset(path, 18, "legacy")
    with pytest.raises(OptionError, match="exporter wrote opset 18 instead of the 19 asked for"):
        _check_opset(path, 19, "legacy")  # what the dynamo exporter does when its conversion fails
    with pytest.raises(OptionError, match="legacy exporter writes at most"):
        export_onnx(model, tmp_path / "new.onnx", opset=23, exporter="legacy")
    assert not (tmp_path / "new.onnx").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_onnx_without_the_onnx_extra_names_the_install_command(tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # how an absent package looks to the import system
    assert main(["export-onnx", str(tmp_path / "m.onnx"), "--model", str(model_dir)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "onnxscript" in line and 'pip install -e ".[onnx]"' in line
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------ damaged checkpoints
def test_a_text_file_given_as_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.pt"
    bad.write_text("hi\n")  # echo hi > x.pt
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(img)
    assert main(["predict", str(img), "--model", "segret_tiny", "--checkpoint", str(bad), "--out",
                 str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{bad} is not a readable checkpoint" in line and "re-create it" in line


def test_fuzzed_checkpoints_load_or_fail_with_checkpoint_error(tmp_path):
    """450 seeded mutations (bit flips, truncations, insertions, zeroed runs) of a real training checkpoint
    in both PyTorch formats: each one either loads or raises CheckpointError, nothing else."""
    from segret_zoo.errors import CheckpointError
    from segret_zoo.hub.weights import read_state_dict

    torch.manual_seed(0)
    ckpt = {"model": {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4), "n": torch.tensor(3)},
            "iteration": 7, "meta": {"x": [1, 2.5, "s"]}}
    sources = []
    for zipped in (False, True):
        path = tmp_path / f"src_{zipped}.pt"
        torch.save(ckpt, path, _use_new_zipfile_serialization=zipped)
        sources.append(path.read_bytes())
    rng = random.Random(2024)
    outcomes = {"loaded": 0, "refused": 0}
    for k in range(450):
        data = bytearray(sources[k % 2])
        kind = k % 5
        if kind == 0:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = data[:rng.randrange(len(data))]
        elif kind == 2:
            i = rng.randrange(len(data))
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            i = rng.randrange(len(data))
            data[i:i + 16] = bytes(len(data[i:i + 16]))
        else:
            for _ in range(rng.randint(2, 10)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / "mutant.pt"
        path.write_bytes(bytes(data))
        try:
            read_state_dict(path)
            outcomes["loaded"] += 1
        except CheckpointError as err:
            assert "not a readable checkpoint" in str(err) or "refused for safety" in str(err), str(err)
            assert "\n" not in str(err)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300 and outcomes["loaded"] > 0, outcomes


# ------------------------------------------------------------------------------ classes.txt, environment
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_classes_txt_as_editors_write_it(tmp_path, newline):
    from segret_zoo.data.datasets import build_dataset
    from tests.tiny_data import make_folder_dataset

    root = make_folder_dataset(tmp_path / "d", 1, 1)
    (root / "classes.txt").write_bytes(("\ufeff" + newline.join(["sky", "road", "car"]) + newline * 3)
                                      .encode("utf-8"))
    assert build_dataset(f"folder:{root}", "train").classes == ("sky", "road", "car")
    (root / "classes.txt").write_bytes(newline.join(["sky", "", "road", "car"]).encode("utf-8"))
    with pytest.raises(ValueError, match=r"classes.txt: line 2 is blank; class ids are line numbers"):
        build_dataset(f"folder:{root}", "train")


def test_cpu_kernel_switch_is_honoured_or_refused(monkeypatch, capsys, tmp_path):
    from segret_zoo.models.cpu_kernel import kernel_status, manhattan_kernel

    for off in ("disable", "OFF", "false", "0"):
        monkeypatch.setenv("SEGRET_ZOO_CPU_KERNEL", off)
        assert manhattan_kernel() is None and kernel_status().startswith("off")
    monkeypatch.setenv("SEGRET_ZOO_CPU_KERNEL", "maybe")
    assert main(["predict", str(tmp_path / "a.png"), "--model", "segret_tiny", "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "SEGRET_ZOO_CPU_KERNEL='maybe' is not understood; set it to 0" in line
    assert not (tmp_path / "o").exists()


def test_manifest_override_that_is_not_a_manifest_file_is_one_line(tmp_path, monkeypatch):
    from segret_zoo.errors import OptionError
    from segret_zoo.hub.manifest import find_entry

    monkeypatch.setenv("SEGRET_ZOO_MANIFEST", str(tmp_path))
    with pytest.raises(OptionError, match=rf"manifest SEGRET_ZOO_MANIFEST={tmp_path} is a folder; point"):
        find_entry("segret-zoo/segret-tiny-ade20k", "model.safetensors")
    bad = tmp_path / "manifest.json"
    bad.write_text('{"checkpoints": [')
    monkeypatch.setenv("SEGRET_ZOO_MANIFEST", str(bad))
    with pytest.raises(OptionError, match=rf"manifest SEGRET_ZOO_MANIFEST={bad} is not valid JSON"):
        find_entry("segret-zoo/segret-tiny-ade20k", "model.safetensors")


# ------------------------------------------------------------------------------ predict outputs
def _noise_png(path: Path, h: int, w: int, seed: int = 0) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_predict_gives_distinct_inputs_distinct_outputs_and_says_how(tmp_path, model_dir, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for seed, name in enumerate(("a-2.png", "a.jpg", "a.png")):
        _noise_png(images / name, 24 + 8 * seed, 32, seed)
    out = tmp_path / "out"
    assert main(["predict", str(images), str(images / "a.png"), "--model", str(model_dir), "--out", str(out),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    records = {json.loads(p.read_text())["image"]: p.stem for p in out.glob("*.json")}
    assert records == {str(images / "a-2.png"): "a-2", str(images / "a.jpg"): "a", str(images / "a.png"): "a-3"}
    for image, stem in records.items():  # every output belongs to its own input
        assert Image.open(out / f"{stem}_overlay.png").size == Image.open(image).size
    assert f"note: {images / 'a.png'} -> a-3_labels.png, a-3_overlay.png, a-3.json" in err
    assert f"note: {images / 'a.png'} is listed more than once" in err
    assert "3 of 3 images segmented" in err


def _png_complete(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - 12, 0))
        return f.read() == b"\x00\x00\x00\x00IEND\xaeB`\x82"


def test_predict_killed_while_writing_leaves_no_truncated_output(tmp_path):
    """SIGKILL a real ``predict`` the moment one of its outputs is being written: every file under a final
    name is complete (the others are hidden temporaries)."""
    torch.manual_seed(0)
    tiny_model(pretrained_cfg=dict(test_scale=(64, 48))).save_pretrained(tmp_path / "m")
    images = tmp_path / "images"
    images.mkdir()
    _noise_png(images / "0.png", 1400, 1400)  # an overlay of noise: a 6 MB PNG, encoded for a good while
    for i in range(1, 6):
        (images / f"{i}.png").write_bytes((images / "0.png").read_bytes())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "segret_zoo", "predict", str(images), "--model",
                             str(tmp_path / "m"), "--out", str(out), "--quiet"], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0o022))
    caught = None
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and caught is None:
        for p in out.glob("*") if out.is_dir() else ():
            final = not p.name.startswith(".")
            if (final and p.suffix == ".png" and not _png_complete(p)) or (not final and "overlay" in p.name):
                caught = p.name  # a write in progress: kill now
                break
        if caught is None:
            time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert caught is not None, f"predict ended before a write was caught: {proc.stderr.read()[-2000:]}"
    finals = [p for p in out.iterdir() if not p.name.startswith(".")]
    for p in finals:
        if p.suffix == ".png":
            assert _png_complete(p), f"{p.name} is truncated under its final name (killed during {caught})"
            with Image.open(p) as img:
                img.load()
        else:
            json.loads(p.read_text())
        assert p.stat().st_mode & 0o777 == 0o644, p
    # the next predict into the same --out removes what the killed one left unfinished, and says so
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden, "the kill left no unfinished temporary: the clean-up below would be vacuous"
    (tmp_path / "again").mkdir()
    _noise_png(tmp_path / "again" / "b.png", 40, 40)
    err = subprocess.run([sys.executable, "-m", "segret_zoo", "predict", str(tmp_path / "again"), "--model",
                          str(tmp_path / "m"), "--out", str(out), "--quiet"], env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert err.returncode == 0, err.stderr[-2000:]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporaries left behind"
    for name in hidden:
        assert f"removed {name}, left by a predict that was killed" in err.stderr, err.stderr


_HOLD_A_WRITE = r'''
import sys
from pathlib import Path
from segret_zoo.files import atomic_write

def write(tmp):
    Path(tmp).write_text("half")
    print("writing", flush=True)
    sys.stdin.readline()  # stays in the middle of its write until told (or killed)

atomic_write(Path(sys.argv[1]) / "live.json", write)
'''


def test_clean_up_removes_killed_writers_temporaries_and_leaves_live_ones(tmp_path):
    """Two real writers: one killed mid-write (its temporary is removed), one alive mid-write (its
    temporary is left alone, then renamed when it finishes)."""
    from segret_zoo.files import clean_stale_temporaries

    script = tmp_path / "hold.py"
    script.write_text(_HOLD_A_WRITE)
    folder = tmp_path / "out"
    folder.mkdir()
    writers = [subprocess.Popen([sys.executable, str(script), str(folder)], env=child_env(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "writing"
        temporaries = sorted(p.name for p in folder.iterdir())
        assert len(temporaries) == 2 and all(n.startswith(".live.json.") for n in temporaries), temporaries
        killed, alive = writers
        killed.kill()
        killed.wait()
        removed = [p.name for p in clean_stale_temporaries(folder)]
        assert len(removed) == 1 and removed[0] in temporaries
        left = [p.name for p in folder.iterdir()]
        assert len(left) == 1 and left[0] in temporaries and left[0] != removed[0]  # the live one
        alive.stdin.write("\n")
        alive.stdin.flush()
        assert alive.wait(timeout=60) == 0
        assert [p.name for p in folder.iterdir()] == ["live.json"]
        assert (folder / "live.json").read_text() == "half"
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()


def test_predict_with_a_wrong_model_leaves_no_folder_it_made(tmp_path, capsys):
    """Every folder predict created for --out goes again (not only the last), and none that was there,
    or that has something in it by then, is touched."""
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(img)
    out = tmp_path / "new" / "deeper" / "out"
    assert main(["predict", str(img), "--model", str(tmp_path / "no-such-model"), "--out", str(out)]) == 2
    assert "no-such-model" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "note.txt").write_text("mine")
    assert main(["predict", str(img), "--model", str(tmp_path / "no-such-model"), "--out",
                 str(kept / "a" / "out")]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in kept.iterdir()) == ["note.txt"]


def test_an_image_above_the_bomb_threshold_is_one_note_line(tmp_path, model_dir, monkeypatch, capfd):
    """PIL's DecompressionBombWarning (two lines, no file name) becomes one note naming the file. PIL's
    threshold is lowered so that a small real image is above it."""
    img = tmp_path / "big.png"
    _noise_png(img, 40, 48)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest: shown once, on stderr
        assert main(["predict", str(img), "--model", str(model_dir), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"segret-zoo predict: note: {img}: 48x40 is 0.0 megapixels, above PIL's decompression-bomb "
                     f"threshold of 0.0 megapixels; read anyway (images over twice that are refused), about 0.0 GiB "
                     "as RGB",
                     f"segret-zoo predict: 1 of 1 images segmented into {tmp_path / 'o'}"], err


def test_banded_resize_and_overlay_give_the_whole_image_values():
    """The memory-saving paths of a huge photo, checked against the one-shot computations on small arrays."""
    import torch.nn.functional as F

    from segret_zoo.inference.predictor import resize_rows
    from segret_zoo.inference.visualize import overlay, palette_for, pixel_shares

    rng = np.random.default_rng(0)
    for (h, w), size in [((333, 500), (512, 769)), ((123, 457), (300, 1114))]:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        whole = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
        banded = resize_rows(x, size, band_bytes=1 << 16)
        torch.testing.assert_close(banded, resize_rows(x, size))  # bands of any height agree exactly
        diff = (banded - whole).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-5  # float rounding, rounded to levels
        labels = rng.integers(0, 7, (h, w)).astype(np.uint8)
        ids, counts = np.unique(labels, return_counts=True)
        assert pixel_shares(labels) == pytest.approx({int(i): n / labels.size for i, n in zip(ids, counts)})
        palette = palette_for(7)
        for alpha in (0.0, 0.35, 1.0):
            want = (1.0 - alpha) * rgb.astype(np.float32) + alpha * palette.astype(np.float32)[labels]
            want = np.clip(np.rint(want), 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(np.asarray(overlay(rgb, labels, palette, alpha)), want)
            np.testing.assert_array_equal(np.asarray(overlay(rgb.copy(), labels, palette, alpha, inplace=True)), want)


# ------------------------------------------------------------------------------ group 5: newcomer traps
def test_cpu_kernel_build_is_keyed_by_its_source_and_announced(tmp_path, capfd):
    from segret_zoo.models import cpu_kernel

    flags = ["-O3", "-fopenmp"]
    name = cpu_kernel.extension_name("avx2", flags)
    assert name.startswith("segret_zoo_cpu_avx2_") and name != cpu_kernel.extension_name("avx2", flags, b"// edited")
    assert cpu_kernel.extension_name("avx2", flags, cpu_kernel.SOURCE.read_bytes()) == name
    assert name != cpu_kernel.extension_name("avx2", [*flags, "-mavx2"])
    if cpu_kernel.manhattan_kernel() is None:
        pytest.skip(f"the kernel cannot be built here: {cpu_kernel.kernel_status()}")
    capfd.readouterr()
    cpu_kernel._build()  # built already (the session fixture): loaded from its keyed folder, silently
    assert "building" not in capfd.readouterr().err
    # a machine that never built this source: one line says so, before the compiler starts
    proc = subprocess.Popen([sys.executable, "-c", "from segret_zoo.models.cpu_kernel import _build; _build()"],
                            env=child_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "ext")), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        first = proc.stderr.readline()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first.startswith("segret_zoo: building the compiled CPU retention kernel segret_zoo_cpu_"), first
    assert str(tmp_path / "ext") in first


def test_pyproject_license_is_an_spdx_expression(tmp_path):
    """setuptools deprecates the ``license = {text = ...}`` table (builds stop on 2027-02-18)."""
    code = ("import sys, warnings; warnings.simplefilter('always'); from setuptools import build_meta; "
            f"print(build_meta.prepare_metadata_for_build_wheel({str(tmp_path)!r}))")
    work = tmp_path / "src"
    work.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (work / name).write_bytes((ROOT / name).read_bytes())
    (work / "segret_zoo").mkdir()
    (work / "segret_zoo" / "__init__.py").write_text("")
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metadata = (tmp_path / proc.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "license" not in proc.stderr.lower(), proc.stderr[-3000:]
