"""Hugging Face Hub I/O for SegRet: save/load/push in the Hub layout, checked downloads, `segret-zoo push`.

Kept free of model imports so that :mod:`segret_zoo.models.segret` can inherit :class:`HubMixin`.
"""
from segret_zoo.hub.io import (
    CheckpointError,
    WeightsNotFoundError,
    hub_download,
    read_state_dict,
    resolve_source,
    seed_hub_cache,
)
from segret_zoo.hub.mixin import HubMixin

__all__ = [
    "HubMixin",
    "CheckpointError",
    "WeightsNotFoundError",
    "hub_download",
    "read_state_dict",
    "resolve_source",
    "seed_hub_cache",
]
