"""SegRet model zoo: RMT encoders as timm models, SegRet segmentation models, Hub I/O, training."""
__version__ = "0.1.0"

from segret_zoo import models  # noqa: E402,F401  (registers the RMT variants with timm)
