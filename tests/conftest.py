"""Shared fixtures: reference data, tiny model configs, and a quiet, deterministic torch."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

REFERENCE = Path(__file__).parent / "data" / "reference"


@pytest.fixture(scope="session", autouse=True)
def cpu_kernel_built():
    """Build the compiled CPU retention kernel (segret_zoo/models/cpu_kernel.py) once, up front: on a
    fresh machine the first forward compiles it (about 10 s), which must not fall inside a test that
    times a subprocess. Where it cannot be built the tests run on SDPA (its own tests say so)."""
    import warnings

    from segret_zoo.models.cpu_kernel import manhattan_kernel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manhattan_kernel()


@pytest.fixture(autouse=True)
def no_child_process_left():
    """Each test leaves no multiprocessing child (a DataLoader worker, say) behind.

    Why: the training workers ignore SIGTERM, and at exit multiprocessing joins every child it
    terminated, so one leaked worker hangs the whole pytest run after its last test passed.
    A leak is killed here and fails the test that made it.
    """
    yield
    left = multiprocessing.active_children()
    for child in left:
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
    assert not left, f"the test left {len(left)} child process(es) running: {left}"

# A SegRet/RMT small enough for sub-second tests; exercises both retention modes.
TINY_BACKBONE = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def mini_config() -> dict:
    """The official reference's mini RMT, translated into RMT() keyword arguments."""
    cfg = json.loads((REFERENCE / "vectors" / "rmt_mini_config.json").read_text())
    return dict(
        embed_dims=cfg["embed_dims"], depths=cfg["depths"], num_heads=cfg["num_heads"],
        heads_ranges=cfg["heads_ranges"], mlp_ratios=cfg["mlp_ratios"],
        decomposed=cfg["chunkwise_recurrents"], layer_scale=cfg["layerscales"],
        init_values=cfg["init_values"], layer_scale_init_value=cfg["layer_init_values"],
        head_hidden_size=cfg["projection"], num_classes=cfg["num_classes"],
    )


@pytest.fixture
def tiny_segret():
    from segret_zoo.models.segret import SegRet

    torch.manual_seed(0)
    return SegRet(backbone=TINY_BACKBONE, num_classes=5, decoder_channels=32)


@pytest.fixture(scope="session")
def full_demo(tmp_path_factory) -> Path:
    """The folder of one `segret-zoo demo` run as README's first command starts it (defaults): a
    SegRet-T trained on the demo's scenes, saved under ``summary.json``'s ``paths.model_dir``, with the
    fresh scene it predicted. Run once per session: tests/test_demo.py checks its outcome and
    tests/test_deploy.py deploys its model."""
    from segret_zoo.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out)]) == 0
    return out
