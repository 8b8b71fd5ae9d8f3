"""SegRet as its authors released it: an RMT encoder (no theta shift, no FFN conv) and the ZIR decoder.

The zoo's variant and dataset tables, the model class, and the checkpoint layouts it reads: this
project's own and the official mmsegmentation 0.x checkpoints (``backbone.*`` / ``decode_head.*``,
whose unused ``decode_head.conv_seg`` is dropped).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from segret_zoo.data.classes import DATASET_DEFAULTS, IMAGENET_MEAN, IMAGENET_STD, slide_stride
from segret_zoo.errors import CheckpointError
from segret_zoo.hub.mixin import HubMixin
from segret_zoo.models.decoder import FoldedZIRDecoder, ZIRDecoder
from segret_zoo.models.rmt import (
    RMT,
    RMT_CONFIGS,
    Downsample,
    LayoutFilter,
    Stem,
    as_rmt_state,
    describe_model,
    infer_rmt_variant,
    official_rmt_layout,
    rmt_checkpoint_layouts,
)
from segret_zoo.settings import DEFAULT_HF_ORG
from segret_zoo.validate import (
    MAX_IMAGE_SIDE,
    MAX_NUM_CLASSES,
    MIN_IMAGE_SIDE,
    AnyObject,
    Bool,
    Either,
    Fields,
    Int,
    Items,
    Labels,
    Nullable,
    Number,
    Text,
    check_num_classes,
    check_schema,
    label_id,
    show,
)

__all__ = ["SegRet", "SEGRET_VARIANTS", "SEGRET_ENCODER_ARGS", "PAPER_RESULTS", "default_pretrained_cfg",
           "segret_name_for_backbone", "CONFIG_SCHEMA", "PRETRAINED_CFG_SCHEMA", "ENCODER_SCHEMA"]

# name -> backbone and decoder width (the SegRet paper's four sizes)
SEGRET_VARIANTS: Dict[str, Dict[str, Any]] = {
    "segret_tiny": dict(backbone="rmt_t", decoder_channels=256),
    "segret_small": dict(backbone="rmt_s", decoder_channels=256),
    "segret_base": dict(backbone="rmt_b", decoder_channels=256),
    "segret_large": dict(backbone="rmt_l", decoder_channels=512),
}

# what SegRet's released encoder switches off in the ImageNet RMT (recorded in config.json)
SEGRET_ENCODER_ARGS: Dict[str, Any] = dict(use_rot_pos_emb=False, use_mlp_dwconv=False)

# mIoU (%) reported in the SegRet paper: single-scale / multi-scale+flip. Not measured by this project.
PAPER_RESULTS: Dict[Tuple[str, str], Tuple[float, float]] = {
    ("segret_tiny", "ade20k"): (48.76, 49.39), ("segret_tiny", "cityscapes"): (81.75, 82.17),
    ("segret_tiny", "cocostuff"): (42.22, 43.32),
    ("segret_small", "ade20k"): (50.7, 51.29), ("segret_small", "cityscapes"): (82.93, 83.52),
    ("segret_small", "cocostuff"): (44.32, 45.48),
    ("segret_base", "ade20k"): (51.63, 52.13), ("segret_base", "cityscapes"): (83.28, 83.87),
    ("segret_base", "cocostuff"): (45.92, 46.06),
    ("segret_large", "ade20k"): (52.0, 52.23), ("segret_large", "cityscapes"): (83.36, 83.91),
    ("segret_large", "cocostuff"): (45.78, 46.63),
}


def default_pretrained_cfg(
        architecture: Optional[str] = None,
        tag: Optional[str] = None,
        num_classes: Optional[int] = None,
        id2label: Optional[Mapping[int, str]] = None,
) -> Dict[str, Any]:
    """The timm-style ``pretrained_cfg`` of a variant and dataset tag (preprocessing, protocol, Hub location).

    The test protocol is the authors' config's for that pair: ``test_scale`` (keep-ratio rescale
    target), ``test_size_divisor`` (sides rounded up to a multiple of it afterwards; None: none) and
    ``test_mode``; without a tag the predictor's own choices apply (None).
    """
    data = DATASET_DEFAULTS.get(tag or "", {})
    crop = tuple(data.get("crop_size", (512, 512)))
    test_scale = tuple(data.get("test_scale", (2048, 512)))
    if architecture == "segret_large" and tag == "ade20k":  # the large model's ADE20K config: 640 px
        crop, test_scale = (640, 640), (2048, 640)
    cfg: Dict[str, Any] = {
        "architecture": architecture,
        "tag": tag,
        # the zoo's own org; a mirror (SEGRET_ZOO_HF_ORG) is applied where the weights are fetched
        "hf_hub_id": f"{DEFAULT_HF_ORG}/{architecture.replace('_', '-')}-{tag}" if architecture and tag else None,
        "hf_hub_filename": "model.safetensors",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "test_scale": test_scale,
        "test_size_divisor": data.get("test_size_divisor"),
        "test_mode": data.get("test_mode"),
        "crop_size": crop,
        "stride": slide_stride(crop),
        "num_classes": num_classes if num_classes is not None else data.get("num_classes"),
        "id2label": dict(id2label) if id2label else None,
        "dataset": tag,
        "dataset_name": data.get("dataset_name"),
        "ignore_index": 255,
        "reduce_zero_label": data.get("reduce_zero_label", False),
        "license": data.get("license", "apache-2.0"),
        "paper_miou": None,
    }
    if (architecture, tag) in PAPER_RESULTS:
        ss, ms = PAPER_RESULTS[(architecture, tag)]
        cfg["paper_miou"] = {"single_scale": ss, "multi_scale_flip": ms, "source": "SegRet paper (not measured here)"}
    return cfg


def segret_name_for_backbone(backbone: str) -> Optional[str]:
    """``rmt_b`` -> ``segret_base`` (None for an unregistered backbone)."""
    return next((n for n, v in SEGRET_VARIANTS.items() if v["backbone"] == backbone), None)


def _backbone_kwargs(backbone: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(backbone, str):
        if backbone not in RMT_CONFIGS:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(RMT_CONFIGS)}")
        return dict(RMT_CONFIGS[backbone])
    return dict(backbone)


# ---------------------------------------------------------------------------- the config's schema
# Every key of SegRet's config (config.json, the constructor's arguments) and what it may hold. The
# limits are generous around the released models (the largest: embed_dims up to 640, 25 blocks in a
# stage, decoder 512) and tight enough that no value allocates tens of GB or divides by zero.

#: the RMT constructor's architecture settings that a SegRet encoder takes (``backbone`` as an object,
#: ``backbone_kwargs``); anything else would reach RMT() as a stray keyword argument
MAX_STAGES = 4
MAX_EMBED_DIM = 2048
MAX_DECODER_CHANNELS = 4096
#: an encoder this size takes 4 GB in float32; rmt_l, the largest released one, has 93M parameters
MAX_ENCODER_PARAMS = 1_000_000_000


def _per_stage(item: Any, what: str) -> Items:
    return Items(item, min_length=1, max_length=MAX_STAGES,
                 what=f"a list of 1 to {MAX_STAGES} {what}, one per stage")


_ENCODER_FIELDS = {
    "embed_dims": _per_stage(Int(1, MAX_EMBED_DIM), f"integers from 1 to {MAX_EMBED_DIM} (channels)"),
    "depths": _per_stage(Int(1, 64), "integers from 1 to 64 (blocks)"),
    "num_heads": _per_stage(Int(1, 256), "integers from 1 to 256 that divide embed_dims"),
    "heads_ranges": _per_stage(Number(0, 32), "finite numbers from 0 to 32"),
    "mlp_ratios": _per_stage(Number(maximum=16, above=0), "finite numbers above 0 and at most 16"),
    "decomposed": _per_stage(Bool(), "true/false values"),
    "layer_scale": _per_stage(Bool(), "true/false values"),
    "init_values": _per_stage(Number(maximum=32, above=0), "finite numbers above 0 and at most 32"),
    "layer_scale_init_value": Number(maximum=1, above=0),
    "use_rot_pos_emb": Bool(),
    "use_mlp_dwconv": Bool(),
}
_ENCODER_HINTS = {
    "drop_path_rate": "SegRet sets it: use the top-level drop_path_rate",
    "num_classes": "SegRet's encoder has no classifier: the top-level num_classes is the model's",
    "head_hidden_size": "SegRet's encoder has no ImageNet head", "global_pool": "SegRet's encoder has no ImageNet head",
    "drop_rate": "SegRet's encoder has no ImageNet head", "in_chans": "SegRet takes RGB images (3 channels)",
    "device": "pass device= to the constructor, not in the architecture",
    "dtype": "pass dtype= to the constructor, not in the architecture",
}
#: ``backbone`` as an object, and ``backbone_kwargs``: the RMT settings; unknown keys are refused
ENCODER_SCHEMA = Fields(_ENCODER_FIELDS, unknown="refuse", hints=_ENCODER_HINTS, what="an object of RMT settings")
_RMT_DEFAULTS = {k: p.default for k, p in inspect.signature(RMT.__init__).parameters.items() if k in _ENCODER_FIELDS}
_STAGE_KEYS = ("depths", "num_heads", "heads_ranges", "mlp_ratios", "decomposed", "layer_scale", "init_values")


def _side_pair(minimum: int, what: str) -> Any:
    side = Int(minimum, MAX_IMAGE_SIDE, unit="pixels")
    return Either(side, Items(side, length=2, what=f"2 integers ({what}) from {minimum} to {MAX_IMAGE_SIDE} (pixels)"),
                  what=f"an integer or 2 integers ({what}) from {minimum} to {MAX_IMAGE_SIDE} (pixels)")


#: ``pretrained_cfg`` (timm's name): preprocessing and test protocol, read by the predictor; where the
#: weights came from and metrics, read by people. Other keys are kept as metadata, as timm does.
PRETRAINED_CFG_SCHEMA = Fields({
    "architecture": Nullable(Text()), "tag": Nullable(Text()), "hf_hub_id": Nullable(Text()),
    "hf_hub_filename": Nullable(Text()), "hf_hub_revision": Nullable(Text()),
    "mean": Items(Number(0, 1), length=3, what="3 finite numbers from 0 to 1 (R, G, B on the 0-1 scale: "
                                               "ImageNet's are [0.485, 0.456, 0.406])"),
    "std": Items(Number(maximum=1, above=0), length=3,
                 what="3 finite numbers above 0 and at most 1 (R, G, B on the 0-1 scale: ImageNet's are "
                      "[0.229, 0.224, 0.225])"),
    "test_scale": Nullable(_side_pair(MIN_IMAGE_SIDE, "long side, short side")),
    "crop_size": Nullable(_side_pair(MIN_IMAGE_SIDE, "H, W")),
    "stride": Nullable(_side_pair(1, "H, W")),
    "test_size_divisor": Nullable(Int(1, 1024)),
    "test_mode": Nullable(Text(("whole", "slide", "auto"))),
    "num_classes": Nullable(Int(1, MAX_NUM_CLASSES)), "id2label": Nullable(Labels()),
    "dataset": Nullable(Text()), "dataset_name": Nullable(Text()), "license": Nullable(Text()),
    "ignore_index": Int(0, 65535), "reduce_zero_label": Bool(),
    "converted_from": Nullable(Text()), "paper_miou": Nullable(AnyObject()), "metrics": Nullable(AnyObject()),
}, unknown="ignore", what="an object (timm's pretrained_cfg)")


def _where(key: str, backbone: Any, kwargs: Mapping[str, Any], path: str) -> str:
    """Where an encoder setting came from, for a message: the key that set it, or the registered name."""
    if key in kwargs:
        return f"{path}backbone_kwargs.{key}"
    if isinstance(backbone, Mapping) and key in backbone:
        return f"{path}backbone.{key}"
    if isinstance(backbone, str):
        return f"{key} of {path}backbone {backbone}"
    return f"{key} (RMT's default)"


def _encoder_rule(config: Mapping[str, Any], path: str, json_style: bool) -> Optional[str]:
    """The encoder settings together (the backbone's, then backbone_kwargs): one entry per stage,
    heads that divide the widths (with even head dims for the rotary shift), a size that fits memory."""
    backbone = config.get("backbone", "rmt_t")
    kwargs = dict(config.get("backbone_kwargs") or {})
    base = RMT_CONFIGS[backbone] if isinstance(backbone, str) else dict(backbone)
    cfg = {**_RMT_DEFAULTS, **base, **SEGRET_ENCODER_ARGS, **kwargs}
    at = f"{path}." if path else ""
    dims, heads = list(cfg["embed_dims"]), list(cfg["num_heads"])
    for key in _STAGE_KEYS:
        if len(cfg[key]) != len(dims):
            return (f"{_where(key, backbone, kwargs, at)} has {len(cfg[key])} entries but "
                    f"{_where('embed_dims', backbone, kwargs, at)} has {len(dims)}: expected one per stage")
    for i, (dim, head) in enumerate(zip(dims, heads)):
        if dim % head:
            return (f"{_where('num_heads', backbone, kwargs, at)}[{i}] is {head}, which does not divide "
                    f"{_where('embed_dims', backbone, kwargs, at)}[{i}] = {dim}: expected a divisor of it")
        if cfg["use_rot_pos_emb"] and (dim // head) % 2:
            return (f"{_where('num_heads', backbone, kwargs, at)}[{i}] is {head}, giving heads of {dim // head} "
                    f"channels, expected an even number of channels per head (the rotary shift, "
                    f"{_where('use_rot_pos_emb', backbone, kwargs, at)} true, rotates channel pairs)")
    blocks = sum(depth * (4 + 2 * float(ratio)) * dim * dim
                 for dim, depth, ratio in zip(dims, cfg["depths"], cfg["mlp_ratios"]))
    size = blocks + sum(9 * a * b for a, b in zip(dims, dims[1:]))
    if size > MAX_ENCODER_PARAMS:
        return (f"{at}backbone ({show(backbone, json_style)}" + (f" with backbone_kwargs {show(kwargs, json_style)}"
                if kwargs else "") + f") is an encoder of about {size / 1e6:,.0f}M parameters, expected at most "
                f"{MAX_ENCODER_PARAMS / 1e6:,.0f}M (rmt_l, the largest released, has 93M)")
    return None


def _labels_rule(config: Mapping[str, Any], path: str, json_style: bool) -> Optional[str]:
    """``id2label`` names each class ``0 .. num_classes-1`` exactly once."""
    labels, count = config.get("id2label"), config.get("num_classes", 150)
    if not labels:
        return None
    at = f"{path}." if path else ""
    ids = [label_id(k) for k in labels]
    if len(ids) != count:
        plural = "es" if len(ids) != 1 else ""
        return (f"{at}num_classes is {count} but {at}id2label names {len(ids)} class{plural}, expected one name "
                f"for each class id from 0 to {count - 1}")
    if sorted(ids) != list(range(count)):
        missing = next(i for i in range(count) if i not in set(ids))
        return (f"{at}id2label has no name for class {missing} (its keys are {show(list(labels), json_style)}), "
                f"expected one name for each class id from 0 to {count - 1}")
    return None


_BACKBONE = Either(Text(tuple(RMT_CONFIGS)), ENCODER_SCHEMA,
                   what=f"one of {', '.join(repr(n) for n in RMT_CONFIGS)} or an object of RMT settings")
#: SegRet's config (:attr:`SegRet.config`, config.json's model keys): what the Hub mixin checks a
#: config.json against and the constructor checks its arguments against. Unknown keys are ignored:
#: ``save_pretrained(config=...)`` adds keys of the user's own, and a newer segret-zoo may add optional
#: ones (``format_version`` marks the changes an older reader must refuse), as transformers does.
CONFIG_SCHEMA = Fields({
    "architecture": Nullable(Text()),
    "backbone": _BACKBONE,
    "backbone_kwargs": Nullable(ENCODER_SCHEMA),
    "num_classes": Int(1, MAX_NUM_CLASSES),
    "decoder_channels": Int(1, MAX_DECODER_CHANNELS),
    "decoder_dropout": Number(0, below=1),
    "drop_path_rate": Number(0, below=1),
    "freeze_backbone_bn": Bool(), "zir_fused": Bool(), "encoder_bn_folded": Bool(),
    "id2label": Nullable(Labels()),
    "label2id": Nullable(AnyObject()),  # restates id2label for people; not read
    "pretrained_cfg": Nullable(PRETRAINED_CFG_SCHEMA),
}, unknown="ignore", rules=(_labels_rule, _encoder_rule), what="a SegRet config (an object)")


# ---------------------------------------------------------------------------- checkpoint layouts

# the earlier design of this project (never published): per-stage LayerNorms and a decoder without BatchNorms
_EARLIER_DESIGN_KEYS = ("feature_norms.", "decoder.linears.", "decoder.zir.", "decoder.folded.")
EARLIER_DESIGN = (
    "it was saved by an earlier segret-zoo (before 0.2) whose SegRet differed from the released one "
    "(per-stage LayerNorms, a rotary theta shift and FFN convs in the encoder, no BatchNorm or ReLU per "
    "decoder level), which this version no longer builds and no weights were ever published for: "
    "retrain it with `segret-zoo train`, or load the authors' released checkpoints")


def _own_layout(state: Mapping[str, torch.Tensor], model: Optional[nn.Module]) -> Optional[Dict[str, torch.Tensor]]:
    """This project's layout (``encoder.*``, ``decoder.*``) as it is."""
    if any(k.startswith(_EARLIER_DESIGN_KEYS) for k in state):
        raise CheckpointError(f"this checkpoint cannot be loaded: {EARLIER_DESIGN}")
    if not any(k.startswith("decoder.") for k in state) or not any(k.startswith("encoder.") for k in state):
        return None
    return dict(state)


def _official_head(state: Mapping[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    """The released ``SegFormerHeadWithRes`` keys in this project's layout, or None for another head."""
    head = {k[len("decode_head."):]: v for k, v in state.items() if k.startswith("decode_head.")}
    if "linear_c1.zeroLayer.conv.weight" not in head:
        return None
    out: Dict[str, torch.Tensor] = {}
    for key, value in head.items():
        parts = key.split(".")
        if parts[0] == "conv_seg":  # mmseg's base-head classifier, unused by SegRet's output
            continue
        if parts[0].startswith("linear_c") and parts[0][-1].isdigit():
            level = f"decoder.levels.{int(parts[0][-1]) - 1}"
            if parts[1] == "proj":  # a token-wise Linear: C x d -> a 1x1 conv's C x d x 1 x 1
                out[f"{level}.linear.{parts[2]}"] = value[:, :, None, None] if parts[2] == "weight" else value
                continue
            if parts[1] == "zeroLayer" and parts[2] in ("conv", "bn"):
                out[f"{level}.zir_{'conv' if parts[2] == 'conv' else 'norm'}.{parts[3]}"] = value
                continue
        elif parts[0] == "linear_fuse" and parts[1] in ("conv", "bn"):
            out[f"decoder.fuse_{'conv' if parts[1] == 'conv' else 'norm'}.{parts[2]}"] = value
            continue
        elif parts[0] == "linear_pred":
            out[f"decoder.classifier.{parts[1]}"] = value
            continue
        return None  # a key SegRet's head does not have: another decode head
    return out


def _official_segret_layout(state: Mapping[str, torch.Tensor],
                            model: Optional[nn.Module]) -> Optional[Dict[str, torch.Tensor]]:
    """The authors' released checkpoints (``backbone.*`` official RMT keys, ``decode_head.*``)."""
    head = _official_head(state)
    if head is None:
        return None
    encoder = _official_segret_encoder_part(state, getattr(model, "encoder", None))
    if encoder is None:
        return None
    return {**{f"encoder.{k}": v for k, v in encoder.items()}, **head}


def _official_segret_encoder_part(state: Mapping[str, torch.Tensor],
                                  encoder: Optional[nn.Module]) -> Optional[Dict[str, torch.Tensor]]:
    if _official_head(state) is None:
        return None
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    return official_rmt_layout(backbone, encoder)


def _segret_encoder_part(state: Mapping[str, torch.Tensor],
                         encoder: Optional[nn.Module]) -> Optional[Dict[str, torch.Tensor]]:
    own = _own_layout(state, None)
    if own is None:
        return None
    return {k[len("encoder."):]: v for k, v in own.items() if k.startswith("encoder.")}


def describe_checkpoint(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """What a checkpoint that is no SegRet is, and what to do with it (one line), or None."""
    rmt = as_rmt_state(state)
    if rmt is not None and not any(k.startswith(("decode_head.", "decoder.")) for k in state):
        variant = infer_rmt_variant(rmt)
        kind = "an ImageNet RMT" if any(k.startswith("head.") for k in rmt) else "an RMT backbone"
        return (f"this is {kind} checkpoint ({variant}), not a SegRet one: use it to initialise a SegRet encoder "
                "with pretrained_backbone=PATH (command line: --pretrained-backbone PATH)")
    if any(k.startswith("decode_head.") for k in state) and _official_head(state) is None:
        head = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
        extra = " (its backbone is an RMT: pretrained_backbone=PATH can initialise a SegRet encoder from it)" \
            if rmt is not None else ""
        return (f"this is an mmsegmentation checkpoint whose decode_head ({', '.join(head[:4])}) is not SegRet's "
                f"SegFormerHeadWithRes, so it cannot be loaded as a SegRet{extra}")
    return None


class SegRet(HubMixin, nn.Module):
    """Semantic segmentation with a Vision RetNet encoder and a ZIR decoder, as released by its authors.

    ``model(x)`` takes a normalized ``B x 3 x H x W`` float tensor of any size and returns logits
    ``B x num_classes x H x W``. The encoder is RMT with ``backbone_kwargs`` (default: no rotary
    theta shift, no FFN conv, :data:`SEGRET_ENCODER_ARGS`); its four stage outputs go to the decoder
    as they are. All BatchNorms train, as in the official code; ``freeze_backbone_bn=True`` keeps the
    encoder's in eval mode during ``model.train()`` (for very small batches).
    """

    # config.json's model keys and the constructor's arguments: one schema (checked by the Hub mixin on
    # load, with the file's name, and by the constructor)
    CONFIG_SCHEMA = CONFIG_SCHEMA
    OLD_FORMAT_NOTE = EARLIER_DESIGN
    describe_checkpoint = staticmethod(describe_checkpoint)

    def __init__(
            self,
            backbone: Union[str, Mapping[str, Any]] = "rmt_t",
            num_classes: int = 150,
            decoder_channels: int = 256,
            decoder_dropout: float = 0.1,
            drop_path_rate: float = 0.0,
            id2label: Optional[Mapping[Union[int, str], str]] = None,
            freeze_backbone_bn: bool = False,
            backbone_kwargs: Optional[Mapping[str, Any]] = None,
            architecture: Optional[str] = None,
            pretrained_cfg: Optional[Mapping[str, Any]] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        check_schema(dict(backbone=backbone, num_classes=num_classes, decoder_channels=decoder_channels,
                          decoder_dropout=decoder_dropout, drop_path_rate=drop_path_rate, id2label=id2label,
                          freeze_backbone_bn=freeze_backbone_bn, backbone_kwargs=backbone_kwargs,
                          architecture=architecture, pretrained_cfg=pretrained_cfg),
                     CONFIG_SCHEMA, where=type(self).__name__)
        dd = {"device": device, "dtype": dtype}
        self.backbone = backbone if isinstance(backbone, str) else dict(backbone)
        self.backbone_kwargs = {**SEGRET_ENCODER_ARGS, **dict(backbone_kwargs or {})}
        self.num_classes = int(num_classes)
        self.freeze_backbone_bn = freeze_backbone_bn
        self.id2label = self._check_labels(id2label, self.num_classes)
        self._init_args = dict(decoder_channels=int(decoder_channels), decoder_dropout=float(decoder_dropout),
                               drop_path_rate=float(drop_path_rate))
        self.architecture = architecture

        encoder = RMT(**{**_backbone_kwargs(backbone), **self.backbone_kwargs}, num_classes=0,
                      drop_path_rate=self._init_args["drop_path_rate"], **dd)
        encoder.reset_classifier(0, "", reset_other=True)  # segmentation needs no ImageNet head
        self.encoder = encoder
        self.decoder: nn.Module = ZIRDecoder(encoder.embed_dims, self._init_args["decoder_channels"], self.num_classes,
                                             self._init_args["decoder_dropout"], **dd)
        cfg = default_pretrained_cfg(architecture, None, self.num_classes, self.id2label)
        cfg.update(pretrained_cfg or {})
        cfg["num_classes"], cfg["id2label"] = self.num_classes, self.id2label
        self.pretrained_cfg = cfg
        self.train()

    @staticmethod
    def _check_labels(id2label: Optional[Mapping[Any, str]], num_classes: int) -> Dict[int, str]:
        if not id2label:
            return {i: f"class_{i}" for i in range(num_classes)}
        labels = {int(k): str(v) for k, v in id2label.items()}
        if sorted(labels) != list(range(num_classes)):
            raise ValueError(f"id2label must name classes 0..{num_classes - 1}, got {len(labels)} entries")
        return labels

    # ------------------------------------------------------------------------------ config
    @property
    def config(self) -> Dict[str, Any]:
        """Everything needed to rebuild this model (``SegRet.from_config``); goes to ``config.json``."""
        return {
            "architecture": self.architecture or "segret",
            "backbone": copy.deepcopy(self.backbone),
            "backbone_kwargs": dict(self.backbone_kwargs),
            "num_classes": self.num_classes,
            **self._init_args,
            "freeze_backbone_bn": self.freeze_backbone_bn,
            "zir_fused": self.zir_fused,
            "encoder_bn_folded": self.encoder_bn_folded,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "label2id": {v: k for k, v in self.id2label.items()},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], pretrained_cfg: Optional[Mapping[str, Any]] = None,
                    **overrides: Any) -> SegRet:
        """Build (randomly initialized) from :attr:`config`; unknown keys are ignored (see
        :data:`CONFIG_SCHEMA`), the values are checked by the constructor (never converted: a ``"19"``
        is refused, not read as 19)."""
        cfg = dict(config)
        cfg.update(overrides)
        arch = cfg.get("architecture")
        model = cls(
            backbone=cfg.get("backbone", "rmt_t"),
            num_classes=cfg.get("num_classes", 150),
            decoder_channels=cfg.get("decoder_channels", 256),
            decoder_dropout=cfg.get("decoder_dropout", 0.1),
            drop_path_rate=cfg.get("drop_path_rate", 0.0),
            id2label=cfg.get("id2label"),
            freeze_backbone_bn=cfg.get("freeze_backbone_bn", False),
            backbone_kwargs=cfg.get("backbone_kwargs"),
            architecture=arch if arch != "segret" else None,
            pretrained_cfg=pretrained_cfg,
        )
        if cfg.get("zir_fused"):
            model.fuse_zir()
        if cfg.get("encoder_bn_folded"):  # saved after reparameterize_model: same module layout, then load
            model.fold_encoder_batchnorms()
        return model

    # ------------------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The four stage outputs (NCHW, strides 4/8/16/32), each before the next stage's downsampling."""
        return self.encoder.forward_intermediates(x, intermediates_only=True)

    def forward_head(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoder logits at stride 4."""
        return self.decoder(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_head(self.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------------------ utilities
    def train(self, mode: bool = True) -> SegRet:
        super().train(mode)
        if mode and self.freeze_backbone_bn:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @property
    def zir_fused(self) -> bool:
        """True once the decoder was folded for inference (:meth:`fuse_zir` or ``reparameterize_model``)."""
        return isinstance(self.decoder, FoldedZIRDecoder)

    def fuse_zir(self) -> SegRet:
        """Fold the decoder (zero-initialized paths, BatchNorms, fuse conv) for inference; idempotent."""
        if isinstance(self.decoder, ZIRDecoder):
            self.decoder = self.decoder.fuse()
        return self

    @property
    def encoder_bn_folded(self) -> bool:
        """True once the encoder's BatchNorms were folded into their convs (``reparameterize_model``)."""
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.encoder.modules())

    def fold_encoder_batchnorms(self) -> SegRet:
        """Fold the stem's and the downsamples' BatchNorms into their convs, as ``reparameterize_model`` does."""
        for module in list(self.encoder.modules()):
            if isinstance(module, (Stem, Downsample)):
                module.fuse()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int, id2label: Optional[Mapping[Any, str]] = None) -> None:
        """Replace the classifier for another label set (transfer learning)."""
        num_classes = check_num_classes(num_classes)
        self.decoder.reset_classifier(num_classes)
        self.num_classes = num_classes
        self.id2label = self._check_labels(id2label, num_classes)
        self.pretrained_cfg.update(num_classes=num_classes, id2label=self.id2label)

    def get_classifier(self) -> nn.Module:
        return self.decoder.classifier

    def no_weight_decay(self) -> set:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    # ------------------------------------------------------------------------ weights protocol
    # (read by segret_zoo.hub.weights.load_weights: how a checkpoint enters this model)
    @staticmethod
    def checkpoint_layouts() -> Dict[str, LayoutFilter]:
        """The checkpoint layouts a SegRet reads, each a filter ``(state_dict, model) -> state_dict or None``."""
        return {"segret-zoo": _own_layout, "official SegRet (mmsegmentation 0.x)": _official_segret_layout}

    def backbone_checkpoint_layouts(self) -> Dict[str, LayoutFilter]:
        """The layouts ``pretrained_backbone=`` reads into :attr:`encoder`: any RMT checkpoint, or a SegRet one."""
        return {**rmt_checkpoint_layouts(), "segret-zoo SegRet": _segret_encoder_part,
                "official SegRet (mmsegmentation 0.x)": _official_segret_encoder_part}

    def prepare_for_checkpoint(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Fold this model the way a checkpoint saved after folding was (same module layout, then load)."""
        if "decoder.levels.0.mix.weight" in state_dict:
            self.fuse_zir()
        if "encoder.stem.conv1.weight" in state_dict and "encoder.stem.bn1.weight" not in state_dict:
            self.fold_encoder_batchnorms()

    def classifier_keys(self) -> List[str]:
        """The state-dict keys a new ``num_classes`` replaces."""
        return [f"decoder.classifier.{k}" for k in self.decoder.classifier.state_dict()]

    def checkpoint_mismatch_hint(self, state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
        """What a checkpoint that fits no layout (or not this variant) is, and what to do with it."""
        what = describe_checkpoint(state_dict)
        if what is not None:
            return what
        sub = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        if not sub:
            return None
        received, built = infer_rmt_variant(sub), describe_model(self.encoder)
        if received == built:
            return None

        def label(rmt: str) -> str:
            seg = segret_name_for_backbone(rmt)
            return f"{rmt}/{seg}" if seg else rmt

        return f"checkpoint is for {label(received)}, you built {segret_name_for_backbone(built) or built}"

    @classmethod
    def infer_config(cls, state: Mapping[str, torch.Tensor],
                     meta: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """A config for a state dict in this project's layout (converted by one of
        :meth:`checkpoint_layouts`) without config.json, when its encoder is a registered variant;
        ``meta`` (an mmsegmentation checkpoint's) supplies the class names."""
        encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        classifier = state.get("decoder.classifier.weight")
        backbone = infer_rmt_variant(encoder) if encoder else None
        if backbone not in RMT_CONFIGS or classifier is None:
            return None
        arch = segret_name_for_backbone(backbone)
        num_classes, channels = int(classifier.shape[0]), int(classifier.shape[1])
        classes = (meta or {}).get("CLASSES")
        id2label = ({i: str(c) for i, c in enumerate(classes)}
                    if isinstance(classes, (list, tuple)) and len(classes) == num_classes else None)
        return {
            "architecture": arch, "backbone": backbone, "num_classes": num_classes, "decoder_channels": channels,
            "backbone_kwargs": dict(SEGRET_ENCODER_ARGS,
                                    use_mlp_dwconv=any(".mlp.dwconv." in k for k in encoder)),
            "zir_fused": "decoder.levels.0.mix.weight" in state,
            "encoder_bn_folded": "encoder.stem.bn1.running_mean" not in state,
            "id2label": id2label,
            "pretrained_cfg": default_pretrained_cfg(arch, None, num_classes, id2label),
        }
