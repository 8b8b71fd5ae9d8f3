"""The SegRet authors' training settings, one named recipe per model size and dataset.

Values are those of the authors' mmsegmentation configs (``local_configs/SegRet/{T,S,B,L}`` of
github.com/ZhiyuanLi218/segret), which produced the paper's numbers. The paper's text differs (it
states weight decay 0.01 for every run); where they disagree the configs are followed, since they
are what was run. ``tiny-ade20k`` is ``SegRet.T.512x512.ade.160k_res.py``, and so on; the
``cocostuff`` recipes are COCO-Stuff 10k's (``*.coco10k.80k.py``).

``batch_size`` is the *global* batch: images per optimizer step summed over all processes and
accumulation steps (the configs' samples_per_gpu x 4 GPUs). The engine splits it, so a recipe
means the same optimization whatever hardware runs it. ``warmup_iters`` 0 is "no warm-up" (the
configs that comment it out). ``encoder_norm_lr_mult``, ``norm_decay_mult`` and
``bias_decay_mult`` are the optimizer's parameter groups (:mod:`segret_zoo.train.optim`): 0.1, 0
and 1 in the nine configs with ``paramwise_cfg`` (encoder norms at lr x0.1, no decay on norms,
everything else decayed); 1, 1 and 1 in the three that comment it out (``small-cityscapes``,
``base-cityscapes``, ``large-cocostuff``: plain AdamW, every parameter decayed at lr x1), which the
paper's text does not mention. ``scale`` is the random resize's base scale
(ratio 0.5-2.0); ``eval_interval`` 4000 is the configs', ``ckpt_interval`` 4000 that of the SegFormer
schedule files they extend; the poly schedule ends at ``min_lr`` 0.

Recipes are picked automatically from the model size and the dataset (:func:`recipe_for`); the
old dataset-only names (``ade20k-160k`` ...) still work and mean "this dataset's recipe for the
model being trained".
"""
from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from segret_zoo.train.optim import PARAMWISE, PLAIN

__all__ = ["RECIPES", "SIZES", "RECIPE_DATASETS", "LEGACY_RECIPES", "NO_RECIPE", "get_recipe", "list_recipes",
           "recipe_for", "resolve_recipe_name", "model_size", "recipe_dataset"]

SIZES = ("tiny", "small", "base", "large")
RECIPE_DATASETS = ("ade20k", "cityscapes", "cocostuff")
NO_RECIPE = "none"  # ``--recipe none``: no recipe, even where one would be picked automatically
# the recipe names before there was one per model size: the dataset's recipe for the model trained
LEGACY_RECIPES = {"ade20k-160k": "ade20k", "cityscapes-160k": "cityscapes", "cocostuff-80k": "cocostuff"}

_ADE = dict(dataset="ade20k", crop_size=(512, 512), batch_size=16, iters=160000, scale=(2048, 512),
            eval_interval=4000, ckpt_interval=4000)
_CITY = dict(dataset="cityscapes", crop_size=(512, 1024), batch_size=8, iters=160000, scale=(4096, 1024),
             eval_interval=4000, ckpt_interval=4000)
_COCO = dict(dataset="cocostuff", crop_size=(512, 512), batch_size=16, iters=80000, scale=(2048, 512),
             eval_interval=4000, ckpt_interval=4000)
_NO_WARMUP = dict(warmup_iters=0, warmup_ratio=1e-6)
_WARMUP = dict(warmup_iters=1500, warmup_ratio=1e-6)
_SCHEDULE = dict(min_lr=0.0)


def _recipe(base: Dict[str, Any], config: str, groups: Dict[str, float] = PARAMWISE, **values: Any) -> Dict[str, Any]:
    """A config's values; ``groups`` is its optimizer style (:data:`~segret_zoo.train.optim.PARAMWISE`,
    or :data:`~segret_zoo.train.optim.PLAIN` for the configs that comment ``paramwise_cfg`` out)."""
    return {**base, **_SCHEDULE, **groups, **values, "config": config}


