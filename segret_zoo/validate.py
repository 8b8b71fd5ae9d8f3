"""Range checks for the numbers users pass: one rule per value, shared by the CLI and the Python API.

Why one place: ``--crop 100000 100000`` once allocated 112 GiB before failing, ``--warmup-iters -3``
and ``--head-lr-mult -1`` trained silently wrong, ``num_classes="19"`` ended in a bare TypeError.
Every entry point (argparse ``type=`` functions in :mod:`segret_zoo.cli.options`, ``TrainConfig``,
``hubconf.py``, ``create_model``) asks the same function, so a value has the same limits whichever
way it comes in, and the refusal is one line naming the value, the limits and the fix.

``*_problem`` functions return what is wrong (``"must be an integer from 32 to 8192, got 0"``) or
None; ``check_*`` raise :class:`~segret_zoo.errors.OptionError` with the value's name in front.

Structures (config.json, a constructor's keyword arguments) are described by a small declarative
schema (:class:`Fields`, :class:`Items`, :class:`Int`, ...) that its owner declares next to the code
that reads it (SegRet's in ``models/segret.py``) and :func:`check_schema` walks: one line per
violation, ``"<file>: backbone.embed_dims[0] is -16, expected an integer from 1 to 2048"``.
:func:`check_weights` (through :func:`weights_problem`) is the check every loader applies to a
checkpoint's values.
"""
from __future__ import annotations

import json
import math
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Type

from segret_zoo.errors import CheckpointError, OptionError

__all__ = [
    "MAX_NUM_CLASSES", "MAX_IMAGE_SIDE", "MIN_IMAGE_SIDE", "int_problem", "float_problem", "check_int",
    "check_float", "check_num_classes", "check_size_pair", "Spec", "Int", "Number", "Bool", "Text", "Nullable",
    "Either", "Items", "AnyObject", "Labels", "Fields", "Rule", "label_id", "show", "kind_of", "schema_problem",
    "check_schema", "weights_problem", "check_weights",
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


def _limits(minimum: Optional[float], maximum: Optional[float], above: Optional[float] = None,
            below: Optional[float] = None) -> str:
    low = f"above {above:g}" if above is not None else (f"at least {minimum:g}" if minimum is not None else "")
    if maximum is not None and minimum is not None and above is None:
        return f"from {minimum:g} to {maximum:g}"
    high = f"below {below:g}" if below is not None else (f"at most {maximum:g}" if maximum is not None else "")
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
                  above: Optional[float] = None, below: Optional[float] = None) -> Optional[str]:
    """What is wrong with ``value`` as a finite number in ``[minimum, maximum]`` (``above`` / ``below``:
    exclusive bounds). NaN and infinities are always refused: they pass every ``<`` test silently."""
    limits = _limits(minimum, maximum, above, below)
    what = f"a finite number {limits}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"must be {what}, got {value!r} ({_type_name(value)})"
    v = float(value)
    if not math.isfinite(v):
        return f"must be {what}, got {value!r}"
    if (above is not None and not v > above) or (minimum is not None and v < minimum) or \
            (maximum is not None and v > maximum) or (below is not None and not v < below):
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


# ---------------------------------------------------------------------------------------- schemas
# A declarative description of a JSON-like structure (config.json, a constructor's keyword arguments),
# checked by one generic walker. Why declarative: the rules of a file live in one table next to the
# code that reads it, and every violation gets the same one line: where, the dotted path, the value as
# found (shortened) and what is allowed. The walker follows the schema, never the data, so a value
# nested a million levels deep costs one step (it is the wrong type, or contents that are not read).

#: config.json and the values inside it are small; a longer string or list is a damaged file
MAX_TEXT_LENGTH = 1000


