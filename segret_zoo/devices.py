"""Which device and autocast dtype a command runs on: the one resolver predict, eval and train share."""
from __future__ import annotations

from typing import Optional, Union

import torch

from segret_zoo.errors import OptionError

__all__ = ["resolve_device", "resolve_dtype", "cpu_bf16_supported", "AMP_DTYPES"]

# names accepted for an autocast dtype; None means full precision
AMP_DTYPES = {
    "fp32": None, "float32": None, "none": None,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def resolve_device(name: Union[None, str, torch.device] = "auto") -> torch.device:
    """``auto``/None -> cuda when available, else cpu; an unavailable cuda is a user error, not a crash later."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise OptionError(f"unknown device {name!r} ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {str(name)!r} was asked for but no CUDA GPU is visible; use cpu")
    return device


def cpu_bf16_supported() -> bool:
    """Native bf16 matrix units on this CPU (AVX512-BF16 / AMX), as oneDNN sees them. Without them bf16
    convolutions and matmuls are emulated: on an AVX2 CPU segret_tiny's bf16 forward took 6.9x its
    float32 time (``benchmarks/README.md``, "Deployed graphs")."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: Union[None, str, torch.dtype], device: torch.device) -> Optional[torch.dtype]:
    """``auto``: bf16 autocast on GPUs that support it (fp16 otherwise), full precision on the CPU.

    Returns None for full precision, else the autocast dtype.
    """
    if name is None or isinstance(name, torch.dtype):
        return None if name in (None, torch.float32) else name
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    key = str(name).lower().replace("torch.", "")
    if key not in AMP_DTYPES:
        raise OptionError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16")
    return AMP_DTYPES[key]
