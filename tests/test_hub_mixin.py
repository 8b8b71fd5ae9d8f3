"""save_pretrained / from_pretrained / push_to_hub: complete, self-contained, atomic folders."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

from segret_zoo.errors import CheckpointError, WeightsNotFoundError
from segret_zoo.factory import create_model, from_pretrained
from segret_zoo.models.segret import SegRet

MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
SMALL = dict(backbone=MINI, decoder_channels=32)

torch.set_num_threads(1)


def _model(seed: int = 0, **kwargs) -> SegRet:
    model = create_model("segret_tiny", **{**SMALL, **kwargs})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                v = torch.randn(t.shape, generator=g) * 0.2
                t.copy_(v.abs() + 0.5 if name.endswith("running_var") else v)
    return model.eval()


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(3)))


def _walk_keys(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_keys(v)


def test_saved_folder_is_complete_and_self_contained(tmp_path):
    model = create_model("segret_tiny.cityscapes", pretrained_backbone=False, **SMALL)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "segret_tiny" and config["library_name"] == "segret-zoo"
    assert config["backbone"]["embed_dims"] == [16, 32, 48, 64] and config["decoder_channels"] == 32
    assert config["num_classes"] == 19 and config["id2label"]["0"] == "road" and config["label2id"]["road"] == 0
    assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert config["preprocessing"]["test_scale"] == [2048, 1024] and config["preprocessing"]["crop_size"] == [512, 1024]
    # the authors' Cityscapes test pipeline: whole image at the frame's own scale, no rounding
    assert config["evaluation"]["mode"] == "whole" and config["preprocessing"]["size_divisor"] is None
    assert "whole inference (the whole resized image at once)" in (tmp_path / "README.md").read_text()
    assert config["evaluation"]["ms_scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and config["evaluation"]["flip"]
    assert config["pretrained_cfg"]["dataset"] == "cityscapes"
    # nothing asks the loader to fetch (backbone) weights again
    assert not {"pretrained", "pretrained_backbone", "checkpoint_path", "file", "url"} & set(_walk_keys(config))
    card = (tmp_path / "README.md").read_text()
    front = ModelCard(card).data  # huggingface_hub's card metadata, as the Hub reads it
    assert card.startswith("---\n") and front.library_name == "segret-zoo" and front.datasets == ["cityscapes"]
    assert "- cityscapes" in card and front.pipeline_tag == "image-segmentation" and "segret" in front.tags
    assert "segret_zoo.from_pretrained(" in card and "arXiv:2502.14014" in card and "CVPR" in card
    assert "81.75" in card and "paper" in card  # the paper's figures, labelled as such


def test_round_trip_keeps_outputs_labels_and_cfg(tmp_path):
    model = _model(seed=1)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert not loaded.training  # from_pretrained returns eval mode, as transformers does
    assert torch.equal(_out(loaded), _out(model))
    assert loaded.id2label == model.id2label and loaded.pretrained_cfg["crop_size"] == (512, 512)
    assert loaded.pretrained_cfg["architecture"] == "segret_tiny"


def test_fused_model_round_trip(tmp_path):
    model = _model(seed=2).fuse_zir()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.zir_fused
    assert torch.equal(_out(loaded), _out(model))
    # a registered name + the fused weights file: the new model is folded to match the checkpoint
    created = create_model("segret_tiny", checkpoint_path=tmp_path / "model.safetensors", **SMALL)
    assert created.zir_fused and torch.equal(_out(created), _out(model))


def test_torch_format_and_switching_back(tmp_path):
    model = _model(seed=3)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    assert torch.equal(_out(from_pretrained(tmp_path)), _out(model))
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "pytorch_model.bin").exists()  # no stale copy of older weights


class TiedSegRet(SegRet):
    """A SegRet whose first ZIR path shares its weight with the first linear layer."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.decoder.levels[0].zir_conv.weight = self.decoder.levels[0].linear.weight


