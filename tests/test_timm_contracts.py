"""What timm and torch users do with a model, beyond timm's own test file: plain FX, the hook and FX
feature wrappers, torch.export with dynamic sizes, torch.hub, and timm's loading conventions."""
import ast
import inspect
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import LayerScale

import segret_zoo  # noqa: F401  (registers rmt_*)
from segret_zoo import settings
from segret_zoo.hub.weights import unwrap_checkpoint
from segret_zoo.models import retention, rmt
from segret_zoo.models.rmt import checkpoint_filter_fn
from tests.official_layout import randomize_, to_official

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(depths=(1, 1, 2, 1))  # full widths, fewer blocks
MODEL_FILES = (Path(rmt.__file__), Path(retention.__file__))


# ------------------------------------------------------------------------------------ torch.fx
def test_plain_fx_symbolic_trace_matches_eager():
    """``torch.fx.symbolic_trace`` with no timm tracer settings; the graph takes other sizes too."""
    model = timm.create_model("rmt_t").eval()
    graph = torch.fx.symbolic_trace(model)
    for shape in ((1, 3, 64, 80), (2, 3, 97, 131)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(graph(x), model(x), rtol=1e-5, atol=1e-5)


def test_fx_traced_model_can_be_scripted():
    """timm's test_model_forward_fx_torchscript, quickly: the FX graph's annotations must be types
    TorchScript knows (string annotations from ``from __future__ import annotations`` are not)."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    with timm.set_scriptable(True):
        model = timm.create_model("rmt_t", num_classes=5, **SMALL).eval()
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    scripted = torch.jit.script(fx)
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        torch.testing.assert_close(next(iter(scripted(x).values())), model(x), rtol=1e-5, atol=1e-5)
    for path in MODEL_FILES:
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body), path


# ------------------------------------------------------------------------------ feature wrappers
@pytest.mark.parametrize("feature_cls", ["hook", "fx"])
def test_hook_and_fx_features_are_nchw_and_equal_the_getter(feature_cls):
    torch.manual_seed(0)
    getter = timm.create_model("rmt_t", features_only=True).eval()
    torch.manual_seed(0)
    other = timm.create_model("rmt_t", features_only=True, feature_cls=feature_cls).eval()
    info = other.feature_info
    assert info.channels() == [64, 128, 256, 512] and info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        expected, got = getter(x), other(x)
    assert len(got) == 4
    for f, e, c, r in zip(got, expected, info.channels(), info.reduction()):
        assert f.shape == (1, c, -(-97 // r), -(-131 // r))  # NCHW, sizes rounded up
        torch.testing.assert_close(f, e, rtol=0, atol=1e-6)


# -------------------------------------------------------------------------------- torch.export
def _export_dims():
    from torch.export import Dim

    return {"x": {2: Dim("h", min=64, max=1024), 3: Dim("w", min=64, max=1024)}}


@pytest.mark.parametrize("name", ["rmt_t", "convnext_atto", "resnet18"])
def test_export_with_dynamic_height_and_width(name):
    """Named dims for H and W (64..1024); the program matches eager at the traced and a second size."""
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 96, 128)
    program = torch.export.export(model, (x,), dynamic_shapes=_export_dims())
    exported = program.module()
    for inp in (x, torch.randn(1, 3, 161, 97)):  # the second: odd, not a multiple of 32
        with torch.no_grad():
            torch.testing.assert_close(exported(inp), model(inp), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- torch.hub
def _hub_list(repo_dir: Path, monkeypatch) -> list:
    if "source" in inspect.signature(torch.hub.list).parameters:
        return torch.hub.list(str(repo_dir), source="local", verbose=False)
    # this torch's hub.list reads GitHub only: hand it the checkout the way source="local" does
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda repo, *args, **kwargs: repo)
    return torch.hub.list(str(repo_dir), verbose=False)


def test_torch_hub_lists_only_entry_points(monkeypatch):
    names = _hub_list(ROOT, monkeypatch)
    assert sorted(names) == sorted([
        "segret_tiny", "segret_small", "segret_base", "segret_large", "rmt_t", "rmt_s", "rmt_b", "rmt_l"])
    model = torch.hub.load(str(ROOT), "rmt_t", source="local", num_classes=0, trust_repo=True)
    assert model.pretrained_cfg["architecture"] == "rmt_t" and model.num_classes == 0


# ------------------------------------------------------------------------ timm loading conventions
def test_model_files_do_not_fetch_weights_or_import_hub_code():
    for path in MODEL_FILES:
        text = path.read_text()
        tree = ast.parse(text)
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not [m for m in modules if m and m.startswith("segret_zoo.hub")], path
        assert "DESIGN" + ".md" not in text, path  # the private design notes are not in the repository
    assert not hasattr(rmt, "_fetch_pretrained") and not hasattr(rmt, "IMAGENET_DROP_PATH")


def test_pretrained_goes_through_the_zoo_download_with_the_org_read_at_create_time(tmp_path, monkeypatch):
    """timm's ``rmt_t(pretrained=True)`` fetches the registry's Hub file through the zoo's checked download
    (here an offline Hugging Face cache), from the org SEGRET_ZOO_HF_ORG names now, not at import;
    checkpoint_filter_fn converts the official layout. A caller's own source wins."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from segret_zoo.errors import WeightsNotFoundError
    from segret_zoo.hub.download import seed_hub_cache

    cache = tmp_path / "hf-cache"
    for name, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setenv(name, "1" if value is True else value)
        monkeypatch.setattr(constants, name, value)
    donor = timm.create_model("rmt_t").eval()
    randomize_(donor)
    official = to_official(donor, donor.state_dict())
    (tmp_path / "repo").mkdir()
    save_file({k: v.contiguous() for k, v in official.items()}, tmp_path / "repo" / "model.safetensors")
    seed_hub_cache(tmp_path / "repo", "mirror-org/rmt_t.in1k", cache_dir=cache)
    monkeypatch.setenv(settings.ORG_ENV, "mirror-org")
    model = timm.create_model("rmt_t", pretrained=True).eval()
    for k, v in donor.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    monkeypatch.delenv(settings.ORG_ENV)
    with pytest.raises(WeightsNotFoundError, match=f"{settings.DEFAULT_HF_ORG}/rmt_t.in1k"):
        timm.create_model("rmt_t.in1k", pretrained=True, num_classes=3)
    monkeypatch.setenv(settings.ORG_ENV, "mirror-org")
    with pytest.raises(WeightsNotFoundError, match="someone/rmt"):  # a caller's own repo is not rewritten
        timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id="someone/rmt"))
    monkeypatch.delenv(settings.ORG_ENV)
    from_dict = timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(state_dict=official))
    assert torch.equal(from_dict.stem.conv1.weight, donor.stem.conv1.weight)  # no Hub access at all


