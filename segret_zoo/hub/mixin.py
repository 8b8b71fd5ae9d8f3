"""`save_pretrained` / `from_pretrained` / `push_to_hub` for SegRet, in the Hugging Face layout.

A saved folder (``model.safetensors`` + ``config.json`` + ``README.md``) is self-contained: it
rebuilds the model without network access and never asks to download backbone weights again, so
the same folder works from a local disk, the Hub, or the Hub cache offline.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Type, TypeVar, Union

import torch

from segret_zoo.errors import CheckpointError
from segret_zoo.files import write_files_atomic
from segret_zoo.hub.download import CONFIG_NAME, README_NAME, TORCH_WEIGHTS_NAME, WEIGHTS_NAME, resolve_source
from segret_zoo.hub.weights import load_checkpoint_into, read_config, read_state_dict
from segret_zoo.version import __version__

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T", bound="HubMixin")

LIBRARY_NAME = "segret-zoo"
FORMAT_VERSION = 1
# keys config.json adds around the model's own `config` (removed again before `from_config`)
_HUB_KEYS = ("library_name", "segret_zoo_version", "format_version", "label2id", "pretrained_cfg",
             "preprocessing", "evaluation")
UPLOAD_PATTERNS = ["*.safetensors", "*.json", "*.md"]


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


def _int_keys(mapping: Optional[Dict[Any, Any]]) -> Optional[Dict[int, str]]:
    return None if mapping is None else {int(k): str(v) for k, v in mapping.items()}


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

def _fmt_size(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def render_model_card(config: Dict[str, Any], repo_id: Optional[str] = None) -> str:
    """The README.md saved beside the weights: what the model is and how to use it, from config.json."""
    cfg = config.get("pretrained_cfg") or {}
    arch = cfg.get("architecture") or config.get("architecture") or "segret"
    dataset = cfg.get("dataset")
    license_ = cfg.get("license") or "apache-2.0"
    source = repo_id or "path/to/this/folder"
    backbone = config.get("backbone")
    backbone_txt = backbone if isinstance(backbone, str) else "a custom RMT configuration"
    pre = config.get("preprocessing") or {}
    ev = config.get("evaluation") or {}
    metrics = cfg.get("metrics")
    front = ["---", f"library_name: {LIBRARY_NAME}", f"license: {license_}", "pipeline_tag: image-segmentation",
             "tags:", "- semantic-segmentation", "- segret", "- rmt", "- retnet"]
    if dataset:
        front += ["datasets:", f"- {dataset}"]
    front.append("---")
    lines = front + [
        "",
        f"# {arch}" + (f" ({dataset})" if dataset else ""),
        "",
        f"SegRet semantic segmentation model: a Vision RetNet (RMT) encoder ({backbone_txt}) and a decoder",
        f"with zero-initialized residual paths, predicting {config.get('num_classes')} classes"
        + (f" of {dataset}." if dataset else "."),
        "Saved with segret-zoo; `config.json` rebuilds the model without any further download.",
        "",
        "## Usage",
        "",
        "```python",
        "import segret_zoo",
        "",
        f'model = segret_zoo.from_pretrained("{source}")',
        "seg = segret_zoo.Segmenter(model)      # resizing, normalisation and sliding window as below",
        'labels = seg("image.jpg")               # H x W class indices at the image size',
        "```",
        "",
        f"or `segret_zoo.create_model(\"hf-hub:{source}\", pretrained=True)`"
        if repo_id else "or `segret_zoo.create_model(NAME, checkpoint_path=\"model.safetensors\")`.",
        "",
        "## Preprocessing",
        "",
        f"- RGB scaled to 0-1, then normalised with mean {pre.get('mean')} and std {pre.get('std')}.",
        f"- Test scale {_fmt_size(pre.get('test_scale'))} (long x short side, aspect ratio kept); "
        f"crop {_fmt_size(pre.get('crop_size'))} (H x W).",
        "",
        "## Evaluation protocol",
        "",
        f"- {ev.get('mode', 'slide')} inference, window {_fmt_size(ev.get('crop_size'))}, stride "
        f"{_fmt_size(ev.get('stride'))}; multi-scale: scales {ev.get('ms_scales')} with horizontal flip.",
        f"- Metric: mIoU over {config.get('num_classes')} classes, ignore index {ev.get('ignore_index', 255)}.",
        "",
        "## Results",
        "",
        ("Measured on these weights: " + json.dumps(metrics)) if metrics else
        "No metrics have been measured for these weights (see `segret-zoo eval`).",
        "",
    ]
    paper = cfg.get("paper_miou")
    if paper:
        lines += [
            f"For reference, the SegRet paper reports {paper.get('single_scale')} mIoU single-scale and "
            f"{paper.get('multi_scale_flip')} multi-scale with flip for {arch} on {dataset}: these are the "
            "paper's figures, not measurements of these weights.",
            "",
        ]
    lines += [
        "## Citation",
        "",
        CITATION_BIBTEX,
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ upload
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
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision,
        repo_type="model", allow_patterns=UPLOAD_PATTERNS,
    )


# ------------------------------------------------------------------------------------- mixin
class HubMixin:
    """Hub I/O for a model with ``config`` (dict), ``from_config``, ``pretrained_cfg``, ``num_classes``,
    ``id2label``."""

    config: Dict[str, Any]
    pretrained_cfg: Dict[str, Any]
    num_classes: int
    id2label: Optional[Dict[int, str]]

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
                "crop_size": crop,
            },
            "evaluation": {
                "mode": "slide" if crop else "whole",
                "crop_size": crop, "stride": pcfg.get("stride"),
                "ms_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": True,
                "metric": "mIoU", "ignore_index": pcfg.get("ignore_index", 255),
                "reduce_zero_label": pcfg.get("reduce_zero_label", False),
            },
        }
        return _jsonable(config)

    def save_pretrained(
        self,
        save_directory: PathLike,
        safe_serialization: bool = True,
        *,
        repo_id: Optional[str] = None,
    ) -> Path:
        """Write model.safetensors (or pytorch_model.bin), config.json and README.md, each atomically.

        Tied tensors are stored once (safetensors refuses aliases) and restored on load. ``repo_id``
        only fills the usage example of the model card.
        """
        import safetensors.torch

        folder = Path(save_directory)
        config = self.hub_config()
        if safe_serialization:
            weights_name, stale = WEIGHTS_NAME, TORCH_WEIGHTS_NAME

            def write_weights(path: Path) -> None:
                safetensors.torch.save_model(self, str(path), metadata={"format": "pt"})  # type: ignore[arg-type]
        else:
            weights_name, stale = TORCH_WEIGHTS_NAME, WEIGHTS_NAME

            def write_weights(path: Path) -> None:
                torch.save({k: v.contiguous() for k, v in self.state_dict().items()}, path)  # type: ignore[attr-defined]

        write_files_atomic(folder, [
            (weights_name, write_weights),
            (CONFIG_NAME, _write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")),
            (README_NAME, _write_text(render_model_card(config, repo_id))),
        ])
        (folder / stale).unlink(missing_ok=True)  # a leftover of the other format could shadow this save
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        token: Optional[str] = None,
        private: bool = False,
        commit_message: str = "Upload SegRet model with segret-zoo",
        revision: Optional[str] = None,
    ) -> Any:
        """Save to a temporary folder and upload it (repo created if missing); returns the commit info."""
        with tempfile.TemporaryDirectory(prefix="segret-push-") as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            return upload_folder_to_hub(tmp, repo_id, token=token, private=private,
                                        commit_message=commit_message, revision=revision)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_hub_config(
        cls: Type[T],
        config: Dict[str, Any],
        *,
        num_classes: Optional[int] = None,
        id2label: Optional[Dict[int, str]] = None,
        **overrides: Any,
    ) -> T:
        """Build (randomly initialised) from a config.json dict; a new ``num_classes`` drops the labels."""
        version = config.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise CheckpointError(f"config.json has format_version {version}: it was written by a newer "
                                  "segret-zoo; upgrade with `pip install -U segret-zoo`")
        arch = str(config.get("architecture") or (config.get("pretrained_cfg") or {}).get("architecture") or "")
        if arch.startswith("rmt_"):
            raise CheckpointError(
                f"this is an RMT backbone checkpoint ({arch}), not a SegRet model: use "
                f"create_model('segret_...', pretrained_backbone=PATH_TO_ITS_model.safetensors)")
        model_cfg = _untuple({k: v for k, v in config.items() if k not in _HUB_KEYS})
        model_cfg["id2label"] = _int_keys(config.get("id2label"))
        if num_classes is not None and num_classes != model_cfg.get("num_classes"):
            model_cfg["num_classes"] = num_classes
            model_cfg["id2label"] = None
        if id2label is not None:
            model_cfg["id2label"] = _int_keys(id2label)
        model_cfg.update(overrides)
        pcfg = _untuple(dict(config.get("pretrained_cfg") or {}))
        pcfg.pop("id2label", None)  # the model's own labels win (they follow num_classes)
        return cls.from_config(model_cfg, pretrained_cfg=pcfg)  # type: ignore[attr-defined]

    @classmethod
    def from_pretrained(
        cls: Type[T],
        pretrained_model_name_or_path: PathLike,
        *,
        revision: Optional[str] = None,
        cache_dir: Optional[PathLike] = None,
        token: Optional[Union[str, bool]] = None,
        force_download: bool = False,
        num_classes: Optional[int] = None,
        id2label: Optional[Dict[int, str]] = None,
        **overrides: Any,
    ) -> T:
        """Load from a Hub repo id (``org/name``, ``hf-hub:org/name@rev``), a saved folder or a weights file.

        Returns the model in eval mode, as transformers does. ``num_classes`` different from the
        checkpoint's keeps everything but the classifier (with a warning); ``overrides`` go to the
        model constructor (e.g. ``drop_path_rate`` for fine-tuning).
        """
        src = resolve_source(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir, token=token,
                             force_download=force_download)
        state_dict = read_state_dict(src.weights)
        if src.config is not None:
            config = read_config(src.config)
        else:
            config = cls.config_from_state_dict(state_dict, source=src.description)
        model = cls.from_hub_config(config, num_classes=num_classes, id2label=id2label, **overrides)
        load_checkpoint_into(model, state_dict, source=src.description)  # type: ignore[arg-type]
        if src.repo_id is not None:
            model.pretrained_cfg.update(hf_hub_id=src.repo_id, hf_hub_filename=WEIGHTS_NAME,
                                        hf_hub_revision=src.revision)
        model.eval()  # type: ignore[attr-defined]
        return model

    @classmethod
    def infer_config(cls, state_dict: Dict[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
        """A model class that can recognise its configuration from tensor shapes overrides this."""
        return None

    @classmethod
    def config_from_state_dict(cls, state_dict: Dict[str, torch.Tensor], *, source: str) -> Dict[str, Any]:
        """A config for a bare weights file without config.json (from :meth:`infer_config`)."""
        config = cls.infer_config(state_dict)
        if config is None:
            raise CheckpointError(
                f"{source} has no config.json beside it and its shapes match no registered SegRet variant: "
                "put the config.json written by save_pretrained next to it, or build the model with "
                "create_model(NAME, ...) and pass checkpoint_path=...")
        return config
