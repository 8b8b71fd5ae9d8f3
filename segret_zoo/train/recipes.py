"""The paper's training settings (the SegRet paper's mmsegmentation recipe) as named recipes, so a run says ``--recipe ade20k-160k``
instead of restating crop, batch, schedule and scale by hand (and getting one of them wrong).

``batch_size`` is the *global* batch: images per optimizer step summed over all processes and
accumulation steps (mmseg's 16 = 8 GPUs x 2). The engine splits it, so a recipe means the same
optimization whatever hardware runs it.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any, Dict, List

__all__ = ["RECIPES", "get_recipe", "list_recipes"]

_COMMON: Dict[str, Any] = dict(
    lr=1e-4, weight_decay=0.01, warmup_iters=1500, warmup_ratio=1e-6, poly_power=1.0, min_lr=0.0,
    eval_interval=16000, ckpt_interval=16000,
)

RECIPES: Dict[str, Dict[str, Any]] = {
    "ade20k-160k": dict(dataset="ade20k", crop_size=(512, 512), batch_size=16, iters=160000,
                        scale=(2048, 512), **_COMMON),
    "cityscapes-160k": dict(dataset="cityscapes", crop_size=(512, 1024), batch_size=8, iters=160000,
                            scale=(2048, 1024), **_COMMON),
    "cocostuff-80k": dict(dataset="cocostuff", crop_size=(512, 512), batch_size=16, iters=80000,
                          scale=(2048, 512), **_COMMON),
}


def list_recipes() -> List[str]:
    """Names accepted by ``--recipe`` / ``TrainConfig.recipe``."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Dict[str, Any]:
    """A copy of the named recipe (``dataset`` is informational: the label set it was tuned for)."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())}.{hint}")
    return copy.deepcopy(RECIPES[name])
