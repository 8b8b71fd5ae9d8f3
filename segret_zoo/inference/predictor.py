"""Segment images the way the papers evaluate (mmsegmentation's test pipeline), as a plain callable.

``Segmenter(model)(image)`` returns a label map at the image's original size. Everything that the
evaluation protocol fixes is taken from ``model.pretrained_cfg`` so that a pretrained model is used
exactly as it was scored: ImageNet mean/std, keep-ratio rescale to the test scale with mmseg's rule
(then, where the dataset's protocol says so, each side rounded up to a multiple of 32 by a second
resize, as SegFormer's ``AlignedResize``), whole or sliding-window inference with border-aligned
windows, and multi-scale + flip test-time augmentation that averages softmax probabilities at the
original size. :meth:`Segmenter.describe` says in one line which protocol an instance follows.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from segret_zoo.data.classes import IMAGENET_MEAN, IMAGENET_STD, slide_stride
from segret_zoo.data.images import ImageInput, ImageReadError, load_image, to_rgb_array
from segret_zoo.data.transforms import align_size, rescale_size
from segret_zoo.devices import cpu_bf16_supported, resolve_dtype
from segret_zoo.inference.fold import fold_for_inference
from segret_zoo.inference.postprocess import DEFAULT_TILE_BYTES, labels_from_views, vertical_weights
from segret_zoo.models.segret import PRETRAINED_CFG_SCHEMA
from segret_zoo.validate import Fields, check_float, check_schema

__all__ = [
    "DEFAULT_TTA_SCALES",
    "Segmenter",
    "resize_rows",
    "slide_windows",
]

# failures of one prediction that should not take its batch neighbours down (out of memory, bad sizes)
_PREDICT_ERRORS = (RuntimeError, ValueError, MemoryError)



def _reraise(err: BaseException) -> List[Any]:
    raise err


# mmsegmentation's multi-scale test ratios (ADE20K / Cityscapes / COCO-Stuff "MS" numbers)
DEFAULT_TTA_SCALES: Tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


# --------------------------------------------------------------------------------------------------
# geometry helpers (pure, so they can be tested against mmseg's formulas directly)
# --------------------------------------------------------------------------------------------------
def slide_windows(height: int, width: int, crop: Tuple[int, int],
                  stride: Tuple[int, int]) -> List[Tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's slide_inference: a regular grid whose last row/column is
    shifted back to end exactly at the border, so every window is full-size and none hangs over.
    A dimension smaller than the crop gets one window spanning it.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2 = min(hi * h_stride + h_crop, height)
            x2 = min(wi * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


# images whose float32 copy is larger than this are resized a band of rows at a time
WHOLE_RESIZE_BYTES = 256 << 20


def resize_rows(image: torch.Tensor, size: Tuple[int, int], band_bytes: int = 16 << 20) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of a 1×C×H×W uint8 image to ``size``, rounded to uint8 values,
    as float32, converting only two source rows per output row at a time.

    The same separable blend as the logits' upsampling (:mod:`segret_zoo.inference.postprocess`):
    per band of output rows, a ``lerp`` of the two source rows with torch's own weights, then
    ``interpolate`` along the width only. Values equal one full-size ``interpolate`` to float
    rounding, so after rounding to uint8 levels a few pixels in a million may differ by one level.
    """
    _, channels, height, width = image.shape
    out_h, out_w = size
    out = torch.empty(1, channels, out_h, out_w, dtype=torch.float32, device=image.device)
    i0, i1, _, w1 = vertical_weights(height, out_h, image.device)
    rows = max(1, band_bytes // max(2 * channels * width * 4, 1))
    nhwc = image.permute(0, 2, 3, 1)  # a view for the channels-last tensor of a numpy HxWxC array
    for r0 in range(0, out_h, rows):
        r1 = min(r0 + rows, out_h)
        top = nhwc.index_select(1, i0[r0:r1]).float()
        bottom = nhwc.index_select(1, i1[r0:r1]).float()
        band = torch.lerp(top, bottom, w1[r0:r1].view(1, -1, 1, 1)).permute(0, 3, 1, 2)
        if out_w != width:  # width only: the height mapping is the identity
            band = F.interpolate(band, size=(r1 - r0, out_w), mode="bilinear", align_corners=False)
        out[:, :, r0:r1] = band.round_().clamp_(0.0, 255.0)
    return out


#: the pretrained_cfg entries the predictor reads, with the limits of the model's config schema
_PROTOCOL_KEYS = ("mean", "std", "test_scale", "test_size_divisor", "test_mode", "crop_size", "stride")
_PROTOCOL = Fields({k: PRETRAINED_CFG_SCHEMA.fields[k] for k in _PROTOCOL_KEYS}, unknown="ignore")
_ARGUMENTS = Fields({"test_scale": _PROTOCOL.fields["test_scale"], "size_divisor": _PROTOCOL.fields["test_size_divisor"],
                     "crop_size": _PROTOCOL.fields["crop_size"], "stride": _PROTOCOL.fields["stride"]},
                    unknown="ignore")


def _check_protocol(cfg: Dict[str, Any], given: Dict[str, Any]) -> None:
    """The arguments, and the model's preprocessing and protocol entries they leave in use: a
    ``test_scale`` of ``(0, 0)`` would resize every image to 1x1 and predict one label, with no error."""
    check_schema({k: v for k, v in given.items() if v is not None and v is not False}, _ARGUMENTS, where="Segmenter")
    replaced = {"test_scale": "test_scale", "test_size_divisor": "size_divisor", "crop_size": "crop_size",
                "stride": "stride", "test_mode": "mode"}
    used = {k: cfg[k] for k in _PROTOCOL_KEYS if k in cfg and given.get(replaced.get(k, "")) is None}
    check_schema(used, _PROTOCOL, where="Segmenter", path="model.pretrained_cfg")


def _pair(value: Any, what: str) -> Tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"{what} must be an int or a pair (H, W), got {value!r}")


