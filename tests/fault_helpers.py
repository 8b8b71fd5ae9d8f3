"""What the fault tests share: the environment of the real child processes they start, and the
check that a refusal is exactly one line."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: a parent's torchrun variables would make a child join its process group
_DISTRIBUTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: a developer's Hub, zoo or transformers settings (offline mode, a mirror, the kernel switch) would
#: change what a child does; a test that needs one passes it in ``extra``
_SETTINGS = ("HF_", "SEGRET_ZOO_", "TRANSFORMERS_")


def child_env(**extra: str) -> dict:
    """The environment for a child process: this checkout importable, one thread, none of the
    parent's distributed variables or settings, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED and not k.startswith(_SETTINGS)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def one_error_line(err: str) -> str:
    """The only non-blank line of ``err`` (asserting there is exactly one, and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