def test_checkpoint_filter_only_renames_keys():
    """Shapes are load_state_dict's business: a checkpoint of another variant passes the filter."""
    small = timm.create_model("rmt_s", device="meta")
    official = to_official(small, {k: torch.zeros(v.shape) for k, v in small.state_dict().items()})
    tiny = timm.create_model("rmt_t")
    renamed = checkpoint_filter_fn(official, tiny)
    assert set(renamed) == set(small.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        tiny.load_state_dict(renamed)


def test_unwrap_checkpoint_cleans_wrapper_prefixes_like_timm():
    w = torch.zeros(1)
    assert unwrap_checkpoint({"model": {"module.a": w, "_orig_mod.module.b": w}}) == {"a": w, "b": w}
    assert set(unwrap_checkpoint({"model": {"a": w}, "model_ema": {"b": w}}, use_ema=True)) == {"b"}


def test_layer_scale_is_timms_and_keeps_the_key_names(reference_dir):
    model = timm.create_model("rmt_b", device="meta")
    block = model.stages[2].blocks[0]
    assert isinstance(block.ls1, LayerScale) and isinstance(block.ls2, LayerScale)
    assert block.ls1.gamma.shape == (320,)
    assert "stages.2.blocks.0.ls1.gamma" in model.state_dict()
    assert not isinstance(model.stages[0].blocks[0].ls1, LayerScale)  # stages 1-2: no layer scale
    official = (reference_dir / "keys" / "rmt_b_in1k_official.txt").read_text()
    assert "layers.2.blocks.0.gamma_1\t[1, 1, 1, 320]" in official  # remapped by checkpoint_filter_fn


def test_settings_hf_org(monkeypatch):
    monkeypatch.delenv(settings.ORG_ENV, raising=False)
    assert settings.hf_org() == settings.DEFAULT_HF_ORG == "segret-zoo"
    monkeypatch.setenv("SEGRET_ZOO_HF_ORG", " my-org ")
    assert settings.hf_org() == "my-org"


@pytest.mark.parametrize("batch", [1, 3])
def test_compile_layout_of_decomposed_retention_equals_eager(monkeypatch, batch):
    """Under compile/export the row/column passes batch (H, B)/(W, B)-major: the same values."""
    torch.manual_seed(0)
    attn = retention.ManhattanSelfAttention(32, 4, decomposed=True).eval()
    x = torch.randn(batch, 5, 7, 32)
    tables = retention.retention_positions(5, 7, 4, 8, 2.0, 4.0, True, x.dtype, x.device)
    with torch.no_grad():
        eager = attn(x, *tables)
        monkeypatch.setattr(retention, "_batch_major", lambda: False)
        compiled_layout = attn(x, *tables)
    torch.testing.assert_close(compiled_layout, eager, rtol=1e-6, atol=1e-6)