def show(value: Any, json_style: bool = True, _depth: int = 0) -> str:
    """``value`` as a short literal (JSON's spelling, or Python's): at most 6 items per list or object,
    40 characters per string and 2 levels, so a huge or deeply nested value still fits one line."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return json.dumps(text, ensure_ascii=False) if json_style else repr(text)
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value] if json_style else repr(value)
    if isinstance(value, float) and json_style and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (numbers.Number,)):
        return repr(value) if not isinstance(value, numbers.Integral) or abs(int(value)) < 10**30 \
            else f"an integer of {len(str(abs(int(value))))} digits"
    if isinstance(value, Mapping):
        if _depth >= 2:
            return "{...}"
        items = [f"{show(k, json_style, 2)}: {show(v, json_style, _depth + 1)}" for k, v in list(value.items())[:6]]
        return "{" + ", ".join(items) + (", ..." if len(value) > 6 else "") + "}"
    if isinstance(value, (list, tuple)):
        if _depth >= 2:
            return "[...]"
        items = [show(v, json_style, _depth + 1) for v in value[:6]]
        more = ", ..." if len(value) > 6 else ("," if len(value) == 1 and not json_style else "")
        opening, closing = ("(", ")") if isinstance(value, tuple) and not json_style else ("[", "]")
        return opening + ", ".join(items) + more + closing
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind_of(value: Any) -> str:
    """The JSON kind of a value, as a reader of the file would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class Spec:
    """One value's rule: ``what`` says what is allowed (``"an integer from 1 to 4096"``)."""

    what: str = "a value"

    def fits_kind(self, value: Any) -> bool:
        """True when ``value`` is of the kind this spec describes (its contents may still be wrong)."""
        return True

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        """One line saying what is wrong with ``value`` at ``path``, or None (here: any value of the
        spec's kind is fine; specs with limits or contents to check override it)."""
        return None if self.fits_kind(value) else self._bad(value, path, json_style)

    def _bad(self, value: Any, path: str, json_style: bool, note: str = "") -> str:
        kind = "" if self.fits_kind(value) else f" ({kind_of(value)})"
        return f"{path} is {show(value, json_style)}{kind}, expected {self.what}{note}"


class Int(Spec):
    """An integer (not a boolean, not a number with a decimal point) within ``[minimum, maximum]``."""

    def __init__(self, minimum: Optional[int] = None, maximum: Optional[int] = None, unit: str = "") -> None:
        self.minimum, self.maximum = minimum, maximum
        self.what = f"an integer {_limits(minimum, maximum)}".rstrip() + (f" ({unit})" if unit else "")

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        if int_problem(value, self.minimum, self.maximum) is None:
            return None
        return self._bad(value, path, json_style)


class Number(Spec):
    """A finite number (an integer is one too) within the limits; ``above`` / ``below`` are exclusive."""

    def __init__(self, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
                 above: Optional[float] = None, below: Optional[float] = None) -> None:
        self.limits = dict(minimum=minimum, maximum=maximum, above=above, below=below)
        self.what = f"a finite number {_limits(minimum, maximum, above, below)}".rstrip()

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        if float_problem(value, **self.limits) is None:
            return None
        return self._bad(value, path, json_style)


class Bool(Spec):
    what = "true or false"

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, bool)


class Text(Spec):
    """A string, one of ``choices`` when given, at most :data:`MAX_TEXT_LENGTH` characters."""

    def __init__(self, choices: Optional[Sequence[str]] = None, what: Optional[str] = None) -> None:
        self.choices = tuple(choices) if choices is not None else None
        self.what = what or (f"one of {', '.join(json.dumps(c) for c in self.choices)}" if self.choices
                             else f"a string of at most {MAX_TEXT_LENGTH} characters")

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, str)

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        if isinstance(value, str) and len(value) <= MAX_TEXT_LENGTH and (self.choices is None or value in self.choices):
            return None
        return self._bad(value, path, json_style)


class Nullable(Spec):
    """``None`` (JSON ``null``: "not set") or the inner spec."""

    def __init__(self, inner: Spec) -> None:
        self.inner = inner
        self.what = f"null or {inner.what}"

    def fits_kind(self, value: Any) -> bool:
        return value is None or self.inner.fits_kind(value)

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        problem = None if value is None else self.inner.problem(value, path, json_style)
        if problem and problem.startswith(f"{path} is "):  # the value itself, not an item inside it: say null is fine
            what = self.what if json_style else f"None or {self.inner.what}"
            problem = problem.replace(f", expected {self.inner.what}", f", expected {what}", 1)
        return problem


