"""argparse ``type=`` functions for every command: the limits of :mod:`segret_zoo.validate`, at parse time.

A value outside its limits stops the command before any model, dataset or file is touched, with
``segret-zoo CMD: error: argument --crop: must be an integer from 32 to 8192, got 100000`` (one
line, exit 2; see :class:`OneLineParser`). The same functions of :mod:`segret_zoo.validate` check
the Python API, so both ways in share one rule.
"""
from __future__ import annotations

import argparse
from typing import Callable, NoReturn, Optional

from segret_zoo.validate import (
    MAX_IMAGE_SIDE,
    MAX_NUM_CLASSES,
    MIN_IMAGE_SIDE,
    float_problem,
    int_problem,
)

__all__ = ["OneLineParser", "int_range", "positive_int", "float_range", "probability", "image_side",
           "num_classes", "onnx_opset"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: message; see prog --help``), like
    every other user error of the CLI, instead of the usage block followed by the message."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text}; see {self.prog} --help\n")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def int_range(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An integer within ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        value = _parse_int(text)
        problem = int_problem(value, minimum, maximum)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "integer"
    return parse


def float_range(minimum: Optional[float] = None, maximum: Optional[float] = None, *,
                above: Optional[float] = None) -> Callable[[str], float]:
    """A finite number within the limits (``above``: exclusive lower bound); NaN and inf are refused."""

    def parse(text: str) -> float:
        value = _parse_float(text)
        problem = float_problem(value, minimum, maximum, above=above)
        if problem:  # the value as typed ("-3", not "-3.0")
            raise argparse.ArgumentTypeError(problem.rsplit(", got ", 1)[0] + f", got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
probability = float_range(0.0, 1.0)
image_side = int_range(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)  # pixels
num_classes = int_range(1, MAX_NUM_CLASSES)


def onnx_opset(text: str) -> int:
    """An opset from 17 (LayerNormalization) to the newest the installed torch can write."""
    from segret_zoo.inference.export import MIN_OPSET, opset_problem

    value = _parse_int(text)
    problem = int_problem(value, MIN_OPSET) or opset_problem(value, "dynamo")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value
