"""SegRet model zoo: RMT encoders as timm models, SegRet segmentation models, Hub I/O, training.

``import segret_zoo`` registers ``rmt_t``/``rmt_s``/``rmt_b``/``rmt_l`` with timm.
"""
from segret_zoo import models  # noqa: E402,F401  (registers the RMT variants with timm)
from segret_zoo.factory import create_model, from_pretrained, list_models, list_pretrained  # noqa: E402
from segret_zoo.hub.sources import fetch_hub_file  # noqa: E402
from segret_zoo.inference.predictor import Segmenter  # noqa: E402
from segret_zoo.metrics import IoUMetric  # noqa: E402
from segret_zoo.models.segret import SegRet  # noqa: E402
from segret_zoo.version import __version__  # noqa: E402

models.rmt.set_hub_fetcher(fetch_hub_file)  # timm's rmt_*(pretrained=True) use the zoo's checked download

__all__ = [
    "__version__", "create_model", "from_pretrained", "list_models", "list_pretrained",
    "SegRet", "Segmenter", "IoUMetric",
]
