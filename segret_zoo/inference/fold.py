"""The inference form of a model: every exact fold applied, on a copy.

``fold_for_inference(model)`` is timm's ``reparameterize_model`` (every child with a ``fuse()`` is
replaced by what it returns): for SegRet that folds the ZIR decoder into one conv per stage and the
encoder's stem and downsample BatchNorms into their convs. All folds are exact with running
statistics, so the logits equal the unfolded model's (to float rounding); the predictor, evaluation
and export use this form so that an unfolded model runs as fast as a folded one.
"""
from __future__ import annotations

import copy

from timm.utils import reparameterize_model
from torch import nn

__all__ = ["fold_for_inference", "needs_folding"]


def needs_folding(model: nn.Module) -> bool:
    """True when some submodule still has an exact inference fold to apply (a ``fuse()`` not yet done)."""
    for module in model.modules():
        if module is model or not callable(getattr(module, "fuse", None)):
            continue
        if getattr(module, "fused", None) is True:
            continue
        if any(isinstance(c, nn.modules.batchnorm._BatchNorm) for c in module.children()) or \
                getattr(module, "fused", None) is False:
            return True
    return False


def fold_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` in eval mode with every exact fold applied; a copy unless ``inplace`` (the user's model stays as it was)."""
    if not needs_folding(model):
        return model.eval() if inplace else model
    if not inplace:
        model = copy.deepcopy(model)
    return reparameterize_model(model.eval(), inplace=True).eval()
