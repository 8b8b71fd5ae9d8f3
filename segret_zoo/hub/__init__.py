"""Hugging Face Hub and file I/O: checked downloads, local resolution, reading and matching state dicts,
the one safe reader of PyTorch files (``load_torch_file``), and ``save_pretrained`` /
``from_pretrained`` / ``push_to_hub`` on huggingface_hub's mixin.

Knows no model names: a model class brings its own configuration and hints through the mixin's hooks.
"""
from segret_zoo.errors import CheckpointError, WeightsNotFoundError
from segret_zoo.hub.download import hub_download, resolve_source, seed_hub_cache
from segret_zoo.hub.mixin import HubMixin
from segret_zoo.hub.weights import load_torch_file, read_state_dict

__all__ = [
    "HubMixin",
    "CheckpointError",
    "WeightsNotFoundError",
    "hub_download",
    "load_torch_file",
    "read_state_dict",
    "resolve_source",
    "seed_hub_cache",
]
