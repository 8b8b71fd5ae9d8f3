"""Images per second of ``Segmenter`` predict on CPU: PyTorch, PyTorch with ZIR folded, onnxruntime.

All three run the same full predict path (uint8 image -> normalize -> model -> bilinear upsample ->
argmax) on the same 512×512 image; only the model behind the Segmenter changes, so the columns are
directly comparable. Weights are random unless --checkpoint is given (speed does not depend on them;
every ZIR path and BatchNorm statistic is randomized, so the columns' probability check means something).

    python benchmarks/bench_predict.py --model segret_tiny --threads 2 --iters 10 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from segret_zoo.inference.export import OnnxModel, export_onnx, fused_copy  # noqa: E402
from segret_zoo.inference.predictor import Segmenter  # noqa: E402


def build_model(name: str, checkpoint: Optional[str], num_classes: int) -> torch.nn.Module:
    """The zoo model with random, non-trivial weights (no download), or the checkpoint's weights."""
    if checkpoint:
        from segret_zoo.inference.cli import load_model

        return load_model(name, checkpoint)
    from segret_zoo.models.segret import SEGRET_VARIANTS, SegRet

    base = name.split(".")[0]
    if base not in SEGRET_VARIANTS:
        raise SystemExit(f"unknown model {name!r}; choose one of {sorted(SEGRET_VARIANTS)}")
    from _official import randomize_

    model = SegRet(**SEGRET_VARIANTS[base], num_classes=num_classes, architecture=base,
                   pretrained_cfg=dict(dataset="ade20k"))
    return randomize_(model, seed=0)


def time_predict(fn: Callable[[], Any], iters: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="segret_tiny")
    parser.add_argument("--checkpoint", default=None, help="weights to load (default: random weights)")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--iters", type=int, default=10, help="timed predictions per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime column")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, args.checkpoint, args.num_classes).eval()
    image = np.random.default_rng(0).integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8)
    # whole mode at the image's own size: what a 512x512 ADE20K-style input gets, without resizing
    options = dict(mode="whole", test_scale=False)
    variants: Dict[str, torch.nn.Module] = {"pytorch": model, "pytorch + ZIR folded": fused_copy(model)}
    tmp = tempfile.TemporaryDirectory()
    export_info: Dict[str, Any] = {}
    if not args.no_onnx:
        path = Path(tmp.name) / "model.onnx"
        export_info = export_onnx(model, path, exporter=args.exporter)
        variants["onnxruntime (folded)"] = OnnxModel(path, threads=args.threads)

    reference = Segmenter(model, **options)(image, return_probs=True)
    rows = []
    for name, module in variants.items():
        seg = Segmenter(module, **options)
        labels, probs = seg(image, return_probs=True)
        times = time_predict(lambda seg=seg: seg(image), args.iters, args.warmup)
        median = statistics.median(times)
        rows.append({
            "variant": name,
            "ms_per_image_median": round(1000 * median, 2),
            "ms_per_image_mean": round(1000 * statistics.fmean(times), 2),
            "images_per_second": round(1.0 / median, 3),
            "max_abs_prob_diff_vs_pytorch": float(np.abs(probs - reference[1]).max()),
            "label_agreement_vs_pytorch": float((labels == reference[0]).mean()),
        })
    base = rows[0]["images_per_second"]
    for row in rows:
        row["speedup"] = round(row["images_per_second"] / base, 3)

    print(f"predict {args.size}x{args.size}, {args.model} ({args.num_classes} classes), CPU {cpu_name()}, "
          f"{args.threads} threads, {args.iters} iters (median)")
    header = f"{'variant':<24}{'ms/img':>10}{'img/s':>9}{'speedup':>9}{'max |dp|':>11}{'labels =':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['variant']:<24}{row['ms_per_image_median']:>10.1f}{row['images_per_second']:>9.2f}"
              f"{row['speedup']:>8.2f}x{row['max_abs_prob_diff_vs_pytorch']:>11.1e}"
              f"{100 * row['label_agreement_vs_pytorch']:>9.2f}%")
    if args.json:
        result = {
            "model": args.model, "num_classes": args.num_classes, "image_size": [args.size, args.size],
            "threads": args.threads, "iters": args.iters, "warmup": args.warmup, "cpu": cpu_name(),
            "torch": torch.__version__, "onnx_export": export_info, "results": rows,
        }
        try:
            import onnxruntime

            result["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            pass
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
