"""``segret-zoo predict`` and ``segret-zoo export-onnx``.

``predict`` is built for many images: one unreadable file (empty, not an image, zero-size) is
reported on one line naming it and the run goes on; the exit code is non-zero at the end if any
image failed. Per image it writes ``<stem>_labels.png`` (palette mode: pixel value = class id),
``<stem>_overlay.png`` and ``<stem>.json`` (per-class pixel shares), optionally ``<stem>_legend.png``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from tqdm import tqdm

from segret_zoo.cli.options import float_range, num_classes, onnx_opset, positive_int, probability
from segret_zoo.data.images import LargeImageWarning, load_image
from segret_zoo.devices import resolve_device, resolve_dtype
from segret_zoo.errors import ImageReadError, UserError
from segret_zoo.factory import load_model
from segret_zoo.files import (
    atomic_write,
    clean_stale_temporaries,
    missing_folders,
    prepare_output_dir,
    remove_empty_folders,
    write_json_atomic,
)
from segret_zoo.inference.export import DEFAULT_OPSET, default_opset, export_onnx, opset_problem, require_onnx
from segret_zoo.inference.predictor import Segmenter
from segret_zoo.inference.runtimes import RUNTIMES, load_exported
from segret_zoo.inference.visualize import colorize, legend, overlay, palette_for, pixel_shares, shares_record

__all__ = ["add_cli", "run_predict", "run_export_onnx"]


# ------------------------------------------------------------------------------ helpers
def _expand_inputs(items: Sequence[str]) -> List[Path]:
    """Paths as given; a directory stands for the image files directly inside it (sorted)."""
    from PIL import Image

    extensions = set(Image.registered_extensions())
    paths: List[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions))
        else:
            paths.append(path)  # missing/unreadable files are reported per file, not here
    return paths


def _dedupe(paths: Sequence[Path]) -> Tuple[List[Path], List[Path]]:
    """The inputs without repeats of one file (given twice, or as a file and inside a folder), and the repeats."""
    kept, repeats, seen = [], [], set()
    for path in paths:
        try:
            key = str(path.resolve())
        except OSError:
            key = str(path)
        if key in seen:
            repeats.append(path)
            continue
        seen.add(key)
        kept.append(path)
    return kept, repeats


def _output_names(paths: Sequence[Path]) -> List[str]:
    """A distinct output name per input: its stem where no other input shares it (case-insensitively,
    as some filesystems compare names), else the stem with the first free ``-2``, ``-3``... suffix.

    Why not just number repeats: ``a.jpg``, ``a.png`` and ``a-2.png`` would then make two ``a-2``.
    """
    def key(name: str) -> str:
        return name.casefold()

    stems = [path.stem or "image" for path in paths]
    counts: Dict[str, int] = {}
    for stem in stems:
        counts[key(stem)] = counts.get(key(stem), 0) + 1
    taken = {key(stem) for stem in stems if counts[key(stem)] == 1}
    names: List[str] = []
    for stem in stems:
        name = stem
        if counts[key(stem)] > 1:
            n = 1
            while key(name) in taken:
                n += 1
                name = f"{stem}-{n}"
        taken.add(key(name))
        names.append(name)
    return names


def _save_png(image: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------ predict
def run_predict(args: argparse.Namespace) -> int:
    """Segment every image, writing label PNG, overlay and shares JSON; non-zero exit if any failed."""
    paths = _expand_inputs(args.images)
    if not paths:
        raise UserError(f"no image files found in {' '.join(args.images)}")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    out_dir = Path(args.out)
    created = missing_folders(out_dir)
    prepare_output_dir(out_dir)  # one line now if it cannot be created, not a traceback later
    for stale in clean_stale_temporaries(out_dir):  # a killed predict's unfinished outputs (live writers' stay)
        print(f"segret-zoo predict: note: removed {stale.name}, left by a predict that was killed", file=sys.stderr)

    paths, repeats = _dedupe(paths)
    for path in repeats:
        print(f"segret-zoo predict: note: {path} is listed more than once; segmenting it once", file=sys.stderr)
    try:
        model = _predict_model(args, dtype)
    except BaseException:
        remove_empty_folders(created)  # a wrong --model leaves none of the folders it made for --out
        raise
    if args.runtime != "torch":
        device, dtype = None, None  # the runtime runs on the CPU in the precision it was given
    seg = Segmenter(model, mode=args.mode, tta=args.tta, device=device, dtype=dtype, batch_size=args.batch_size,
                    compile=args.compile)
    palette = palette_for(seg.num_classes, seg.pretrained_cfg.get("dataset"))
    stems = _output_names(paths)
    for path, stem in zip(paths, stems):
        if stem != (path.stem or "image"):
            print(f"segret-zoo predict: note: {path} -> {stem}_labels.png, {stem}_overlay.png, {stem}.json "
                  f"(another input is also named {path.stem!r})", file=sys.stderr)
    failed: List[str] = []

    def report(message: str) -> None:
        failed.append(message)
        tqdm.write(f"segret-zoo predict: error: {message}", file=sys.stderr)

    def note(message: str) -> None:
        tqdm.write(f"segret-zoo predict: note: {message}", file=sys.stderr)

    bar = tqdm(total=len(paths), unit="img", desc="predict", file=sys.stderr, disable=args.quiet or None)
    for start in range(0, len(paths), args.batch_size):
        batch = []
        for i in range(start, min(start + args.batch_size, len(paths))):
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", LargeImageWarning)
                    batch.append((i, load_image(paths[i])))
            except ImageReadError as err:
                report(str(err))
            for w in caught:
                if issubclass(w.category, LargeImageWarning):
                    note(str(w.message))
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        # a failing batch is retried image by image: one huge image (out of memory) fails alone
        outcomes = seg.predict_each([rgb for _, rgb in batch]) if batch else []
        done_batch = []
        for (i, rgb), outcome in zip(batch, outcomes):
            if isinstance(outcome, Exception):
                report(f"{paths[i]}: prediction failed ({' '.join(str(outcome).split())[:200]})")
            else:
                done_batch.append((i, rgb, outcome))
        batch = []  # the images live on in done_batch only, until their overlay is drawn into them
        while done_batch:
            i, rgb, lab = done_batch.pop(0)
            stem = stems[i]
            try:  # every file complete or absent: a kill never leaves a truncated PNG under its name
                _save_png(colorize(lab, palette), out_dir / f"{stem}_labels.png")
                record = shares_record(lab, seg.id2label, seg.num_classes, image=str(paths[i]), model=args.model)
                write_json_atomic(out_dir / f"{stem}.json", record, indent=1)
                if args.legend:
                    _save_png(legend(pixel_shares(lab), seg.id2label, palette), out_dir / f"{stem}_legend.png")
                overlaid = overlay(rgb, lab, palette, alpha=args.alpha, inplace=rgb.flags.writeable)
                del rgb  # drawn over: only the overlay's pixels are left
                _save_png(overlaid, out_dir / f"{stem}_overlay.png")
                del overlaid
            except OSError as err:
                report(f"{paths[i]}: cannot write outputs to {out_dir} ({err.strerror or err})")
        bar.update(min(args.batch_size, len(paths) - start))
    bar.close()
    done = len(paths) - len(failed)
    print(f"segret-zoo predict: {done} of {len(paths)} images segmented into {out_dir}"
          + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _predict_model(args: argparse.Namespace, dtype: Any) -> Any:
    """The PyTorch model (``--runtime torch``), or the exported file in ONNX Runtime / OpenVINO."""
    if args.runtime == "torch":
        return load_model(args.model, args.checkpoint)
    if args.checkpoint or args.compile or args.device not in ("auto", "cpu"):
        raise UserError(f"--runtime {args.runtime} runs an exported .onnx file on the CPU: give it as --model "
                        "(no --checkpoint, --compile or --device)")
    return load_exported(args.model, args.runtime, precision=None if args.dtype == "auto" else dtype)


# ------------------------------------------------------------------------------ export-onnx
def run_export_onnx(args: argparse.Namespace) -> int:
    """Export with dynamic batch/H/W (ZIR folded); ``--check`` validates and compares with onnxruntime."""
    if args.opset is None:
        args.opset = default_opset(args.exporter)
    problem = opset_problem(args.opset, args.exporter)  # the type checked the dynamo exporter's range
    if problem:
        raise UserError(f"--opset {args.opset} with --exporter {args.exporter}: {problem}")
    require_onnx(args.exporter, args.check)  # before minutes of model building and tracing
    local_or_hub = Path(args.model).exists() or "/" in args.model or args.model.startswith("hf-hub:")
    tagged = "." in args.model and not local_or_hub
    model = load_model(args.model, args.checkpoint, num_classes=args.num_classes, pretrained=tagged)
    if args.checkpoint is None and not tagged and not local_or_hub:
        print(f"segret-zoo export-onnx: note: {args.model} has no weights tag and no --checkpoint: exporting "
              f"randomly initialized weights (use e.g. {args.model}.ade20k for trained ones)", file=sys.stderr)
    try:
        report = export_onnx(model, args.output, opset=args.opset, exporter=args.exporter, check=args.check,
                             check_sizes=args.check_shape, atol=args.atol)
    except AssertionError as err:
        print(f"segret-zoo export-onnx: error: {err}", file=sys.stderr)
        return 1
    print(f"segret-zoo export-onnx: wrote {report['path']} (opset {report['opset']}, {report['exporter']} "
          f"exporter, {report['export_seconds']} s; input pixel_values B×3×H×W, output logits B×K×H×W)")
    for row in report.get("parity", []):
        shape = "x".join(str(s) for s in row["shape"])
        print(f"  onnxruntime parity {shape}: max abs logit diff {row['max_abs_diff']:.2e}")
    return 0


def _shape(text: str) -> Tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or dims[1] != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected BATCHx3xHEIGHTxWIDTH such as 2x3x256x320, got {text!r}")
    return dims  # type: ignore[return-value]


# ------------------------------------------------------------------------------ registration
def add_cli(subparsers: Any) -> None:
    """Add the ``predict`` and ``export-onnx`` sub-commands."""
    p = subparsers.add_parser(
        "predict", help="segment images: label PNG, overlay and per-class pixel shares per image",
        description="Segment images with a SegRet model the way the papers evaluate (keep-ratio resize to "
                    "the test scale, whole or sliding-window inference, optional multi-scale + flip TTA).")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, or folders of images")
    p.add_argument("--model", required=True,
                   help="zoo name with optional tag (segret_tiny, segret_tiny.ade20k), a save_pretrained "
                        "folder, or a Hub repo id; with --runtime onnxruntime/openvino an exported .onnx file")
    p.add_argument("--checkpoint", metavar="PATH", help="weights file or save_pretrained folder for --model")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--mode", choices=("auto", "whole", "slide"), default="auto",
                   help="auto (default): sliding window when the resized image has over twice the crop's area")
    p.add_argument("--tta", action="store_true", help="multi-scale (0.5-1.75) + flip test-time augmentation")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype (default: bf16/fp16 on GPU, fp32 on CPU); with --runtime openvino its "
                        "inference precision")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="torch (default), or onnxruntime / openvino to run an exported --model FILE.onnx "
                        "(segret-zoo export-onnx) with the same pre- and post-processing")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="images per forward pass; different sizes are padded, not resized (default 1)")
    p.add_argument("--alpha", type=probability, default=0.5,
                   help="opacity of the colours in the overlay, 0 (photo only) to 1 (colours only); default 0.5")
    p.add_argument("--legend", action="store_true", help="also write <stem>_legend.png of the classes present")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (opt-in: compiles on the first image of each size)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)

    e = subparsers.add_parser(
        "export-onnx", help="export a model to ONNX (dynamic batch/height/width, ZIR folded)",
        description="Export to ONNX with dynamic batch, height and width. The decoder's zero-init residual "
                    "paths are folded first. --check compares with onnxruntime on several input sizes.")
    e.add_argument("output", metavar="OUT.onnx")
    e.add_argument("--model", required=True,
                   help="zoo name (segret_tiny: random weights unless tagged or --checkpoint), tagged name, "
                        "save_pretrained folder or Hub repo id")
    e.add_argument("--checkpoint", metavar="PATH", help="weights file or save_pretrained folder")
    e.add_argument("--num-classes", type=num_classes, metavar="K", help="number of classes (new head)")
    e.add_argument("--opset", type=onnx_opset, default=None,
                   help=f"ONNX opset, from 17 to the newest the installed torch writes (default {DEFAULT_OPSET}, "
                        "ONNX's Attention op, read by onnxruntime >= 1.23 and OpenVINO >= 2026.1: give 18 for older "
                        "runtimes; --exporter legacy writes at most 20, its default)")
    e.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                   help="torch.onnx exporter (default dynamo; legacy = deprecated TorchScript exporter, faster)")
    e.add_argument("--check", action="store_true", help="validate and compare with onnxruntime (needs onnxruntime)")
    e.add_argument("--atol", type=float_range(0.0), default=1e-3, help="max abs logit difference allowed by --check")
    e.add_argument("--check-shape", action="append", type=_shape, metavar="BxCxHxW",
                   help="input shape for --check (repeatable; default 1x3x256x256, 2x3x224x320, 1x3x333x250)")
    e.set_defaults(func=run_export_onnx)
