"""Test helper: write this project's RMT weights in the official checkpoint layout.

The inverse of ``remap_official_state_dict``, written independently from the key listings in
``tests/data/reference/keys`` so that conversion round trips can be checked against them.
"""
from __future__ import annotations

from typing import Dict

import torch

from segret_zoo.models.retention import head_decays

STEM = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4", "conv3": "6", "bn3": "7", "conv4": "9", "bn4": "10"}
BLOCK = {
    "cpe": "pos.conv", "norm1": "retention_layer_norm", "attn.lepe": "retention.lepe.conv",
    "attn.proj": "retention.out_proj", "norm2": "final_layer_norm", "mlp.fc1": "ffn.fc1",
    "mlp.fc2": "ffn.fc2", "mlp.dwconv": "ffn.dwconv.conv",
}


def to_official(model, state: Dict[str, torch.Tensor], seg: bool = False) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] == "stem":
            out[f"patch_embed.proj.{STEM[p[1]]}.{p[2]}"] = value
        elif p[0] == "stages" and p[2] == "downsample":
            out[f"layers.{int(p[1]) - 1}.downsample.{'reduction' if p[3] == 'conv' else 'norm'}.{p[4]}"] = value
        elif p[0] == "stages":
            prefix = f"layers.{p[1]}.blocks.{p[3]}."
            rest = ".".join(p[4:])
            if rest.startswith("attn.qkv."):
                for name, chunk in zip("qkv", value.chunk(3, 0)):
                    out[f"{prefix}retention.{name}_proj.{p[-1]}"] = chunk.clone()
            elif rest.startswith("ls"):
                out[f"{prefix}gamma_{rest[2]}"] = value.reshape(1, 1, 1, -1)
            else:
                module, param = rest.rsplit(".", 1)
                out[f"{prefix}{BLOCK[module]}.{param}"] = value
        elif p[0] == "head" and p[1] in ("proj", "norm"):
            out[".".join(p[1:])] = value
        elif p[0] == "head" and p[1] == "fc":
            out[f"head.{p[2]}"] = value
        elif p[0] == "feature_norms":
            out[f"extra_norms.{p[1]}.{p[2]}"] = value
    for i, stage in enumerate(model.stages):
        d = stage.head_dim
        angle = 1.0 / (10000 ** torch.linspace(0, 1, d // 2))
        out[f"layers.{i}.Relpos.angle"] = angle.unsqueeze(-1).repeat(1, 2).flatten()
        out[f"layers.{i}.Relpos.decay"] = head_decays(stage.num_heads, stage.init_value, stage.heads_range, "cpu")
    if seg:
        out = {f"backbone.{k}": v for k, v in out.items() if not k.startswith(("proj.", "norm.", "head."))}
    return out


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights, BatchNorm statistics and layer scales, so equality checks mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(".gamma"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)


def to_official_segret(model, conv_seg_channels: int = 128) -> Dict[str, torch.Tensor]:
    """A SegRet's weights as the authors' released mmsegmentation checkpoints name them
    (``tests/data/reference/segret/keys``): ``backbone.*`` official RMT keys and ``decode_head.*`` of
    ``SegFormerHeadWithRes``, with the unused ``conv_seg`` the base head adds."""
    state = model.state_dict()
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    out = {f"backbone.{k}": v for k, v in to_official(model.encoder, encoder).items()
           if not k.startswith(("proj.", "norm.", "head."))}
    dec = model.decoder
    for i, level in enumerate(dec.levels, start=1):
        out[f"decode_head.linear_c{i}.proj.weight"] = level.linear.weight[:, :, 0, 0].clone()
        out[f"decode_head.linear_c{i}.proj.bias"] = level.linear.bias.clone()
        for name, t in level.zir_conv.state_dict().items():
            out[f"decode_head.linear_c{i}.zeroLayer.conv.{name}"] = t
        for name, t in level.zir_norm.state_dict().items():
            out[f"decode_head.linear_c{i}.zeroLayer.bn.{name}"] = t
    out["decode_head.linear_fuse.conv.weight"] = dec.fuse_conv.weight
    for name, t in dec.fuse_norm.state_dict().items():
        out[f"decode_head.linear_fuse.bn.{name}"] = t
    out["decode_head.linear_pred.weight"] = dec.classifier.weight
    out["decode_head.linear_pred.bias"] = dec.classifier.bias
    k = dec.classifier.weight.shape[0]
    out["decode_head.conv_seg.weight"] = torch.randn(k, conv_seg_channels, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.randn(k)
    return out


def mmseg_checkpoint(state_dict: Dict[str, torch.Tensor], classes=None) -> dict:
    """An mmsegmentation 0.x checkpoint container, as its training saves it (no class objects)."""
    meta = {"mmcv_version": "1.3.0", "iter": 160000, "config": "model = dict(type='EncoderDecoder', ...)",
            "env_info": "sys.platform: linux"}
    if classes is not None:
        meta["CLASSES"] = tuple(classes)
        meta["PALETTE"] = [[i, i, i] for i in range(len(classes))]
    return {"meta": meta, "state_dict": state_dict,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}}