class Either(Spec):
    """One of several specs; a value of one option's kind is judged by that option alone (so a wrong
    entry inside an object is named, not just "expected a name or an object")."""

    def __init__(self, *options: Spec, what: Optional[str] = None) -> None:
        self.options = options
        self.what = what or " or ".join(o.what for o in options)

    def fits_kind(self, value: Any) -> bool:
        return any(o.fits_kind(value) for o in self.options)

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        problems = [o.problem(value, path, json_style) for o in self.options]
        if any(p is None for p in problems):
            return None
        same_kind = [p for o, p in zip(self.options, problems) if o.fits_kind(value)]
        return same_kind[0] if len(same_kind) == 1 else self._bad(value, path, json_style)


def _as_list(value: Any) -> Optional[list]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and hasattr(value, "shape") and len(getattr(value, "shape", ())) == 1:
        return list(value.tolist())  # a 1-D numpy array or tensor given from Python
    return None


class Items(Spec):
    """A list (a tuple from Python) of ``item``; ``length`` exact, or within ``[min_length, max_length]``."""

    def __init__(self, item: Spec, length: Optional[int] = None, min_length: int = 1, max_length: int = 64,
                 what: Optional[str] = None) -> None:
        self.item, self.length, self.min_length, self.max_length = item, length, min_length, max_length
        count = str(length) if length is not None else f"{min_length} to {max_length}"
        self.what = what or f"a list of {count} items, each {item.what}"

    def fits_kind(self, value: Any) -> bool:
        return _as_list(value) is not None

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        items = _as_list(value)
        if items is None:
            return self._bad(value, path, json_style)
        if (self.length is not None and len(items) != self.length) or \
                not self.min_length <= len(items) <= self.max_length:
            return self._bad(value, path, json_style, f" (it has {len(items)})")
        for i, item in enumerate(items):
            problem = self.item.problem(item, _join(path, i), json_style)
            if problem:
                return problem
        return None


class AnyObject(Spec):
    """An object whose contents are not read (metadata for people: metrics, a restated block)."""

    what = "an object"

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, Mapping)


class Labels(Spec):
    """Class names: keys ``"0"``, ``"1"``, ... (ints from Python), values strings, at most
    :data:`MAX_NUM_CLASSES` of them. That they are exactly ``0 .. K-1`` is the enclosing object's rule."""

    what = f'an object from class ids ("0", "1", ...) to names (strings), at most {MAX_NUM_CLASSES} entries'

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        if not isinstance(value, Mapping) or len(value) > MAX_NUM_CLASSES:
            return self._bad(value, path, json_style, f" (it has {len(value)})" if isinstance(value, Mapping) else "")
        for key, name in value.items():
            if label_id(key) is None:
                return (f"{path} has the key {show(key, json_style)}, expected class ids: integers written in "
                        f"decimal (\"0\", \"1\", ...) from 0 to {MAX_NUM_CLASSES - 1}")
            if not isinstance(name, str) or len(name) > MAX_TEXT_LENGTH:
                return Text().problem(name, _join(path, str(key)), json_style)
        return None


def label_id(key: Any) -> Optional[int]:
    """A class id from an ``id2label`` key (an int, or a decimal string as JSON keys are), or None."""
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        value = int(key)
    elif isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 6:
        value = int(key)
    else:
        return None
    return value if 0 <= value < MAX_NUM_CLASSES else None


#: a rule across the fields of an object (a count that must match, dims that must divide): gets the
#: object (its fields already checked one by one) and returns a one-line problem or None
Rule = Callable[[Mapping[str, Any], str, bool], Optional[str]]


