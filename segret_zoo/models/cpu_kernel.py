"""The compiled CPU kernel of full-mode retention (``csrc/manhattan_attention.cpp``), built on first use.

SDPA's CPU flash kernel takes the Manhattan decay only as a float mask: one more pass over every
score tile, with a load from an ``N x L x L`` bias (2 GiB at stage 3 of a 1024 x 2048 frame, or
views of a 508 MiB row-shift table). This kernel adds the decay from the 1-D tables inside its tiles
instead, so no mask exists (``benchmarks/bench_levers.py``, ``attention``). It is built once per
version of its source with ``torch.utils.cpp_extension`` (about 10 s, saying so on stderr; cached in
torch's extensions folder, ``TORCH_EXTENSIONS_DIR``, under a name keyed by the source, the flags and
torch's version), checked against SDPA on a small problem, and used by
:func:`segret_zoo.models.retention.manhattan_attention` for eager CPU inference in float32, and in
bfloat16 / float16 (autocast or a cast model), whose q, k and v it widens to float32 once per call
(``bench_levers.py``, ``bf16``: no mask beats SDPA's reduced-precision flash kernel with one). Where it
cannot be built (no C++ compiler or ninja, another OS, a torch without a BLAS ``sgemm``) retention
stays on SDPA, after one warning; ``SEGRET_ZOO_CPU_KERNEL=0`` turns it off.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..settings import CPU_KERNEL_ENV, cpu_kernel_enabled

__all__ = ["manhattan_kernel", "kernel_status", "extension_name", "SOURCE"]

SOURCE = Path(__file__).with_name("csrc") / "manhattan_attention.cpp"
_lock = threading.Lock()
_state: dict = {}  # "op": the loaded op or None, "reason": why not


def _isa_flags() -> tuple:
    """Compiler flags for the vector width torch itself dispatches to on this CPU (ATen's vec headers)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return "avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                          "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if capability == "AVX2":
        return "avx2", ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return "default", []


def _self_test(op: Callable) -> Optional[str]:
    """Compare the kernel with SDPA on a small map with partial tiles; the reason it failed, or None."""
    gen = torch.Generator().manual_seed(0)
    n, h, w, d = 3, 5, 7, 8
    q, k, v = (torch.randn(2, n, h * w, d, generator=gen) for _ in range(3))
    bias_h = -torch.rand(n, h, h, generator=gen)
    bias_w = -torch.rand(n, w, w, generator=gen)
    mask = (bias_h[:, :, None, :, None] + bias_w[:, None, :, None, :]).reshape(1, n, h * w, h * w)
    with torch.no_grad():
        got = op(q, k, v, bias_h, bias_w, 0.3)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        # bfloat16: the same problem rounded to bf16 first, so only the output's rounding differs
        args = [t.bfloat16() for t in (q, k, v, bias_h, bias_w)]
        got_bf16 = op(*args, 0.3)
        want_bf16 = F.scaled_dot_product_attention(
            *(t.float() for t in args[:3]), attn_mask=(args[3].float()[:, :, None, :, None]
                                                       + args[4].float()[:, None, :, None, :]).reshape(mask.shape),
            scale=0.3)
    err = (got - want).abs().max().item()
    if not err <= 1e-5:
        return f"its self-test differs from SDPA by {err:.2e}"
    err = (got_bf16.float() - want_bf16).abs().max().item()
    if got_bf16.dtype != torch.bfloat16 or not err <= 1e-2:
        return f"its bfloat16 self-test differs from SDPA by {err:.2e} (dtype {got_bf16.dtype})"
    return None


def _build() -> Callable:
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its import warns that a CUDA build finds no CUDA runtime
    try:
        from torch.utils.cpp_extension import load
    finally:
        quiet.setLevel(level)

    isa, flags = _isa_flags()
    cflags = ["-O3", "-fopenmp", *flags]
    name = extension_name(isa, cflags)
    library = _library_path(name)
    if library is None or not library.is_file():
        where = f" in {library.parent}" if library is not None else ""
        print(f"segret_zoo: building the compiled CPU retention kernel {name}{where} (once per version of its "
              "source, about 10-60 s)", file=sys.stderr, flush=True)
    load(name=name, sources=[str(SOURCE)], extra_cflags=cflags, is_python_module=False, verbose=False)
    return torch.ops.segret_zoo.manhattan_attention


def extension_name(isa: str, cflags: Sequence[str], source: Optional[bytes] = None) -> str:
    """The build's name, keyed by what it is built from: the C++ source, the flags and torch's version.

    Why: torch keeps one build folder per name and rebuilds it whenever the source it is given
    changes, so two checkouts on one machine (or a branch switch) sharing one name rebuilt each
    other's library on every switch; keyed names live side by side, and identical sources share one.
    """
    digest = hashlib.sha256(SOURCE.read_bytes() if source is None else source)
    digest.update("\0".join([*cflags, torch.__version__]).encode())
    return f"segret_zoo_cpu_{isa}_{digest.hexdigest()[:12]}"


def _library_path(name: str) -> Optional[Path]:
    """Where torch's extension loader keeps the built library of ``name`` (None if it cannot tell)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
    except Exception:  # a private helper: its absence only costs the "building" note
        return None


def _load() -> None:
    if not sys.platform.startswith("linux"):
        _state.update(op=None, reason="it is built for Linux only")
        return
    try:
        op = _build()
    except Exception as exc:  # a missing compiler, ninja or BLAS symbol: SDPA is always there
        first = str(exc).strip().splitlines()
        _state.update(op=None, reason=f"building it failed ({type(exc).__name__}: {first[0] if first else ''})")
        return
    reason = _self_test(op)
    _state.update(op=None if reason else op, reason=reason)


def manhattan_kernel() -> Optional[Callable]:
    """The compiled op ``(q, k, v, bias_h, bias_w, scale) -> out``, or None where it is off or unavailable.

    ``q, k, v``: ``B x N x HW x d`` of one dtype, float32, bfloat16 or float16 (unit last stride; the
    reduced ones are computed in float32 and returned in their dtype); ``bias_h``: ``N x H x H``;
    ``bias_w``: ``N x W x W`` (float32, bfloat16 or float16). Forward only (no autograd). Built on the
    first call of a process, then cached.
    """
    if not cpu_kernel_enabled():
        return None
    if "op" not in _state:
        with _lock:
            if "op" not in _state:
                _load()
                if _state["op"] is None:
                    warnings.warn(
                        f"segret_zoo: the compiled CPU retention kernel is unavailable: {_state['reason']}. "
                        "Full-mode retention runs on SDPA with a mask instead (same values, slower at high "
                        "resolution). To build it, install a C++ compiler and ninja (pip install ninja); "
                        f"to use SDPA without this warning, set {CPU_KERNEL_ENV}=0.", RuntimeWarning, stacklevel=3)
    return _state["op"]


def kernel_status() -> str:
    """One line for logs and benchmarks: whether the kernel is in use, and if not, why."""
    if not cpu_kernel_enabled():
        return f"off ({CPU_KERNEL_ENV}=0)"
    if "op" not in _state:
        return "not built yet"
    return "on" if _state["op"] is not None else f"unavailable: {_state['reason']}"
