"""Deployable graphs of a SegRet model: ONNX (checked against onnxruntime) and ``torch.export`` programs.

Both export the model's inference form first (``fold_for_inference`` on a copy: the decoder's
zero-initialized residual paths folded into one 1×1 conv per stage, the encoder's BatchNorms into
their convs; the user's model is never modified), with identical outputs. Batch, height and width stay dynamic: the model
accepts any input size, and so does the exported graph.

The default ONNX exporter is torch's dynamo-based one (``torch.onnx.export(..., dynamo=True)``): it
traces through ``torch.export`` and keeps the height/width arithmetic of the retention position
tables symbolic. The default opset is 23: ``scaled_dot_product_attention`` becomes ONNX's
``Attention`` op and GELU its ``Gelu`` op, which ONNX Runtime runs as fused kernels and OpenVINO
fuses further (``benchmarks/README.md``, "Deployed graphs": 0.96x / 0.92x the time of the opset-18
graph). Opset 23 needs onnxruntime >= 1.23 or OpenVINO >= 2026.1 (both Python >= 3.10); for older
runtimes export with ``opset=18`` (same values, attention as MatMul/Softmax ops).
The TorchScript exporter (``exporter="legacy"``, opsets up to 20, its default then) is kept because
it is much faster to run and also produces dynamic H/W graphs for this model, but torch has
deprecated it.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from segret_zoo.errors import MissingDependencyError, OptionError
from segret_zoo.files import atomic_write
from segret_zoo.inference.fold import fold_for_inference
from segret_zoo.inference.runtimes import METADATA_KEY, OnnxRuntimeModel
from segret_zoo.validate import check_int

__all__ = [
    "DEFAULT_CHECK_SIZES",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "default_opset",
    "max_opset",
    "opset_problem",
    "require_onnx",
    "METADATA_KEY",
    "OnnxModel",
    "check_onnx_parity",
    "export_onnx",
    "export_program",
    "fused_copy",
]

MIN_OPSET = 17  # LayerNormalization
_ONNX_EXTRA = 'pip install -e ".[onnx]"'


def max_opset(exporter: str = "dynamo") -> int:
    """The newest ONNX opset the installed torch writes with ``exporter`` ("dynamo" or "legacy")."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover - every supported torch has them
        return 18
    newest = int(getattr(_constants, "ONNX_MAX_OPSET", 18))
    if exporter == "legacy":
        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", newest))
    return newest


def default_opset(exporter: str = "dynamo") -> int:
    """The opset written when none is given: :data:`DEFAULT_OPSET`, or the newest ``exporter`` writes if
    that is older (the TorchScript exporter stops at 20)."""
    return min(DEFAULT_OPSET, max_opset(exporter))


def opset_problem(opset: int, exporter: str = "dynamo") -> Optional[str]:
    """What is wrong with ``opset`` for ``exporter`` (None: nothing)."""
    newest = max_opset(exporter)
    if MIN_OPSET <= opset <= newest:
        return None
    return (f"opset {opset} cannot be written: opset {MIN_OPSET} is the first with LayerNormalization and torch "
            f"{torch.__version__}'s {exporter} exporter writes at most {newest}; choose one from {MIN_OPSET} to {newest}")


