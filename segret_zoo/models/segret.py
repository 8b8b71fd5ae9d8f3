"""SegRet: RMT encoder + per-stage LayerNorm + ZIR decoder, and the zoo's variant / dataset tables."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from segret_zoo.data.classes import DATASET_DEFAULTS, IMAGENET_MEAN, IMAGENET_STD, slide_stride
from segret_zoo.hub.mixin import HubMixin
from segret_zoo.models.decoder import ZIRDecoder
from segret_zoo.models.rmt import (
    RMT,
    RMT_CONFIGS,
    Downsample,
    Stem,
    check_relpos,
    describe_model,
    infer_rmt_variant,
    is_official_layout,
    remap_official_state_dict,
    unwrap_state_dict,
)
from segret_zoo.settings import hf_org

__all__ = ["SegRet", "SEGRET_VARIANTS", "PAPER_RESULTS", "default_pretrained_cfg", "segret_name_for_backbone"]

# name -> backbone and decoder width (the SegRet paper's four sizes)
SEGRET_VARIANTS: Dict[str, Dict[str, Any]] = {
    "segret_tiny": dict(backbone="rmt_t", decoder_channels=256),
    "segret_small": dict(backbone="rmt_s", decoder_channels=256),
    "segret_base": dict(backbone="rmt_b", decoder_channels=256),
    "segret_large": dict(backbone="rmt_l", decoder_channels=512),
}

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
        "hf_hub_id": f"{hf_org()}/{architecture.replace('_', '-')}-{tag}" if architecture and tag else None,
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


class SegRet(HubMixin, nn.Module):
    """Semantic segmentation with a Vision RetNet encoder and a ZIR decoder.

    ``model(x)`` takes a normalized ``B x 3 x H x W`` float tensor of any size and returns logits
    ``B x num_classes x H x W``. The encoder's BatchNorm layers stay in eval mode during
    ``model.train()`` (as in the official RMT segmentation code) unless ``freeze_backbone_bn=False``.
    """

    # config.json keys and their JSON types (checked by the Hub mixin before the constructor sees them)
    CONFIG_TYPES = {
        "architecture": (str, type(None)), "backbone": (str, dict), "num_classes": (int,),
        "decoder_channels": (int,), "decoder_dropout": (float,), "drop_path_rate": (float,),
        "freeze_backbone_bn": (bool,), "zir_fused": (bool,), "encoder_bn_folded": (bool,), "id2label": (dict, type(None)),
        "pretrained_cfg": (dict, type(None)),
    }

    def __init__(
            self,
            backbone: Union[str, Mapping[str, Any]] = "rmt_t",
            num_classes: int = 150,
            decoder_channels: int = 256,
            decoder_dropout: float = 0.1,
            drop_path_rate: float = 0.0,
            id2label: Optional[Mapping[Union[int, str], str]] = None,
            freeze_backbone_bn: bool = True,
            architecture: Optional[str] = None,
            pretrained_cfg: Optional[Mapping[str, Any]] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        dd = {"device": device, "dtype": dtype}
        self.backbone = backbone if isinstance(backbone, str) else dict(backbone)
        self.num_classes = num_classes
        self.freeze_backbone_bn = freeze_backbone_bn
        self.id2label = self._check_labels(id2label, num_classes)
        self._init_args = dict(
            decoder_channels=decoder_channels, decoder_dropout=decoder_dropout, drop_path_rate=drop_path_rate)
        self.architecture = architecture

        encoder = RMT(**_backbone_kwargs(backbone), num_classes=0, drop_path_rate=drop_path_rate, **dd)
        encoder.reset_classifier(0, "", reset_other=True)  # segmentation needs no ImageNet head
        self.encoder = encoder
        dims = encoder.embed_dims
        self.feature_norms = nn.ModuleList([nn.LayerNorm(d, eps=1e-5, **dd) for d in dims])
        self.decoder = ZIRDecoder(dims, decoder_channels, num_classes, decoder_dropout, **dd)
        cfg = default_pretrained_cfg(architecture, None, num_classes, self.id2label)
        cfg.update(pretrained_cfg or {})
        cfg["num_classes"], cfg["id2label"] = num_classes, self.id2label
        self.pretrained_cfg = cfg
        self.train()  # applies the backbone BatchNorm freeze from the start

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
            "num_classes": self.num_classes,
            **self._init_args,
            "freeze_backbone_bn": self.freeze_backbone_bn,
            "zir_fused": self.decoder.fused,
            "encoder_bn_folded": self.encoder_bn_folded,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "label2id": {v: k for k, v in self.id2label.items()},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], pretrained_cfg: Optional[Mapping[str, Any]] = None,
                    **overrides: Any) -> SegRet:
        """Build (randomly initialized) from :attr:`config`; unknown keys are ignored."""
        cfg = dict(config)
        cfg.update(overrides)
        arch = cfg.get("architecture")
        model = cls(
            backbone=cfg.get("backbone", "rmt_t"),
            num_classes=int(cfg.get("num_classes", 150)),
            decoder_channels=int(cfg.get("decoder_channels", 256)),
            decoder_dropout=float(cfg.get("decoder_dropout", 0.1)),
            drop_path_rate=float(cfg.get("drop_path_rate", 0.0)),
            id2label=cfg.get("id2label"),
            freeze_backbone_bn=bool(cfg.get("freeze_backbone_bn", True)),
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
        """The four stage features (NCHW, strides 4/8/16/32), each after its LayerNorm."""
        feats = self.encoder.forward_intermediates(x, intermediates_only=True)
        return [norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for norm, f in zip(self.feature_norms, feats)]

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

    def fuse_zir(self) -> SegRet:
        """Fold the zero-initialized paths (and the decoder's fuse conv and BatchNorm) for inference."""
        self.decoder.fuse()
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
        self.decoder.reset_classifier(num_classes)
        self.num_classes = num_classes
        self.id2label = self._check_labels(id2label, num_classes)
        self.pretrained_cfg.update(num_classes=num_classes, id2label=self.id2label)

    def get_classifier(self) -> nn.Module:
        return self.decoder.classifier

    def no_weight_decay(self) -> set:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    # ------------------------------------------------------------------------------ hub hooks
    def checkpoint_mismatch_hint(self, state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
        """'checkpoint is for rmt_b/segret_base, you built segret_tiny' when both are known variants."""
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

    @staticmethod
    def classifier_classes(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
        """The class count of a SegRet state dict's classifier (None when it has none)."""
        weight = state_dict.get("decoder.classifier.weight")
        return int(weight.shape[0]) if weight is not None else None

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
        """A config for a SegRet state dict without config.json, when its encoder is a registered variant."""
        encoder = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        classifier = state_dict.get("decoder.classifier.weight")
        backbone = infer_rmt_variant(encoder) if encoder else None
        if backbone not in RMT_CONFIGS or classifier is None:
            return None
        arch = segret_name_for_backbone(backbone)
        num_classes, channels = int(classifier.shape[0]), int(classifier.shape[1])
        return {
            "architecture": arch, "backbone": backbone, "num_classes": num_classes, "decoder_channels": channels,
            "zir_fused": "decoder.folded.0.weight" in state_dict,
            "encoder_bn_folded": "encoder.stem.bn1.running_mean" not in state_dict,
            "pretrained_cfg": default_pretrained_cfg(arch, None, num_classes),
        }

    def load_backbone(self, state_dict: Mapping[str, Any], strict: bool = True) -> List[str]:
        """Load RMT encoder weights (and the per-stage norms when the checkpoint has them).

        ``state_dict`` is in the official classification layout, the official segmentation layout
        (``backbone.`` keys with ``extra_norms``), this project's RMT layout, or a SegRet state dict
        (files are read by the factory: ``create_model(..., pretrained_backbone=PATH)``). Returns the
        names of the loaded modules' keys that the checkpoint did not provide (e.g. ``feature_norms``
        for an ImageNet checkpoint).
        """
        state = unwrap_state_dict(state_dict)
        if any(k.startswith("encoder.") for k in state):  # a SegRet checkpoint
            state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state.items()
                     if k.startswith(("encoder.", "feature_norms."))}
        if is_official_layout(state):
            check_relpos(state, self.encoder)
            state = remap_official_state_dict(state)
        enc_state = {k: v for k, v in state.items() if k.startswith(("stem.", "stages."))}
        norm_state = {k[len("feature_norms."):]: v for k, v in state.items() if k.startswith("feature_norms.")}
        if not enc_state:
            raise ValueError("the checkpoint holds no RMT encoder weights (no stem./stages. keys after conversion)")
        own = self.encoder.state_dict()
        received, expected = infer_rmt_variant(enc_state), describe_model(self.encoder)
        bad = [k for k, v in enc_state.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ValueError(
                f"backbone checkpoint is for {received}, but this model's encoder is {expected} "
                f"(first mismatching keys: {bad[:3]})")
        missing = sorted(set(own) - set(enc_state))
        if missing and strict:
            raise ValueError(f"backbone checkpoint lacks {len(missing)} encoder keys, e.g. {missing[:5]}")
        self.encoder.load_state_dict(enc_state, strict=False)
        if norm_state:
            self.feature_norms.load_state_dict(norm_state)
        else:
            missing += [f"feature_norms.{k}" for k in self.feature_norms.state_dict()]
        return missing

