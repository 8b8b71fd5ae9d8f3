"""RMT: Retentive Networks Meet Vision Transformers (Fan et al., CVPR 2024), as timm models.

A four-stage hierarchical encoder (strides 4/8/16/32) whose blocks mix tokens with Manhattan
self-attention (see :mod:`segret_zoo.models.retention`). Between modules (stem, stages, head) maps
are NCHW, as timm's feature wrappers (getter, hooks, FX) expect; their memory is channels-last, so
inside a stage the ``B x H x W x C`` tokens the blocks work on are a free, contiguous permute.

Registered with timm on ``import segret_zoo``: ``rmt_t``, ``rmt_s``, ``rmt_b``, ``rmt_l``.
``checkpoint_filter_fn`` converts the official checkpoints (classification ``.pth`` and the
mmsegmentation backbone) into this layout losslessly.
"""
import os
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerScale, register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch import nn

from segret_zoo.errors import CheckpointError, WeightsNotFoundError
from segret_zoo.models.retention import ManhattanSelfAttention, head_decays, retention_positions
from segret_zoo.settings import DEFAULT_HF_ORG
from segret_zoo.validate import check_weights

__all__ = ["RMT", "RMT_CONFIGS", "checkpoint_filter_fn", "remap_official_state_dict", "infer_rmt_variant",
           "rmt_checkpoint_layouts", "as_rmt_state"]

# The four variants of the RMT paper (widths, depths, heads, decay ranges, MLP ratios), as in the
# official code. `decomposed`: per stage, row/column retention (official "chunkwise_recurrent").
RMT_CONFIGS: Dict[str, Dict[str, Any]] = {
    "rmt_t": dict(
        embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16),
        heads_ranges=(4, 4, 6, 6), mlp_ratios=(3, 3, 3, 3), decomposed=(True, True, False, False),
        layer_scale=(False, False, False, False)),
    "rmt_s": dict(
        embed_dims=(64, 128, 256, 512), depths=(3, 4, 18, 4), num_heads=(4, 4, 8, 16),
        heads_ranges=(4, 4, 6, 6), mlp_ratios=(4, 4, 3, 3), decomposed=(True, True, True, False),
        layer_scale=(False, False, False, False)),
    "rmt_b": dict(
        embed_dims=(80, 160, 320, 512), depths=(4, 8, 25, 8), num_heads=(5, 5, 10, 16),
        heads_ranges=(5, 5, 6, 6), mlp_ratios=(4, 4, 3, 3), decomposed=(True, True, True, False),
        layer_scale=(False, False, True, True)),
    "rmt_l": dict(
        embed_dims=(112, 224, 448, 640), depths=(4, 8, 25, 8), num_heads=(7, 7, 14, 20),
        heads_ranges=(6, 6, 6, 6), mlp_ratios=(4, 4, 3, 3), decomposed=(True, True, True, False),
        layer_scale=(False, False, True, True)),
}