# --------------------------------------------------------------------------------------------------
# the predictor
# --------------------------------------------------------------------------------------------------
class Segmenter:
    """Run a segmentation model on images of any size and get label maps back at that size.

    Args:
        model: an ``nn.Module`` mapping a normalized B×3×H×W batch to B×K×H×W logits (any H, W), with a
            timm-style ``pretrained_cfg`` dict (``mean``/``std`` on a 0-1 scale, ``test_scale``,
            ``crop_size``, ``stride``) and ``num_classes``. It is switched to eval mode.
        mode: default ``pretrained_cfg["test_mode"]`` (the dataset's protocol: ``"whole"`` for the
            zoo's tags), else ``"auto"``. ``"whole"`` runs the resized image in one pass; ``"slide"`` runs ``crop_size`` windows
            at ``stride`` (mmseg's slide_inference: border-aligned windows, overlapping logits summed
            and divided by their count; a dimension smaller than the crop gets one window of the
            image's size, so slide equals whole when one window covers the image); ``"auto"`` uses
            slide when the resized image has more than ``slide_margin`` (default 2) times the crop's
            area, and whole otherwise. Why a margin: typical ADE20K / COCO-Stuff images at the test
            scale (512 short side, aspect up to 2:1) stay in whole mode as mmseg evaluates them, while
            Cityscapes frames (1024×2048 vs a 512×1024 crop) and panoramas, where full attention gets
            expensive and far off the training size, are windowed.
        tta: multi-scale + horizontal flip test-time augmentation; ``scales`` default to
            ``DEFAULT_TTA_SCALES`` and ``flip`` to True. Each ratio multiplies the test scale (as
            mmseg's MultiScaleFlipAug img_ratios do) and the softmax probabilities of all views are
            averaged at the original size. ``scales``/``flip`` given explicitly are used as given.
        device: where to run; the model is moved there. Default: where the model's weights are.
        dtype: ``"bf16"``/``"fp16"`` (or a torch dtype) runs the model under autocast; logits are
            upsampled and reduced in float32. Default float32.
        test_scale: keep-ratio rescale target (long, short), default ``pretrained_cfg["test_scale"]``;
            ``False`` keeps the image's own size.
        size_divisor: after the rescale, round each side up to a multiple of this by a second
            resize (SegFormer's ``AlignedResize``; the ADE20K and COCO-Stuff protocols use 32), default
            ``pretrained_cfg["test_size_divisor"]``; ``None`` there or ``False`` here: no rounding.
        crop_size, stride: sliding-window size and step (H, W), default from ``pretrained_cfg``
            (stride defaults to 2/3 of the crop, as mmseg configs use).
        batch_size: images per forward pass in whole mode. Images of different sizes are zero-padded
            (after normalization, i.e. with the mean colour) bottom/right to the largest one and the
            outputs cropped back; they are never resized to a common size. Padding does change the
            logits of the smaller images slightly, so the default (1) gives per-image exact results.
        window_batch_size: sliding windows per forward pass.
        fold: run the model's inference form (``fold_for_inference``: ZIR decoder and encoder
            BatchNorms folded, exact) on a copy; the model passed in is not modified. Default True.
        compile: ``torch.compile`` the model (dynamic shapes). Opt-in: the first call per input size
            compiles for a while.
        tile_bytes: memory of one row tile of full-resolution scores (upsample, softmax, argmax).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        mode: Optional[str] = None,
        tta: bool = False,
        scales: Optional[Sequence[float]] = None,
        flip: Optional[bool] = None,
        device: Union[None, str, torch.device] = None,
        dtype: Union[None, str, torch.dtype] = None,
        test_scale: Union[None, bool, Sequence[int]] = None,
        size_divisor: Union[None, bool, int] = None,
        crop_size: Union[None, int, Sequence[int]] = None,
        stride: Union[None, int, Sequence[int]] = None,
        batch_size: int = 1,
        window_batch_size: int = 4,
        slide_margin: float = 2.0,
        fold: bool = True,
        compile: bool = False,
        tile_bytes: int = DEFAULT_TILE_BYTES,
    ) -> None:
        cfg: Dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
        _check_protocol(cfg, dict(test_scale=test_scale, size_divisor=size_divisor if size_divisor != 0 else False,
                                  crop_size=crop_size, stride=stride, mode=mode))
        if mode is None:
            mode = cfg.get("test_mode") or "auto"
        if mode not in ("auto", "whole", "slide"):
            raise ValueError(f"mode must be 'auto', 'whole' or 'slide', got {mode!r}")
        if fold and isinstance(model, torch.nn.Module):
            model = fold_for_inference(model)  # a folded copy, or the model itself if nothing folds
        if device is None:
            param = next(iter(model.parameters()), None)
            self.device = param.device if param is not None else torch.device("cpu")
        else:
            self.device = torch.device(device)
            model = model.to(self.device)
        self.model = model.eval()
        self.tile_bytes = max(int(tile_bytes), 1)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.pretrained_cfg = cfg
        self.mode = mode
        self.dtype = resolve_dtype(dtype, self.device)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and isinstance(model, torch.nn.Module) \
                and any(True for _ in model.parameters()) and not cpu_bf16_supported():
            warnings.warn("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bf16 autocast is emulated here and "
                          "runs several times slower than float32; prefer fp32 on it", RuntimeWarning, stacklevel=2)
        num_classes = getattr(model, "num_classes", None) or cfg.get("num_classes")
        if not num_classes:
            raise ValueError("the model has no num_classes (attribute or pretrained_cfg entry)")
        self.num_classes = int(num_classes)
        self.id2label: Dict[int, str] = dict(getattr(model, "id2label", None) or cfg.get("id2label") or {})

        mean = torch.tensor(cfg.get("mean", IMAGENET_MEAN), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", IMAGENET_STD), dtype=torch.float32)
        self._mean = (mean * 255.0).view(1, 3, 1, 1).to(self.device)
        self._inv_std = (1.0 / (std * 255.0)).view(1, 3, 1, 1).to(self.device)

        if test_scale is None:
            test_scale = cfg.get("test_scale")
        self.test_scale: Optional[Tuple[int, int]] = (
            None if test_scale is None or test_scale is False else _pair(test_scale, "test_scale"))
        if size_divisor is None:
            size_divisor = cfg.get("test_size_divisor")
        self.size_divisor: Optional[int] = None if size_divisor in (None, False, 0) else int(size_divisor)
        self.crop_size = _pair(crop_size if crop_size is not None else cfg.get("crop_size", (512, 512)),
                               "crop_size")
        if stride is None:
            stride = cfg.get("stride") or slide_stride(self.crop_size)
        self.stride = _pair(stride, "stride")  # sizes and divisor within limits: _check_protocol

        self.scales: Tuple[float, ...] = tuple(
            check_float(s, f"Segmenter: scales[{i}]", maximum=8.0, above=0.0, hint="ratios of the test scale")
            for i, s in enumerate(scales if scales is not None else (DEFAULT_TTA_SCALES if tta else (1.0,))))
        if not self.scales:
            raise ValueError("Segmenter: scales is empty, expected at least one ratio of the test scale (1.0)")
        self.flip = bool(tta if flip is None else flip)
        self.batch_size = max(int(batch_size), 1)
        self.window_batch_size = max(int(window_batch_size), 1)
        self.slide_margin = check_float(slide_margin, "Segmenter: slide_margin", above=0.0)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mode={self.mode!r}, scales={self.scales}, flip={self.flip}, "
                f"test_scale={self.test_scale}, size_divisor={self.size_divisor}, crop_size={self.crop_size}, "
                f"stride={self.stride}, "
                f"device={str(self.device)!r}, dtype={self.dtype})")

    @classmethod
    def from_pretrained(cls, model: str, checkpoint: Optional[str] = None, **kwargs: Any) -> Segmenter:
        """``Segmenter.from_pretrained("segret_tiny.ade20k", tta=True)``: build the zoo model (or load a
        ``save_pretrained`` folder / Hub repo, or ``checkpoint`` for a zoo name) and wrap it."""
        from segret_zoo.factory import load_model

        return cls(load_model(model, checkpoint), **kwargs)

    # ---------------------------------------------------------------- public API
    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]], return_probs: bool = False,
                 on_error: str = "raise") -> Any:
        return self.predict(images, return_probs=return_probs, on_error=on_error)

    def predict(self, images: Union[ImageInput, Sequence[ImageInput]], return_probs: bool = False,
                on_error: str = "raise") -> Any:
        """Label map(s) at the original size: H×W uint8 when ``num_classes <= 256``, else int16.

        With ``return_probs`` each result is ``(labels, probs)`` with probs K×H×W float32 (softmax,
        averaged over TTA views). A list/tuple in gives a list out. ``on_error="warn"`` turns an
        unreadable input into a one-line warning and a ``None`` result instead of an exception, so the
        rest of a batch still completes.
        """
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results: List[Any] = [None] * len(items)
        for start in range(0, len(items), self.batch_size):
            idx, arrays = [], []
            for i in range(start, min(start + self.batch_size, len(items))):
                try:
                    arrays.append(load_image(items[i]))
                    idx.append(i)
                except ImageReadError as err:
                    if on_error == "raise":
                        raise
                    warnings.warn(str(err), stacklevel=2)
            if not arrays:
                continue
            outs: List[Any] = []
            try:
                outs = self.predict_arrays(arrays, return_probs=return_probs)
            except _PREDICT_ERRORS as err:
                if on_error == "raise" and len(arrays) == 1:
                    raise
                # one image may have failed the whole batch: retry them one by one
                for i, array in zip(idx, arrays):
                    try:
                        outs.extend(self.predict_arrays([array], return_probs=return_probs)
                                    if len(arrays) > 1 else _reraise(err))
                    except _PREDICT_ERRORS as one:
                        if on_error == "raise":
                            raise
                        warnings.warn(f"image {i}: prediction failed ({' '.join(str(one).split())[:200]})",
                                      stacklevel=2)
                        outs.append(None)
            for i, out in zip(idx, outs):
                results[i] = out
        return results[0] if single else results

    @torch.inference_mode()
    def predict_arrays(self, arrays: Sequence[np.ndarray], return_probs: bool = False) -> List[Any]:
        """Predict already-loaded arrays (H×W×3 uint8 RGB, or anything ``to_rgb_array`` takes) as one batch."""
        self.model.eval()
        arrays = [to_rgb_array(a) for a in arrays]  # no copy for writable contiguous uint8 RGB
        # uint8, channels-last views of the arrays: a float copy of a 144 MP photo alone would take 1.7 GB,
        # so each view converts only what it resizes (see _resize)
        images = [torch.from_numpy(a).to(self.device).permute(2, 0, 1)[None] for a in arrays]
        sizes = [tuple(a.shape[:2]) for a in arrays]
        # every view's logits at the model's resolution; the full-size scores are built a row tile
        # at a time (postprocess.labels_from_views), never whole
        views: List[List[Tuple[torch.Tensor, bool]]] = [[] for _ in images]
        for ratio in self.scales:
            inputs = [self._normalize(self._resize(img, ratio)) for img in images]
            flips = (False, True) if self.flip else (False,)
            batch = [(i, f, x.flip(-1) if f else x) for i, x in enumerate(inputs) for f in flips]
            logits = self._forward_many([x for _, _, x in batch])
            for (i, f, _), lg in zip(batch, logits):
                views[i].append((lg, f))
        label_dtype = torch.uint8 if self.num_classes <= 256 else torch.int16
        out: List[Any] = []
        for i, size in enumerate(sizes):
            labels, probs = labels_from_views(views[i], size, label_dtype, return_probs=return_probs,
                                              tile_bytes=self.tile_bytes)
            views[i] = []  # free this image's logits before the next one's tiles
            if probs is not None:
                out.append((labels.cpu().numpy(), probs.cpu().numpy()))
            else:
                out.append(labels.cpu().numpy())
        return out

    def predict_each(self, arrays: Sequence[np.ndarray]) -> List[Union[np.ndarray, Exception]]:
        """Labels per array, one batch at a time; when a batch fails, its images are retried one by one.

        An image that fails on its own gets its exception in its place instead of a label map, so one
        bad image never costs its neighbours their results.
        """
        results: List[Union[np.ndarray, Exception]] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = list(arrays[start:start + self.batch_size])
            try:
                results.extend(self.predict_arrays(chunk))
                continue
            except _PREDICT_ERRORS as err:
                if len(chunk) == 1:
                    results.append(err)
                    continue
            for array in chunk:
                try:
                    results.extend(self.predict_arrays([array]))
                except _PREDICT_ERRORS as err:
                    results.append(err)
        return results

    def choose_mode(self, height: int, width: int) -> str:
        """The inference mode used for a (resized) image of this size."""
        if self.mode != "auto":
            return self.mode
        ch, cw = self.crop_size
        return "slide" if height * width > self.slide_margin * ch * cw else "whole"

    def resize_steps(self, height: int, width: int, ratio: float = 1.0) -> List[Tuple[int, int]]:
        """The sizes an image goes through before the model for a TTA ratio, in order (empty: none).

        mmseg's MultiScaleFlipAug: the ratio scales the test scale, then mmcv's keep-ratio rescale
        rule gives the first size; with a ``size_divisor`` a second resize (SegFormer's
        ``AlignedResize``) takes each side up to a multiple of it. Each step is its own resize of
        the previous step's uint8 image, as in the authors' pipeline.
        """
        if self.test_scale is None:
            if ratio == 1.0:
                size = (height, width)
            else:
                size = rescale_size(height, width, (int(width * ratio), int(height * ratio)))
        else:
            size = rescale_size(height, width, (int(self.test_scale[0] * ratio), int(self.test_scale[1] * ratio)))
        steps = [size] if size != (height, width) else []
        if self.size_divisor is not None:
            aligned = align_size(size[0], size[1], self.size_divisor)
            if aligned != size:
                steps.append(aligned)
        return steps

    def target_size(self, height: int, width: int, ratio: float = 1.0) -> Tuple[int, int]:
        """Size the image has when it enters the model for a TTA ratio (the last of :meth:`resize_steps`)."""
        steps = self.resize_steps(height, width, ratio)
        return steps[-1] if steps else (height, width)

    def describe(self) -> str:
        """The protocol in one line, e.g. for ``segret-zoo eval`` to say how its figures were made."""
        if self.test_scale is None:
            resize = "no resize (the image's own size)"
        else:
            resize = f"keep-ratio resize to fit {self.test_scale[0]}x{self.test_scale[1]} (long x short)"
        if self.size_divisor is not None:
            resize += f", sides rounded up to a multiple of {self.size_divisor}"
        if self.mode == "slide":
            how = (f"sliding {self.crop_size[0]}x{self.crop_size[1]} windows at stride "
                   f"{self.stride[0]}x{self.stride[1]}")
        elif self.mode == "whole":
            how = "whole inference"
        else:
            how = (f"auto inference (sliding {self.crop_size[0]}x{self.crop_size[1]} windows above "
                   f"{self.slide_margin:g}x their area, else whole)")
        if self.scales == (1.0,) and not self.flip:
            views = "single scale"
        else:
            views = ("scales " + ", ".join(f"{r:g}" for r in self.scales) + " of that"
                     + (" with horizontal flip" if self.flip else "") + ", softmax averaged")
        return f"{resize}; {how}; {views}; logits resized to the original size"

    # ---------------------------------------------------------------- internals
    def _resize(self, img: torch.Tensor, ratio: float) -> torch.Tensor:
        """The 1×3×H×W uint8 (or float) image as float32 at the target size of ``ratio``.

        Bilinear, half-pixel centres, no antialias, rounded to uint8 values: what cv2.resize
        (INTER_LINEAR) gives mmseg's pipeline, once per step of :meth:`resize_steps`. An image whose float copy would exceed
        ``WHOLE_RESIZE_BYTES`` is resized in bands of output rows (:func:`resize_rows`), so a
        144-megapixel photo never exists in float32 at full size.
        """
        h, w = img.shape[-2:]
        steps = self.resize_steps(h, w, ratio)
        if not steps:
            return img.float()
        for size in steps:  # once per step, each from the previous step's uint8-valued image
            if img.dtype == torch.uint8 and img.numel() * 4 > WHOLE_RESIZE_BYTES:
                img = resize_rows(img, size)
            else:
                img = F.interpolate(img.float(), size=size, mode="bilinear", align_corners=False)
                img = img.round_().clamp_(0.0, 255.0)
        return img

    def _normalize(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self._mean) * self._inv_std

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _model(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            logits = self._forward(x)
        if logits.shape[-2:] != x.shape[-2:]:
            raise RuntimeError(f"model returned logits of size {tuple(logits.shape[-2:])} for input "
                               f"{tuple(x.shape[-2:])}; the predictor expects logits at input size")
        return logits.float()

    def _forward_many(self, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Logits (1×K×h×w each) for normalized 1×3×h×w inputs: whole-mode ones batched and padded,
        slide-mode ones window by window."""
        outputs: List[Optional[torch.Tensor]] = [None] * len(inputs)
        whole = [i for i, x in enumerate(inputs) if self.choose_mode(*x.shape[-2:]) == "whole"]
        for i, x in enumerate(inputs):
            if i not in whole:
                outputs[i] = self._slide(x)
        for start in range(0, len(whole), self.batch_size * (2 if self.flip else 1)):
            chunk = whole[start:start + self.batch_size * (2 if self.flip else 1)]
            hs = [inputs[i].shape[-2] for i in chunk]
            ws = [inputs[i].shape[-1] for i in chunk]
            mh, mw = max(hs), max(ws)
            batch = torch.cat([F.pad(inputs[i], (0, mw - w, 0, mh - h)) for i, h, w in zip(chunk, hs, ws)])
            logits = self._model(batch)
            for j, (i, h, w) in enumerate(zip(chunk, hs, ws)):
                outputs[i] = logits[j:j + 1, :, :h, :w]
        return [o for o in outputs if o is not None]

    def _slide(self, x: torch.Tensor) -> torch.Tensor:
        """mmseg slide_inference on one normalized image (1×3×H×W): summed window logits / counts."""
        _, _, h, w = x.shape
        windows = slide_windows(h, w, self.crop_size, self.stride)
        preds: Optional[torch.Tensor] = None
        count = torch.zeros(1, 1, h, w, device=x.device)
        for start in range(0, len(windows), self.window_batch_size):
            chunk = windows[start:start + self.window_batch_size]
            crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            logits = self._model(crops)
            if preds is None:
                preds = torch.zeros(1, logits.shape[1], h, w, device=x.device)
            for j, (y1, y2, x1, x2) in enumerate(chunk):
                preds[:, :, y1:y2, x1:x2] += logits[j:j + 1]
                count[:, :, y1:y2, x1:x2] += 1
        assert preds is not None
        return preds / count
