"""Deploying SegRet on the CPU: the exported graph in ONNX Runtime and OpenVINO gives the PyTorch logits
at any size and holds no L x L bias; `segret-zoo predict --runtime` labels as the PyTorch path does
on the demo's trained model, and bfloat16 labels as float32 does.

A runtime that is not installed skips its tests (with the pip command in the reason)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segret_zoo.cli import main
from segret_zoo.devices import cpu_bf16_supported
from segret_zoo.inference.export import export_onnx
from segret_zoo.inference.predictor import Segmenter
from segret_zoo.inference.runtimes import load_exported, runtime_available
from segret_zoo.models.segret import SegRet

REPO = Path(__file__).resolve().parents[1]
# stages 3-4 in full mode, as in rmt_t; heads of 1-4
FULL_MODE_NET = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                     decomposed=(True, True, False, False))
# batch 1..3, odd and non-square sizes, smaller and larger than the export sample (2x3x128x160), 1x1
SIZES = ((1, 3, 64, 64), (2, 3, 96, 160), (1, 3, 77, 131), (3, 3, 200, 136), (1, 3, 20, 40), (1, 3, 1, 1))


def _skip_unless(runtime: str, extra: str):
    return pytest.mark.skipif(not runtime_available(runtime),
                              reason=f"{runtime} is not installed (pip install \"segret-zoo[{extra}]\")")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


EXPORT_OK = _importable("onnx") and _importable("onnxscript")
RUNTIME_PARAMS = [pytest.param("onnxruntime", marks=_skip_unless("onnxruntime", "onnx")),
                  pytest.param("openvino", marks=_skip_unless("openvino", "openvino"))]


@pytest.fixture(scope="module")
def model() -> SegRet:
    torch.manual_seed(0)
    m = SegRet(backbone=FULL_MODE_NET, num_classes=6, decoder_channels=32,
               pretrained_cfg=dict(test_scale=(160, 96), crop_size=(96, 96), stride=(64, 64)))
    with torch.no_grad():  # trained-looking ZIR paths and BN statistics, so folding is not a no-op
        for level in m.decoder.levels:
            level.zir_conv.weight.normal_(0, 0.05)
        for norm in [m.decoder.fuse_norm] + [level.zir_norm for level in m.decoder.levels]:
            norm.running_mean.normal_(0, 0.1)
            norm.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    if not EXPORT_OK:
        pytest.skip('ONNX export needs onnx and onnxscript (pip install "segret-zoo[onnx]")')
    path = tmp_path_factory.mktemp("onnx") / "mini.onnx"
    export_onnx(model, path)
    return path


# ------------------------------------------------------------------------------------------ the graph
@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_each_runtime_gives_the_eager_logits_at_any_size(model, exported, runtime):
    deployed = load_exported(exported, runtime, threads=1)
    assert deployed.num_classes == 6 and deployed.pretrained_cfg["test_scale"] == [160, 96]
    gen = torch.Generator().manual_seed(0)
    for size in SIZES:
        x = torch.randn(*size, generator=gen)
        with torch.no_grad():
            want = model(x)
        got = deployed(x)
        assert got.shape == want.shape, size
        diff = float((got - want).abs().max())
        assert diff <= 1e-3, (size, diff)
    assert float(want.abs().max()) > 0.05  # logits that are not all near zero


def _value_only_from_shapes(proto) -> set:
    """Names of the tensors a graph computes without reading any activation's values: from constants,
    initializers and the *shapes* of activations only (the position tables, and any bias built from them)."""
    static = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            static.update(node.output)
        elif node.op_type in ("Shape", "Size") or (node.input and all(i in static or not i for i in node.input)):
            static.update(node.output)
    return static


@pytest.mark.skipif(not runtime_available("onnxruntime"), reason='needs onnxruntime (pip install "segret-zoo[onnx]")')
def test_biases_are_built_per_group_of_heads_from_the_1d_tables(exported):
    """Every tensor the graph derives from shapes alone (decay tables, and the biases built from them)
    is read at a concrete size: the largest is one group's ``HW x HW`` bias (here a single head's,
    stage 3 having 3 heads in groups of one), never the whole stage's ``N x HW x HW`` mask. (Nothing
    size-dependent is stored in the file: the logits match at every size above.)"""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(exported))
    names = sorted(n for n in _value_only_from_shapes(proto) - {i.name for i in proto.graph.initializer}
                   if n and n not in {o.name for o in proto.graph.output})
    assert names, "no position tables found: the check would be vacuous"
    for name in names:
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    h, w = 128, 192
    tokens = (h // 16) * (w // 16)  # stage 3: 8 x 12
    values = session.run(names, {"pixel_values": np.zeros((1, 3, h, w), np.float32)})
    largest = max(int(np.asarray(v).size) for v in values)
    assert largest == tokens ** 2, largest  # one head's bias; all three heads' would be 3x that
    # one Attention op per group of heads per full-mode block (stage 3: 2 blocks x 3, stage 4: 1 x 4),
    # plus the two passes of each decomposed block (stages 1-2: 2 blocks)
    assert sum(n.op_type == "Attention" for n in proto.graph.node) == 2 * 3 + 4 + 2 * 2


@_skip_unless("openvino", "openvino")
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="OpenVINO's attention fusion is checked on x86")
def test_openvino_fuses_every_attention(exported):
    """Each attention's MatMul-bias-Softmax-MatMul chain becomes one fused kernel in OpenVINO's CPU
    plugin: no Softmax layer is left in the compiled model."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(exported), "CPU")
    kinds = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
    assert "Softmax" not in kinds, sorted(set(kinds))
    assert "Subgraph" in kinds or "ScaledDotProductAttention" in kinds, sorted(set(kinds))


