"""AdamW parameter groups and the iteration-based warm-up + poly schedule of the SegRet recipes.

The groups are exactly those mmcv 1.x's ``DefaultOptimizerConstructor`` builds from the SegRet
authors' configs, in one of two styles:

- *paramwise* (nine of the twelve configs: ``paramwise_cfg=dict(custom_keys=..., norm_decay_mult=0.0)``,
  the custom keys being every norm of the backbone with ``lr_mult=0.1, decay_mult=0.0``): the
  encoder's norms (block LayerNorms, stem and downsample BatchNorms) learn at lr x0.1 with no weight
  decay; every other norm (the decoder's BatchNorms) has no weight decay at lr x1; everything else,
  biases and layer-scale gammas included (no ``bias_decay_mult`` is set), is decayed at lr x1.
  Settings: ``encoder_norm_lr_mult=0.1, norm_decay_mult=0.0, bias_decay_mult=1.0``.
- *plain* (the three configs that comment ``paramwise_cfg`` out: small/base Cityscapes, large
  COCO-Stuff): one AdamW over all parameters, each at lr x1 with the weight decay.
  Settings: ``encoder_norm_lr_mult=1.0, norm_decay_mult=1.0, bias_decay_mult=1.0``.

mmcv matches custom keys against parameter names (the longest key that is a substring wins, and a
match overrides every other rule, ``norm_decay_mult`` included); its norms are instances of
``_BatchNorm``, ``_InstanceNorm``, ``GroupNorm`` or ``LayerNorm``. The authors' keys name every norm
of their RMT backbone and nothing else, so here the encoder's norms are found by module type
(:data:`NORM_TYPES` under ``encoder.``): the same parameters, whatever the layers are called. One
multiplier, ``norm_decay_mult``, serves both the keys' ``decay_mult`` and ``norm_decay_mult`` (0 and
0 in the paramwise configs, absent in the plain ones).

``bias_decay_mult`` (1 in every recipe, as mmcv) scales the decay of biases, layer-scale gammas and
every other 1-D parameter outside the norms; 0 gives the timm convention of decaying only weight
matrices and kernels, which the demo uses. The decoder (``head_prefixes``) learns at
``head_lr_mult`` x the learning rate, norms included; the authors' configs use 1.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Set, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["NORM_TYPES", "param_groups", "describe_groups", "build_optimizer", "WarmupPoly", "build_scheduler",
           "bias_param_names", "norm_param_names", "PARAMWISE", "PLAIN"]

# mmcv's norm layers (``DefaultOptimizerConstructor``'s ``is_norm``; SyncBatchNorm is a _BatchNorm)
NORM_TYPES: Tuple[type, ...] = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                                nn.GroupNorm, nn.LayerNorm)

# the two styles of the authors' configs, as param_groups() settings
PARAMWISE: Dict[str, float] = dict(encoder_norm_lr_mult=0.1, norm_decay_mult=0.0, bias_decay_mult=1.0)
PLAIN: Dict[str, float] = dict(encoder_norm_lr_mult=1.0, norm_decay_mult=1.0, bias_decay_mult=1.0)


def norm_param_names(model: nn.Module) -> Set[str]:
    """Names of the parameters that belong directly to normalization modules (found by type)."""
    names: Set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            names.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    return names


def bias_param_names(model: nn.Module) -> Set[str]:
    """Names of the non-norm parameters ``bias_decay_mult`` applies to: biases, layer-scale gammas,
    any other 1-D tensor, and whatever the model's ``no_weight_decay()`` lists."""
    norms = norm_param_names(model)
    names: Set[str] = set()
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or leaf in ("bias", "gamma") or "layer_scale" in name:
            names.add(name)
    extra = getattr(model, "no_weight_decay", None)
    if callable(extra):
        names.update(extra())
    return names - norms


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 encoder_norm_lr_mult: float = PARAMWISE["encoder_norm_lr_mult"],
                 norm_decay_mult: float = PARAMWISE["norm_decay_mult"],
                 bias_decay_mult: float = PARAMWISE["bias_decay_mult"],
                 head_prefixes: Sequence[str] = ("decoder.",),
                 encoder_prefixes: Sequence[str] = ("encoder.",)) -> List[Dict[str, Any]]:
    """AdamW groups named ``<part>_<kind>``; frozen parameters are skipped, empty groups left out.

    ``part`` is ``encoder`` (names under ``encoder_prefixes``), ``head`` (under ``head_prefixes``) or
    ``other``; ``kind`` is ``norm`` (parameters of a :data:`NORM_TYPES` module), ``bias``
    (:func:`bias_param_names`) or ``weight`` (the rest). Weight decay: ``weight_decay`` x
    ``norm_decay_mult`` / ``bias_decay_mult`` / 1. Learning rate: ``lr`` x ``encoder_norm_lr_mult``
    for the encoder's norms, x ``head_lr_mult`` for the whole head, x 1 otherwise. The defaults are
    the paramwise configs' (:data:`PARAMWISE`). Each group carries ``name``, ``lr_mult`` and
    ``weight_decay`` for logs and tests; groups with equal settings stay apart so each kind shows.
    """
    norms = norm_param_names(model)
    biases = bias_param_names(model)
    buckets: Dict[Tuple[str, str], List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = ("head" if any(name.startswith(p) for p in head_prefixes) else
                "encoder" if any(name.startswith(p) for p in encoder_prefixes) else "other")
        kind = "norm" if name in norms else "bias" if name in biases else "weight"
        buckets.setdefault((part, kind), []).append(param)
    decay_mult = {"weight": 1.0, "bias": bias_decay_mult, "norm": norm_decay_mult}
    groups = []
    for part in ("encoder", "other", "head"):
        for kind in ("weight", "bias", "norm"):
            params = buckets.get((part, kind))
            if not params:
                continue
            mult = head_lr_mult if part == "head" else encoder_norm_lr_mult if (part, kind) == ("encoder", "norm") \
                else 1.0
            groups.append({"params": params, "lr": lr * mult, "weight_decay": weight_decay * decay_mult[kind],
                           "lr_mult": mult, "name": f"{part}_{kind}"})
    return groups


def describe_groups(groups: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """JSON-friendly summary of optimizer groups: name, tensors, parameters (numel), lr_mult, weight_decay."""
    return [{"name": g.get("name", str(i)), "tensors": len(g["params"]), "params": sum(p.numel() for p in g["params"]),
             "lr_mult": g.get("lr_mult", 1.0), "weight_decay": g["weight_decay"]} for i, g in enumerate(groups)]


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.01, head_lr_mult: float = 1.0,
                    betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    encoder_norm_lr_mult: float = PARAMWISE["encoder_norm_lr_mult"],
                    norm_decay_mult: float = PARAMWISE["norm_decay_mult"],
                    bias_decay_mult: float = PARAMWISE["bias_decay_mult"]) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, as the configs) over :func:`param_groups`."""
    groups = param_groups(model, lr, weight_decay, head_lr_mult, encoder_norm_lr_mult=encoder_norm_lr_mult,
                          norm_decay_mult=norm_decay_mult, bias_decay_mult=bias_decay_mult)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class WarmupPoly:
    """LR factor at iteration ``t`` (0-based, the step being taken), mmcv's ``poly`` + linear warm-up::

        poly(t)   = (1 - min_ratio) * (1 - t / total) ** power + min_ratio
        factor(t) = poly(t) * (1 - (1 - t / warmup) * (1 - warmup_ratio))   for t < warmup
                    poly(t)                                                  otherwise

    (mmcv ``PolyLrUpdaterHook`` with ``warmup='linear'``, the schedule of the RMT/SegFormer
    segmentation configs). A callable object, not a lambda, so the scheduler's state can be saved.
    """

    def __init__(self, total_iters: int, warmup_iters: int = 1500, warmup_ratio: float = 1e-6,
                 power: float = 1.0, min_ratio: float = 0.0) -> None:
        if total_iters <= 0:
            raise ValueError(f"total_iters must be positive, got {total_iters}")
        self.total_iters = int(total_iters)
        self.warmup_iters = max(0, int(warmup_iters))
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.min_ratio = float(min_ratio)

    def __call__(self, t: int) -> float:
        progress = min(max(t, 0), self.total_iters) / self.total_iters
        factor = (1.0 - self.min_ratio) * (1.0 - progress) ** self.power + self.min_ratio
        if t < self.warmup_iters:
            factor *= 1.0 - (1.0 - t / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return factor

    def __repr__(self) -> str:
        return (f"WarmupPoly(total_iters={self.total_iters}, warmup_iters={self.warmup_iters}, "
                f"warmup_ratio={self.warmup_ratio}, power={self.power}, min_ratio={self.min_ratio})")


def build_scheduler(optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int = 1500,
                    warmup_ratio: float = 1e-6, power: float = 1.0, min_lr: float = 0.0,
                    base_lr: float = 1e-4) -> LambdaLR:
    """A LambdaLR stepped once per iteration; ``min_lr`` is absolute, relative to ``base_lr``."""
    min_ratio = min_lr / base_lr if base_lr > 0 else 0.0
    if not math.isfinite(min_ratio) or min_ratio < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr}")
    fn = WarmupPoly(total_iters, warmup_iters, warmup_ratio, power, min_ratio)
    return LambdaLR(optimizer, [fn] * len(optimizer.param_groups))
