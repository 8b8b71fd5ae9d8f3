"""``segret-zoo push MODEL_DIR REPO_ID``: publish a saved model folder to the Hugging Face Hub.

The folder is loaded and run once before anything is uploaded, so a broken or half-written folder
never reaches the Hub. The command changes nothing in git: it prints the size and sha256 to record
in ``weights/manifest.json`` with ``weights/update_manifest.py``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch

from segret_zoo.errors import UserError
from segret_zoo.files import write_text_atomic
from segret_zoo.hub.download import CONFIG_NAME, README_NAME, WEIGHTS_NAME, parse_hub_name
from segret_zoo.hub.manifest import file_sha256, find_entry
from segret_zoo.hub.mixin import CITATION_BIBTEX, render_model_card, upload_folder_to_hub
from segret_zoo.hub.weights import read_config
from segret_zoo.models.segret import SegRet

__all__ = ["add_cli", "verify_model_folder", "push_folder"]


def _rmt_model_card(config: Dict[str, Any], repo_id: str) -> str:
    arch = config.get("architecture", "rmt")
    return "\n".join([
        "---", "library_name: timm", "license: apache-2.0", "pipeline_tag: image-classification",
        "tags:", "- image-classification", "- rmt", "- segret-zoo", "datasets:", "- imagenet-1k", "---", "",
        f"# {arch}", "",
        "RMT (Vision RetNet) ImageNet-1k weights converted from the official release "
        "(https://github.com/qhfan/RMT) with `segret-zoo convert-rmt`; the backbone of the SegRet models.", "",
        "## Usage", "", "```python", "import segret_zoo, timm", "",
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)',
        '# or as a SegRet encoder: segret_zoo.create_model("segret_...", pretrained_backbone=True)',
        "```", "", "## Citation", "", CITATION_BIBTEX,
    ])


def verify_model_folder(folder: Path) -> Dict[str, Any]:
    """Load the folder the way users will and run one small forward pass; returns its config.

    Handles SegRet folders (``save_pretrained``) and RMT backbone folders (``convert-rmt``).
    """
    weights, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for path in (weights, config_path):
        if not path.is_file():
            raise UserError(f"{folder} has no {path.name}: write the folder with save_pretrained, "
                            "`segret-zoo train` or `segret-zoo convert-rmt` first (only safetensors are published)")
    config = read_config(config_path)
    arch = str(config.get("architecture") or "")
    x = torch.randn(1, 3, 64, 64)
    try:
        if arch.startswith("rmt_"):
            model = timm.create_model(arch, pretrained=True, num_classes=int(config.get("num_classes", 0)),
                                      pretrained_cfg_overlay=dict(file=str(weights)))
            out = model.eval().forward_features(x)
        else:
            model = SegRet.from_pretrained(folder)
            out = model(x)
            if tuple(out.shape) != (1, model.num_classes, 64, 64):
                raise UserError(f"the model gives logits of shape {tuple(out.shape)}, expected "
                                f"(1, {model.num_classes}, 64, 64)")
    except Exception as err:  # any load or forward failure: report it, upload nothing
        reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        raise UserError(f"{folder} does not load ({reason}); nothing was uploaded") from err
    if not torch.isfinite(out).all():
        raise UserError(f"{folder}: the model produces non-finite outputs; nothing was uploaded")
    return config


def push_folder(folder: Path, repo_id: str, *, token: Optional[str] = None, private: bool = False,
                revision: Optional[str] = None, commit_message: Optional[str] = None) -> Dict[str, Any]:
    """Verify then upload `folder`; returns what the manifest needs (size, sha256, commit)."""
    parse_hub_name(repo_id)  # validates 'org/name' before any work
    config = verify_model_folder(folder)
    if not (folder / README_NAME).is_file():  # convert-rmt folders have no model card yet
        card = (_rmt_model_card(config, repo_id) if str(config.get("architecture", "")).startswith("rmt_")
                else render_model_card(config, repo_id))
        write_text_atomic(folder / README_NAME, card)
        print(f"wrote {folder / README_NAME} (model card)")
    try:
        info = upload_folder_to_hub(folder, repo_id, token=token, private=private, revision=revision,
                                    commit_message=commit_message or f"Upload {config.get('architecture')} with segret-zoo")
    except Exception as err:
        raise _upload_error(err, repo_id) from err
    weights = folder / WEIGHTS_NAME
    return {
        "repo_id": repo_id,
        "commit": getattr(info, "oid", None),
        "url": getattr(info, "commit_url", None) or str(info),
        "filename": WEIGHTS_NAME,
        "size": weights.stat().st_size,
        "sha256": file_sha256(weights),
    }


def _upload_error(err: Exception, repo_id: str) -> UserError:
    """One line for a failed upload: the Hub unreachable, or its refusal (auth, permissions, name)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    reason = " ".join(str(err).split())[:300] or type(err).__name__
    if isinstance(err, HfHubHTTPError):
        return UserError(f"the Hugging Face Hub refused the upload to {repo_id} ({reason}): check the token "
                         "(--token, HF_TOKEN or `hf auth login`) and your write access to the repo")
    module = type(err).__module__.split(".")[0]
    if isinstance(err, (OSError, TimeoutError)) or module.startswith(("httpx", "httpcore", "requests", "urllib3")):
        return UserError(f"cannot push to {repo_id}: the Hugging Face Hub at {constants.ENDPOINT} is unreachable "
                         f"({type(err).__name__}: {reason}); check the network, a proxy or HF_ENDPOINT and run "
                         "the command again (nothing was uploaded)")
    return UserError(f"uploading to {repo_id} failed ({type(err).__name__}: {reason})")


def _run(args: argparse.Namespace) -> int:
    folder = Path(args.model_dir)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (give the folder written by save_pretrained / convert-rmt)")
    result = push_folder(folder, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                         commit_message=args.message)
    print(json.dumps(result, indent=2))
    entry = find_entry(args.repo_id, WEIGHTS_NAME)
    name = entry.get("name") if entry else "NAME"
    print("uploaded; nothing was changed in git. Record the release in weights/manifest.json with:\n"
          f"  python weights/update_manifest.py {name} {folder} --status published"
          + (f" --revision {result['commit']}" if result.get("commit") else ""))
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "push", help="upload a saved model folder to the Hugging Face Hub",
        description="Check that MODEL_DIR (save_pretrained / convert-rmt output) loads and runs, then upload its "
                    "model.safetensors, config.json and README.md to REPO_ID (created if missing). Prints the "
                    "size and sha256 to record in weights/manifest.json; changes nothing in git.")
    p.add_argument("model_dir", help="folder with model.safetensors and config.json")
    p.add_argument("repo_id", help="Hub repo, e.g. segret-zoo/segret-tiny-ade20k")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    p.add_argument("--revision", default=None, help="branch to upload to (created if missing; default main)")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=_run)
