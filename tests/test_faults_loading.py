"""Faults and bad input on every loading path: hostile checkpoints, foreign checkpoint layouts, class
counts that disagree, config values of the wrong type, and a Hub that cannot be reached.

Every file here is real: pickles written by ``torch.save`` whose ``__reduce__`` would write a marker
file when unpickled, checkpoints of exactly the official RMT and mmsegmentation 0.x shapes, folders
written by ``save_pretrained`` and then edited. No test touches the network.
"""
from __future__ import annotations

import argparse
import builtins
import collections
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from segret_zoo.cli import main
from segret_zoo.errors import CheckpointError
from segret_zoo.factory import create_model, from_pretrained, load_model
from segret_zoo.hub.weights import load_torch_file
from segret_zoo.models.rmt import checkpoint_filter_fn
from segret_zoo.train.checkpoint import checkpoint_name, list_checkpoints, load_checkpoint
from segret_zoo.train.engine import TrainConfig, train
from tests.official_layout import randomize_, to_official
from tests.tiny_data import TensorSet

REPO_ROOT = Path(__file__).resolve().parents[1]
VECTORS = REPO_ROOT / "tests" / "data" / "reference" / "vectors"
MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
SMALL = dict(backbone=MINI, decoder_channels=32)
# the reference "mini" RMT (vectors/rmt_mini_config.json) in this project's constructor arguments
REF_MINI = dict(embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), heads_ranges=(4, 4, 6, 6),
                mlp_ratios=(3, 3, 3, 3), decomposed=(True, False, True, False),
                layer_scale=(False, True, False, True), init_values=(2, 2, 2, 2))

torch.set_num_threads(min(2, torch.get_num_threads()))


# ------------------------------------------------------------------------------------ helpers
class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def _hostile(path: Path, marker: Path, **shape) -> Path:
    """A checkpoint of the given shape with the payload hidden in it (under "meta" or the given key)."""
    torch.save({**shape, "meta": {"note": Payload(marker)}}, path)
    return path


