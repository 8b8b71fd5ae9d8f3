"""Hostile and careless input, second part (issue 16): config.json, weight values, protocol values,
backbone weights beside a saved model, and the advice of the offline errors followed literally.

Every fault is made for real: a config.json written to disk and loaded through ``from_pretrained``,
``load_model`` and ``segret-zoo predict --model FOLDER`` (in a child process whose address space is
capped, so that a value which would allocate tens of GB fails there instead of taking the machine);
safetensors files whose header labels float data as ``I32``; checkpoints of NaN weights; real child
processes with an unreachable Hub endpoint for the advice lines. Models are tiny.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segret_zoo.cli import main
from segret_zoo.errors import CheckpointError, OptionError
from segret_zoo.factory import create_model, from_pretrained, load_model
from tests.fault_helpers import child_env, one_error_line

ROOT = Path(__file__).resolve().parents[1]
MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
SMALL = dict(backbone=MINI, decoder_channels=16)
FIX = "correct it in the file or re-create the folder with save_pretrained"


def tiny(num_classes: int = 3, seed: int = 0):
    from segret_zoo.models.segret import SegRet

    torch.manual_seed(seed)
    return SegRet(backbone=MINI, num_classes=num_classes, decoder_channels=16, decoder_dropout=0.0)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return tiny().save_pretrained(tmp_path / "saved")


# ------------------------------------------------------------------------------ config.json schema
def _set(*path, value):
    def mutate(config: dict) -> None:
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _raw(data: bytes) -> bytes:
    return data


# case -> (how the file is damaged, what the one line must contain besides the file's name)
CONFIG_CASES = {
    "num_classes 10**9": (_set("num_classes", value=10**9),
                          "num_classes is 1000000000, expected an integer from 1 to 65536"),
    "decoder_channels -1": (_set("decoder_channels", value=-1),
                            "decoder_channels is -1, expected an integer from 1 to 4096"),
    "decoder_channels 1e9": (_set("decoder_channels", value=1e9),
                             "decoder_channels is 1000000000.0 (a number), expected an integer from 1 to 4096"),
    "negative embed_dims": (_set("backbone", "embed_dims", value=[-16, 32, 48, 64]),
                            "backbone.embed_dims[0] is -16, expected an integer from 1 to 2048"),
    "heads not dividing": (_set("backbone", "num_heads", value=[3, 2, 3, 4]),
                           "backbone.num_heads[0] is 3, which does not divide backbone.embed_dims[0] = 16"),
    "stages disagree": (_set("backbone", "depths", value=[1, 1, 1]),
                        "backbone.depths has 3 entries but backbone.embed_dims has 4: expected one per stage"),
    "unknown key in backbone": (_set("backbone", "drop_rat", value=0.1),
                                "backbone.drop_rat is not allowed; the keys allowed in backbone are embed_dims"),
    "unknown key in backbone_kwargs": (
        _set("backbone_kwargs", "drop_path_rate", value=0.1),
        "backbone_kwargs.drop_path_rate is not allowed (SegRet sets it: use the top-level drop_path_rate)"),
    "backbone name": (_set("backbone", value="rmt_xl"), 'backbone is "rmt_xl", expected one of "rmt_t"'),
    "mean abc": (_set("pretrained_cfg", "mean", value="abc"),
                 'pretrained_cfg.mean is "abc" (a string), expected 3 finite numbers from 0 to 1'),
    "mean 0-255": (_set("pretrained_cfg", "mean", value=[123.675, 116.28, 103.53]),
                   "pretrained_cfg.mean[0] is 123.675, expected a finite number from 0 to 1"),
    "std 0": (_set("pretrained_cfg", "std", value=[0.229, 0, 0.225]),
              "pretrained_cfg.std[1] is 0, expected a finite number above 0 and at most 1"),
    "test_scale 0 0": (_set("pretrained_cfg", "test_scale", value=[0, 0]),
                       "pretrained_cfg.test_scale[0] is 0, expected an integer from 32 to 8192 (pixels)"),
    "crop_size 3 sides": (_set("pretrained_cfg", "crop_size", value=[64, 64, 64]),
                          "pretrained_cfg.crop_size is [64, 64, 64], expected 2 integers (H, W) from 32 to 8192 (pixels) (it has 3)"),
    "stride 0": (_set("pretrained_cfg", "stride", value=[0, 64]),
                 "pretrained_cfg.stride[0] is 0, expected an integer from 1 to 8192"),
    "test_size_divisor 0": (_set("pretrained_cfg", "test_size_divisor", value=0),
                            "pretrained_cfg.test_size_divisor is 0, expected null or an integer from 1 to 1024"),
    "test_mode": (_set("pretrained_cfg", "test_mode", value="fast"),
                  'pretrained_cfg.test_mode is "fast", expected null or one of "whole", "slide", "auto"'),
    "decoder_dropout NaN": (_set("decoder_dropout", value=float("nan")),
                            "decoder_dropout is NaN, expected a finite number at least 0 and below 1"),
    "drop_path_rate 1": (_set("drop_path_rate", value=1.0),
                         "drop_path_rate is 1.0, expected a finite number at least 0 and below 1"),
    "id2label keys": (_set("id2label", value={"a": "x", "b": "y", "c": "z"}),
                      'id2label has the key "a", expected class ids: integers written in decimal'),
    "id2label gap": (_set("id2label", value={"0": "x", "1": "y", "5": "z"}),
                     "id2label has no name for class 2"),
    "id2label values": (_set("id2label", value={"0": "x", "1": 2, "2": "z"}),
                        'id2label.1 is 2 (an integer), expected a string'),
    "format_version string": (_set("format_version", value="2"),
                              'format_version is "2" (a string), expected an integer at least 1'),
    "nested 100000 deep": (_raw(b'{"num_classes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                           "is nested too deeply to be read"),
    "invalid UTF-8": (_raw(b'{"num_classes": 3, "architecture": "caf\xe9"}'),
                      "is not UTF-8 text (byte 39 is 0xe9, invalid continuation byte)"),
    "not an object": (_raw(b"[1, 2, 3]\n"), "holds a list ([1, 2, 3]), expected a JSON object"),
}

_LOAD_EVERY_WAY = r'''
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a value that allocates tens of GB fails fast
import torch
torch.set_num_threads(1)
from segret_zoo.cli import main
from segret_zoo.factory import from_pretrained, load_model
folders, image = json.loads(sys.argv[1]), sys.argv[2]
results = []
for folder in folders:
    result = {}
    for route, call in (("from_pretrained", lambda: from_pretrained(folder)), ("load_model", lambda: load_model(folder))):
        try:
            call()
            result[route] = "loaded"
        except BaseException as exc:
            result[route] = f"{type(exc).__name__}: {exc}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["predict", image, "--model", folder, "--out", folder + "-out", "--quiet"])
    except BaseException as exc:
        rc = f"{type(exc).__name__}: {exc}"
    result["cli"] = dict(rc=rc, err=err.getvalue())
    results.append(result)
print(json.dumps(results))
'''


def test_every_config_json_violation_is_one_line_naming_file_field_value_and_limits(tmp_path, saved):
    """Each damaged config.json, loaded the three public ways: ``CheckpointError`` in one line naming the file,
    the field, the value and what is allowed; the CLI prints that line and exits 2."""
    config = json.loads((saved / "config.json").read_text())
    folders = []
    for i, (damage, _) in enumerate(CONFIG_CASES.values()):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
        if isinstance(damage, bytes):
            (folder / "config.json").write_bytes(damage)
        else:
            damaged = json.loads(json.dumps(config))
            damage(damaged)
            (folder / "config.json").write_text(json.dumps(damaged))
        folders.append(str(folder))
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(image)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_EVERY_WAY)
    proc = subprocess.run([sys.executable, str(script), json.dumps(folders), str(image)], env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (name, (_, expected)), folder, result in zip(CONFIG_CASES.items(), folders, results):
        file = str(Path(folder) / "config.json")
        for route in ("from_pretrained", "load_model"):
            text = result[route]
            assert text.startswith("CheckpointError: ") and "\n" not in text, (name, route, text)
            assert file in text and expected in text, (name, route, text, expected)
        assert result["cli"]["rc"] == 2, (name, result["cli"])
        line = one_error_line(result["cli"]["err"])
        assert line.startswith("segret-zoo predict: error: ") and file in line and expected in line, (name, line)
        assert not list(Path(folder + "-out").glob("*")), name  # nothing predicted
        if not name.startswith(("nested", "invalid", "not an")):
            assert line.endswith(FIX), (name, line)


def test_unknown_top_level_keys_are_ignored_and_a_bom_is_read(tmp_path, saved):
    """Decided: keys outside the schema at the top level are kept out of the model, not refused (the
    ``config=`` of save_pretrained adds the user's own, and a newer release may add optional ones);
    a byte-order mark, as some editors write it, is read as text."""
    model = tiny().eval()
    folder = model.save_pretrained(tmp_path / "extra", config={"my_run": {"notes": ["a", "b"]}, "seed": 3})
    assert json.loads((folder / "config.json").read_text())["my_run"] == {"notes": ["a", "b"]}
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_bytes(b"\xef\xbb\xbf" + config.replace('"my_run"', '"decoder_chanels": 7, '
                                                                           '"my_run"').encode())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder)(x), model(x))


def test_config_values_are_checked_where_python_passes_them_too(saved):
    """The same schema guards the constructor: a NaN dropout or a 0 x 0 test scale never builds a model."""
    from segret_zoo.models.segret import SegRet

    with pytest.raises(OptionError, match="SegRet: id2label has the key 'a', expected class ids"):
        from_pretrained(saved, id2label={"a": "x", "b": "y", "c": "z"})  # not a bare int("a") ValueError

    cases = {
        "SegRet: decoder_dropout is nan, expected a finite number at least 0 and below 1":
            dict(decoder_dropout=float("nan")),
        "SegRet: pretrained_cfg.test_scale[0] is 0, expected an integer from 32 to 8192 (pixels)":
            dict(pretrained_cfg=dict(test_scale=(0, 0))),
        "SegRet: backbone_kwargs.in_chans is not allowed (SegRet takes RGB images (3 channels)); the keys allowed":
            dict(backbone_kwargs=dict(in_chans=4)),
    }
    for message, kwargs in cases.items():
        with pytest.raises(OptionError) as err:
            SegRet(backbone=MINI, num_classes=3, decoder_channels=16, **kwargs)
        assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(OptionError, match=r"giving heads of 3 channels, expected an even number of channels per "
                                          r"head \(the rotary shift, backbone_kwargs.use_rot_pos_emb true"):
        SegRet(backbone=dict(MINI, num_heads=(1, 2, 16, 4)), backbone_kwargs=dict(use_rot_pos_emb=True))
    with pytest.raises(OptionError, match=r"is an encoder of about [\d,]+M parameters, expected at most 1,000M"):
        SegRet(backbone=dict(embed_dims=(2048,) * 4, depths=(64,) * 4, num_heads=(16,) * 4), device="meta")
    with pytest.raises(OptionError, match="decoder_dropout is nan"):
        create_model("segret_tiny", decoder_dropout=float("nan"), **SMALL)


# ------------------------------------------------------------------------------ weight values
def _relabel_floats_as_int32(path: Path) -> None:
    """Rewrite a safetensors header so that every F32 tensor is labelled I32 (same size: the bytes stay)."""
    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    for name, entry in header.items():
        if name != "__metadata__" and entry["dtype"] == "F32":
            entry["dtype"] = "I32"
    text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert len(text) == size
    data[8:8 + size] = text
    path.write_bytes(bytes(data))


def _nan_model(folder: Path, only: str = "") -> Path:
    model = tiny()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point() and only in name:
                value.fill_(float("nan"))
    return model.save_pretrained(folder)


def test_float_weights_labelled_as_integers_are_refused_on_every_route(tmp_path, saved, capsys):
    _relabel_floats_as_int32(saved / "model.safetensors")
    weights = saved / "model.safetensors"
    routes = {
        "from_pretrained(folder)": lambda: from_pretrained(saved),
        "from_pretrained(file)": lambda: from_pretrained(weights),
        "create_model(checkpoint_path=)": lambda: create_model("segret_tiny", num_classes=3, checkpoint_path=weights,
                                                              **SMALL),
        "load_model(name, file)": lambda: load_model("segret_tiny", weights, **SMALL),
    }
    for route, call in routes.items():
        with pytest.raises(CheckpointError) as err:
            call()
        text = str(err.value)
        assert str(weights) in text and "\n" not in text, (route, text)
        assert "cannot be loaded: 145 of its 145 floating-point weights are stored as integers or booleans: " \
               "decoder.classifier.bias (int32), decoder.classifier.weight (int32)" in text, (route, text)
        assert "and 142 more; its dtype labels are wrong" in text, (route, text)
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(image)
    assert main(["predict", str(image), "--model", str(saved), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "stored as integers or booleans" in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "o").glob("*"))


def test_nan_weights_are_refused_naming_the_tensors_and_counters_are_not_checked(tmp_path, capsys):
    folder = _nan_model(tmp_path / "nan")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    text = str(err.value)
    assert f"{folder}/model.safetensors cannot be loaded: 145 of its 145 floating-point weights hold NaN or " \
           "infinite values: decoder.classifier.bias (3 of 3 values), decoder.classifier.weight (48 of 48 values)" \
           in text, text
    assert "a training run that diverged, or a damaged file" in text and "\n" not in text
    # one tensor, in a PyTorch file given as --checkpoint to the CLI
    model = tiny()
    state = model.state_dict()
    state["decoder.classifier.bias"][1] = float("inf")
    torch.save(state, tmp_path / "one.pt")
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(image)
    with pytest.raises(CheckpointError, match=r"1 of its 145 floating-point weights hold NaN or infinite values: "
                                              r"decoder.classifier.bias \(1 of 3 values\); the weights"):
        load_model("segret_tiny", tmp_path / "one.pt", **SMALL)
    # num_batches_tracked (int64) is a counter: any value loads
    state = tiny().state_dict()
    state["encoder.stem.bn1.num_batches_tracked"].fill_(-5)
    torch.save(state, tmp_path / "counter.pt")
    assert load_model("segret_tiny", tmp_path / "counter.pt", **SMALL).num_classes == 3


def test_timm_pretrained_file_of_nan_weights_is_refused(tmp_path):
    import timm

    rmt = timm.create_model("rmt_t", num_classes=10, embed_dims=MINI["embed_dims"], depths=MINI["depths"],
                            num_heads=MINI["num_heads"], head_hidden_size=16)
    state = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in rmt.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "rmt.safetensors"))
    with pytest.raises(CheckpointError, match=r"rmt.safetensors cannot be loaded: \d+ of its \d+ floating-point "
                                              r"weights hold NaN"):
        timm.create_model("rmt_t", pretrained=True, num_classes=10, embed_dims=MINI["embed_dims"],
                          depths=MINI["depths"], num_heads=MINI["num_heads"], head_hidden_size=16,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "rmt.safetensors")))


# ------------------------------------------------------------------------------ protocol values
def test_a_zero_test_scale_is_refused_where_it_enters(tmp_path):
    from segret_zoo.inference.predictor import Segmenter
    from segret_zoo.train.engine import TrainConfig, train

    model = tiny()
    with pytest.raises(OptionError, match=r"^Segmenter: test_scale\[0\] is 0, expected an integer from 32 to 8192"):
        Segmenter(model, test_scale=(0, 0))
    with pytest.raises(OptionError, match=r"^Segmenter: size_divisor is -32, expected None or an integer from 1 to 1024"):
        Segmenter(model, size_divisor=-32)
    with pytest.raises(OptionError, match=r"^Segmenter: scales\[1\] must be a finite number above 0"):
        Segmenter(model, scales=(1.0, float("nan")))
    model.pretrained_cfg["test_scale"] = (0, 0)  # edited by hand after loading
    with pytest.raises(OptionError, match=r"^Segmenter: model.pretrained_cfg.test_scale\[0\] is 0, expected"):
        Segmenter(model)
    assert Segmenter(model, test_scale=False).test_scale is None  # False: keep each image's own size
    # train(scale=(0, 0)) from Python: refused before the run folder is made
    with pytest.raises(OptionError, match=r"scale \(--scale\) \(0, 0\): each side must be an integer from 32"):
        train(TrainConfig(train_dataset=[], data=None, scale=(0, 0), out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ backbone weights
def test_pretrained_backbone_with_saved_weights_is_refused_and_alone_is_honoured(tmp_path, saved, monkeypatch,
                                                                                capsys):
    from segret_zoo.train.engine import TrainConfig, train
    from tests.tiny_data import make_folder_dataset

    backbone = saved / "model.safetensors"
    data = make_folder_dataset(tmp_path / "data", 2, 1, size=(32, 40))
    argv = ["train", "--model", str(saved), "--data", f"folder:{data}", "--pretrained-backbone", str(backbone),
            "--out", str(tmp_path / "run"), "--iters", "1", "--no-progress"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"pretrained_backbone (--pretrained-backbone) {backbone} cannot be combined with a saved model as the " \
           f"model ({saved}; --model)" in line and "drop --pretrained-backbone" in line, line
    assert not (tmp_path / "run").exists()
    with pytest.raises(OptionError, match="cannot be combined with a saved model as the model"):
        load_model(str(saved), pretrained_backbone=backbone)
    with pytest.raises(OptionError, match="cannot be combined with a full-model checkpoint"):
        load_model("segret_tiny", backbone, pretrained_backbone=True)
    with pytest.raises(OptionError, match=r"cannot be combined with published weights \(pretrained='ade20k'"):
        train(TrainConfig(model="segret_tiny", pretrained="ade20k", pretrained_backbone=True, data=f"folder:{data}",
                          out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    # a zoo name with backbone weights alone: honoured, and nothing is downloaded for the full model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("segret_tiny", pretrained_backbone=backbone, num_classes=5, **SMALL)
    donor = from_pretrained(saved)
    assert all(torch.equal(v, donor.encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())


# ------------------------------------------------------------------------------ advice, followed literally
_OFFLINE_ADVICE = r'''
import contextlib, io, json, sys, time
import timm
import segret_zoo
from segret_zoo.cli import main
out = {}
start = time.perf_counter()
try:
    timm.create_model("rmt_t", pretrained=True)
except Exception as exc:
    out["timm"] = f"{type(exc).__name__}: {exc}"
out["timm_seconds"] = time.perf_counter() - start
try:
    timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(file="RMT-T.pth"))
except Exception as exc:
    out["timm_file"] = f"{type(exc).__name__}: {exc}"
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    out[name] = dict(rc=rc, err=err.getvalue())
print(json.dumps(out))
'''


def test_offline_advice_works_when_followed_literally(tmp_path, saved):
    """A fresh process, HF_HUB_OFFLINE unset, a Hub endpoint that refuses connections, an empty cache: timm's
    ``pretrained=True`` fails within seconds without retry lines; the CLI reads ``--checkpoint``, with "not on
    the Hub yet" first; and the line it prints, typed as it says, runs (predict and train)."""
    from tests.tiny_data import make_folder_dataset

    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(image)
    data = make_folder_dataset(tmp_path / "data", 2, 1, size=(32, 40))
    train_tail = ["--data", f"folder:{data}", "--iters", "1", "--batch-size", "2", "--crop", "32", "32",
                  "--scale", "40", "32", "--no-progress"]
    cases = {
        "predict": ["predict", str(image), "--model", "segret_tiny", "--out", str(tmp_path / "p")],
        "train": ["train", "--model", "segret_tiny", "--pretrained", "ade20k", "--out", str(tmp_path / "t"),
                  *train_tail],
        # the advice, as printed: --model NAME.TAG --checkpoint PATH (a local copy; here a small saved model)
        "train as advised": ["train", "--model", "segret_tiny.ade20k", "--checkpoint", str(saved), "--out",
                             str(tmp_path / "t2"), *train_tail],
        "predict as advised": ["predict", str(image), "--model", "segret_tiny.ade20k", "--checkpoint", str(saved),
                               "--out", str(tmp_path / "p2"), "--quiet"],
    }
    script = tmp_path / "advice.py"
    script.write_text(_OFFLINE_ADVICE)
    env = child_env(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "empty"),
                    HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run([sys.executable, str(script), json.dumps(cases)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    timm_line = out["timm"]
    assert timm_line.startswith("WeightsNotFoundError: cannot download segret-zoo/rmt_t.in1k/model.safetensors: "
                                "these weights (rmt_t.in1k) are not on the Hub yet"), timm_line
    assert out["timm_seconds"] < 10, out["timm_seconds"]
    assert "pretrained_cfg_overlay=dict(file='OUT_DIR/model.safetensors')" in timm_line
    assert "Retrying" not in proc.stderr and "retry" not in proc.stderr.lower(), proc.stderr
    assert "pretrained_cfg_overlay file='RMT-T.pth' does not exist" in out["timm_file"]
    for name in ("predict", "train"):
        assert out[name]["rc"] == 2, out[name]
        line = one_error_line(out[name]["err"])
        assert line.index("not on the Hub yet") < 150, line
        assert "--model segret_tiny.ade20k --checkpoint PATH" in line and "checkpoint_path=" not in line, line
    for name in ("train as advised", "predict as advised"):
        assert out[name]["rc"] == 0, out[name]
    assert (tmp_path / "t2" / "last" / "model.safetensors").is_file()
    assert (tmp_path / "p2" / "img_labels.png").is_file()