class Fields(Spec):
    """An object with named fields, each optional (absent: the reader's default).

    ``unknown="refuse"`` refuses any other key (keys that reach a constructor: a stray one would be
    a TypeError deep inside it), naming the allowed ones; ``"ignore"`` leaves other keys alone
    (metadata, forward compatibility). ``hints`` says why a key someone may expect is refused.
    ``rules`` run once every field is fine.
    """

    def __init__(self, fields: Mapping[str, Spec], *, unknown: str = "refuse", rules: Sequence[Rule] = (),
                 hints: Optional[Mapping[str, str]] = None, what: str = "an object") -> None:
        if unknown not in ("refuse", "ignore"):
            raise ValueError(f"unknown must be 'refuse' or 'ignore', got {unknown!r}")
        self.fields, self.unknown, self.rules = dict(fields), unknown, tuple(rules)
        self.hints = dict(hints or {})
        self.what = what

    def extended(self, fields: Mapping[str, Spec]) -> Fields:
        """This spec with more fields (the given ones do not replace this spec's own)."""
        return Fields({**fields, **self.fields}, unknown=self.unknown, rules=self.rules, hints=self.hints,
                      what=self.what)

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def problem(self, value: Any, path: str, json_style: bool) -> Optional[str]:
        if not isinstance(value, Mapping):
            return self._bad(value, path, json_style)
        if self.unknown == "refuse":
            for key in value:
                if key not in self.fields:
                    hint = self.hints.get(key) if isinstance(key, str) else None
                    return (f"{_join(path, show(key, False) if not isinstance(key, str) else key)} is not allowed"
                            + (f" ({hint})" if hint else "") + f"; the keys allowed in {path or 'it'} are "
                            + ", ".join(self.fields))
        for key, spec in self.fields.items():
            if key in value:
                problem = spec.problem(value[key], _join(path, key), json_style)
                if problem:
                    return problem
        for rule in self.rules:
            problem = rule(value, path, json_style)
            if problem:
                return problem
        return None


def schema_problem(value: Any, spec: Spec, path: str = "", json_style: bool = True) -> Optional[str]:
    """The first violation of ``spec`` in ``value``, as one line (``"a.b[0] is -1, expected ..."``), or None."""
    return spec.problem(value, path, json_style)


def check_schema(value: Any, spec: Spec, *, where: str, error: Type[Exception] = OptionError,
                 json_style: bool = False, fix: str = "", path: str = "") -> None:
    """Raise ``error("<where>: <violation>; <fix>")`` for the first violation of ``spec`` in ``value``
    (``path``: the dotted name of ``value`` itself, in front of every field's)."""
    problem = spec.problem(value, path, json_style)
    if problem:
        raise error(f"{where}: {problem}" + (f"; {fix}" if fix else ""))


# ---------------------------------------------------------------------------------------- weights
def weights_problem(expected: Mapping[str, Any], given: Mapping[str, Any], limit: int = 3) -> Optional[str]:
    """What is wrong with the values of the tensors ``given`` for a model whose own are ``expected``
    (both name -> tensor), or None.

    A tensor the model holds in floating point must arrive as floating point: float data labelled
    ``I32`` in a safetensors header loads as integers near 1e9 and predicts nonsense with exit 0. It
    must be finite too: an all-NaN checkpoint predicts class 0 everywhere. Integer tensors (BatchNorm's
    ``num_batches_tracked``, int64) are counters and are not checked. Names the first ``limit`` offenders.
    """
    import torch

    floating = [(k, v) for k, v in given.items()
                if k in expected and expected[k].is_floating_point() and isinstance(v, torch.Tensor)]
    wrong = [(k, v) for k, v in floating if not v.is_floating_point()]
    if wrong:
        shown = ", ".join(f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in wrong[:limit])
        more = f" and {len(wrong) - limit} more" if len(wrong) > limit else ""
        return (f"{len(wrong)} of its {len(floating)} floating-point weights are stored as integers or booleans: "
                f"{shown}{more}; its dtype labels are wrong (a damaged or hand-edited file), so the numbers would "
                "be read as garbage")
    bad = []
    for key, value in floating:
        if value.is_meta or value.numel() == 0 or bool(torch.isfinite(value).all()):
            continue
        bad.append((key, int((~torch.isfinite(value)).sum()), value.numel()))
    if bad:
        shown = ", ".join(f"{k} ({n:,} of {total:,} values)" for k, n, total in bad[:limit])
        more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
        return (f"{len(bad)} of its {len(floating)} floating-point weights hold NaN or infinite values: {shown}"
                f"{more}; the weights are unusable (a training run that diverged, or a damaged file)")
    return None


def check_weights(expected: Mapping[str, Any], given: Mapping[str, Any], source: str,
                  fix: str = "use another checkpoint, or re-download or re-create this one") -> None:
    """Raise :class:`CheckpointError` naming ``source``, the problem and ``fix`` when
    :func:`weights_problem` finds one: the one wording for every loader (timm's and the Hub's)."""
    problem = weights_problem(expected, given)
    if problem:
        raise CheckpointError(f"{source} cannot be loaded: {problem}. {fix[:1].upper()}{fix[1:]}")
