"""Settings read from the environment at call time, shared by the model, Hub and factory layers."""
import os

from segret_zoo.errors import OptionError

__all__ = ["ORG_ENV", "DEFAULT_HF_ORG", "hf_org", "mirrored_repo_id", "is_zoo_repo", "CPU_KERNEL_ENV",
           "cpu_kernel_enabled", "check_environment"]

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


_ON = ("1", "true", "yes", "on", "enable", "enabled", "auto", "")
_OFF = ("0", "false", "no", "off", "disable", "disabled", "none")


def cpu_kernel_enabled() -> bool:
    """Whether full-mode retention may use the compiled CPU kernel (``SEGRET_ZOO_CPU_KERNEL=0`` turns it off).

    Any other spelling than the usual on/off words is an :class:`~segret_zoo.errors.OptionError`:
    a typo must not leave the kernel on while the user believes it off.
    """
    raw = os.environ.get(CPU_KERNEL_ENV, "1")
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise OptionError(f"{CPU_KERNEL_ENV}={raw!r} is not understood; set it to 0 (off: retention on SDPA) or 1 "
                      "(on, the default), or unset it")


def check_environment() -> None:
    """Every setting read from the environment, checked now: the CLI calls it before any work, so a
    bad value is one line at start-up rather than an error in the middle of a run."""
    cpu_kernel_enabled()
