"""Training curves as a PNG drawn with PIL only (matplotlib is not a dependency of the zoo).

Two panels: training loss against iteration, and validation mIoU against iteration. Crude but
enough to spot divergence, a plateau or a broken schedule at a glance in the run folder.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont

__all__ = ["plot_curves"]

_W, _H, _PAD = 480, 320, 48


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def _panel(points: Sequence[Tuple[float, float]], title: str, colour: Tuple[int, int, int],
           font: Any) -> Image.Image:
    img = Image.new("RGB", (_W, _H), "white")
    d = ImageDraw.Draw(img)
    d.text((_PAD, 12), title, fill="black", font=font)
    x0, y0, x1, y1 = _PAD, _PAD - 12, _W - 16, _H - _PAD + 4
    d.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    pts = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        d.text((x0 + 10, (y0 + y1) // 2), "no data yet", fill=(120, 120, 120), font=font)
        return img
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1
    if ymax == ymin:
        ymin, ymax = ymin - 0.5, ymax + 0.5

    def to_px(x: float, y: float) -> Tuple[float, float]:
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    for frac in (0.25, 0.5, 0.75):
        gy = y1 - frac * (y1 - y0)
        d.line([(x0, gy), (x1, gy)], fill=(230, 230, 230))
    line = [to_px(x, y) for x, y in pts]
    if len(line) > 1:
        d.line(line, fill=colour, width=2)
    for px, py in line[-1:] if len(line) > 1 else line:
        d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    d.text((4, y0), _fmt(ymax), fill="black", font=font)
    d.text((4, y1 - 10), _fmt(ymin), fill="black", font=font)
    d.text((x0, y1 + 6), _fmt(xmin), fill="black", font=font)
    d.text((x1 - 40, y1 + 6), _fmt(xmax), fill="black", font=font)
    d.text(((x0 + x1) // 2 - 20, y1 + 6), "iteration", fill=(90, 90, 90), font=font)
    return img


def plot_curves(history: List[Dict[str, Any]], path: Union[str, os.PathLike[str]]) -> Path:
    """Draw loss (records with ``loss``) and mIoU (records with ``mIoU``) curves to ``path`` (atomically)."""
    font = ImageFont.load_default()
    loss = [(float(r["iter"]), float(r["loss"])) for r in history
            if r.get("type") == "train" and r.get("loss") is not None]
    miou = [(float(r["iter"]), float(r["mIoU"])) for r in history
            if r.get("type") == "eval" and r.get("mIoU") is not None]
    last_miou = f" (last {miou[-1][1]:.2f}%)" if miou else ""
    left = _panel(loss, "training loss", (31, 119, 180), font)
    right = _panel(miou, f"validation mIoU %{last_miou}", (214, 39, 40), font)
    canvas = Image.new("RGB", (2 * _W, _H), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (_W, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
