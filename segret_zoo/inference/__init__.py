"""Inference: the predictor (``Segmenter``), visualization helpers and ONNX / torch.export export.

Export pulls in the optional onnx tooling only when it runs. Image reading lives in :mod:`segret_zoo.data.images`.
"""
from segret_zoo.inference.predictor import DEFAULT_TTA_SCALES, Segmenter
from segret_zoo.inference.visualize import colorize, legend, overlay, palette_for, pixel_shares, shares_record

__all__ = [
    "DEFAULT_TTA_SCALES",
    "Segmenter",
    "colorize",
    "legend",
    "overlay",
    "palette_for",
    "pixel_shares",
    "shares_record",
]
