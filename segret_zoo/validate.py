"""Range checks for the numbers users pass: one rule per value, shared by the CLI and the Python API.

Why one place: ``--crop 100000 100000`` once allocated 112 GiB before failing, ``--warmup-iters -3``
and ``--head-lr-mult -1`` trained silently wrong, ``num_classes="19"`` ended in a bare TypeError.
Every entry point (argparse ``type=`` functions in :mod:`segret_zoo.cli.options`, ``TrainConfig``,
``hubconf.py``, ``create_model``) asks the same function, so a value has the same limits whichever
way it comes in, and the refusal is one line naming the value, the limits and the fix.

``*_problem`` functions return what is wrong (``"must be an integer from 32 to 8192, got 0"``) or
None; ``check_*`` raise :class:`~segret_zoo.errors.OptionError` with the value's name in front.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

from segret_zoo.errors import OptionError

__all__ = [
    "MAX_NUM_CLASSES", "MAX_IMAGE_SIDE", "MIN_IMAGE_SIDE", "int_problem", "float_problem", "check_int",
    "check_float", "check_num_classes", "check_size_pair",
]

#: label ids are written as 8-bit palette or 16-bit PNGs, so at most 65536 classes can be stored
MAX_NUM_CLASSES = 65536
#: training crops and resize scales, per side: the paper's recipes use 512-2048; 8192 already means
#: ~200 MB per augmented sample, and a typo such as 100000 would allocate over 100 GiB
MAX_IMAGE_SIDE = 8192
#: below one stride-32 cell the encoder's last stage has nothing to see
MIN_IMAGE_SIDE = 32


def _type_name(value: Any) -> str:
    return {str: "a string", bool: "true/false", type(None): "None", float: "a number"}.get(
        type(value), type(value).__name__)


def _limits(minimum: Optional[float], maximum: Optional[float], above: Optional[float] = None) -> str:
    low = f"above {above:g}" if above is not None else (f"at least {minimum:g}" if minimum is not None else "")
    if maximum is not None and minimum is not None and above is None:
        return f"from {minimum:g} to {maximum:g}"
    high = f"at most {maximum:g}" if maximum is not None else ""
    return " and ".join(p for p in (low, high) if p)


def int_problem(value: Any, minimum: Optional[int] = None, maximum: Optional[int] = None) -> Optional[str]:
    """What is wrong with ``value`` as an integer in ``[minimum, maximum]`` (None: nothing).

    Booleans and strings are refused even where Python would convert them: ``"19"`` from a config
    file or a keyword argument is a mistake worth naming, not guessing.
    """
    limits = _limits(minimum, maximum)
    what = f"an integer {limits}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            return f"must be {what}, got the number {value!r} (write it without a decimal point)"
        return f"must be {what}, got {value!r} ({_type_name(value)})"
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        return f"must be {what}, got {value}"
    return None


def float_problem(value: Any, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
                  above: Optional[float] = None) -> Optional[str]:
    """What is wrong with ``value`` as a finite number in ``[minimum, maximum]`` (``above``: exclusive
    lower bound). NaN and infinities are always refused: they pass every ``<`` test silently."""
    limits = _limits(minimum, maximum, above)
    what = f"a finite number {limits}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"must be {what}, got {value!r} ({_type_name(value)})"
    v = float(value)
    if not math.isfinite(v):
        return f"must be {what}, got {value!r}"
    if (above is not None and not v > above) or (minimum is not None and v < minimum) or \
            (maximum is not None and v > maximum):
        return f"must be {what}, got {value!r}"
    return None


def check_int(value: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None,
              hint: str = "") -> int:
    """``value`` as an int, or :class:`OptionError` ``"<name> must be ...; <hint>"``."""
    problem = int_problem(value, minimum, maximum)
    if problem:
        raise OptionError(f"{name} {problem}" + (f"; {hint}" if hint else ""))
    return int(value)


def check_float(value: Any, name: str, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
                above: Optional[float] = None, hint: str = "") -> float:
    """``value`` as a finite float, or :class:`OptionError` naming it (see :func:`float_problem`)."""
    problem = float_problem(value, minimum, maximum, above=above)
    if problem:
        raise OptionError(f"{name} {problem}" + (f"; {hint}" if hint else ""))
    return float(value)


def check_num_classes(value: Any, name: str = "num_classes") -> int:
    """A class count: a positive integer that label PNGs can hold (at most :data:`MAX_NUM_CLASSES`).

    The one check for every public ``num_classes`` argument (``create_model``, ``torch.hub.load``,
    ``TrainConfig``, ``--num-classes``), so a string or a zero is refused before a model is built.
    """
    fix = ""
    if isinstance(value, str) and value.strip().isdigit():
        fix = f"pass {name}={int(value)} (an int, not a string)"
    return check_int(value, name, 1, MAX_NUM_CLASSES, hint=fix)


def check_size_pair(value: Any, name: str, minimum: int = MIN_IMAGE_SIDE,
                    maximum: int = MAX_IMAGE_SIDE) -> Tuple[int, int]:
    """An int or a pair of ints, each side within ``[minimum, maximum]`` pixels; returned as a pair."""
    pair: Sequence[Any] = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
        else value
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise OptionError(f"{name} must be an int or a pair of ints (H, W), got {value!r}")
    for side in pair:
        problem = int_problem(side, minimum, maximum)
        if problem:
            raise OptionError(f"{name} {tuple(pair)!r}: each side {problem} (pixels)")
    return int(pair[0]), int(pair[1])