@register_notrace_function
def check_image_batch(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Reject inputs the stem cannot take with a message naming expected and received shapes."""
    if x.dim() != 4:
        raise ValueError(
            f"RMT expects a 4-D image batch B x {in_chans} x H x W, got a {x.dim()}-D tensor of shape "
            f"{list(x.shape)}; add a batch dimension with x.unsqueeze(0)")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"RMT expects {in_chans} input channels (B x {in_chans} x H x W), got shape {list(x.shape)}; "
            f"convert the image to RGB or build the model with in_chans={x.shape[1]}")
    if not x.is_floating_point():
        raise ValueError(
            f"RMT expects a floating-point image batch, got dtype {x.dtype}; convert and normalise it first, "
            "e.g. (x.float() / 255 - mean) / std with the model's pretrained_cfg mean/std")
    if x.numel() == 0:
        raise ValueError(f"RMT got an empty image batch of shape {list(x.shape)}; every dimension must be >= 1")
    if not torch.jit.is_scripting():
        _warn_if_not_finite(x)
    return x


@torch.jit.unused
def _warn_if_not_finite(x: torch.Tensor) -> None:
    """NaN or inf in the input spreads to every logit; say so instead of returning all-NaN silently.

    Eager only: a compiled or exported graph keeps no data-dependent branch.
    """
    if torch.compiler.is_compiling() or isinstance(x, torch.fx.Proxy) or x.device.type == "meta":
        return
    if not bool(torch.isfinite(x).all()):
        warnings.warn(
            f"the input batch holds {int((~torch.isfinite(x)).sum())} NaN/inf values; the model's outputs "
            "will be NaN there and around them: check the image loading and normalisation", RuntimeWarning,
            stacklevel=4)


# Leaves for a plain torch.fx.symbolic_trace too (timm's tracer knows them through
# register_notrace_function): the check branches on the input's rank, and the position tables are
# built from the traced sizes at run time, so a traced model takes any input size.
torch.fx.wrap("check_image_batch")
torch.fx.wrap("retention_positions")


@register_notrace_function
def residual_add(branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``branch + x`` in the residual stream's dtype (``x``'s).

    Where the dtypes agree, the sum is written in place into the branch's fresh output (identical
    values, no new buffer). Under autocast the branch comes out of a bf16/fp16 conv or linear while
    the stream is float32 (:func:`stream_dtype`): adding into the branch would round the stream to 8
    mantissa bits at every block, which compounds over a stage (2x the feature error of float32
    sums in a trained SegRet-T's stage 3) and erases the small updates of later blocks once the
    stream has grown. So the sum is formed out of place, in float32, as autocast intends.
    """
    if branch.dtype == x.dtype:
        return branch.add_(x)
    return x + branch


@register_notrace_function
def stream_dtype(x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``x`` in ``param``'s dtype: a stage's residual stream starts in its parameters' dtype (float32
    under autocast, whose convs hand over bf16/fp16), so :func:`residual_add` accumulates in it."""
    return x if x.dtype == param.dtype else x.to(param.dtype)


torch.fx.wrap("residual_add")
torch.fx.wrap("stream_dtype")


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, norm: nn.Module) -> nn.Module:
    """Fold an eval-mode BatchNorm that follows ``conv`` into the conv's weight and bias, in place.

    Exact with running statistics (inference); returns ``nn.Identity()`` to put where the norm was,
    or ``norm`` unchanged when it is already an identity.
    """
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return norm
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    new_bias = (bias - norm.running_mean) * scale + norm.bias
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(new_bias)
    return nn.Identity()


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU of a fresh conv / linear output: in place where autograd does not record it (its backward
    would need the input), which spares a new buffer per call (at 1024 x 2048, 64 MiB in the stem)."""
    if torch.is_grad_enabled():
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


class Stem(nn.Module):
    """Four 3x3 convs (two with stride 2) with BatchNorm and GELU: image -> stride-4 map (NCHW, channels-last memory)."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, 2, 1, **dd)
        self.bn1 = nn.BatchNorm2d(dim // 2, **dd)
        self.conv2 = nn.Conv2d(dim // 2, dim // 2, 3, 1, 1, **dd)
        self.bn2 = nn.BatchNorm2d(dim // 2, **dd)
        self.conv3 = nn.Conv2d(dim // 2, dim, 3, 2, 1, **dd)
        self.bn3 = nn.BatchNorm2d(dim, **dd)
        self.conv4 = nn.Conv2d(dim, dim, 3, 1, 1, **dd)
        self.bn4 = nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: the convs run oneDNN's NHWC kernels and the stages see their tokens as a
        # contiguous B x H x W x C tensor. From channels-first memory, every stage's tokens would be
        # an NCHW buffer seen through a permute: each LayerNorm then copies, and the depthwise convs
        # run ~4x slower NCHW kernels.
        x = check_image_batch(x, self.in_chans).contiguous(memory_format=torch.channels_last)
        x = _gelu(self.bn1(self.conv1(x)))
        x = _gelu(self.bn2(self.conv2(x)))
        x = _gelu(self.bn3(self.conv3(x)))
        return self.bn4(self.conv4(x))

    def fuse(self) -> nn.Module:
        """Fold the four BatchNorms into their convs (inference; timm's ``reparameterize_model`` hook)."""
        for i in range(1, 5):
            setattr(self, f"bn{i}", fold_batchnorm(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")))
        return self


class Downsample(nn.Module):
    """3x3 stride-2 conv + BatchNorm between stages (NCHW in and out, channels-last memory; odd sizes round up)."""

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1, **dd)
        self.norm = nn.BatchNorm2d(out_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def fuse(self) -> nn.Module:
        """Fold the BatchNorm into the strided conv (inference; timm's ``reparameterize_model`` hook)."""
        self.norm = fold_batchnorm(self.conv, self.norm)
        return self


class ConvFFN(nn.Module):
    """fc1 -> GELU -> (+ depthwise 3x3 conv) -> fc2; without ``dwconv`` a plain MLP (SegRet's encoder)."""

    def __init__(self, dim: int, hidden_dim: int, dwconv: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(dim, hidden_dim, **dd)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim, **dd) if dwconv else None
        self.fc2 = nn.Linear(hidden_dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _gelu(self.fc1(x))
        if self.dwconv is not None:
            # the conv's fresh output takes the residual in place (conv keeps no output for backward)
            x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).add_(x)  # permutes are views
        return self.fc2(x)


class RetBlock(nn.Module):
    """``x += dwconv(x)``; ``x += drop_path(ls1(MaSA(LN(x))))``; ``x += drop_path(ls2(FFN(LN(x))))``."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float,
            decomposed: bool,
            drop_path: float = 0.0,
            layer_scale_init: Optional[float] = None,
            use_rot_pos_emb: bool = True,
            use_mlp_dwconv: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.cpe = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, **dd)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = ManhattanSelfAttention(dim, num_heads, decomposed, use_rot_pos_emb, **dd)
        # timm's LayerScale: per-channel ``gamma`` (only on the layer-scale stages of rmt_b / rmt_l)
        self.ls1 = LayerScale(dim, layer_scale_init, **dd) if layer_scale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), use_mlp_dwconv, **dd)
        self.ls2 = LayerScale(dim, layer_scale_init, **dd) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
            self,
            x: torch.Tensor,
            sin: torch.Tensor,
            cos: torch.Tensor,
            bias_a: torch.Tensor,
            bias_b: torch.Tensor,
    ) -> torch.Tensor:
        # each residual is added into its branch's fresh output (a conv, linear, layer-scale or
        # drop-path result, none kept for backward), in the stream's dtype (see residual_add)
        x = residual_add(self.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), x)
        x = residual_add(self.drop_path(self.ls1(self.attn(self.norm1(x), sin, cos, bias_a, bias_b))), x)
        x = residual_add(self.drop_path(self.ls2(self.mlp(self.norm2(x)))), x)
        return x


class RMTStage(nn.Module):
    """Optional downsample, then retention blocks sharing one set of position tables (NCHW in and out)."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            num_heads: int,
            init_value: float,
            heads_range: float,
            mlp_ratio: float,
            decomposed: bool,
            drop_path: Sequence[float],
            layer_scale_init: Optional[float],
            downsample: bool,
            use_rot_pos_emb: bool = True,
            use_mlp_dwconv: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.use_rot_pos_emb = use_rot_pos_emb
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.init_value = float(init_value)
        self.heads_range = float(heads_range)
        self.decomposed = decomposed
        self.grad_checkpointing = False
        self.downsample = Downsample(in_dim, dim, **dd) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            RetBlock(dim, num_heads, mlp_ratio, decomposed, drop_path[i], layer_scale_init, use_rot_pos_emb,
                     use_mlp_dwconv, **dd)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)  # a view: the memory is channels-last
        # the position tables in the dtype the attention computes in (bf16/fp16 under autocast)
        sin, cos, bias_a, bias_b = retention_positions(
            x.shape[1], x.shape[2], self.num_heads, self.head_dim, self.init_value, self.heads_range,
            self.decomposed, x.dtype, x.device, self.use_rot_pos_emb)
        x = stream_dtype(x, self.blocks[0].norm1.weight)  # the residual stream: float32 under autocast
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, sin, cos, bias_a, bias_b, use_reentrant=False)
            else:
                x = block(x, sin, cos, bias_a, bias_b)
        return x.permute(0, 3, 1, 2)


class RMTHead(nn.Module):
    """ImageNet head: Linear(C -> 1024), BatchNorm, Swish, global average pool, Linear(1024 -> classes).

    ``reset(..., reset_other=True)`` drops the projection (used when pruning to an earlier stage,
    whose width the projection no longer fits): the head is then pool + classifier.
    """

    def __init__(
            self,
            in_features: int,
            hidden_size: int,
            num_classes: int,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.num_features = hidden_size
        self.proj: nn.Module = nn.Linear(in_features, hidden_size, **dd)
        self.norm: nn.Module = nn.BatchNorm2d(hidden_size, **dd)
        self.act: nn.Module = nn.SiLU()
        self.global_pool = _check_pool(global_pool)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(
            self,
            num_classes: int,
            global_pool: Optional[str] = None,
            reset_other: bool = False,
            in_features: Optional[int] = None,
            device=None,
            dtype=None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        if reset_other:
            self.in_features = in_features if in_features is not None else self.in_features
            self.proj, self.norm, self.act = nn.Identity(), nn.Identity(), nn.Identity()
            self.num_features = self.in_features
        self.fc = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)  # new modules follow the model's train/eval mode

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.act(self.norm(x))
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.drop(x)
        if pre_logits:
            return x
        if self.global_pool == "":  # unpooled: classify every position
            return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(x)


def _check_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"RMT supports global_pool 'avg' or '' (no pooling), got {global_pool!r}")
    return global_pool


def _device_dtype(module: nn.Module) -> Dict[str, Any]:
    param = next(module.parameters(), None)
    return {"device": param.device if param is not None else None, "dtype": param.dtype if param is not None else None}


class RMT(nn.Module):
    """Vision RetNet encoder with the ImageNet head (timm model contract).

    ``use_rot_pos_emb`` (the rotary "theta shift" of queries and keys) and ``use_mlp_dwconv`` (the
    depthwise conv inside each FFN) are on in the ImageNet RMT; SegRet's released encoder has both off.
    """

    def __init__(
            self,
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            depths: Sequence[int] = (2, 2, 8, 2),
            num_heads: Sequence[int] = (4, 4, 8, 16),
            heads_ranges: Sequence[float] = (4, 4, 6, 6),
            mlp_ratios: Sequence[float] = (3, 3, 3, 3),
            decomposed: Sequence[bool] = (True, True, False, False),
            layer_scale: Sequence[bool] = (False, False, False, False),
            init_values: Sequence[float] = (2, 2, 2, 2),
            layer_scale_init_value: float = 1e-6,
            use_rot_pos_emb: bool = True,
            use_mlp_dwconv: bool = True,
            head_hidden_size: int = 1024,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        num_stages = len(embed_dims)
        for name, values in (("depths", depths), ("num_heads", num_heads), ("heads_ranges", heads_ranges),
                             ("mlp_ratios", mlp_ratios), ("decomposed", decomposed),
                             ("layer_scale", layer_scale), ("init_values", init_values)):
            if len(values) != num_stages:
                raise ValueError(f"{name} has {len(values)} entries, expected one per stage ({num_stages})")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.drop_rate = drop_rate
        self.num_features = embed_dims[-1]
        self.head_hidden_size = head_hidden_size
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, embed_dims[0], **dd)
        total = sum(depths)  # linearly increasing over all blocks (plain floats: safe under a meta device context)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, self.feature_info, start = [], [], 0
        for i in range(num_stages):
            stages.append(RMTStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], num_heads[i], init_values[i],
                heads_ranges[i], mlp_ratios[i], bool(decomposed[i]), rates[start:start + depths[i]],
                layer_scale_init_value if layer_scale[i] else None, downsample=i > 0,
                use_rot_pos_emb=use_rot_pos_emb, use_mlp_dwconv=use_mlp_dwconv, **dd))
            start += depths[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = RMTHead(embed_dims[-1], head_hidden_size, num_classes, global_pool, drop_rate, **dd)
        if device is None or torch.device(device).type != "meta":
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if n.endswith(".gamma")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    @torch.jit.ignore
    def checkpoint_mismatch_hint(self, state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
        """'checkpoint is for rmt_s, the model is rmt_t' when the weights are another variant's."""
        received, built = infer_rmt_variant(state_dict), describe_model(self)
        return None if received == built else f"checkpoint is for {received}, the model is {built}"

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, reset_other=reset_other, in_features=self.num_features,
                        **_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (before the next stage's downsample), NCHW. RMT has no final norm: ``norm`` is a no-op."""
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop stages after the last wanted tap (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "", reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- official checkpoints
_STEM_MAP = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3", "9": "conv4", "10": "bn4"}
_BLOCK_MAP = {
    "pos.conv.": "cpe.",
    "retention_layer_norm.": "norm1.",
    "retention.lepe.conv.": "attn.lepe.",
    "retention.out_proj.": "attn.proj.",
    "final_layer_norm.": "norm2.",
    "ffn.fc1.": "mlp.fc1.",
    "ffn.fc2.": "mlp.fc2.",
    "ffn.dwconv.conv.": "mlp.dwconv.",
    "gamma_1": "ls1.gamma",
    "gamma_2": "ls2.gamma",
}


def is_official_layout(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith(("patch_embed.", "layers.", "backbone.patch_embed.", "backbone.layers."))
               for k in state_dict)


def remap_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official RMT key layout -> this project's layout (lossless).

    Accepts the classification checkpoint and the mmsegmentation backbone (``backbone.`` keys;
    other entries such as ``decode_head.*`` are dropped). Separate q/k/v projections are
    concatenated into ``attn.qkv``; ``gamma_*`` ``[1,1,1,C]`` become ``ls*.gamma`` ``[C]``;
    ``extra_norms.i`` (the RMT segmentation backbone's per-stage norms, which no model here has)
    become ``feature_norms.i``; ``Relpos.*`` are dropped (derived from the config; see
    :func:`check_relpos`).
    """
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if key.startswith("patch_embed.proj."):
            out[f"stem.{_STEM_MAP[parts[2]]}.{parts[3]}"] = value
        elif parts[0] == "layers" and parts[2] == "Relpos":
            continue
        elif parts[0] == "layers" and parts[2] == "downsample":
            dst = {"reduction": "conv", "norm": "norm"}[parts[3]]
            out[f"stages.{int(parts[1]) + 1}.downsample.{dst}.{parts[4]}"] = value
        elif parts[0] == "layers" and parts[2] == "blocks":
            prefix = f"stages.{parts[1]}.blocks.{parts[3]}."
            rest = ".".join(parts[4:])
            if rest.startswith("retention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                qkv.setdefault(prefix + parts[-1], {})[rest.split(".")[1][0]] = value
                continue
            for src, dst in _BLOCK_MAP.items():
                if rest.startswith(src):
                    rest = dst + rest[len(src):]
                    if dst.endswith("gamma"):
                        value = value.reshape(-1)
                    break
            else:
                raise KeyError(f"unexpected key in an official RMT checkpoint: {key}")
            out[prefix + rest] = value
        elif parts[0] == "extra_norms":
            out[f"feature_norms.{parts[1]}.{parts[2]}"] = value
        elif parts[0] in ("proj", "norm"):
            out[f"head.{key}"] = value
        elif parts[0] == "head":
            out[f"head.fc.{parts[1]}"] = value
        else:
            raise KeyError(f"unexpected key in an official RMT checkpoint: {key}")
    for name, qkv_parts in qkv.items():
        block, kind = name.rsplit(".", 1)
        out[f"{block}.attn.qkv.{kind}"] = torch.cat([qkv_parts["q"], qkv_parts["k"], qkv_parts["v"]], 0)
    return out


def check_relpos(state_dict: Mapping[str, torch.Tensor], model: RMT) -> None:
    """Official checkpoints store each stage's decay; it must equal what this model derives from its config."""
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items()}
    for i, stage in enumerate(model.stages):
        stored = state_dict.get(f"layers.{i}.Relpos.decay")
        if stored is None:
            continue
        derived = head_decays(stage.num_heads, stage.init_value, stage.heads_range, stored.device)
        if stored.shape != derived.shape:  # another variant: the weights' shapes will say which
            continue
        if not torch.allclose(stored.float(), derived, atol=1e-6):
            raise CheckpointError(
                f"stage {i} decay in the checkpoint ({stored.tolist()}) differs from the model's "
                f"({derived.tolist()}): the checkpoint was trained with other init_value/heads_range settings")


def infer_rmt_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the RMT variant a (converted) state dict belongs to, from its widths and depths."""
    dims = []
    depths = []
    for i in range(8):
        w = state_dict.get(f"stages.{i}.blocks.0.norm1.weight")
        if w is None:
            break
        dims.append(int(w.shape[0]))
        depths.append(len({k.split(".")[3] for k in state_dict if k.startswith(f"stages.{i}.blocks.")}))
    for name, cfg in RMT_CONFIGS.items():
        if tuple(cfg["embed_dims"]) == tuple(dims) and tuple(cfg["depths"]) == tuple(depths):
            return name
    return f"an RMT with embed_dims={tuple(dims)} depths={tuple(depths)}"


def describe_model(model: nn.Module) -> str:
    dims = tuple(s.blocks[0].norm1.normalized_shape[0] for s in model.stages)
    depths = tuple(len(s.blocks) for s in model.stages)
    for name, cfg in RMT_CONFIGS.items():
        if tuple(cfg["embed_dims"]) == dims and tuple(cfg["depths"]) == depths:
            return name
    return f"an RMT with embed_dims={dims} depths={depths}"


LayoutFilter = Callable[[Mapping[str, torch.Tensor], Optional[nn.Module]], Optional[Dict[str, torch.Tensor]]]


def own_rmt_layout(state_dict: Mapping[str, torch.Tensor], model: Optional[nn.Module] = None
                   ) -> Optional[Dict[str, torch.Tensor]]:
    """This project's RMT layout (``stem.*``, ``stages.*``, ``head.*``), as it is; None for another layout."""
    if not any(k.startswith(("stem.", "stages.")) for k in state_dict):
        return None
    return dict(state_dict)


def official_rmt_layout(state_dict: Mapping[str, torch.Tensor], model: Optional[nn.Module] = None
                        ) -> Optional[Dict[str, torch.Tensor]]:
    """The official RMT checkpoints (classification, or an mmsegmentation backbone under ``backbone.``)
    in this project's layout; the stored decays are checked against ``model``'s config when given."""
    if not is_official_layout(state_dict):
        return None
    if model is not None:
        check_relpos(state_dict, model)
    return remap_official_state_dict(state_dict)


def rmt_checkpoint_layouts() -> Dict[str, LayoutFilter]:
    """The checkpoint layouts an RMT reads, each a filter ``(state_dict, model) -> state_dict or None``."""
    return {"segret-zoo RMT": own_rmt_layout, "official RMT": official_rmt_layout}


def as_rmt_state(state_dict: Mapping[str, torch.Tensor], model: Optional[nn.Module] = None
                 ) -> Optional[Dict[str, torch.Tensor]]:
    """``state_dict`` in this project's RMT layout, by the first layout that recognises it; None if none does."""
    for layout in rmt_checkpoint_layouts().values():
        converted = layout(state_dict, model)
        if converted is not None:
            return converted
    return None


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: RMT) -> Dict[str, torch.Tensor]:
    """timm's pretrained filter: rename any supported checkpoint's keys to this model's layout.

    Accepts the official classification checkpoint, the official segmentation backbone
    (``backbone.`` keys) and this project's layout (timm's loaders have already taken the weights out
    of their container). Entries no RMT module holds are dropped: the derived ``Relpos`` tables (after
    checking them against the model's config) and the segmentation backbones' per-stage norms and
    decode heads. Whether the weights fit the model (a checkpoint of another variant) is left to
    ``load_state_dict``; :func:`_create_rmt` names both variants when it does not.
    """
    converted = as_rmt_state(state_dict, model)
    state = converted if converted is not None else dict(state_dict)
    return {k: v for k, v in state.items() if not k.startswith("feature_norms.")}


# ----------------------------------------------------------------------------------- creation
class RMTFeatures(FeatureGetterNet):
    """``features_only=True`` wrapper: stage outputs via ``forward_intermediates``, and gradient
    checkpointing switchable on the wrapper as detection/segmentation pipelines expect."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


# How this family's Hub weights are fetched: ``segret_zoo/__init__.py`` wires in the zoo's checked
# download (segret_zoo.hub.sources.fetch_hub_file: cache first, fast failure offline, the weights
# manifest, the mirror org). A family file knows no downloads, as in timm; without a fetcher timm downloads.
_hub_fetcher: Optional[Callable[..., Any]] = None


def set_hub_fetcher(fetch: Optional[Callable[..., Any]]) -> None:
    """``fetch(repo_id, filename, advice=...) -> local path`` for ``pretrained=True`` weights named by a
    Hub id (``advice``: how a timm user supplies a local copy, for its error message)."""
    global _hub_fetcher
    _hub_fetcher = fetch


def _local_weights(variant: str, pretrained_cfg: Any, overlay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The overlay that makes timm load ``pretrained=True`` weights from a local file: a ``file=`` the
    user gave is checked to exist, a Hub id is fetched through the zoo's download; a url or state dict
    is left to timm."""
    overlay = dict(overlay or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    if cfg.state_dict is not None or cfg.url:
        return overlay
    if cfg.file:
        if not os.path.isfile(cfg.file):
            raise WeightsNotFoundError(
                f"pretrained_cfg_overlay file={cfg.file!r} does not exist: give the path of an official RMT "
                "checkpoint (.pth) or of the model.safetensors written by `segret-zoo convert-rmt IN.pth OUT_DIR`")
        return overlay
    if not cfg.hf_hub_id or _hub_fetcher is None:
        return overlay
    advice = (f"To use the official RMT release instead: `segret-zoo convert-rmt RMT.pth OUT_DIR`, then "
              f"timm.create_model('{variant}', pretrained=True, pretrained_cfg_overlay=dict(file='OUT_DIR/"
              "model.safetensors')).")
    overlay["file"] = str(_hub_fetcher(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors", advice=advice))
    return overlay


def _create_rmt(variant: str, pretrained: bool = False, **kwargs: Any) -> RMT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = _local_weights(
            variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    variants: List[Tuple[str, str]] = []  # (checkpoint, model), named for a load_state_dict error

    def filter_fn(state_dict: Mapping[str, Any], model: RMT) -> Dict[str, torch.Tensor]:
        state_dict = checkpoint_filter_fn(state_dict, model)
        variants.append((infer_rmt_variant(state_dict), describe_model(model)))
        where = (kwargs.get("pretrained_cfg_overlay") or {}).get("file") or f"the pretrained weights of {variant}"
        check_weights(model.state_dict(), state_dict, where,  # timm would load them as they are
                      "use another checkpoint, or re-download or re-convert this one")
        return state_dict

    try:
        return build_model_with_cfg(
            RMT, variant, pretrained,
            pretrained_filter_fn=filter_fn,
            feature_cfg=dict(feature_cls=RMTFeatures, out_indices=out_indices),
            **kwargs,
        )
    except RuntimeError as err:
        if not variants or variants[-1][0] == variants[-1][1] or "state_dict" not in str(err):
            raise
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
        raise CheckpointError(f"checkpoint is for {variants[-1][0]} but the model is {variants[-1][1]}"
                              + (f": {detail}" if detail else "")) from err


def _cfg(variant: str, **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        # the zoo's own org; a mirror (SEGRET_ZOO_HF_ORG) is applied where the weights are fetched
        "hf_hub_id": f"{DEFAULT_HF_ORG}/{variant}.in1k",
        "hf_hub_filename": "model.safetensors",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1", "classifier": "head.fc",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2309.11523",
        "paper_name": "RMT: Retentive Networks Meet Vision Transformers",
        "origin_url": "https://github.com/qhfan/RMT",
        "notes": (
            "ImageNet-1k weights converted from the official RMT release. NOT PUBLISHED on the Hub yet: "
            "convert the official checkpoint with `segret-zoo convert-rmt` and load it with "
            "pretrained_cfg_overlay=dict(file=...)",
        ),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "rmt_t.in1k": _cfg("rmt_t"),
    "rmt_s.in1k": _cfg("rmt_s"),
    "rmt_b.in1k": _cfg("rmt_b"),
    "rmt_l.in1k": _cfg("rmt_l"),
})


@register_model
def rmt_t(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-T: 12.8M-parameter backbone (14.3M with the ImageNet head)."""
    return _create_rmt("rmt_t", pretrained=pretrained, **dict(RMT_CONFIGS["rmt_t"], **kwargs))


@register_model
def rmt_s(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-S: 25.4M-parameter backbone."""
    return _create_rmt("rmt_s", pretrained=pretrained, **dict(RMT_CONFIGS["rmt_s"], **kwargs))


@register_model
def rmt_b(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-B: 52.6M-parameter backbone, layer scale in stages 3-4."""
    return _create_rmt("rmt_b", pretrained=pretrained, **dict(RMT_CONFIGS["rmt_b"], **kwargs))


@register_model
def rmt_l(pretrained: bool = False, **kwargs: Any) -> RMT:
    """RMT-L: 93.8M-parameter backbone, layer scale in stages 3-4."""
    return _create_rmt("rmt_l", pretrained=pretrained, **dict(RMT_CONFIGS["rmt_l"], **kwargs))
