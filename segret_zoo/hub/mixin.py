"""`save_pretrained` / `from_pretrained` / `push_to_hub` for SegRet, on huggingface_hub's own mixin.

:class:`HubMixin` is a :class:`huggingface_hub.PyTorchModelHubMixin`: the standard signatures
(``from_pretrained(..., revision, cache_dir, force_download, local_files_only, token)``,
``save_pretrained(..., config, repo_id, push_to_hub, model_card_kwargs)``, ``push_to_hub(...,
branch, create_pr, allow_patterns, ...)``), the library metadata and ``generate_model_card``
(``ModelCard.from_template`` with this project's template). What it adds to the mixin, and why
some methods are ours rather than the mixin's:

- ``save_pretrained`` writes weights, ``config.json`` and ``README.md`` all-or-nothing through
  :mod:`segret_zoo.files` (the mixin writes them one by one, deleting ``config.json`` first and
  keeping a stale ``README.md``), so a crash never leaves a half-written folder.
- ``from_pretrained`` resolves through :mod:`segret_zoo.hub.download` (the mixin's takes only repo
  ids and folders): ``hf-hub:org/name@rev`` names and bare weights files work, downloads are checked
  against the weights manifest, offline fails within seconds with instructions, every value of
  ``config.json`` is checked against the model's schema (``CONFIG_SCHEMA``), and a classifier of
  another class count is dropped only when ``num_classes`` asks for it.
- ``push_to_hub`` is the mixin's, with a branch created when missing, only model files uploaded and
  the repo id in the model card's usage example.

A saved folder is self-contained: it rebuilds the model without network access and never asks to
download backbone weights again, so the same folder works from a local disk, the Hub, or the Hub
cache offline.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar, Union

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

from segret_zoo.errors import CheckpointError
from segret_zoo.files import write_files_atomic, write_folder_atomic
from segret_zoo.hub.download import CONFIG_NAME, README_NAME, TORCH_WEIGHTS_NAME, WEIGHTS_NAME
from segret_zoo.hub.sources import resolve_source
from segret_zoo.hub.weights import convert_layout, load_weights, read_checkpoint, read_config
from segret_zoo.validate import AnyObject, Fields, Int, Nullable, Spec, Text, check_schema, label_id
from segret_zoo.version import __version__

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T", bound="HubMixin")

LIBRARY_NAME = "segret-zoo"
# 2: SegRet as its authors released it (1 was this project's earlier design, which no longer loads)
FORMAT_VERSION = 2
# keys config.json adds around the model's own `config` (removed again before `from_config`)
_HUB_KEYS = ("library_name", "segret_zoo_version", "format_version", "label2id", "pretrained_cfg",
             "preprocessing", "evaluation")
UPLOAD_PATTERNS = ["*.safetensors", "*.json", "*.md"]
# pretrained_cfg entries that are tuples in Python (sizes, mean/std), as timm's cfgs have them
_PCFG_TUPLES = ("mean", "std", "test_scale", "crop_size", "stride")
PAPER_URL = "https://arxiv.org/abs/2502.14014"
CARD_TAGS = ["semantic-segmentation", "segret", "rmt", "retnet"]


# ------------------------------------------------------------------------------- JSON helpers
def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return str(value)


def _untuple(value: Any) -> Any:
    """JSON lists back to tuples (timm cfgs and the model config use tuples for sizes and dims)."""
    if isinstance(value, list):
        return tuple(_untuple(v) for v in value)
    if isinstance(value, dict):
        return {k: _untuple(v) for k, v in value.items()}
    return value


def _int_keys(mapping: Optional[Dict[Any, Any]]) -> Optional[Dict[Any, Any]]:
    """JSON's string keys as class ids; a key that is no class id is kept as it is, for the constructor's
    schema to name (a bare ``int("a")`` would say nothing of where it came from)."""
    if mapping is None:
        return None
    return {(k if (i := label_id(k)) is None else i): v for k, v in mapping.items()}


def _write_text(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return write


# ------------------------------------------------------------------------------- model card
CITATION_BIBTEX = """```bibtex
@article{li2025segret,
  title={SegRet: An Efficient Design for Semantic Segmentation with Retentive Network},
  author={Li, Zhiyuan and Chang, Yi and Wu, Yuan},
  journal={arXiv preprint arXiv:2502.14014},
  year={2025}
}
@inproceedings{fan2024rmt,
  title={RMT: Retentive Networks Meet Vision Transformers},
  author={Fan, Qihang and Huang, Huaibo and Chen, Mingrui and Liu, Hongmin and He, Ran},
  booktitle={CVPR},
  year={2024}
}
```
"""

# ModelCard.from_template renders this with jinja2; every value is prepared by _card_fields
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

SegRet semantic segmentation model: a Vision RetNet (RMT) encoder ({{ backbone }}) and a decoder
with zero-initialized residual paths, predicting {{ num_classes }} classes{{ of_dataset }}.
Saved with segret-zoo; `config.json` rebuilds the model without any further download.

## Usage

```python
import segret_zoo

model = segret_zoo.from_pretrained("{{ source }}")
seg = segret_zoo.Segmenter(model)      # resizing, normalisation and sliding window as below
labels = seg("image.jpg")               # H x W class indices at the image size
```

{{ create_hint }}

## Preprocessing

- RGB scaled to 0-1, then normalised with mean {{ mean }} and std {{ std }}.
- Test scale {{ test_scale }} (long x short side, aspect ratio kept){{ divisor }}; crop {{ crop }} (H x W).

## Evaluation protocol

- {{ mode }} inference{{ window_text }}; multi-scale: scales {{ ms_scales }} with horizontal flip.
- Metric: mIoU over {{ num_classes }} classes, ignore index {{ ignore_index }}.

## Results

{{ results }}
{% if paper %}
{{ paper }}
{% endif %}
{% if source_note %}
## Source

{{ source_note }}
{% endif %}
## Citation

{{ citation }}
"""


