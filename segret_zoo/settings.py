"""Settings read from the environment at call time, shared by the model, Hub and factory layers."""
import os

__all__ = ["ORG_ENV", "DEFAULT_HF_ORG", "hf_org", "mirrored_repo_id", "is_zoo_repo", "CPU_KERNEL_ENV",
           "cpu_kernel_enabled"]

ORG_ENV = "SEGRET_ZOO_HF_ORG"
DEFAULT_HF_ORG = "segret-zoo"
CPU_KERNEL_ENV = "SEGRET_ZOO_CPU_KERNEL"


def hf_org() -> str:
    """The Hub organisation that hosts the zoo's weights (``SEGRET_ZOO_HF_ORG``, read at call time)."""
    return os.environ.get(ORG_ENV, "").strip() or DEFAULT_HF_ORG


def mirrored_repo_id(repo_id: str) -> str:
    """A zoo repo id (``segret-zoo/<name>``, as the model registries spell them) under the organisation
    that hosts the weights now; any other repo id as it is. The one place the org setting is applied."""
    org, sep, name = repo_id.partition("/")
    return f"{hf_org()}/{name}" if sep and org == DEFAULT_HF_ORG else repo_id


def is_zoo_repo(repo_id: str) -> bool:
    """True for a repo of the zoo's own organisation or of the mirror chosen with ``SEGRET_ZOO_HF_ORG``."""
    return repo_id.partition("/")[0] in (DEFAULT_HF_ORG, hf_org())


def cpu_kernel_enabled() -> bool:
    """Whether full-mode retention may use the compiled CPU kernel (``SEGRET_ZOO_CPU_KERNEL=0`` turns it off)."""
    return os.environ.get(CPU_KERNEL_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