def missing_packages(exporter: str = "dynamo", check: bool = False) -> List[str]:
    """The packages of the ``[onnx]`` extra that this export needs and that are not installed."""
    import importlib.util

    needed = ["onnx"] + (["onnxscript"] if exporter == "dynamo" else []) + (["onnxruntime"] if check else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def require_onnx(exporter: str = "dynamo", check: bool = False) -> None:
    """One line naming the missing packages and the install command, instead of a ModuleNotFoundError later."""
    missing = missing_packages(exporter, check)
    if missing:
        raise MissingDependencyError(f"ONNX export needs {', '.join(missing)} (the [onnx] extra), which "
                                     f"{'is' if len(missing) == 1 else 'are'} not installed: {_ONNX_EXTRA} "
                                     f"in the checkout (or pip install 'segret-zoo[onnx]')")


# shapes used by the parity check: batch > 1, non-square, and sizes that are not multiples of 32
DEFAULT_CHECK_SIZES: Tuple[Tuple[int, int, int, int], ...] = ((1, 3, 256, 256), (2, 3, 224, 320), (1, 3, 333, 250))
# opset 23: ONNX's Attention op, what the runtimes fuse (default_opset: capped by what the exporter writes)
DEFAULT_OPSET = 23
_INPUT_NAME, _OUTPUT_NAME = "pixel_values", "logits"
# the ONNX Runtime form of an exported file, under its earlier name
OnnxModel = OnnxRuntimeModel


def fused_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode float32 CPU copy in its inference form (ZIR and encoder BatchNorms folded,
    :func:`~segret_zoo.inference.fold.fold_for_inference`); ``model`` is untouched."""
    return fold_for_inference(copy.deepcopy(model).eval().float().cpu(), inplace=True)


def _dynamic_shapes() -> Tuple[Dict[int, Any]]:
    # Dim.DYNAMIC, not named Dims with ranges: the strided convs' ceil-division guards would have to be
    # spelled out by hand for named Dims; DYNAMIC lets torch.export derive them
    dyn = torch.export.Dim.DYNAMIC
    return ({0: dyn, 2: dyn, 3: dyn},)


def _check_sample(size: Sequence[int]) -> None:
    # torch.export specializes dims of size 0/1 and gives equal dims one symbol ("duck sizing"):
    # a batch-1 or square sample would silently export a batch-1 or square-only graph
    if len(size) != 4 or size[1] != 3 or size[0] < 2 or size[2] == size[3] or min(size[2:]) < 33:
        raise ValueError(f"sample size must be B×3×H×W with B >= 2, H != W and H, W >= 33 so every dim stays "
                         f"dynamic, got {tuple(size)}")


def export_program(model: torch.nn.Module, sample: Optional[torch.Tensor] = None, dynamic: bool = True,
                   fuse: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` the model (ZIR folded on a copy) with dynamic batch/height/width.

    Save it with ``torch.export.save(program, "model.pt2")``; run it with ``program.module()(x)``.
    The program asserts H, W >= 33: the decoder's "upsample only when sizes differ" branch is
    specialized for inputs where the stride-32 map is smaller than the stride-4 one.
    """
    module = fused_copy(model) if fuse else copy.deepcopy(model).eval().float().cpu()
    if sample is None:
        sample = torch.randn(2, 3, 128, 160)
    _check_sample(tuple(sample.shape))
    with torch.no_grad():
        return torch.export.export(module, (sample,), dynamic_shapes=_dynamic_shapes() if dynamic else None)


def export_onnx(
    model: torch.nn.Module,
    path: Union[str, os.PathLike],
    opset: Optional[int] = None,
    sample_size: Sequence[int] = (2, 3, 128, 160),
    exporter: str = "dynamo",
    check: bool = False,
    check_sizes: Optional[Sequence[Sequence[int]]] = None,
    atol: float = 1e-3,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Write ``model`` to ``path`` as ONNX with dynamic batch, height and width, ZIR folded first.

    Input ``pixel_values`` (B×3×H×W float32, normalized with the model's mean/std), output ``logits``
    (B×K×H×W). With ``check`` the file is validated by ``onnx.checker`` and compared with the
    (unfused) PyTorch model in onnxruntime on ``check_sizes`` (default ``DEFAULT_CHECK_SIZES``); a max
    abs logit difference above ``atol`` raises ``AssertionError``. ``sample_size`` is only the tracing
    input (batch >= 2, H != W, so no dim is specialized); the graph takes any size, 1×1 included.
    The file's metadata holds the model's ``pretrained_cfg`` (see :mod:`segret_zoo.inference.runtimes`).
    Returns a report dict (path, opset, exporter, export_seconds, parity).
    """
    if exporter not in ("dynamo", "legacy"):
        raise OptionError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    if opset is None:
        opset = default_opset(exporter)
    problem = opset_problem(check_int(opset, "opset"), exporter)
    if problem:
        raise OptionError(problem)
    require_onnx(exporter, check)
    _check_sample(sample_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fused = fused_copy(model)
    sample = torch.randn(*sample_size, generator=torch.Generator().manual_seed(0))
    n_bytes = sum(p.numel() * p.element_size() for p in fused.parameters())
    external = exporter == "dynamo" and n_bytes > 1_900_000_000  # protobuf's 2 GB limit
    start = time.perf_counter()

    def write(target: Path) -> None:
        with torch.no_grad():
            if exporter == "dynamo":
                program = torch.onnx.export(
                    fused, (sample,), dynamo=True, opset_version=opset, input_names=[_INPUT_NAME],
                    output_names=[_OUTPUT_NAME], dynamic_shapes=_dynamic_shapes(), verbose=verbose)
                program.save(str(target), external_data=external)
            else:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the exporter's own deprecation notice and tracer warnings
                    torch.onnx.export(
                        fused, (sample,), str(target), dynamo=False, opset_version=opset,
                        input_names=[_INPUT_NAME], output_names=[_OUTPUT_NAME], verbose=verbose,
                        dynamic_axes={_INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                                      _OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}})
        _check_opset(target, opset, exporter)
        if not external:  # (a >2 GB model keeps the exporter's names and no metadata)
            _finalize(target, getattr(model, "pretrained_cfg", None))

    if external:  # its weights go to a side file named after the graph file: written in place
        write(path)
    else:  # complete or absent: an earlier export under this name survives a failed or killed one
        atomic_write(path, write)
    report: Dict[str, Any] = {"path": str(path), "opset": opset, "exporter": exporter,
                              "export_seconds": round(time.perf_counter() - start, 2)}
    if check:
        import onnx

        onnx.checker.check_model(str(path))
        report["parity"] = check_onnx_parity(model, path, check_sizes or DEFAULT_CHECK_SIZES, atol=atol)
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _check_opset(path: Path, opset: int, exporter: str) -> None:
    """The file must hold the opset asked for: the dynamo exporter falls back to its own default when
    converting to the requested version fails, after printing the converter's traceback."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise OptionError(f"torch's {exporter} exporter wrote opset {written} instead of the {opset} asked for "
                          f"(its version conversion failed); export with --opset {written} (opset={written}), "
                          f"or another opset from {MIN_OPSET} to {max_opset(exporter)}")


def _finalize(path: Path, pretrained_cfg: Optional[Dict[str, Any]]) -> None:
    """Name the dynamic dims and store the preprocessing config in the file.

    The exporter calls the input's batch/height/width ``s77``-like symbols; they are renamed
    everywhere they occur so tools show ``pixel_values[batch, 3, height, width]``. The model's
    ``pretrained_cfg`` (mean/std, test scale, crop, labels) goes into the metadata under
    ``segret_zoo.pretrained_cfg`` (JSON), so an exported file runs in any runtime (:mod:`segret_zoo.inference.runtimes`) without PyTorch weights.
    """
    import onnx

    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    renames = {dims[i].dim_param: new for i, new in ((0, "batch"), (2, "height"), (3, "width"))
               if len(dims) == 4 and dims[i].dim_param and re.fullmatch(r"[A-Za-z_]\w*", dims[i].dim_param)}
    if renames:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")
        for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = pattern.sub(lambda m: renames[m.group(1)], dim.dim_param)
    if pretrained_cfg:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(_jsonable(pretrained_cfg))
    onnx.save(proto, str(path))


def check_onnx_parity(
    model: torch.nn.Module,
    path: Union[str, os.PathLike],
    sizes: Sequence[Sequence[int]] = DEFAULT_CHECK_SIZES,
    atol: float = 1e-3,
    seed: int = 0,
    threads: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Run the ONNX file in onnxruntime and the PyTorch ``model`` (float32, CPU, unmodified copy) on random
    inputs of each size; returns ``[{"shape", "max_abs_diff"}]`` and raises ``AssertionError`` when a
    difference exceeds ``atol`` or an output has the wrong shape."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(model).eval().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    results = []
    for size in sizes:
        x = torch.randn(*size, generator=gen)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise AssertionError(f"onnxruntime output {got.shape} != PyTorch {expected.shape} for input {tuple(size)}")
        diff = float(np.max(np.abs(got - expected)))
        results.append({"shape": list(size), "max_abs_diff": diff})
        if not diff <= atol:
            raise AssertionError(f"ONNX parity failed for input {tuple(size)}: max abs logit diff {diff:.3g} > {atol}")
    return results