def test_tied_tensors_are_stored_once_and_restored(tmp_path):
    from safetensors.torch import load_file

    model = TiedSegRet.from_config(_model().config)
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert ("decoder.levels.0.zir_conv.weight" in stored) != ("decoder.levels.0.linear.weight" in stored)
    loaded = TiedSegRet.from_pretrained(tmp_path)
    assert loaded.decoder.levels[0].zir_conv.weight is loaded.decoder.levels[0].linear.weight
    assert torch.equal(_out(loaded), _out(model))


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_failed_weights_write_leaves_old_files(tmp_path, monkeypatch):
    _model(seed=4).save_pretrained(tmp_path)
    before = _snapshot(tmp_path)

    def crash(model, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_model", crash)
    with pytest.raises(OSError, match="No space left"):
        _model(seed=5).save_pretrained(tmp_path)
    assert _snapshot(tmp_path) == before  # same names (no temp files left) and same bytes


def test_failure_after_weights_are_staged_leaves_old_files(tmp_path, monkeypatch):
    _model(seed=4).save_pretrained(tmp_path)
    before = _snapshot(tmp_path)
    def crash(card, path):  # the README is the last file staged, after the weights and config.json
        raise OSError("No space left on device")

    monkeypatch.setattr(ModelCard, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        _model(seed=6).save_pretrained(tmp_path)
    assert _snapshot(tmp_path) == before


def test_push_to_hub_uploads_a_saved_folder(monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls["create"] = (repo_id, private, exist_ok)
            return SimpleNamespace(repo_id=repo_id)

        def create_branch(self, repo_id, branch, exist_ok=False, repo_type=None):
            calls["branch"] = branch

        def upload_folder(self, repo_id, folder_path, commit_message, revision, repo_type, allow_patterns,
                          create_pr=None, ignore_patterns=None, delete_patterns=None):
            folder = Path(folder_path)
            calls["files"] = sorted(p.name for p in folder.iterdir())
            calls["card"] = (folder / "README.md").read_text()
            calls["upload"] = (repo_id, commit_message, revision, allow_patterns)
            return "commit-info"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", FakeApi)  # the mixin's own push_to_hub uploads
    result = _model().push_to_hub("me/segret-test", token="tok", private=True, branch="dev")
    assert result == "commit-info"
    assert calls["token"] == "tok" and calls["create"] == ("me/segret-test", True, True)
    assert calls["branch"] == "dev" and calls["upload"][2] == "dev"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert 'from_pretrained("me/segret-test")' in calls["card"]
    assert "*.safetensors" in calls["upload"][3] and "*.bin" not in calls["upload"][3]


def test_on_huggingface_hub_mixin_with_standard_signatures(tmp_path, monkeypatch):
    """SegRet is a PyTorchModelHubMixin: the standard arguments, the mixin's card hook and metadata."""
    import inspect

    from huggingface_hub import ModelHubMixin, PyTorchModelHubMixin

    assert issubclass(SegRet, PyTorchModelHubMixin) and issubclass(SegRet, ModelHubMixin)
    params = inspect.signature(SegRet.from_pretrained).parameters
    for name in ("revision", "cache_dir", "force_download", "local_files_only", "token"):
        assert name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    base = inspect.signature(ModelHubMixin.save_pretrained).parameters
    ours = inspect.signature(SegRet.save_pretrained).parameters
    assert set(base) <= set(ours)
    assert set(inspect.signature(ModelHubMixin.push_to_hub).parameters) <= set(
        inspect.signature(SegRet.push_to_hub).parameters)
    model = _model()
    card = model.generate_model_card(repo_id="me/x")
    assert isinstance(card, ModelCard) and card.data.library_name == "segret-zoo"
    assert {"model_hub_mixin", "pytorch_model_hub_mixin", "segret"} <= set(card.data.tags)
    assert 'from_pretrained("me/x")' in card.content
    # the mixin's push_to_hub=True route: save, then push the folder under repo_id
    pushed = {}
    monkeypatch.setattr(SegRet, "push_to_hub", lambda self, repo_id, **kw: pushed.setdefault("repo", repo_id))
    assert model.save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="me/m") == "me/m"
    assert (tmp_path / "m" / "model.safetensors").is_file()
    # local_files_only: a repo id not in the cache fails at once, without asking the Hub
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsNotFoundError, match="local_files_only=True"):
        SegRet.from_pretrained("me/not-cached", local_files_only=True)


def test_rmt_folder_is_not_a_segret_model():
    with pytest.raises(CheckpointError, match="pretrained_backbone="):
        SegRet.from_hub_config({"architecture": "rmt_t", "num_classes": 1000})


def test_newer_format_is_refused():
    with pytest.raises(CheckpointError, match="newer segret-zoo"):
        SegRet.from_hub_config({**_model().hub_config(), "format_version": 99})


def test_bare_weights_file_without_config(tmp_path):
    from safetensors.torch import save_file

    model = _model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="no config.json beside it"):
        from_pretrained(tmp_path / "weights.safetensors")
    base = create_model("segret_base", num_classes=19, device="meta")
    config = SegRet.infer_config(base.state_dict())
    assert config is not None
    assert (config["architecture"], config["backbone"], config["num_classes"], config["decoder_channels"]) == (
        "segret_base", "rmt_b", 19, 256)
