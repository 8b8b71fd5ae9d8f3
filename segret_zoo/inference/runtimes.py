"""Exported models in the runtimes users deploy on: ONNX Runtime and OpenVINO, behind the model interface.

``load_exported("model.onnx", "openvino")`` returns an ``nn.Module`` that maps a normalized
``B x 3 x H x W`` float batch to ``B x K x H x W`` logits like the PyTorch model, and carries the
``pretrained_cfg`` (mean/std, test scale, crop, labels, dataset) that :func:`~segret_zoo.inference.
export.export_onnx` stores in the file. :class:`~segret_zoo.inference.Segmenter` therefore runs an
exported file with the very pre- and post-processing of the PyTorch path (resize, slide, TTA,
palettes), which is how ``segret-zoo predict --runtime`` works.

Each runtime is an optional dependency (``pip install "segret-zoo[onnx]"`` / ``"segret-zoo[openvino]"``);
asking for one that is not installed is a one-line error that names the package.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from segret_zoo.errors import OptionError, UserError

__all__ = ["RUNTIMES", "METADATA_KEY", "ExportedModel", "OnnxRuntimeModel", "OpenVinoModel", "load_exported",
           "runtime_available"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
METADATA_KEY = "segret_zoo.pretrained_cfg"
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}
# the first versions that read ONNX's Attention op (opset 23, the export default)
_OPSET23 = {"onnxruntime": "1.23", "openvino": "2026.1"}
# OpenVINO's names for the precisions a user may ask for (INFERENCE_PRECISION_HINT)
_OV_PRECISIONS = {None: "f32", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def runtime_available(runtime: str) -> bool:
    """Whether the Python package of ``runtime`` can be imported here (``torch`` always can)."""
    if runtime == "torch":
        return True
    module = _PACKAGES[runtime][0]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _require(runtime: str) -> Any:
    if runtime not in _PACKAGES:
        raise OptionError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    module, extra = _PACKAGES[runtime]
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"the {runtime} runtime is not installed: pip install \"segret-zoo[{extra}]\" "
                        f"(or pip install {module})") from None


def _load_error(runtime: str, version: str, path: Path, err: Exception) -> UserError:
    """One line for a file a runtime cannot load, with what usually fixes it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if "Attention" in line), lines[-1] if lines else type(err).__name__)
    release = tuple(int(part) for part in version.split("-")[0].split(".")[:2] if part.isdigit())
    if release < tuple(int(part) for part in _OPSET23[runtime].split(".")):
        advice = (f"files written by `segret-zoo export-onnx` (ONNX opset 23) need {runtime} >= {_OPSET23[runtime]}: "
                  "upgrade it, or export with --opset 18")
    else:
        advice = "give a model written by `segret-zoo export-onnx`"
    return UserError(f"{runtime} {version.split('-')[0]} cannot load {path} ({detail[:300]}); {advice}")


class ExportedModel(torch.nn.Module):
    """What both runtimes share: the stored config, labels and the tensor <-> array plumbing.

    ``forward`` takes a normalized float batch on the CPU (other devices are copied there and back)
    and returns float32 logits; autograd does not reach into a runtime.
    """

    runtime = ""

    def __init__(self, path: Union[str, os.PathLike], stored: Optional[str], classes: Optional[int],
                 pretrained_cfg: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.path = Path(path)
        cfg = dict(json.loads(stored)) if stored else {}
        cfg.update(pretrained_cfg or {})
        self.num_classes = int(cfg.get("num_classes") or classes or 0) or None
        self.id2label = {int(k): v for k, v in (cfg.get("id2label") or {}).items()}
        self.pretrained_cfg = cfg

    def run(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - each runtime implements it
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.run(pixels)).to(x.device)

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, path={str(self.path)!r}"


class OnnxRuntimeModel(ExportedModel):
    """An ONNX file run by ONNX Runtime's CPU provider (or ``providers``), float32."""

    runtime = "onnxruntime"

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None,
                 providers: Optional[Sequence[str]] = None, pretrained_cfg: Optional[Dict[str, Any]] = None) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise _load_error("onnxruntime", ort.__version__, Path(path), err) from None
        classes = session.get_outputs()[0].shape[1]
        super().__init__(path, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY),
                         classes if isinstance(classes, int) else None, pretrained_cfg)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: pixels})[0]


class OpenVinoModel(ExportedModel):
    """An ONNX (or OpenVINO IR) file compiled by OpenVINO for its CPU plugin.

    ``precision``: None/float32, or bfloat16 / float16 as OpenVINO's ``INFERENCE_PRECISION_HINT``
    (inputs and outputs stay float32; a CPU without native bf16 runs float32 regardless). The model
    keeps dynamic batch, height and width: one compiled model serves every input size.
    """

    runtime = "openvino"

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None,
                 precision: Optional[torch.dtype] = None, pretrained_cfg: Optional[Dict[str, Any]] = None) -> None:
        ov = _require("openvino")
        if precision not in _OV_PRECISIONS:
            raise OptionError(f"OpenVINO runs float32, bfloat16 or float16, not {precision}")
        core = ov.Core()
        config: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_PRECISIONS[precision],
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(path))
            compiled = core.compile_model(model, "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError / GeneralFailure with multi-line text
            raise _load_error("openvino", ov.__version__, Path(path), err) from None
        classes = model.outputs[0].get_partial_shape()[1]
        key = ["framework", METADATA_KEY]  # where OpenVINO keeps an ONNX file's metadata
        stored = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
        super().__init__(path, stored, classes.get_length() if classes.is_static else None, pretrained_cfg)
        self.precision = _OV_PRECISIONS[precision]
        self.compiled = compiled
        self.request = self.compiled.create_infer_request()

    def run(self, pixels: np.ndarray) -> np.ndarray:
        # share_outputs=False: the result is copied out of the request's buffer, which the next call reuses
        return self.request.infer({0: pixels}, share_inputs=True, share_outputs=False)[0]


def load_exported(path: Union[str, os.PathLike], runtime: str, threads: Optional[int] = None,
                  precision: Optional[torch.dtype] = None,
                  pretrained_cfg: Optional[Dict[str, Any]] = None) -> ExportedModel:
    """An exported model (``segret-zoo export-onnx``) in ``runtime`` ("onnxruntime" or "openvino").

    ``precision`` (a torch dtype, None for float32): bf16/fp16 need OpenVINO; ONNX Runtime runs the
    float32 graph. ``pretrained_cfg`` entries override those stored in the file.
    """
    path = Path(path)
    if runtime == "torch" or runtime not in RUNTIMES:
        raise OptionError(f"runtime must be onnxruntime or openvino for an exported file, got {runtime!r}")
    if not path.is_file():
        raise UserError(f"exported model not found: {path} (write one with `segret-zoo export-onnx --model ... "
                        f"{path.name if path.suffix == '.onnx' else 'model.onnx'}`)")
    if runtime == "onnxruntime":
        if precision not in (None, torch.float32):
            raise OptionError(f"ONNX Runtime runs the exported float32 graph; {precision} needs --runtime openvino "
                              "(or --dtype fp32)")
        return OnnxRuntimeModel(path, threads=threads, pretrained_cfg=pretrained_cfg)
    return OpenVinoModel(path, threads=threads, precision=precision, pretrained_cfg=pretrained_cfg)

