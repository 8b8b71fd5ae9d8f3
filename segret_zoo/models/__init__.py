"""Model definitions: the RMT encoder (timm models), the ZIR decoder and the SegRet model."""
from segret_zoo.models import rmt  # noqa: F401  (registers rmt_* with timm)
from segret_zoo.models.rmt import RMT, RMT_CONFIGS, checkpoint_filter_fn

__all__ = ["RMT", "RMT_CONFIGS", "checkpoint_filter_fn"]
