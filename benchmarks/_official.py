"""Load the official RMT code (github.com/qhfan/RMT, ``classfication_release/RMT.py``) for comparisons.

The official file is not part of this repository: point ``--official PATH`` or
``SEGRET_ZOO_OFFICIAL_RMT`` at a local copy. It imports ``fvcore`` (FLOP printing) and ``einops``
(unused by the model); when they are not installed, empty stand-in modules take their place. Its
deprecated ``timm.models.layers`` / ``timm.models.registry`` imports still work with timm 1.x.
The variants are built with ``VisRetNet(...)`` and this package's configs (the official
constructors ``RMT_T3`` / ``RMT_S`` / ``RMT_M2`` / ``RMT_L6`` hold the same numbers).

Weights go official -> ours: a randomized official model's state dict is converted with
:func:`segret_zoo.models.rmt.checkpoint_filter_fn` (so every comparison also tests the converter).

That file is the ImageNet RMT. SegRet's released encoder is the same code with two parts switched
off, and the released SegRet code itself is not loaded here. ``segret_encoder=True`` makes the
official file compute SegRet's encoder with exactly two changes, made on a second copy of the
module (:data:`SEGRET_PATCH_NOTE`); everything else (the position module building its sin/cos
tables and full ``N x HW x HW`` masks every forward, the materialized score matrices, the permutes)
is the official code as it is.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from types import ModuleType
from typing import Any, List, Optional, Tuple

import torch
from torch import nn

ENV_VAR = "SEGRET_ZOO_OFFICIAL_RMT"
SKIP_NOTE = (
    "official RMT code not given: pass --official /path/to/RMT.py (classfication_release/RMT.py of "
    f"github.com/qhfan/RMT) or set {ENV_VAR}; official columns skipped")

SEGRET_PATCH_NOTE = (
    "official RMT.py made into SegRet's released encoder by two changes: its theta_shift function "
    "returns q and k unchanged (no rotary shift), and each FeedForwardNetwork runs fc1 -> GELU -> fc2 "
    "with its dwconv removed (the file's own subconv=False would compute fc2(2 * GELU(fc1 x)))")


def official_path(cli_value: Optional[str] = None) -> Optional[str]:
    """The official RMT.py path from the command line or the environment, or None."""
    path = cli_value or os.environ.get(ENV_VAR) or None
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"official RMT code not found at {path} (from --official / {ENV_VAR})")
    return path


def _stub(name: str, **attrs: Any) -> None:
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("stand-in for an optional dependency of the official RMT code")


def _no_theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return x


def _ffn_without_conv(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official ``FeedForwardNetwork`` as SegRet's encoder has it: fc1 -> GELU -> fc2 (dropouts kept)."""
    x = self.activation_dropout_module(self.activation_fn(self.fc1(x)))
    return self.dropout_module(self.fc2(x))


def load_official(path: str, segret_encoder: bool = False) -> ModuleType:
    """Import the official module from ``path`` (once per process and kind); with ``segret_encoder`` a
    separate copy whose theta shift and FFN conv are switched off (:data:`SEGRET_PATCH_NOTE`)."""
    name = "segret_zoo_bench_official_rmt" + ("_segret" if segret_encoder else "")
    if name in sys.modules:
        return sys.modules[name]
    _stub("fvcore")
    _stub("fvcore.nn", FlopCountAnalysis=_unavailable, flop_count_table=_unavailable)
    _stub("einops", einsum=_unavailable)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the official RMT code from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # timm's register_model looks the module up by name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    if segret_encoder:
        module.theta_shift = _no_theta_shift  # the retention modules look it up in the module at call time
        module.FeedForwardNetwork.forward = _ffn_without_conv
    return module


