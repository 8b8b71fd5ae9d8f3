"""Inference: the predictor (``Segmenter``), visualization helpers and ONNX / torch.export export.

Only the predictor is imported eagerly; export pulls in onnx tooling lazily.
"""
from segret_zoo.inference.predictor import DEFAULT_TTA_SCALES, ImageLoadError, Segmenter, load_image
from segret_zoo.inference.visualize import colorize, legend, overlay, palette_for, pixel_shares, shares_record

__all__ = [
    "DEFAULT_TTA_SCALES",
    "ImageLoadError",
    "Segmenter",
    "colorize",
    "legend",
    "load_image",
    "overlay",
    "palette_for",
    "pixel_shares",
    "shares_record",
]