# ------------------------------------------------------------------------------- the demo's trained model
@pytest.fixture(scope="module")
def demo_model_dir(full_demo) -> Path:
    return Path(json.loads((full_demo / "summary.json").read_text())["paths"]["model_dir"])


@pytest.fixture(scope="module")
def demo_images(full_demo, tmp_path_factory) -> list:
    """The demo's fresh scene, and generated scenes of other sizes (resized to the model's 48 px test
    scale by the predictor, and upsampled back)."""
    from segret_zoo.data.synthetic import make_image

    folder = tmp_path_factory.mktemp("demo_images")
    paths = [full_demo / "input.png"]
    for i, size in enumerate((64, 96)):
        rgb, _ = make_image(np.random.default_rng(10 + i), size, max_shapes=3, radius=(0.2, 0.35), rotation=0.0)
        paths.append(folder / f"scene{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def demo_onnx(demo_model_dir, tmp_path_factory) -> Path:
    if not EXPORT_OK:
        pytest.skip('ONNX export needs onnx and onnxscript (pip install "segret-zoo[onnx]")')
    path = tmp_path_factory.mktemp("demo_onnx") / "demo.onnx"
    assert main(["export-onnx", "--model", str(demo_model_dir), str(path)]) == 0
    return path


def _labels(folder: Path) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*_labels.png"))}


@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
@pytest.mark.parametrize("options", [[], ["--tta"], ["--mode", "slide"]], ids=["whole", "tta", "slide"])
def test_predict_runtime_labels_as_pytorch_on_the_demo_model(demo_model_dir, demo_onnx, demo_images, tmp_path,
                                                             runtime, options):
    images = [str(p) for p in demo_images]
    assert main(["predict", *images, "--model", str(demo_model_dir), "--out", str(tmp_path / "torch"),
                 "--quiet", "--device", "cpu", *options]) == 0
    assert main(["predict", *images, "--model", str(demo_onnx), "--runtime", runtime,
                 "--out", str(tmp_path / runtime), "--quiet", *options]) == 0
    want, got = _labels(tmp_path / "torch"), _labels(tmp_path / runtime)
    assert sorted(want) == sorted(got) and len(want) == len(images)
    classes = set()
    for name in want:
        assert got[name].shape == want[name].shape
        agree = float((got[name] == want[name]).mean())
        assert agree >= 0.995, (name, agree)
        classes |= set(np.unique(want[name]).tolist())
    if not options:
        assert len(classes) >= 2  # the labels say something: not one class everywhere
    # the probabilities, the same through both paths, say more than the labels
    import segret_zoo

    mode = dict(zip(options[::2], options[1::2])).get("--mode")
    kwargs = dict(tta="--tta" in options, mode=mode)
    torch_seg = Segmenter(segret_zoo.from_pretrained(str(demo_model_dir)), device="cpu", **kwargs)
    deployed_seg = Segmenter(load_exported(demo_onnx, runtime, threads=1), **kwargs)
    assert deployed_seg.describe() == torch_seg.describe()
    for path in demo_images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        (_, want_p), (_, got_p) = torch_seg(rgb, return_probs=True), deployed_seg(rgb, return_probs=True)
        assert got_p.shape == want_p.shape and float(np.abs(got_p - want_p).max()) <= 1e-3
    # the same palettes and per-class shares
    for name in want:
        stem = name[:-len("_labels.png")]
        with Image.open(tmp_path / "torch" / name) as a, Image.open(tmp_path / runtime / name) as b:
            assert a.mode == b.mode == "P" and a.getpalette() == b.getpalette()
        assert json.loads((tmp_path / runtime / f"{stem}.json").read_text()).keys() == \
            json.loads((tmp_path / "torch" / f"{stem}.json").read_text()).keys()


def test_bfloat16_labels_agree_with_float32_on_the_demo_model(demo_model_dir, demo_images, tmp_path):
    import segret_zoo

    model = segret_zoo.from_pretrained(str(demo_model_dir))
    fp32 = Segmenter(model, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = Segmenter(model, device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    # a CPU without native bf16 emulates it, several times slower than float32: the user is told
    slow = [w for w in caught if "no native bfloat16" in str(w.message)]
    assert len(slow) == (0 if cpu_bf16_supported() else 1)
    classes = set()
    for path in demo_images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        want, got = fp32(rgb), bf16(rgb)
        agree = float((got == want).mean())
        assert agree >= 0.99, (path.name, agree)
        classes |= set(np.unique(want).tolist())
    assert len(classes) >= 2
    # and through the command line: predict --dtype bf16
    image = str(demo_images[0])
    for dtype in ("fp32", "bf16"):
        assert main(["predict", image, "--model", str(demo_model_dir), "--out", str(tmp_path / dtype), "--quiet",
                     "--device", "cpu", "--dtype", dtype]) == 0
    a, b = _labels(tmp_path / "fp32"), _labels(tmp_path / "bf16")
    assert len(a) == 1 and float((a[next(iter(a))] == b[next(iter(b))]).mean()) >= 0.99


# ------------------------------------------------------------------------------------------- user errors
def test_runtime_options_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    base = ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]
    assert main([*base, "--model", str(tmp_path / "missing.onnx"), "--runtime", "onnxruntime"]) == 2
    assert "exported model not found" in capsys.readouterr().err
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main([*base, "--model", str(tmp_path / "m.onnx"), "--runtime", "onnxruntime",
                 "--checkpoint", "x.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "--runtime onnxruntime runs an exported .onnx file" in err and len(err.strip().splitlines()) == 1
    if runtime_available("onnxruntime"):
        assert main([*base, "--model", str(tmp_path / "m.onnx"), "--runtime", "onnxruntime", "--dtype", "bf16"]) == 2
        assert "needs --runtime openvino" in capsys.readouterr().err


def test_a_runtime_that_is_not_installed_says_how_to_install_it(tmp_path):
    """A real missing package: a folder first on the path whose ``openvino`` fails to import, as an
    absent one does."""
    fake = tmp_path / "site"
    (fake / "openvino").mkdir(parents=True)
    (fake / "openvino" / "__init__.py").write_text("raise ImportError('No module named openvino')\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "m.onnx").write_bytes(b"not used")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "segret_zoo", "predict", str(tmp_path / "a.png"), "--model",
                           str(tmp_path / "m.onnx"), "--runtime", "openvino", "--out", str(tmp_path / "o")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "openvino runtime is not installed" in lines[0] and "segret-zoo[openvino]" in lines[0]