def _small_state(seed: int = 0, num_classes: int = 150) -> dict:
    model = create_model("segret_tiny", num_classes=num_classes, **SMALL)
    randomize_(model, seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _assert_refused(err: BaseException, path: Path) -> None:
    text = str(err)
    assert str(path) in text and "refused for safety" in text and "builtins.exec" in text, text
    assert "\n" not in text


def _train_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model="segret_tiny", model_kwargs=dict(SMALL), train_dataset=TensorSet(4), val_dataset=TensorSet(2, 1),
                iters=2, batch_size=2, warmup_iters=1, eval_interval=100, ckpt_interval=1, log_interval=1,
                out_dir=str(out), progress=False, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------ no loading path runs code
def test_resume_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    evil = _hostile(tmp_path / "resume.pt", marker, format="segret-zoo-train-checkpoint/1", iteration=1,
                    model=_small_state())
    with pytest.raises(CheckpointError) as err:
        train(_train_cfg(tmp_path / "run", resume=str(evil)))
    _assert_refused(err.value, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


def test_resume_auto_with_a_planted_checkpoint_never_runs_it(tmp_path):
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    train(_train_cfg(run, iters=4, stop_at=2))  # a real run folder with iter 1 and 2 checkpoints, 4 planned
    good = list_checkpoints(run)
    assert [p.name for p in good] == [checkpoint_name(1), checkpoint_name(2)]
    planted = _hostile(good[-1].parent / checkpoint_name(3), marker, **torch.load(good[-1], weights_only=False))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            result = train(_train_cfg(run, iters=4, resume="auto"))
        except CheckpointError as err:  # the latest checkpoint is refused, naming the file
            _assert_refused(err, planted)
        else:  # or the engine falls back to the last good checkpoint, saying why
            assert result["iters"] == 4
            assert any("refused for safety" in str(w.message) for w in record), [str(w.message) for w in record]
    assert not marker.exists()


def test_convert_rmt_refuses_code(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    rmt = timm.create_model("rmt_t", device="meta")
    official = to_official(rmt, {k: torch.zeros(v.shape) for k, v in rmt.state_dict().items()})
    evil = _hostile(tmp_path / "RMT-T.pth", marker, model=official, epoch=3)
    assert main(["convert-rmt", str(evil), str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "refused for safety" in stderr and "Traceback" not in stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("route", ["pretrained_backbone", "checkpoint_path", "from_pretrained(file)",
                                   "from_pretrained(folder)", "load_model"])
def test_weights_files_with_code_are_refused(tmp_path, route):
    marker = tmp_path / "MARKER"
    evil = _hostile(tmp_path / "weights.pth", marker, state_dict=_small_state())
    folder = tmp_path / "saved"
    if route == "from_pretrained(folder)":  # a save_pretrained folder whose weights were swapped
        create_model("segret_tiny", **SMALL).save_pretrained(folder, safe_serialization=False)
        evil = _hostile(folder / "pytorch_model.bin", marker, state_dict=_small_state())
    build = {
        "pretrained_backbone": lambda: create_model("segret_tiny", pretrained_backbone=evil, **SMALL),
        "checkpoint_path": lambda: create_model("segret_tiny", checkpoint_path=evil, **SMALL),
        "from_pretrained(file)": lambda: from_pretrained(evil),
        "from_pretrained(folder)": lambda: from_pretrained(folder),
        "load_model": lambda: load_model("segret_tiny", evil, **SMALL),
    }[route]
    with pytest.raises(CheckpointError) as err:
        build()
    _assert_refused(err.value, evil)
    assert not marker.exists()


def test_safe_reader_reads_our_own_training_checkpoints(tmp_path):
    """numpy / python RNG states and numpy scalars are data: the allowlist reads them back unchanged."""
    import random

    state = {"rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
             "best_metric": np.float64(0.5), "count": np.int64(3), "palette": np.arange(6).reshape(2, 3)}
    torch.save(state, tmp_path / "ckpt.pt")
    back = load_torch_file(tmp_path / "ckpt.pt")
    assert back["rng"][0]["python"] == state["rng"][0]["python"]
    assert back["rng"][0]["numpy"][0] == "MT19937"
    assert np.array_equal(back["rng"][0]["numpy"][1], state["rng"][0]["numpy"][1])
    assert back["best_metric"] == 0.5 and back["count"] == 3 and np.array_equal(back["palette"], state["palette"])


# --------------------------------------------------------------------- foreign checkpoint shapes
def _official_training_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """The file the official (DeiT-style) RMT training script writes for ``model``: weights (DDP
    prefix), EMA weights, optimizer, schedule, scaler, epoch, best accuracy and its argparse.Namespace."""
    from timm.scheduler import CosineLRScheduler

    official = to_official(model, model.state_dict())
    params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters() if p.ndim == 1][:2]  # a copy
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # so the optimizer state holds moments, as after training
    scheduler = CosineLRScheduler(optimizer, t_initial=300, warmup_t=5, warmup_lr_init=1e-6)
    args = argparse.Namespace(model="RMT_T3", input_size=224, batch_size=128, epochs=300, drop_path=0.1,
                              model_ema=True, model_ema_decay=0.99996, opt="adamw", lr=1e-3, weight_decay=0.05,
                              sched="cosine", smoothing=0.1, mixup=0.8, cutmix=1.0, data_path="/data/imagenet",
                              output_dir="/out/RMT-T", resume="", start_epoch=0, dist_url="env://", seed=0)
    torch.save({"model": collections.OrderedDict((f"module.{k}", v) for k, v in official.items()),
                "model_ema": collections.OrderedDict(official),
                "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 17},
                "epoch": 299, "max_accuracy": 82.4, "args": args}, path)
    return path


def test_official_rmt_training_checkpoint_converts_and_reproduces_the_model(tmp_path, capsys):
    model = timm.create_model("rmt_t").eval()
    randomize_(model, seed=7)
    ckpt = _official_training_checkpoint(model, tmp_path / "RMT-T.pth")
    assert main(["convert-rmt", str(ckpt), str(tmp_path / "out")]) == 0, capsys.readouterr().err
    converted = timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(
        file=str(tmp_path / "out" / "model.safetensors"))).eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-4, rtol=0)


def test_official_rmt_training_checkpoint_is_a_backbone(tmp_path):
    donor = create_model("segret_tiny", backbone=REF_MINI, decoder_channels=32).eval()
    randomize_(donor, seed=8)
    ckpt = _official_training_checkpoint(donor.encoder, tmp_path / "RMT-mini.pth")
    model = create_model("segret_tiny", backbone=REF_MINI, decoder_channels=32, pretrained_backbone=ckpt)
    ours = donor.encoder.state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, ours[key]), key


def test_mmseg_0x_checkpoint_loads_as_a_backbone(tmp_path):
    """``state_dict`` (backbone + decode head), ``meta`` (versions, class names, palette, config text)
    and ``optimizer``, as mmsegmentation 0.x / mmcv 1.x save them."""
    reference = load_file(VECTORS / "rmt_mini_seg_official.safetensors")  # the backbone's own keys
    state = collections.OrderedDict((f"backbone.{k}", v) for k, v in reference.items())
    state["decode_head.conv_seg.weight"] = torch.zeros(4, 8, 1, 1)
    state["decode_head.conv_seg.bias"] = torch.zeros(4)
    ckpt = {
        "meta": {"mmcv_version": "1.7.1", "time": "Tue Mar  5 10:00:00 2024", "env_info": "sys.platform: linux\n"
                 "Python: 3.8.13\nCUDA available: True", "seed": 0, "exp_name": "segret_rmt_t_ade20k.py",
                 "config": "norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(type='EncoderDecoder')",
                 "CLASSES": ("wall", "building", "sky", "floor"), "PALETTE": [[120, 120, 120], [180, 120, 120],
                                                                             [6, 230, 230], [80, 50, 50]],
                 "hook_msgs": {"last_ckpt": "work_dirs/iter_160000.pth"}, "epoch": 1, "iter": 160000},
        "state_dict": state,
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                      "param_groups": [{"lr": 6e-5, "betas": (0.9, 0.999), "weight_decay": 0.01, "params": [0]}]},
    }
    torch.save(ckpt, tmp_path / "iter_160000.pth")
    with pytest.warns(UserWarning, match="feature_norms"):  # the RMT backbone's per-stage norms: no place in SegRet
        model = create_model("segret_tiny", backbone=REF_MINI, backbone_kwargs=dict(use_rot_pos_emb=True,
                             use_mlp_dwconv=True), decoder_channels=32,
                             pretrained_backbone=tmp_path / "iter_160000.pth").eval()
    own = {k: v for k, v in model.encoder.state_dict().items()}
    converted = checkpoint_filter_fn(reference, model.encoder)
    for key, value in own.items():
        assert torch.equal(value, converted[key]), key


