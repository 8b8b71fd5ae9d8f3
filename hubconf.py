"""torch.hub entry points for segret-zoo.

    model = torch.hub.load("<org>/segret-zoo", "segret_tiny", pretrained=True)           # from GitHub
    model = torch.hub.load("/path/to/segret-zoo", "segret_tiny", source="local",
                           pretrained=True, num_classes=19)                              # a checkout

SegRet entry points take the arguments of :func:`segret_zoo.create_model`; RMT entry points those
of ``timm.create_model``. Weights come from the Hugging Face Hub (safetensors only) or its local
cache; see weights/README.md for what is published.
"""
# a module, not a name: torch.hub.list() lists every public callable here as an entry point
import typing

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]


def _checked(kwargs: typing.Dict[str, typing.Any]) -> typing.Dict[str, typing.Any]:
    """The keyword arguments with ``num_classes`` checked up front (a string or a zero is one clear line)."""
    if kwargs.get("num_classes") is not None:
        from segret_zoo.validate import check_num_classes

        kwargs["num_classes"] = check_num_classes(kwargs["num_classes"])
    return kwargs


def _segret(name: str, pretrained: typing.Any, **kwargs: typing.Any) -> typing.Any:
    from segret_zoo.factory import create_model

    return create_model(name, pretrained=pretrained, **_checked(kwargs))


def _rmt(name: str, pretrained: bool, **kwargs: typing.Any) -> typing.Any:
    import timm

    import segret_zoo  # noqa: F401  (registers rmt_* with timm)

    kwargs = _checked(kwargs) if kwargs.get("num_classes") != 0 else kwargs  # 0: timm's "no classifier"
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def segret_tiny(pretrained: typing.Any = False, **kwargs: typing.Any) -> typing.Any:
    """SegRet-Tiny: RMT-T encoder + ZIR decoder (C=256), 13.47M parameters with 150 classes.

    ``pretrained``: False, True (ADE20K) or "ade20k" / "cityscapes" / "cocostuff"; other keyword
    arguments (``num_classes``, ``pretrained_backbone``, ``checkpoint_path``, ...) as in
    ``segret_zoo.create_model``.
    """
    return _segret("segret_tiny", pretrained, **kwargs)


def segret_small(pretrained: typing.Any = False, **kwargs: typing.Any) -> typing.Any:
    """SegRet-Small: RMT-S encoder + ZIR decoder (C=256), 25.98M parameters with 150 classes.

    Arguments as for :func:`segret_tiny`.
    """
    return _segret("segret_small", pretrained, **kwargs)


def segret_base(pretrained: typing.Any = False, **kwargs: typing.Any) -> typing.Any:
    """SegRet-Base: RMT-B encoder + ZIR decoder (C=256), 53.03M parameters with 150 classes.

    Arguments as for :func:`segret_tiny`.
    """
    return _segret("segret_base", pretrained, **kwargs)


def segret_large(pretrained: typing.Any = False, **kwargs: typing.Any) -> typing.Any:
    """SegRet-Large: RMT-L encoder + ZIR decoder (C=512), 95.80M parameters with 150 classes.

    Arguments as for :func:`segret_tiny`.
    """
    return _segret("segret_large", pretrained, **kwargs)


def rmt_t(pretrained: bool = False, **kwargs: typing.Any) -> typing.Any:
    """RMT-T ImageNet backbone (timm model; ``features_only=True`` for the four feature maps)."""
    return _rmt("rmt_t", pretrained, **kwargs)


def rmt_s(pretrained: bool = False, **kwargs: typing.Any) -> typing.Any:
    """RMT-S ImageNet backbone (timm model; ``features_only=True`` for the four feature maps)."""
    return _rmt("rmt_s", pretrained, **kwargs)


def rmt_b(pretrained: bool = False, **kwargs: typing.Any) -> typing.Any:
    """RMT-B ImageNet backbone (timm model; ``features_only=True`` for the four feature maps)."""
    return _rmt("rmt_b", pretrained, **kwargs)


def rmt_l(pretrained: bool = False, **kwargs: typing.Any) -> typing.Any:
    """RMT-L ImageNet backbone (timm model; ``features_only=True`` for the four feature maps)."""
    return _rmt("rmt_l", pretrained, **kwargs)
