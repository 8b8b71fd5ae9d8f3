"""Settings read from the environment at call time, shared by the model, Hub and factory layers."""
import os

__all__ = ["ORG_ENV", "DEFAULT_HF_ORG", "hf_org"]

ORG_ENV = "SEGRET_ZOO_HF_ORG"
DEFAULT_HF_ORG = "segret-zoo"


def hf_org() -> str:
    """The Hub organisation that hosts the zoo's weights (``SEGRET_ZOO_HF_ORG``, read at call time)."""
    return os.environ.get(ORG_ENV, "").strip() or DEFAULT_HF_ORG
