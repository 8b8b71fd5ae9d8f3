"""Settings read from the environment at call time, shared by the model, Hub and factory layers."""
import os

__all__ = ["ORG_ENV", "DEFAULT_HF_ORG", "hf_org", "CPU_KERNEL_ENV", "cpu_kernel_enabled"]

ORG_ENV = "SEGRET_ZOO_HF_ORG"
DEFAULT_HF_ORG = "segret-zoo"
CPU_KERNEL_ENV = "SEGRET_ZOO_CPU_KERNEL"


def hf_org() -> str:
    """The Hub organisation that hosts the zoo's weights (``SEGRET_ZOO_HF_ORG``, read at call time)."""
    return os.environ.get(ORG_ENV, "").strip() or DEFAULT_HF_ORG


def cpu_kernel_enabled() -> bool:
    """Whether full-mode retention may use the compiled CPU kernel (``SEGRET_ZOO_CPU_KERNEL=0`` turns it off)."""
    return os.environ.get(CPU_KERNEL_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
