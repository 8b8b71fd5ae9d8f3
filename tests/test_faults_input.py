"""Bad input tensors given to the models: one clear error or warning, never a deep torch traceback."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch

import segret_zoo  # noqa: F401  (registers rmt_*)
from segret_zoo.models.segret import SegRet

MINI = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


@pytest.fixture(scope="module")
def model() -> SegRet:
    return SegRet(backbone=MINI, num_classes=3, decoder_channels=16).eval()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_input_names_the_dtype_and_the_fix(model: SegRet, dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match=rf"floating-point image batch, got dtype {dtype}.*normalise"):
        model(torch.zeros(1, 3, 32, 32, dtype=dtype))


@pytest.mark.parametrize("shape", [(0, 3, 32, 32), (1, 3, 0, 32), (1, 3, 32, 0)])
def test_zero_size_input_is_refused(model: SegRet, shape: tuple) -> None:
    with pytest.raises(ValueError, match=r"empty image batch of shape"):
        model(torch.zeros(*shape))


def test_nan_input_warns_instead_of_silent_nan_logits(model: SegRet) -> None:
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite input warns nothing
        model(x)
    x[0, 1, 5, 7] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"1 NaN/inf values"):
        model(x)


def test_rmt_checks_survive_scripting_and_tracing() -> None:
    rmt = timm.create_model("rmt_t", num_classes=0, **{k: v for k, v in MINI.items()}).eval()
    scripted = torch.jit.script(rmt)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(scripted(x), rmt(x))
    with pytest.raises(Exception, match="floating-point image batch"):
        scripted(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    traced = torch.fx.symbolic_trace(rmt)
    with pytest.warns(RuntimeWarning, match="NaN/inf"):
        traced(torch.full((1, 3, 64, 64), float("nan")))
