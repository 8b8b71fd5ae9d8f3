"""Names -> models + weights, timm style: ``create_model("segret_tiny", pretrained="cityscapes")``.

Names are ``segret_{tiny,small,base,large}``, optionally with a dataset tag
(``segret_tiny.cityscapes``), or ``hf-hub:org/repo[@revision]`` for any folder written by
``save_pretrained`` and uploaded. The variant table lives in :mod:`segret_zoo.models.segret`, the
dataset table in :mod:`segret_zoo.data.classes`. Where weights come from (a tag's Hub file, a backbone
tag, a folder, a file, a released official checkpoint) is resolved by :mod:`segret_zoo.hub.sources`
(checked downloads, fast failure offline); how they enter the model is
:func:`segret_zoo.hub.weights.load_weights`, driven by the model's own layouts. :func:`load_model` is
the one "model spec -> model" that every command (predict, eval, export, train) uses.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from segret_zoo.data.classes import DATASET_CLASSES, DATASET_DEFAULTS
from segret_zoo.data.classes import id2label as dataset_id2label
from segret_zoo.errors import UserError
from segret_zoo.hub.download import CONFIG_NAME, WEIGHTS_NAME, parse_hub_name
from segret_zoo.hub.sources import HubFile, resolve_source
from segret_zoo.hub.weights import (
    Checkpoint,
    convert_layout,
    load_weights,
    read_checkpoint,
    read_config,
    summarize_keys,
)
from segret_zoo.models.segret import SEGRET_VARIANTS, SegRet, default_pretrained_cfg
from segret_zoo.settings import mirrored_repo_id
from segret_zoo.validate import check_num_classes

__all__ = ["create_model", "list_models", "list_pretrained", "from_pretrained", "load_model", "load_backbone",
           "parse_model_name", "DEFAULT_TAG"]

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_TAG = "ade20k"
_HF_HUB = "hf-hub:"


def _tables() -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    return SEGRET_VARIANTS, DATASET_DEFAULTS


def list_models(filter: str = "", pretrained: bool = False) -> List[str]:  # noqa: A002 (timm's name)
    """Registered SegRet names matching a wildcard ``filter`` (``"*tiny*"``); tagged names if ``pretrained``."""
    names = list_pretrained() if pretrained else sorted(_tables()[0], key=_size_order)
    return [n for n in names if not filter or fnmatch.fnmatch(n, filter)]


def list_pretrained(filter: str = "") -> List[str]:  # noqa: A002
    """Every ``variant.tag`` with a pretrained config (``segret_tiny.ade20k`` ...).

    Which of them have published weights is recorded in ``weights/manifest.json`` (none yet).
    """
    variants, datasets = _tables()
    names = [f"{v}.{t}" for v in sorted(variants, key=_size_order) for t in datasets]
    return [n for n in names if not filter or fnmatch.fnmatch(n, filter)]


def _size_order(name: str) -> int:
    order = ("tiny", "small", "base", "large")
    return next((i for i, s in enumerate(order) if name.endswith(s)), len(order))


def _unknown_model(name: str) -> ValueError:
    known = list_models()
    close = difflib.get_close_matches(name, known + list_pretrained(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown model {name!r}; available: {', '.join(known)} (optionally with a tag "
                      f"such as '.cityscapes'), or 'hf-hub:org/repo'.{hint}")


def parse_model_name(name: str, pretrained: Union[bool, str] = False) -> Tuple[str, Optional[str]]:
    """(variant, tag) from a name and a ``pretrained`` value, each of which may carry the tag.

    ``pretrained=True`` means the variant's default tag (ADE20K); a tag in both places must agree.
    """
    variants, datasets = _tables()
    arch, _, name_tag = name.partition(".")
    if arch not in variants:
        raise _unknown_model(name)
    pre_tag: Optional[str] = None
    if isinstance(pretrained, str):
        p_arch, dot, p_tag = pretrained.partition(".")
        if dot:
            if p_arch != arch:
                raise ValueError(f"pretrained={pretrained!r} names another model than {name!r}")
            pre_tag = p_tag
        else:
            pre_tag = pretrained
    for tag in (name_tag, pre_tag):
        if tag and tag not in datasets:
            raise ValueError(f"unknown pretrained tag {tag!r} for {arch}; available: {', '.join(datasets)}")
    if name_tag and pre_tag and name_tag != pre_tag:
        raise ValueError(f"conflicting tags: {name!r} and pretrained={pretrained!r}")
    tag = pre_tag or name_tag or None
    if tag is None and pretrained is True:
        tag = DEFAULT_TAG
    return arch, tag


def _labels_for(tag: Optional[str], num_classes: int) -> Optional[Dict[int, str]]:
    """The dataset's class names when the model predicts exactly that dataset's classes."""
    if not tag:
        return None
    return dataset_id2label(tag) if len(DATASET_CLASSES.get(tag, ())) == num_classes else None


def _backbone_source(model: SegRet, pretrained_backbone: Union[bool, PathLike]) -> Union[HubFile, PathLike]:
    """ImageNet RMT weights: the backbone tag's Hub file (True, from timm's registry) or a local path."""
    if pretrained_backbone is not True:
        return pretrained_backbone  # type: ignore[return-value]
    if not isinstance(model.backbone, str):
        raise ValueError("pretrained_backbone=True needs a registered backbone (rmt_t/s/b/l); this model has "
                         "a custom one: pass pretrained_backbone=PATH instead")
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(f"{model.backbone}.in1k")
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"{model.backbone}.in1k has no Hub location in its timm pretrained_cfg")
    advice = ("To use the official RMT release instead: `segret-zoo convert-rmt RMT.pth OUT_DIR`, then "
              "pretrained_backbone='OUT_DIR' (command line: --pretrained-backbone OUT_DIR); the .pth itself works too.")
    return HubFile(cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_NAME, advice=advice)


def load_backbone(model: SegRet, source: Union[bool, PathLike, HubFile], **hub: Any) -> List[str]:
    """Initialise ``model``'s encoder from an RMT checkpoint in any layout it reads, as the official
    training does: non-strictly, dropping what SegRet's encoder does not have (the FFN convs, the
    ImageNet head), which one warning names. Returns the dropped keys."""
    src = resolve_source(_backbone_source(model, source) if not isinstance(source, HubFile) else source, **hub)
    dropped = load_weights(model.encoder, read_checkpoint(src.weights).state_dict, source=src.description,
                           layouts=model.backbone_checkpoint_layouts(), allow_unexpected=True)
    if dropped:
        warnings.warn(f"{src.description}: loaded the encoder, dropping {len(dropped)} tensors SegRet's encoder "
                      f"does not have: {summarize_keys(dropped)}", UserWarning, stacklevel=3)
    return dropped


def _checkpoint_classes(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The class count of a SegRet checkpoint in any layout it reads (None when it is not one)."""
    _, converted = convert_layout(state_dict, SegRet.checkpoint_layouts())
    weight = (converted or {}).get("decoder.classifier.weight")
    return int(weight.shape[0]) if weight is not None else None


