"""Peak resident memory of ``Segmenter.predict`` on one large photo (issue 10 item 7's bar: a 12 MP
photo with a 150-class model within 2.5 GiB peak RSS).

    python benchmarks/bench_predict_memory.py [--megapixels 12 --classes 150 --tta --compare]

Runs in this process from start to end, so the figure is the whole process's ``VmHWM`` (Python,
torch, the model, the image, the predictor). ``--compare`` also computes the labels the old way
(every view upsampled to full size at once, softmax-averaged, argmax) after the measurement and
counts differing pixels; it needs several GB more.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segret_zoo.inference.predictor import Segmenter  # noqa: E402
from segret_zoo.models.segret import SegRet  # noqa: E402


def vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width = int(round((args.megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    torch.manual_seed(0)
    model = SegRet("rmt_t", num_classes=args.classes, pretrained_cfg=dict(dataset="ade20k")).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = np.ascontiguousarray(image.repeat(32, 0).repeat(32, 1)[:height, :width])
    seg = Segmenter(model, tta=args.tta)
    t0 = time.perf_counter()
    labels = seg.predict_arrays([image])[0]
    seconds = time.perf_counter() - t0
    peak_gib = vm_kb("VmHWM") / 2 ** 20
    result = {"image": f"{height}x{width}", "megapixels": height * width / 1e6, "classes": args.classes,
              "tta": args.tta, "peak_rss_gib": round(peak_gib, 3), "seconds": round(seconds, 1),
              "bar_gib": 2.5, "meets_bar": peak_gib <= 2.5}
    if args.compare:
        with torch.inference_mode():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            acc = None
            views = [(r, f) for r in seg.scales for f in ((False, True) if seg.flip else (False,))]
            for ratio, flipped in views:
                inp = seg._normalize(seg._resize(x, ratio))
                lg = seg._forward_many([inp.flip(-1) if flipped else inp])[0]
                up = F.interpolate(lg, size=(height, width), mode="bilinear", align_corners=False)
                up = up.flip(-1) if flipped else up
                score = up if len(views) == 1 else up.softmax(1)
                acc = score if acc is None else acc + score
            old = acc[0].argmax(0).to(torch.uint8).numpy()
        result["pixels_differing_from_one_shot"] = int((old != labels).sum())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
