"""AdamW parameter groups and the iteration-based warm-up + poly schedule of the SegRet recipes.

The groups are those of the SegRet authors' mmsegmentation configs (``paramwise_cfg`` with
``custom_keys`` for the backbone's norms and ``norm_decay_mult=0``):

- the encoder's norms (its blocks' LayerNorms, the stem's and the downsamples' BatchNorms) learn at
  ``encoder_norm_lr_mult`` x the learning rate (0.1 in those configs; 1.0 in the three configs that
  leave ``paramwise_cfg`` out) with no weight decay;
- every other norm (the decoder's BatchNorms) has no weight decay at the learning rate of its part;
- the rest is split as this project always did: no weight decay on biases, layer-scale gammas and
  any other 1-D tensor (decaying them toward zero only hurts; timm does the same), decay on the rest.
  (mmcv without a ``bias_decay_mult`` does decay biases and gammas: the one knowing departure.)

Norms are found by module type (:data:`NORM_TYPES`), not by parameter names, so the grouping does not
depend on how a model names its layers. The decoder (``head_prefixes``) learns at ``head_lr_mult`` x
the learning rate, norms included; the authors' configs use 1.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Set, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["NORM_TYPES", "param_groups", "describe_groups", "build_optimizer", "WarmupPoly", "build_scheduler",
           "no_decay_names", "norm_param_names", "ENCODER_NORM_LR_MULT"]

NORM_TYPES: Tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)

# the configs' backbone_norm_multi: lr_mult 0.1, decay_mult 0.0
ENCODER_NORM_LR_MULT = 0.1


def norm_param_names(model: nn.Module) -> Set[str]:
    """Names of the parameters that belong to normalization modules (found by type)."""
    names: Set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            names.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    return names


def no_decay_names(model: nn.Module) -> Set[str]:
    """Names of parameters exempt from weight decay: norm layers, biases, layer-scale gammas, any 1-D
    tensor, and whatever the model's ``no_weight_decay()`` lists."""
    names = norm_param_names(model)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or leaf in ("bias", "gamma") or "layer_scale" in name:
            names.add(name)
    extra = getattr(model, "no_weight_decay", None)
    if callable(extra):
        names.update(extra())
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 encoder_norm_lr_mult: float = ENCODER_NORM_LR_MULT,
                 head_prefixes: Sequence[str] = ("decoder.",),
                 encoder_prefixes: Sequence[str] = ("encoder.",)) -> List[Dict[str, Any]]:
    """AdamW groups named ``<part>_<kind>``; frozen parameters are skipped, empty groups left out.

    ``part`` is ``encoder`` (names under ``encoder_prefixes``), ``head`` (under ``head_prefixes``) or
    ``other``; ``kind`` is ``norm`` (parameters of a :data:`NORM_TYPES` module: no weight decay),
    ``no_decay`` (biases, gammas, other 1-D tensors, ``no_weight_decay()``) or ``decay``. Learning-rate
    multipliers: encoder norms ``encoder_norm_lr_mult``, everything in the head ``head_lr_mult``,
    the rest 1. Each group carries ``name``, ``lr_mult`` and ``weight_decay`` for logs and tests.
    """
    norms = norm_param_names(model)
    skip = no_decay_names(model)
    buckets: Dict[Tuple[str, str], List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = ("head" if any(name.startswith(p) for p in head_prefixes) else
                "encoder" if any(name.startswith(p) for p in encoder_prefixes) else "other")
        kind = "norm" if name in norms else "no_decay" if name in skip else "decay"
        buckets.setdefault((part, kind), []).append(param)
    groups = []
    for part in ("encoder", "other", "head"):
        for kind in ("decay", "no_decay", "norm"):
            params = buckets.get((part, kind))
            if not params:
                continue
            mult = head_lr_mult if part == "head" else encoder_norm_lr_mult if (part, kind) == ("encoder", "norm") \
                else 1.0
            groups.append({"params": params, "lr": lr * mult, "weight_decay": weight_decay if kind == "decay" else 0.0,
                           "lr_mult": mult, "name": f"{part}_{kind}"})
    return groups


def describe_groups(groups: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """JSON-friendly summary of optimizer groups: name, tensors, parameters (numel), lr_mult, weight_decay."""
    return [{"name": g.get("name", str(i)), "tensors": len(g["params"]), "params": sum(p.numel() for p in g["params"]),
             "lr_mult": g.get("lr_mult", 1.0), "weight_decay": g["weight_decay"]} for i, g in enumerate(groups)]


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.01, head_lr_mult: float = 1.0,
                    betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    encoder_norm_lr_mult: float = ENCODER_NORM_LR_MULT) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, as the configs) over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, head_lr_mult, encoder_norm_lr_mult), lr=lr,
                             betas=betas, eps=eps, weight_decay=weight_decay)


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
