"""Fine-tuning SegRet: the training engine, the paper's recipes, optimizer/schedule, checkpoints, DDP.

``from segret_zoo.train import TrainConfig, train`` (lazy: importing the package stays cheap).
"""
from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "train", "NonFiniteLossError", "RECIPES", "get_recipe", "list_recipes"]


def __getattr__(name: str) -> Any:
    if name in ("TrainConfig", "train", "NonFiniteLossError"):
        from segret_zoo.train import engine

        return getattr(engine, name)
    if name in ("RECIPES", "get_recipe", "list_recipes"):
        from segret_zoo.train import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