def build_official(module: ModuleType, variant: str, num_classes: int = 1000) -> nn.Module:
    """The official ``VisRetNet`` of a variant (drop path 0, eval mode); from the SegRet copy of the
    module (:func:`load_official`), without the FFN convs."""
    from segret_zoo.models.rmt import RMT_CONFIGS

    cfg = RMT_CONFIGS[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = module.VisRetNet(
            num_classes=num_classes,
            embed_dims=list(cfg["embed_dims"]), depths=list(cfg["depths"]), num_heads=list(cfg["num_heads"]),
            init_values=[2, 2, 2, 2], heads_ranges=list(cfg["heads_ranges"]), mlp_ratios=list(cfg["mlp_ratios"]),
            drop_path_rate=0.0, chunkwise_recurrents=list(cfg["decomposed"]),
            layerscales=list(cfg["layer_scale"]), layer_init_values=1e-6)
    if module.FeedForwardNetwork.forward is _ffn_without_conv:
        for ffn in [m for m in model.modules() if isinstance(m, module.FeedForwardNetwork)]:
            ffn.dwconv = None  # no weights, as in SegRet's released checkpoints
    return model.eval()


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BatchNorm statistic a random, non-trivial value.

    Default-initialised models hide mistakes (zero biases, unit norms, 1e-6 layer scales, uniform
    attention, zero-initialized ZIR paths): here q/k projections are scaled up so attention logits
    are O(1), norms and layer scales are far from identity, and BatchNorm running stats are random.
    Knows the official names and this package's (``attn.qkv``: its q and k rows; ``attn.proj``, ``cpe``).
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    def randn(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            fan_in = mod.weight[0].numel()
            gain = 1.0
            if name.endswith(("q_proj", "k_proj")):
                gain = 3.0  # attention logits O(1): the softmax and the decay bias both matter
            elif name.endswith(("out_proj", "fc2", "pos.conv", "attn.proj", "cpe")):
                gain = 0.1  # residual branches: keep activations O(1-10) through 25+ blocks
            mod.weight.copy_(randn(mod.weight.shape, gain / fan_in ** 0.5))
            if name.endswith("attn.qkv"):  # this package's fused projection: q and k rows as q_proj/k_proj
                mod.weight[:2 * mod.weight.shape[0] // 3].mul_(3.0)
            if mod.bias is not None:
                mod.bias.copy_(randn(mod.bias.shape, 0.1))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.weight.copy_(rand(mod.weight.shape, 0.5, 1.5))
            mod.bias.copy_(randn(mod.bias.shape, 0.1))
            mod.running_mean.copy_(randn(mod.running_mean.shape, 0.1))
            mod.running_var.copy_(rand(mod.running_var.shape, 0.5, 1.5))
        elif isinstance(mod, nn.LayerNorm):
            mod.weight.copy_(rand(mod.weight.shape, 0.5, 1.5))
            mod.bias.copy_(randn(mod.bias.shape, 0.1))
    for name, param in model.named_parameters():
        if name.endswith(("gamma_1", "gamma_2", "ls1.gamma", "ls2.gamma")):
            param.copy_(rand(param.shape, 0.2, 0.6))
    return model


def ours_from_official(official: nn.Module, variant: str, num_classes: int = 1000,
                       segret_encoder: bool = False) -> nn.Module:
    """Our ``RMT`` with the official model's weights, through ``checkpoint_filter_fn``; with
    ``segret_encoder`` built as SegRet's encoder (``SEGRET_ENCODER_ARGS``: no rotary, no FFN conv)."""
    import timm

    import segret_zoo  # noqa: F401  (registers rmt_*)
    from segret_zoo.models.rmt import checkpoint_filter_fn
    from segret_zoo.models.segret import SEGRET_ENCODER_ARGS

    kwargs = dict(SEGRET_ENCODER_ARGS) if segret_encoder else {}
    ours = timm.create_model(variant, num_classes=num_classes, **kwargs).eval()
    state = checkpoint_filter_fn(official.state_dict(), ours)
    ours.load_state_dict(state, strict=True)
    return ours


class OfficialFeatures(nn.Module):
    """The official backbone without its ImageNet head: stem + the four ``BasicLayer`` s, returning each
    stage's last block output (before its downsample), NCHW, through forward hooks on the official modules."""

    def __init__(self, official: nn.Module) -> None:
        super().__init__()
        self.patch_embed = official.patch_embed
        self.layers = official.layers
        self._taps: List[torch.Tensor] = []
        for layer in self.layers:
            layer.blocks[-1].register_forward_hook(lambda _m, _i, out: self._taps.append(out))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        self._taps = []
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        taps, self._taps = self._taps, []
        return [t.permute(0, 3, 1, 2) for t in taps]


def official_variant(path: str, variant: str, seed: int = 0, num_classes: int = 1000,
                     segret_encoder: bool = False) -> Tuple[nn.Module, nn.Module]:
    """(official model, our model) with identical random weights, both in eval mode; ``segret_encoder``:
    both compute SegRet's released encoder (:data:`SEGRET_PATCH_NOTE`)."""
    module = load_official(path, segret_encoder)
    official = randomize_(build_official(module, variant, num_classes), seed)
    return official, ours_from_official(official, variant, num_classes, segret_encoder)

