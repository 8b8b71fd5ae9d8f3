"""Hugging Face Hub and file I/O: where weights come from (``sources``: one resolver, checked
downloads), how they enter a model (``weights``: the one safe reader of PyTorch files and the one
loader), and ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` on huggingface_hub's mixin.

Knows no model names: a model class brings its own configuration and hints through the mixin's hooks.
"""
from segret_zoo.errors import CheckpointError, WeightsNotFoundError
from segret_zoo.hub.download import hub_download, seed_hub_cache
from segret_zoo.hub.mixin import HubMixin
from segret_zoo.hub.sources import HubFile, resolve_source
from segret_zoo.hub.weights import load_torch_file, load_weights, read_checkpoint, read_state_dict

__all__ = [
    "HubMixin",
    "HubFile",
    "load_weights",
    "read_checkpoint",
    "CheckpointError",
    "WeightsNotFoundError",
    "hub_download",
    "load_torch_file",
    "read_state_dict",
    "resolve_source",
    "seed_hub_cache",
]
