"""AdamW parameter groups and the iteration-based warm-up + poly schedule of the SegRet recipe.

Why groups: decaying normalization scales/shifts, biases and layer-scale gammas toward zero only
hurts (they are not "weights" that overfit), so, as in timm and mmseg's ``paramwise_cfg``, they get
no weight decay. The decoder can learn faster than the pretrained encoder (``head_lr_mult``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Set, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["param_groups", "build_optimizer", "WarmupPoly", "build_scheduler", "no_decay_names"]

_NORM_TYPES: Tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                 nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)


def no_decay_names(model: nn.Module) -> Set[str]:
    """Names of parameters exempt from weight decay: norm layers, biases, layer-scale gammas, any 1-D
    tensor, and whatever the model's ``no_weight_decay()`` lists."""
    names: Set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            names.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or leaf in ("bias", "gamma") or "layer_scale" in name:
            names.add(name)
    extra = getattr(model, "no_weight_decay", None)
    if callable(extra):
        names.update(extra())
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 head_prefixes: Sequence[str] = ("decoder.",)) -> List[Dict[str, Any]]:
    """Up to four AdamW groups: (encoder | head) x (decay | no decay); frozen parameters are skipped.

    Each group carries ``name`` and ``lr_mult`` so logs and tests can tell them apart.
    """
    skip = no_decay_names(model)
    buckets: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = any(name.startswith(p) for p in head_prefixes)
        buckets.setdefault((is_head, name in skip), []).append(param)
    groups = []
    for is_head in (False, True):
        for no_decay in (False, True):
            params = buckets.get((is_head, no_decay))
            if not params:
                continue
            mult = head_lr_mult if is_head else 1.0
            groups.append({
                "params": params, "lr": lr * mult, "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_mult": mult, "name": f"{'head' if is_head else 'encoder'}_{'no_decay' if no_decay else 'decay'}",
            })
    return groups


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.01, head_lr_mult: float = 1.0,
                    betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (the paper: lr 1e-4, wd 0.01)."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, head_lr_mult), lr=lr, betas=betas, eps=eps,
                             weight_decay=weight_decay)


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