# ----------------------------------------------------- a classifier is never silently replaced
def _tiny19(tmp_path: Path, **kwargs) -> tuple:
    model = create_model("segret_tiny", num_classes=19, **kwargs)
    randomize_(model, seed=11)
    return model.eval(), model.save_pretrained(tmp_path / "tiny19")


def test_config_num_classes_disagreeing_with_weights_is_an_error(tmp_path):
    model, folder = _tiny19(tmp_path, **SMALL)
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = 150
    for key in ("id2label", "label2id"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "dropping the classifier" warning either
        with pytest.raises(CheckpointError, match=r"classifier for 19 classes but the model was built for 150.*"
                                                  r"num_classes=19"):
            from_pretrained(folder)
    # asking for the weights' count, or for a new one explicitly (fine-tuning), still works
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder, num_classes=19)(x), model(x))
    with pytest.warns(UserWarning, match="randomly initialised classifier"):
        assert from_pretrained(folder, num_classes=150).num_classes == 150


def test_config_labels_disagreeing_with_num_classes_name_the_file(tmp_path):
    _, folder = _tiny19(tmp_path, **SMALL)
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = 150
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: num_classes is 150 but id2label names 19 classes"):
        from_pretrained(folder)


def test_zoo_name_with_bare_weights_takes_the_checkpoint_class_count(tmp_path):
    model, folder = _tiny19(tmp_path, **SMALL)
    weights = folder / "model.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model("segret_tiny", weights, **SMALL)
    assert loaded.num_classes == 19 and loaded.pretrained_cfg["dataset"] is None
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    # an explicit other count is fine-tuning: the classifier is dropped, with a warning
    with pytest.warns(UserWarning, match="randomly initialised classifier"):
        assert load_model("segret_tiny", weights, num_classes=5, **SMALL).num_classes == 5


def test_predict_and_eval_never_use_a_random_classifier(tmp_path, capsys):
    """The CLI with a real segret_tiny: predict uses the checkpoint's 19 classes; eval on a 3-class
    dataset refuses the 19-class checkpoint in one line naming both counts."""
    from PIL import Image

    from segret_zoo.inference.predictor import Segmenter

    model, folder = _tiny19(tmp_path)
    weights = folder / "model.safetensors"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)  # square: resized to 512 x 512
    Image.fromarray(image).save(tmp_path / "img.png")
    rc = main(["predict", str(tmp_path / "img.png"), "--model", "segret_tiny", "--checkpoint", str(weights),
               "--out", str(tmp_path / "pred"), "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    labels = np.array(Image.open(tmp_path / "pred" / "img_labels.png"))
    expected = Segmenter(model, device="cpu").predict_arrays([image])[0]
    assert np.array_equal(labels, np.asarray(expected))  # the trained 19-class head, not a random 150-class one
    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        (data / "masks" / split).mkdir(parents=True)
        Image.fromarray(image).save(data / "images" / split / "a.png")
        Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8)).save(data / "masks" / split / "a.png")
    (data / "classes.txt").write_text("a\nb\nc\n")
    capsys.readouterr()
    rc = main(["eval", "--model", "segret_tiny", "--checkpoint", str(weights), "--data", f"folder:{data}",
               "--device", "cpu", "--out", str(tmp_path / "ev"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "predicts 19 classes but the dataset has 3" in err and err.count("\n") == 1, err
    assert not (tmp_path / "ev" / "metrics.json").exists()


# ------------------------------------------------------------------------- bad values, no network
def test_config_value_of_the_wrong_type_names_file_key_value_and_type(tmp_path, capsys):
    _, folder = _tiny19(tmp_path, **SMALL)
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = "many"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    text = str(err.value)
    for part in (str(folder / "config.json"), 'num_classes is "many" (a string)', "expected an integer from 1 to"):
        assert part in text, (part, text)
    assert main(["predict", str(folder / "x.png"), "--model", str(folder), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert 'num_classes is "many"' in stderr and "Traceback" not in stderr and stderr.count("\n") == 1


def test_push_without_network_is_one_line(tmp_path):
    folder = create_model("segret_tiny", **SMALL).save_pretrained(tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SEGRET_ZOO_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_not_a_real_token", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "segret_zoo", "push", str(folder), "me/segret-test"], env=env,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "me/segret-test" in lines[0] and "unreachable" in lines[0] and "127.0.0.1:9" in lines[0]
