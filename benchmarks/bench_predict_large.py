"""Peak resident memory of ``segret-zoo predict`` on one 144-megapixel photo, overlay included
(issue 16's bar: a 12000x12000 PNG within 2.5 GiB peak RSS).

    python benchmarks/bench_predict_large.py [--side 12000 --classes 150 --workdir /tmp/segret_bench_large]

Writes the PNG once (a smooth synthetic photo with fine texture, so it compresses like a photo and
decodes in seconds) and a randomly initialised ``segret_tiny`` folder into ``--workdir``, then runs
``python -m segret_zoo predict`` as a child process and reports the child's peak RSS
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``): the whole command, from import to the last PNG written.
Memory, not time, is the figure; the seconds are only there to say how long it took.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_photo(path: Path, side: int) -> None:
    """A photo-like RGB image: large smooth regions (bilinear-upsampled noise) plus mild grain."""
    Image.MAX_IMAGE_PIXELS = None  # this script's own check of its cached photo
    if path.is_file():
        with Image.open(path) as img:
            if img.size == (side, side):
                return
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, size=(side // 200 + 2, side // 200 + 2, 3), dtype=np.uint8))
    img = coarse.resize((side, side), Image.BILINEAR)
    arr = np.asarray(img).copy()
    del img
    for y in range(0, side, 1000):  # grain, in strips
        rows = arr[y:y + 1000]
        rows += rng.integers(0, 4, size=rows.shape, dtype=np.uint8)
    Image.fromarray(arr).save(path, compress_level=1)


def make_model(folder: Path, classes: int) -> None:
    if (folder / "config.json").is_file():
        return
    import torch

    from segret_zoo.factory import create_model

    torch.manual_seed(0)
    create_model("segret_tiny", num_classes=classes).save_pretrained(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=12000, help="image side in pixels (default 12000: 144 MP)")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--workdir", default="/tmp/segret_bench_large")
    parser.add_argument("--bar-gib", type=float, default=2.5)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    photo = work / f"photo_{args.side}.png"
    model = work / f"segret_tiny_{args.classes}"
    make_photo(photo, args.side)
    make_model(model, args.classes)
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "segret_zoo", "predict", str(photo), "--model", str(model), "--out", str(out),
           "--quiet", "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB on Linux
    result = {"image": f"{args.side}x{args.side}", "megapixels": args.side ** 2 / 1e6, "classes": args.classes,
              "exit": proc.returncode, "peak_rss_gib": round(peak_gib, 3), "bar_gib": args.bar_gib,
              "meets_bar": proc.returncode == 0 and peak_gib <= args.bar_gib, "seconds": round(seconds, 1),
              "stderr": proc.stderr.strip().splitlines()[-3:]}
    print(json.dumps(result))
    return 0 if result["meets_bar"] else 1


if __name__ == "__main__":
    sys.exit(main())
