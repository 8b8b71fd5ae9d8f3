"""`segret-zoo push`, weights/manifest.json and weights/update_manifest.py (no network: HfApi is faked)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from segret_zoo.cli import main
from segret_zoo.factory import create_model, list_pretrained
from segret_zoo.hub.manifest import file_sha256, load_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))

torch.set_num_threads(1)


@pytest.fixture
def fake_hub(monkeypatch):
    """Records what would be uploaded; fails the test if anything else talks to the Hub."""
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, revision, repo_type, allow_patterns):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload_folder", repo_id, files, self.token))

            class Info:
                oid = "a" * 40
                commit_url = f"https://huggingface.co/{repo_id}/commit/{'a' * 40}"

            return Info()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    return calls


@pytest.fixture
def saved(tmp_path) -> Path:
    return create_model("segret_tiny", backbone=MINI, decoder_channels=32).save_pretrained(tmp_path / "model")


def test_push_verifies_then_uploads(saved, fake_hub, capsys):
    assert main(["push", str(saved), "me/segret-tiny-ade20k", "--private", "--token", "tok"]) == 0
    assert fake_hub == [("create_repo", "me/segret-tiny-ade20k", True, True),
                        ("upload_folder", "me/segret-tiny-ade20k",
                         ["README.md", "config.json", "model.safetensors"], "tok")]
    out = capsys.readouterr().out
    result = json.loads(out[: out.index("}") + 1])
    assert result["sha256"] == file_sha256(saved / "model.safetensors")
    assert result["size"] == (saved / "model.safetensors").stat().st_size
    assert "python weights/update_manifest.py" in out and f"--revision {'a' * 40}" in out


def test_push_refuses_a_broken_folder(saved, fake_hub, capsys):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert main(["push", str(saved), "me/x"]) == 2
    assert fake_hub == []  # nothing uploaded, no repo created
    assert "nothing was uploaded" in capsys.readouterr().err


def test_push_refuses_a_folder_without_safetensors(tmp_path, fake_hub, capsys):
    model = create_model("segret_tiny", backbone=MINI, decoder_channels=32)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert main(["push", str(tmp_path), "me/x"]) == 2
    assert fake_hub == [] and "only safetensors are published" in capsys.readouterr().err


def test_push_an_rmt_backbone_folder(tmp_path, fake_hub):
    """A convert-rmt style folder (timm config.json, no README) is checked with timm and gets a model card."""
    import timm
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    model = timm.create_model("rmt_t")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    save_config_for_hf(model, tmp_path / "config.json")
    assert main(["push", str(tmp_path), "me/rmt_t.in1k"]) == 0
    assert fake_hub[-1][2] == ["README.md", "config.json", "model.safetensors"]
    card = (tmp_path / "README.md").read_text()
    assert "library_name: timm" in card and 'timm.create_model("hf-hub:me/rmt_t.in1k"' in card


def test_manifest_lists_every_checkpoint_as_unpublished(monkeypatch):
    from timm.models import get_pretrained_cfg

    from segret_zoo.models.segret import PAPER_RESULTS, default_pretrained_cfg

    monkeypatch.delenv("SEGRET_ZOO_HF_ORG", raising=False)

    entries = {e["name"]: e for e in load_manifest(REPO_ROOT / "weights" / "manifest.json")["checkpoints"]}
    rmt = [f"rmt_{s}.in1k" for s in "tsbl"]
    assert sorted(entries) == sorted(list_pretrained() + rmt)
    for name, entry in entries.items():
        assert entry["status"] == "not_published" and entry["metrics"] is None, name
        assert entry["size"] is None and entry["sha256"] is None and entry["filename"] == "model.safetensors"
        assert "not measured" in entry["paper_reported"]["source"]
    for name in list_pretrained():
        arch, tag = name.split(".")
        assert entries[name]["hf_hub_id"] == default_pretrained_cfg(arch, tag)["hf_hub_id"]
        ss, ms = PAPER_RESULTS[(arch, tag)]
        assert (entries[name]["paper_reported"]["mIoU_single_scale"],
                entries[name]["paper_reported"]["mIoU_multi_scale_flip"]) == (ss, ms)
    for name in rmt:
        assert entries[name]["hf_hub_id"].split("/")[1] == get_pretrained_cfg(name).hf_hub_id.split("/")[1]


def _update_manifest_main():
    spec = importlib.util.spec_from_file_location("update_manifest", REPO_ROOT / "weights" / "update_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_update_manifest_script(saved, tmp_path, capsys):
    update = _update_manifest_main()
    manifest = tmp_path / "manifest.json"
    shutil.copy(REPO_ROOT / "weights" / "manifest.json", manifest)
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"mIoU": 12.5, "aAcc": 70.0, "IoU": {"wall": 1.0}, "split": "val"}))
    assert update(["segret_tiny.ade20k", str(saved), "--revision", "b" * 40, "--metrics",
                   f"single_scale={metrics}", "--manifest", str(manifest)]) == 0
    entry = next(e for e in json.loads(manifest.read_text())["checkpoints"] if e["name"] == "segret_tiny.ade20k")
    assert entry["sha256"] == file_sha256(saved / "model.safetensors") and entry["status"] == "published"
    assert entry["size"] == (saved / "model.safetensors").stat().st_size
    assert entry["revision"] == "b" * 40 and entry["metrics"] == {"single_scale": {"mIoU": 12.5, "aAcc": 70.0, "split": "val"}}
    with pytest.raises(SystemExit) as exit_info:
        update(["segret_huge.ade20k", str(saved), "--manifest", str(manifest)])
    assert exit_info.value.code == 2 and "known checkpoints" in capsys.readouterr().err