def _meta_labels(meta: Mapping[str, Any], num_classes: int) -> Optional[Dict[int, str]]:
    """An mmsegmentation checkpoint's class names (``meta["CLASSES"]``) when they fit ``num_classes``."""
    classes = meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and len(classes) == num_classes:
        return {i: str(c) for i, c in enumerate(classes)}
    return None


def create_model(
    name: str,
    pretrained: Union[bool, str] = False,
    num_classes: Optional[int] = None,
    pretrained_backbone: Union[bool, PathLike] = False,
    checkpoint_path: Optional[PathLike] = None,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    token: Optional[Union[str, bool]] = None,
    id2label: Optional[Mapping[int, str]] = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a SegRet model by name, optionally with weights.

    - ``pretrained``: False, True (the default tag, ADE20K), a tag (``"cityscapes"``) or
      ``"segret_tiny.cityscapes"``; weights come from the Hub repo in ``model.pretrained_cfg``.
    - ``num_classes``: defaults to the tag's class count (or, with ``checkpoint_path`` and no
      ``pretrained``, to the checkpoint's); a different one keeps every pretrained weight except
      the classifier (with a warning). A model without a tag carries the default tag's (ADE20K's)
      metadata only when it has 150 classes; with another count it names no dataset, reduces no
      label and points at no Hub repo.
    - ``pretrained_backbone``: False, True (ImageNet RMT weights from the Hub) or a path to an RMT
      checkpoint (official ``.pth``, mmsegmentation backbone, or ``convert-rmt`` output), loaded as
      the official training does (:func:`load_backbone`); ignored when full weights are loaded.
    - ``checkpoint_path``: a local full-model checkpoint: ``.safetensors``, a ``save_pretrained``
      folder, or a released official SegRet ``.pth`` (mmsegmentation), whose layout is converted.
    - ``kwargs`` go to the SegRet constructor (``drop_path_rate``, ``decoder_dropout``, ...).
    The model is returned in training mode, as timm does.
    """
    hub = dict(revision=revision, cache_dir=cache_dir, token=token)
    if num_classes is not None:
        num_classes = check_num_classes(num_classes)
    # a classifier of another width may only be dropped when the user asked for another class count
    new_classifier = num_classes is not None
    checkpoint: Optional[Checkpoint] = None
    source = ""
    if checkpoint_path is not None:
        src = resolve_source(checkpoint_path)
        checkpoint, source = read_checkpoint(src.weights), str(src.weights)
    if name.startswith(_HF_HUB):
        model = _create_from_hub_name(name, pretrained, num_classes, id2label, hub, kwargs)
    else:
        arch, tag = parse_model_name(name, pretrained)
        variants, datasets = _tables()
        if num_classes is None and checkpoint is not None and not pretrained:
            num_classes = _checkpoint_classes(checkpoint.state_dict)  # a bare weights file: its own class count
        default_count = int(datasets[tag or DEFAULT_TAG]["num_classes"])
        classes = num_classes if num_classes is not None else default_count
        # untagged: the default dataset's metadata only for a model of its class count, else no dataset
        cfg_tag = tag or (DEFAULT_TAG if classes == default_count else None)
        labels = dict(id2label) if id2label is not None else (
            (_meta_labels(checkpoint.meta, classes) if checkpoint is not None else None)
            or _labels_for(cfg_tag, classes))
        pcfg = default_pretrained_cfg(arch, cfg_tag, classes, labels)
        if pcfg.get("hf_hub_id"):  # the org that hosts the zoo's weights now (SEGRET_ZOO_HF_ORG)
            pcfg["hf_hub_id"] = mirrored_repo_id(pcfg["hf_hub_id"])
        args = {**variants[arch], **kwargs}
        model = SegRet(num_classes=classes, id2label=labels, architecture=arch, pretrained_cfg=pcfg, **args)
        if pretrained_backbone and (pretrained or checkpoint is not None):
            warnings.warn("pretrained_backbone is ignored: the full model's weights include the backbone",
                          stacklevel=2)
        if pretrained and checkpoint is None:  # with checkpoint_path, the tag names the dataset; the file has the weights
            advice = (f"To use a local copy instead: create_model('{arch}', pretrained='{tag}', "
                      "checkpoint_path=PATH) (command line: --checkpoint PATH), PATH being a save_pretrained folder, "
                      "its model.safetensors, or the authors' released .pth.")
            src = resolve_source(HubFile(pcfg["hf_hub_id"], pcfg.get("hf_hub_filename") or WEIGHTS_NAME,
                                         advice=advice), **hub)
            load_weights(model, read_checkpoint(src.weights).state_dict, source=src.description,
                         new_classifier=new_classifier)
        elif pretrained_backbone and checkpoint is None:
            load_backbone(model, pretrained_backbone, **hub)
    if checkpoint is not None:
        load_weights(model, checkpoint.state_dict, source=source, new_classifier=new_classifier)
    return model.train()


def _create_from_hub_name(name: str, pretrained: Union[bool, str], num_classes: Optional[int],
                          id2label: Optional[Mapping[int, str]], hub: Dict[str, Any],
                          kwargs: Dict[str, Any]) -> torch.nn.Module:
    """``hf-hub:org/repo[@rev]``: the repo's config.json builds the model; weights only if ``pretrained``."""
    repo_id, name_revision = parse_hub_name(name)
    if hub["revision"] is not None and name_revision is not None and hub["revision"] != name_revision:
        raise ValueError(f"revision given twice: {name!r} and revision={hub['revision']!r}")
    hub = {**hub, "revision": hub["revision"] or name_revision}
    if isinstance(pretrained, str):
        raise ValueError(f"pretrained={pretrained!r}: a tag cannot be combined with a Hub name ({name})")
    if pretrained:
        return SegRet.from_pretrained(repo_id, num_classes=num_classes, id2label=id2label, **hub, **kwargs)
    config_path = resolve_source(HubFile(repo_id, CONFIG_NAME), **hub).weights
    return SegRet.from_hub_config(read_config(config_path), num_classes=num_classes,
                                  id2label=dict(id2label) if id2label is not None else None,
                                  source=f"{repo_id}/{CONFIG_NAME}", **kwargs)