def _fmt_size(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _card_fields(config: Dict[str, Any], repo_id: Optional[str]) -> Dict[str, Any]:
    """The template's values, from a config.json dict (so the push command can render a card too)."""
    cfg = config.get("pretrained_cfg") or {}
    arch = cfg.get("architecture") or config.get("architecture") or "segret"
    dataset = cfg.get("dataset")
    backbone = config.get("backbone")
    pre = config.get("preprocessing") or {}
    ev = config.get("evaluation") or {}
    metrics = cfg.get("metrics")
    paper = cfg.get("paper_miou")
    source = repo_id or "path/to/this/folder"
    return {
        "title": f"{arch}" + (f" ({dataset})" if dataset else ""),
        "backbone": backbone if isinstance(backbone, str) else "a custom RMT configuration",
        "num_classes": config.get("num_classes"),
        "of_dataset": f" of {dataset}" if dataset else "",
        "source": source,
        "create_hint": f'or `segret_zoo.create_model("hf-hub:{source}", pretrained=True)`' if repo_id else
                       'or `segret_zoo.create_model(NAME, checkpoint_path="model.safetensors")`.',
        "mean": pre.get("mean"), "std": pre.get("std"),
        "test_scale": _fmt_size(pre.get("test_scale")), "crop": _fmt_size(pre.get("crop_size")),
        "divisor": (f", then each side rounded up to a multiple of {pre['size_divisor']}"
                    if pre.get("size_divisor") else ""),
        "mode": ev.get("mode", "slide"), "ms_scales": ev.get("ms_scales"),
        "window_text": (f", window {_fmt_size(ev.get('crop_size'))}, stride {_fmt_size(ev.get('stride'))}"
                        if ev.get("mode", "slide") == "slide" else " (the whole resized image at once)"),
        "ignore_index": ev.get("ignore_index", 255),
        "results": ("Measured on these weights: " + json.dumps(metrics)) if metrics else
                   "No metrics have been measured for these weights (see `segret-zoo eval`).",
        "paper": (f"For reference, the SegRet paper reports {paper.get('single_scale')} mIoU single-scale and "
                  f"{paper.get('multi_scale_flip')} multi-scale with flip for {arch} on {dataset}: these are the "
                  "paper's figures" + (", for the authors' training of this model; segret-zoo has not measured "
                                       "these weights." if cfg.get("converted_from") else
                                       ", not measurements of these weights.")) if paper else "",
        "source_note": (f"Weights: {cfg['converted_from']}. The architecture is the released code's "
                        "(its parameter counts are the paper's table), so the weights load unchanged but for "
                        "key names; the unused `decode_head.conv_seg` was dropped.")
                       if cfg.get("converted_from") else "",
        "citation": CITATION_BIBTEX,
    }


def build_model_card(config: Dict[str, Any], repo_id: Optional[str] = None,
                     card_data: Optional[ModelCardData] = None) -> ModelCard:
    """The README.md saved beside the weights, as a :class:`huggingface_hub.ModelCard` from config.json.

    ``card_data`` (the mixin's library metadata) gets the license and dataset of these weights.
    """
    cfg = config.get("pretrained_cfg") or {}
    data = card_data.to_dict() if card_data is not None else {
        "library_name": LIBRARY_NAME, "pipeline_tag": "image-segmentation", "tags": list(CARD_TAGS)}
    data["license"] = cfg.get("license") or data.get("license") or "apache-2.0"
    if cfg.get("dataset"):
        data["datasets"] = [cfg["dataset"]]
    return ModelCard.from_template(ModelCardData(**data), template_str=MODEL_CARD_TEMPLATE,
                                   **_card_fields(config, repo_id))


def render_model_card(config: Dict[str, Any], repo_id: Optional[str] = None) -> str:
    """The model card's text (see :func:`build_model_card`)."""
    return str(build_model_card(config, repo_id))


# ------------------------------------------------------------------------------------ upload
def ensure_repo(repo_id: str, *, token: Optional[str] = None, private: Optional[bool] = False,
                branch: Optional[str] = None) -> Any:
    """Create the repo (and ``branch``) if missing; returns the ``HfApi`` used."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if branch is not None:
        api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
    return api


def upload_folder_to_hub(
    folder: PathLike,
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: bool = False,
    commit_message: str = "Upload SegRet model with segret-zoo",
    revision: Optional[str] = None,
) -> Any:
    """Create the repo if needed and upload the model files of `folder` (safetensors, JSON, Markdown)."""
    api = ensure_repo(repo_id, token=token, private=private, branch=revision)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision,
        repo_type="model", allow_patterns=UPLOAD_PATTERNS,
    )


# ------------------------------------------------------------------------------------- mixin
#: config.json's keys around the model's own config: what they may hold. The two blocks that restate
#: pretrained_cfg for people and other tools (``preprocessing``, ``evaluation``) and ``label2id`` are
#: never read back, so only their kind is checked.
HUB_CONFIG_FIELDS: Dict[str, Spec] = {
    "library_name": Text(), "segret_zoo_version": Text(), "format_version": Int(1, None),
    "label2id": Nullable(AnyObject()), "preprocessing": Nullable(AnyObject()), "evaluation": Nullable(AnyObject()),
}
CONFIG_FIX = "correct it in the file or re-create the folder with save_pretrained"


class HubMixin(
    PyTorchModelHubMixin,
    library_name=LIBRARY_NAME,
    license="apache-2.0",
    pipeline_tag="image-segmentation",
    tags=list(CARD_TAGS),
    paper_url=PAPER_URL,
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """huggingface_hub's PyTorch mixin for a model with ``config`` (dict), ``from_config``,
    ``pretrained_cfg``, ``num_classes`` and ``id2label`` (see the module docstring for what it adds)."""

    config: Dict[str, Any]
    pretrained_cfg: Dict[str, Any]
    num_classes: int
    id2label: Optional[Dict[int, str]]
    #: the schema of the model's config.json keys (a model class fills it; checked on load with
    #: :data:`HUB_CONFIG_FIELDS`); its fields are the keys passed on to ``from_config``
    CONFIG_SCHEMA: ClassVar[Fields] = Fields({}, unknown="ignore")
    #: what a config.json of an older format_version was, and what to do instead (a model class fills it)
    OLD_FORMAT_NOTE: ClassVar[str] = "it was written by an older segret-zoo whose models this version does not build"

    # ---------------------------------------------------------------- saving
    def hub_config(self) -> Dict[str, Any]:
        """Everything config.json holds: the model's construction config, labels, preprocessing, protocol."""
        model_cfg = copy.deepcopy(dict(self.config))
        pcfg = {k: v for k, v in dict(getattr(self, "pretrained_cfg", None) or {}).items()
                if k not in ("state_dict", "file", "url")}
        id2label = self.id2label or {i: f"class_{i}" for i in range(self.num_classes)}
        pcfg.update(num_classes=self.num_classes, id2label=id2label)
        model_cfg["id2label"] = id2label
        crop = pcfg.get("crop_size")
        config: Dict[str, Any] = {
            "library_name": LIBRARY_NAME,
            "segret_zoo_version": __version__,
            "format_version": FORMAT_VERSION,
            **model_cfg,
            "label2id": {v: k for k, v in id2label.items()},
            "pretrained_cfg": pcfg,
            # the two blocks below restate pretrained_cfg for people and other tools reading the file
            "preprocessing": {
                "input": "RGB, 0-1 range (uint8 / 255), then (x - mean) / std",
                "mean": pcfg.get("mean"), "std": pcfg.get("std"),
                "test_scale": pcfg.get("test_scale"), "keep_ratio": True,
                "size_divisor": pcfg.get("test_size_divisor"),
                "crop_size": crop,
            },
            "evaluation": {
                "mode": pcfg.get("test_mode") or ("slide" if crop else "whole"),
                "crop_size": crop, "stride": pcfg.get("stride"),
                "ms_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": True,
                "metric": "mIoU", "ignore_index": pcfg.get("ignore_index", 255),
                "reduce_zero_label": pcfg.get("reduce_zero_label", False),
            },
        }
        return _jsonable(config)

    def _weights_writer(self, safe_serialization: bool = True) -> Tuple[str, Callable[[Path], None]]:
        """(file name, writer) of the weights: safetensors' ``save_model`` stores tied tensors once
        and records the dropped names in the file's metadata, which the reader uses to restore them."""
        import safetensors.torch

        module = getattr(self, "module", self)  # a DDP-wrapped model saves its plain module, as the mixin does
        if safe_serialization:
            def write(path: Path) -> None:
                safetensors.torch.save_model(module, str(path), metadata={"format": "pt"})  # type: ignore[arg-type]

            return WEIGHTS_NAME, write

        def write_torch(path: Path) -> None:
            torch.save({k: v.contiguous() for k, v in module.state_dict().items()}, path)  # type: ignore[attr-defined]

        return TORCH_WEIGHTS_NAME, write_torch

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: the weights alone (atomically). :meth:`save_pretrained` writes the whole folder."""
        name, write = self._weights_writer()
        write_files_atomic(Path(save_directory), [(name, write)])

    def generate_model_card(self, *args: Any, repo_id: Optional[str] = None, **kwargs: Any) -> ModelCard:
        """The mixin's model card hook: our template filled from config.json, the mixin's card metadata.

        ``repo_id`` fills the usage example (``push_to_hub`` passes it through ``model_card_kwargs``).
        """
        return build_model_card(self.hub_config(), repo_id, card_data=self._hub_mixin_info.model_card_data)

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: PathLike,
        *,
        config: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        push_to_hub: bool = False,
        model_card_kwargs: Optional[Dict[str, Any]] = None,
        safe_serialization: bool = True,
        **push_to_hub_kwargs: Any,
    ) -> Any:
        """Write model.safetensors (or pytorch_model.bin), config.json and README.md, all or none.

        The mixin's signature; ``config`` adds keys to config.json (the keys that rebuild the model
        win), ``repo_id`` fills the model card's usage example and names the repo for
        ``push_to_hub=True``. Returns the folder, or the commit info when pushing.
        """
        folder = Path(save_directory)
        hub_config = self.hub_config()
        if config:
            hub_config = {**_jsonable(dict(config)), **hub_config}
        card_kwargs = dict(model_card_kwargs or {})
        card_kwargs.setdefault("repo_id", repo_id)
        card = self.generate_model_card(**card_kwargs)
        weights_name, write_weights = self._weights_writer(safe_serialization)
        stale = TORCH_WEIGHTS_NAME if weights_name == WEIGHTS_NAME else WEIGHTS_NAME
        write_folder_atomic(folder, [  # all or nothing as a folder; a leftover of the other format could shadow it
            (weights_name, write_weights),
            (CONFIG_NAME, _write_text(json.dumps(hub_config, indent=2, ensure_ascii=False) + "\n")),
            (README_NAME, card.save),
        ], remove=[stale])
        if push_to_hub:
            return self.push_to_hub(repo_id or folder.name, config=config, model_card_kwargs=model_card_kwargs,
                                    **push_to_hub_kwargs)
        return folder

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        config: Optional[Dict[str, Any]] = None,
        commit_message: str = "Upload SegRet model with segret-zoo",
        private: Optional[bool] = None,
        token: Optional[str] = None,
        branch: Optional[str] = None,
        create_pr: Optional[bool] = None,
        allow_patterns: Optional[Union[List[str], str]] = None,
        ignore_patterns: Optional[Union[List[str], str]] = None,
        delete_patterns: Optional[Union[List[str], str]] = None,
        model_card_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        """The mixin's ``push_to_hub``: saves to a temporary folder and uploads it in one commit.

        Added: a ``branch`` that does not exist yet is created, only the model files
        (``UPLOAD_PATTERNS``) are uploaded unless ``allow_patterns`` says otherwise, and the model
        card's usage example names ``repo_id``.
        """
        if branch is not None:  # the mixin uploads to a branch but does not create it
            ensure_repo(repo_id, token=token, private=private, branch=branch)
        return super().push_to_hub(
            repo_id, config=config, commit_message=commit_message, private=private, token=token, branch=branch,
            create_pr=create_pr, allow_patterns=UPLOAD_PATTERNS if allow_patterns is None else allow_patterns,
            ignore_patterns=ignore_patterns, delete_patterns=delete_patterns,
            model_card_kwargs={"repo_id": repo_id, **(model_card_kwargs or {})},
        )

    # ---------------------------------------------------------------- loading
    @classmethod
    def check_config(cls, config: Dict[str, Any], *, source: str = CONFIG_NAME) -> None:
        """Every value of a config.json against the class's schema: one line naming the file, the field
        (dotted path), the value and what is allowed, before anything reaches a constructor."""
        check_schema(config, cls.CONFIG_SCHEMA.extended(HUB_CONFIG_FIELDS), where=source, error=CheckpointError,
                     json_style=True, fix=CONFIG_FIX)

    @classmethod
    def from_hub_config(
        cls: Type[T],
        config: Dict[str, Any],
        *,
        num_classes: Optional[int] = None,
        id2label: Optional[Dict[int, str]] = None,
        source: str = CONFIG_NAME,
        **overrides: Any,
    ) -> T:
        """Build (randomly initialised) from a config.json dict; a new ``num_classes`` drops the labels.

        ``source`` names the file in error messages. Keys outside the schema are ignored (see the
        model's ``CONFIG_SCHEMA``); those in it are checked first (:meth:`check_config`).
        """
        version = config.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise CheckpointError(f"{source} has format_version {version}: it was written by a newer "
                                  "segret-zoo; upgrade with `pip install -U segret-zoo`")
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise CheckpointError(f"{source} cannot be loaded (format_version {version}): {cls.OLD_FORMAT_NOTE}")
        pcfg_arch = config.get("pretrained_cfg").get("architecture") if isinstance(config.get("pretrained_cfg"), dict) \
            else None
        arch = config.get("architecture") or pcfg_arch
        if isinstance(arch, str) and arch.startswith("rmt_"):
            raise CheckpointError(
                f"this is an RMT backbone checkpoint ({arch}), not a SegRet model: use "
                f"create_model('segret_...', pretrained_backbone=PATH_TO_ITS_model.safetensors)")
        cls.check_config(config, source=source)
        # only the schema's keys, checked: nothing else is converted or passed on
        model_cfg = {k: _untuple(config[k]) for k in cls.CONFIG_SCHEMA.fields if k in config and k not in _HUB_KEYS}
        model_cfg["id2label"] = _int_keys(config.get("id2label"))
        if num_classes is not None and num_classes != model_cfg.get("num_classes"):
            model_cfg["num_classes"] = num_classes
            model_cfg["id2label"] = None
        if id2label is not None:
            model_cfg["id2label"] = _int_keys(id2label)
        model_cfg.update(overrides)
        pcfg = dict(config.get("pretrained_cfg") or {})
        pcfg = {k: _untuple(v) if k in _PCFG_TUPLES else v for k, v in pcfg.items()}  # other keys: metadata as found
        pcfg.pop("id2label", None)  # the model's own labels win (they follow num_classes)
        return cls.from_config(model_cfg, pretrained_cfg=pcfg)  # type: ignore[attr-defined]

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls: Type[T],
        pretrained_model_name_or_path: PathLike,
        *,
        force_download: bool = False,
        token: Optional[Union[str, bool]] = None,
        cache_dir: Optional[PathLike] = None,
        local_files_only: bool = False,
        revision: Optional[str] = None,
        **model_kwargs: Any,
    ) -> T:
        """Load from a Hub repo id (``org/name``, ``hf-hub:org/name@rev``), a saved folder or a weights file.

        The mixin's signature. Returns the model in eval mode, as the mixin and transformers do.
        ``num_classes`` different from the checkpoint's keeps everything but the classifier (with a
        warning); ``map_location`` moves the loaded model; other ``model_kwargs`` go to the model
        constructor (e.g. ``drop_path_rate`` for fine-tuning).
        """
        return cls._from_pretrained(  # type: ignore[return-value]
            model_id=os.fspath(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir,
            force_download=force_download, local_files_only=local_files_only, token=token, **model_kwargs)

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls: Type[T],
        *,
        model_id: str,
        revision: Optional[str],
        cache_dir: Optional[PathLike],
        force_download: bool,
        local_files_only: bool,
        token: Optional[Union[str, bool]],
        map_location: Union[str, torch.device] = "cpu",
        num_classes: Optional[int] = None,
        id2label: Optional[Dict[int, str]] = None,
        **overrides: Any,
    ) -> T:
        """The mixin's loading hook, on this project's resolution (checked downloads, bare files)."""
        src = resolve_source(model_id, revision=revision, cache_dir=cache_dir, token=token,
                             force_download=force_download, local_files_only=local_files_only)
        checkpoint = read_checkpoint(src.weights)
        if src.config is not None:
            config = read_config(src.config)
            where = str(src.config) if src.repo_id is None else f"{src.description}/{CONFIG_NAME}"
        else:
            config = cls.config_from_state_dict(checkpoint.state_dict, source=src.description, meta=checkpoint.meta)
            where = src.description
        model = cls.from_hub_config(config, num_classes=num_classes, id2label=id2label, source=where, **overrides)
        new_classifier = num_classes is not None  # an explicit count is the user asking for it
        load_weights(model, checkpoint.state_dict,  # type: ignore[arg-type]
                     source=src.description if src.repo_id is not None else str(src.weights),
                     new_classifier=new_classifier)
        if src.repo_id is not None:
            model.pretrained_cfg.update(hf_hub_id=src.repo_id, hf_hub_filename=WEIGHTS_NAME,
                                        hf_hub_revision=src.revision)
        model.to(map_location)  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        return model

    @classmethod
    def infer_config(cls, state_dict: Dict[str, torch.Tensor],
                     meta: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """A model class that can recognise its configuration from tensor shapes (in its own layout) overrides this."""
        return None

    @classmethod
    def config_from_state_dict(cls, state_dict: Dict[str, torch.Tensor], *, source: str,
                               meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """A config for a bare weights file without config.json: its layout converted by one of the
        class's ``checkpoint_layouts()``, then :meth:`infer_config`."""
        get_layouts = getattr(cls, "checkpoint_layouts", None)
        layouts = get_layouts() if callable(get_layouts) else {}
        converted = convert_layout(state_dict, layouts)[1] if layouts else state_dict
        if converted is None:
            hint = getattr(cls, "describe_checkpoint", lambda _s: None)(state_dict)
            raise CheckpointError(f"{source} is not a {cls.__name__} checkpoint" + (f": {hint}" if hint else
                                  f" (its keys match none of the layouts it reads: {', '.join(layouts)})"))
        config = cls.infer_config(converted, meta)
        if config is None:
            raise CheckpointError(
                f"{source} has no config.json beside it and its shapes match no registered {cls.__name__} variant: "
                "put the config.json written by save_pretrained next to it, or build the model with "
                "create_model(NAME, ...) and pass checkpoint_path=...")
        return config