RECIPES: Dict[str, Dict[str, Any]] = {
    "tiny-ade20k": _recipe(_ADE, "SegRet.T.512x512.ade.160k_res.py", lr=1e-4, weight_decay=1e-4,
                           poly_power=0.9, **_NO_WARMUP),
    "small-ade20k": _recipe(_ADE, "SegRet.S.512x512.ade.160k_res.py", lr=1e-4, weight_decay=0.01,
                            poly_power=0.9, **_WARMUP),
    "base-ade20k": _recipe(_ADE, "SegRet.B.512x512.ade.160k_res_256.py", lr=1e-4, weight_decay=0.01,
                           poly_power=0.9, **_NO_WARMUP),
    "large-ade20k": _recipe({**_ADE, "crop_size": (640, 640), "scale": (2048, 640)},
                            "SegRet.L.640x640.ade.160k_res.py", lr=1e-4, weight_decay=0.01, poly_power=0.9,
                            **_NO_WARMUP),
    "tiny-cityscapes": _recipe(_CITY, "SegRet.T.512x1024.city.160k.py", lr=1e-4, weight_decay=0.01,
                               poly_power=0.9, **_NO_WARMUP),
    "small-cityscapes": _recipe(_CITY, "SegRet.S.512x1024.city.160k.py", lr=1e-4, weight_decay=0.01,
                                poly_power=1.0, groups=PLAIN, **_WARMUP),
    "base-cityscapes": _recipe(_CITY, "SegRet.B.512x1024.city.160k.py", lr=1e-4, weight_decay=0.01,
                               poly_power=1.0, groups=PLAIN, **_WARMUP),
    "large-cityscapes": _recipe(_CITY, "SegRet.L.512x1024.city.160k.py", lr=1e-4, weight_decay=0.01,
                                poly_power=0.9, **_NO_WARMUP),
    "tiny-cocostuff": _recipe(_COCO, "SegRet.T.512x512.coco10k.80k.py", lr=2e-4, weight_decay=1e-4,
                              poly_power=0.9, **_WARMUP),
    "small-cocostuff": _recipe({**_COCO, "batch_size": 32, "iters": 60000}, "SegRet.S.512x512.coco10k.80k.py",
                               lr=1e-4, weight_decay=0.01, poly_power=0.9, **_NO_WARMUP),
    "base-cocostuff": _recipe(_COCO, "SegRet.B.512x512.coco10k.80k.py", lr=1e-4, weight_decay=0.01,
                              poly_power=0.9, **_WARMUP),
    "large-cocostuff": _recipe(_COCO, "SegRet.L.512x512.coco10k.80k.py", lr=1e-4, weight_decay=0.01,
                               poly_power=0.9, groups=PLAIN, **_WARMUP),
}

# ``--data`` kinds -> the recipes' dataset (COCO-Stuff 164k shares the 10k recipes: same classes, no config of its own)
_KIND_TO_DATASET = {"ade20k": "ade20k", "cityscapes": "cityscapes", "cocostuff10k": "cocostuff",
                    "cocostuff": "cocostuff"}


def list_recipes() -> List[str]:
    """Names accepted by ``--recipe`` / ``TrainConfig.recipe`` (besides the legacy names and ``none``)."""
    return [f"{size}-{ds}" for ds in RECIPE_DATASETS for size in SIZES]


def recipe_for(size: Optional[str], dataset: Optional[str]) -> Optional[str]:
    """``recipe_for("small", "ade20k")`` -> ``"small-ade20k"``; None when either is unknown."""
    name = f"{size}-{dataset}"
    return name if name in RECIPES else None


def resolve_recipe_name(name: str, size: Optional[str] = None) -> str:
    """The recipe a user-given name means: itself, or for a legacy dataset-only name the dataset's
    recipe for the model ``size``. ValueError (naming the recipes) for anything else."""
    if name in RECIPES:
        return name
    if name in LEGACY_RECIPES:
        if size not in SIZES:
            raise ValueError(
                f"recipe {name!r} is now one recipe per model size: "
                f"{', '.join(f'{s}-{LEGACY_RECIPES[name]}' for s in SIZES)}; name one (the model's size could not "
                "be told from --model)")
        return f"{size}-{LEGACY_RECIPES[name]}"
    close = difflib.get_close_matches(name, list(RECIPES) + list(LEGACY_RECIPES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())} (or {NO_RECIPE!r}; "
                     f"left out, the one for --model and --data is picked).{hint}")


def get_recipe(name: str, size: Optional[str] = None) -> Dict[str, Any]:
    """A copy of the named recipe (``dataset`` and ``config`` are informational)."""
    return copy.deepcopy(RECIPES[resolve_recipe_name(name, size)])


_SIZE_RE = re.compile(r"^segret_(tiny|small|base|large)(\.[\w-]+)?$")
_BACKBONE_SIZES = {"rmt_t": "tiny", "rmt_s": "small", "rmt_b": "base", "rmt_l": "large"}


def model_size(model: Optional[str]) -> Optional[str]:
    """The size (tiny/small/base/large) of a model spec, when it can be told without building it:
    a zoo name (``segret_base``, ``segret_base.ade20k``) or a local ``save_pretrained`` folder whose
    config.json names a registered architecture or backbone. None otherwise (a Hub repo, a custom
    backbone)."""
    if not model:
        return None
    found = _SIZE_RE.match(str(model))
    if found:
        return found.group(1)
    config = Path(str(model)) / "config.json"
    try:
        doc = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, ValueError):
        return None
    arch = _SIZE_RE.match(str(doc.get("architecture") or ""))
    if arch:
        return arch.group(1)
    backbone = doc.get("backbone")
    return _BACKBONE_SIZES.get(backbone) if isinstance(backbone, str) else None


def recipe_dataset(kind: Optional[str]) -> Optional[str]:
    """The recipes' dataset for a ``--data`` kind (``cocostuff10k`` and ``cocostuff`` -> ``cocostuff``)."""
    return _KIND_TO_DATASET.get(kind or "")