def from_pretrained(pretrained_model_name_or_path: PathLike, **kwargs: Any) -> torch.nn.Module:
    """``SegRet.from_pretrained``: a Hub repo id (``revision=``, ``cache_dir=``), a saved folder or a file."""
    return SegRet.from_pretrained(pretrained_model_name_or_path, **kwargs)


def _names_saved_weights(spec: str) -> bool:
    """A local file or folder, a Hub repo id (``org/name``) or an ``hf-hub:`` name, not a zoo name."""
    return Path(spec).exists() or spec.startswith(_HF_HUB) or "/" in spec


def load_model(
    spec: str,
    checkpoint: Optional[PathLike] = None,
    *,
    num_classes: Optional[int] = None,
    pretrained: Optional[Union[bool, str]] = None,
    pretrained_backbone: Union[bool, PathLike] = False,
    id2label: Optional[Mapping[int, str]] = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """The model a command asked for: the one "model spec -> model" of predict, eval, export and train.

    ``spec`` is a zoo name (``segret_tiny`` or ``segret_tiny.ade20k``), a local folder/file written by
    ``save_pretrained``, or a Hub repo id. ``checkpoint`` (a weights file or a ``save_pretrained``
    folder) supplies the weights for a zoo name. ``pretrained=None`` means "the published weights"
    for a zoo name (``create_model(pretrained=True)``); pass False to build it randomly initialised.
    ``num_classes``, ``id2label`` and ``kwargs`` go to the factory. Only an explicit ``num_classes``
    replaces a checkpoint's classifier of another width (fine-tuning); without it a zoo name plus a
    weights file takes the file's class count, and a saved folder whose config disagrees with its
    weights is an error: a command never predicts with a randomly initialised classifier unasked.
    """
    extra: Dict[str, Any] = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if id2label is not None:
        extra["id2label"] = id2label
    if checkpoint is not None:
        if _names_saved_weights(spec):
            raise UserError(f"--model {spec} already names saved weights; do not also pass a checkpoint")
        path = Path(checkpoint)
        if path.is_dir():
            return from_pretrained(path, **extra)
        if not path.is_file():
            raise UserError(f"checkpoint {checkpoint} does not exist; pass a weights file or a save_pretrained folder")
        return create_model(spec, checkpoint_path=path, **extra)
    if _names_saved_weights(spec):
        return from_pretrained(spec, **extra)
    return create_model(spec, pretrained=True if pretrained is None else pretrained,
                        pretrained_backbone=pretrained_backbone, **extra)
