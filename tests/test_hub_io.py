"""Hub I/O: every loading route gives the same model, bad checkpoints fail clearly, offline fails fast.

The "Hub" is a Hugging Face cache built in tmp_path from the project's own save_pretrained output
(models--org--name/{blobs,refs,snapshots}), read with HF_HUB_OFFLINE=1: no test touches the network.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from segret_zoo.errors import CheckpointError, WeightsNotFoundError
from segret_zoo.factory import create_model, from_pretrained
from segret_zoo.hub.download import hub_download, seed_hub_cache
from segret_zoo.hub.manifest import file_sha256
from segret_zoo.hub.weights import load_weights, match_state_dict, read_state_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
SMALL = dict(backbone=MINI, decoder_channels=32)  # registered names, tiny widths: fast tests
ORG = "testorg"
REPO = f"{ORG}/segret-tiny-ade20k"

torch.set_num_threads(1)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (ZIR paths and BN statistics too), so routes cannot agree by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                v = torch.randn(t.shape, generator=g) * 0.2
                t.copy_(v.abs() + 0.5 if name.endswith("running_var") else v)


def _release(root: Path, seed: int, **kwargs) -> Path:
    model = create_model("segret_tiny", **{**SMALL, **kwargs})
    _randomize(model, seed)
    return model.save_pretrained(root)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A 'published' ADE20K checkpoint of segret_tiny (mini widths), as save_pretrained writes it."""
    return _release(tmp_path_factory.mktemp("release"), seed=0)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """An offline Hugging Face cache and a private manifest; returns the cache folder."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SEGRET_ZOO_HF_ORG", ORG)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "checkpoints": []}))
    monkeypatch.setenv("SEGRET_ZOO_MANIFEST", str(manifest))
    return cache


def _set_manifest(entries) -> None:
    Path(os.environ["SEGRET_ZOO_MANIFEST"]).write_text(json.dumps({"schema_version": 1, "checkpoints": entries}))


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_every_route_loads_the_same_weights(release, image, hub_env, tmp_path, monkeypatch):
    seed_hub_cache(release, REPO)
    reference = _logits(from_pretrained(release), image)
    routes = {
        "create_model(pretrained=True)": lambda: create_model("segret_tiny", pretrained=True, **SMALL),
        "create_model(pretrained=tag)": lambda: create_model("segret_tiny", pretrained="ade20k", **SMALL),
        "create_model(name.tag)": lambda: create_model("segret_tiny.ade20k", pretrained=True, **SMALL),
        "create_model(pretrained=name.tag)": lambda: create_model("segret_tiny", pretrained="segret_tiny.ade20k",
                                                                  **SMALL),
        "create_model(hf-hub:)": lambda: create_model(f"hf-hub:{REPO}", pretrained=True),
        "create_model(hf-hub:@main)": lambda: create_model(f"hf-hub:{REPO}@main", pretrained=True),
        "from_pretrained(repo id)": lambda: from_pretrained(REPO),
        "from_pretrained(hf-hub:, revision)": lambda: from_pretrained(f"hf-hub:{REPO}", revision="main"),
        "from_pretrained(dir)": lambda: from_pretrained(release),
        "from_pretrained(file)": lambda: from_pretrained(release / "model.safetensors"),
        "create_model(checkpoint_path=file)": lambda: create_model(
            "segret_tiny", checkpoint_path=release / "model.safetensors", **SMALL),
        "torch.hub.load(local)": lambda: torch.hub.load(str(REPO_ROOT), "segret_tiny", source="local",
                                                        pretrained=True, **SMALL),
    }
    for route, build in routes.items():
        model = build()
        assert torch.equal(_logits(model, image), reference), route
        assert model.num_classes == 150 and model.id2label[0] == "wall", route
        assert model.pretrained_cfg["dataset"] == "ade20k", route
        assert model.pretrained_cfg["mean"] == pytest.approx((0.485, 0.456, 0.406)), route
    model = create_model("segret_tiny", pretrained=True, **SMALL)
    assert model.pretrained_cfg["hf_hub_id"] == REPO
    assert model.pretrained_cfg["test_scale"] == (2048, 512) and model.pretrained_cfg["crop_size"] == (512, 512)


def test_cache_dir_and_revision(release, image, hub_env, tmp_path):
    other_cache = tmp_path / "other-cache"
    seed_hub_cache(release, REPO, cache_dir=other_cache)
    v1 = _release(tmp_path / "v1", seed=5)
    seed_hub_cache(v1, REPO, cache_dir=other_cache, revision="v1")
    with pytest.raises(WeightsNotFoundError):  # not in the default cache
        from_pretrained(REPO)
    main = from_pretrained(REPO, cache_dir=other_cache)
    tagged = from_pretrained(REPO, cache_dir=other_cache, revision="v1")
    assert torch.equal(_logits(main, image), _logits(from_pretrained(release), image))
    assert torch.equal(_logits(tagged, image), _logits(from_pretrained(v1), image))
    assert tagged.pretrained_cfg["hf_hub_revision"] == "v1"


def test_torch_hub_new_num_classes_drops_only_the_classifier(release, image, hub_env):
    seed_hub_cache(release, REPO)
    with pytest.warns(UserWarning, match=r"decoder\.classifier\.weight") as record:
        model = torch.hub.load(str(REPO_ROOT), "segret_tiny", source="local", pretrained=True, num_classes=19,
                               **SMALL)
    message = str(record[0].message)
    assert "decoder.classifier.bias" in message and "[150, 32, 1, 1] -> [19, 32, 1, 1]" in message
    assert model.num_classes == 19 and model.decoder.classifier.out_channels == 19
    reference = from_pretrained(release).state_dict()
    own = model.state_dict()
    for key, value in reference.items():
        if key.startswith("decoder.classifier."):
            assert own[key].shape[0] == 19
        else:
            assert torch.equal(own[key], value), key
    assert model.pretrained_cfg["num_classes"] == 19
    assert model.id2label == {i: f"class_{i}" for i in range(19)}  # ADE20K names no longer apply


def test_other_mismatch_is_an_error_listing_keys(release, tmp_path):
    wider = create_model("segret_tiny", backbone=dict(MINI, embed_dims=(16, 32, 48, 80)), decoder_channels=32)
    with pytest.raises(CheckpointError) as err:
        load_weights(wider, read_state_dict(release / "model.safetensors"), source="release")
    text = str(err.value)
    assert "Shape mismatches:" in text and "encoder.stages.3" in text and "Missing keys: none" in text
    deeper = create_model("segret_tiny", backbone=dict(MINI, depths=(1, 1, 2, 1)), decoder_channels=32)
    with pytest.raises(CheckpointError, match=r"Missing keys: encoder\.stages\.2\.blocks\.1\."):
        create_model("segret_tiny", checkpoint_path=release, backbone=deeper.backbone, decoder_channels=32)


def test_checkpoint_of_another_variant_is_named():
    tiny = create_model("segret_tiny", device="meta")  # shapes only: no memory, no init time
    base = create_model("segret_base", device="meta")
    with pytest.raises(CheckpointError, match="checkpoint is for rmt_b/segret_base, you built segret_tiny"):
        match_state_dict(tiny, base.state_dict(), source="base.safetensors")


def test_rmt_checkpoint_where_segret_expected_hints_pretrained_backbone(release, tmp_path):
    from safetensors.torch import save_file

    model = from_pretrained(release)
    encoder_only = {k[len("encoder."):]: v.contiguous() for k, v in model.state_dict().items()
                    if k.startswith("encoder.")}
    save_file(encoder_only, tmp_path / "rmt.safetensors")
    with pytest.raises(CheckpointError, match="pretrained_backbone=PATH"):
        create_model("segret_tiny", checkpoint_path=tmp_path / "rmt.safetensors", **SMALL)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_safetensors_local(release, tmp_path, damage):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in release.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 8 + b"not json" * 40)
    with pytest.raises(CheckpointError, match=r"is not a valid safetensors file \(truncated or corrupted\): "
                                              r"re-download or re-create it"):
        from_pretrained(bad)


def test_truncated_file_in_cache(release, hub_env, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in release.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-100])
    seed_hub_cache(bad, REPO)
    with pytest.raises(CheckpointError, match=r"not a valid safetensors file .*force_download=True"):
        create_model("segret_tiny", pretrained=True, **SMALL)


def test_manifest_size_and_sha256_are_checked(release, hub_env, tmp_path):
    seed_hub_cache(release, REPO)
    weights = release / "model.safetensors"
    good = {"name": "segret_tiny.ade20k", "hf_hub_id": "segret-zoo/segret-tiny-ade20k",
            "filename": "model.safetensors", "size": weights.stat().st_size, "sha256": file_sha256(weights)}
    _set_manifest([good])  # default-org id: matches the repo re-hosted under SEGRET_ZOO_HF_ORG
    create_model("segret_tiny", pretrained=True, **SMALL)
    _set_manifest([dict(good, sha256="0" * 64)])
    with pytest.raises(CheckpointError, match="sha256 .* does not match weights/manifest.json"):
        create_model("segret_tiny", pretrained=True, **SMALL)
    _set_manifest([dict(good, size=good["size"] + 1)])
    with pytest.raises(CheckpointError, match="size .* does not match weights/manifest.json"):
        from_pretrained(REPO)
    _set_manifest([dict(good, sha256="0" * 64, revision="abc")])
    seed_hub_cache(release, REPO, revision="other")
    from_pretrained(REPO, revision="other")  # another revision is other bytes: not checked against "abc"


def test_offline_without_cache_names_repo_file_and_remedies(hub_env, tmp_path):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        create_model("segret_tiny", pretrained="cityscapes", **SMALL)
    assert time.perf_counter() - start < 10
    text = str(err.value)
    for part in (f"{ORG}/segret-tiny-cityscapes", "model.safetensors", "HF_HUB_OFFLINE",
                 "create_model('segret_tiny', pretrained='cityscapes', checkpoint_path=PATH)"):
        assert part in text, part
    # the command line prints the same line with its own spelling
    cli = err.value.cli_message
    assert "--model segret_tiny.cityscapes --checkpoint PATH" in cli and "checkpoint_path" not in cli, cli
    assert cli.replace("--model segret_tiny.cityscapes --checkpoint PATH", "") == \
        text.replace("create_model('segret_tiny', pretrained='cityscapes', checkpoint_path=PATH)", "")
    # the advice, followed literally, works offline: the tag names the dataset, the file has the weights
    local = create_model("segret_tiny", num_classes=19, **SMALL)
    local.save_pretrained(tmp_path / "local")
    model = create_model("segret_tiny", pretrained="cityscapes", checkpoint_path=tmp_path / "local", **SMALL)
    assert model.pretrained_cfg["dataset"] == "cityscapes" and model.id2label[0] == "road"
    assert torch.equal(model.decoder.classifier.weight, local.decoder.classifier.weight)
    with pytest.raises(WeightsNotFoundError, match="No local file or folder named 'runs/final' exists"):
        from_pretrained("runs/final")  # a mistyped local path reads as a repo id: say both


def test_unreachable_hub_uses_cache_with_warning(release, hub_env, monkeypatch):
    seed_hub_cache(release, REPO)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        path = hub_download(REPO, "model.safetensors")
    assert time.perf_counter() - start < 10
    assert path is not None and path.read_bytes() == (release / "model.safetensors").read_bytes()
    assert any("unreachable" in str(w.message) for w in record)
    with pytest.raises(WeightsNotFoundError, match="no usable answer from the Hugging Face Hub"):
        hub_download(f"{ORG}/not-cached", "model.safetensors")


def test_pretrained_fails_fast_without_network(tmp_path):
    """A fresh process, real environment variables, an endpoint that refuses connections, an empty cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SEGRET_ZOO_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    code = (
        "import time\n"
        "from segret_zoo.factory import create_model\n"
        "start = time.perf_counter()\n"
        "try:\n"
        f"    create_model('segret_tiny', pretrained=True, backbone={MINI!r}, decoder_channels=32)\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err)\n"
        "print('ELAPSED', time.perf_counter() - start)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    elapsed = float(out.stdout.rsplit("ELAPSED", 1)[1])
    assert elapsed < 10, out.stdout
    assert out.stdout.startswith("WeightsNotFoundError")
    for part in ("segret-zoo/segret-tiny-ade20k", "model.safetensors", "checkpoint_path=", "HF_HUB_OFFLINE",
                 "not on the Hub yet"):
        assert part in out.stdout, part
