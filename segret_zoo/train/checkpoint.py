"""Training checkpoints that survive crashes: atomic writes, full state for bit-exact resume.

Why atomic: a run killed while writing (OOM killer, pre-emption, Ctrl-C twice) must never leave a
truncated file where the last good checkpoint was. The state is written to a temporary file in the
same folder, flushed to disk, then ``os.replace``-d over the target (atomic on POSIX and Windows).
Why all the RNG states: augmentation, dropout and drop-path draw from them, so a resumed run only
repeats the uninterrupted one bit for bit if every generator continues where it stopped.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from segret_zoo.errors import CheckpointError
from segret_zoo.files import atomic_write
from segret_zoo.hub.weights import load_torch_file

__all__ = ["atomic_save", "capture_rng_state", "restore_rng_state", "save_checkpoint", "load_checkpoint",
           "apply_checkpoint",
           "find_last", "list_checkpoints", "checkpoint_name", "CHECKPOINT_DIR"]

PathLike = Union[str, "os.PathLike[str]"]
CHECKPOINT_DIR = "checkpoints"
_NAME_RE = re.compile(r"^iter_(\d+)\.pt$")


def checkpoint_name(iteration: int) -> str:
    """``iter_00001600.pt``: zero-padded so a plain listing sorts by iteration."""
    return f"iter_{iteration:08d}.pt"


class _WriteRecorder:
    """A file wrapper that remembers the OSError of a failed write.

    Why: torch's zip writer swallows the OSError of a full disk and raises a bare RuntimeError
    ("unexpected pos ..."); re-raising the recorded error lets the atomic writer say "no space left".
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` through the one atomic writer: the old file stays until the new one is complete."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            recorder = _WriteRecorder(f)
            try:
                torch.save(obj, recorder)  # type: ignore[arg-type]
            except RuntimeError:
                if recorder.error is not None:
                    raise recorder.error from None
                raise

    return atomic_write(path, write)


def capture_rng_state() -> Dict[str, Any]:
    """States of Python's ``random``, numpy's global RNG, torch's CPU RNG and every CUDA device's RNG."""
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when this process has as many devices)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: PathLike, *, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Optional[Any] = None, scaler: Optional[Any] = None, iteration: int = 0,
                    best_metric: Optional[float] = None, config: Optional[Dict[str, Any]] = None,
                    rng_states: Optional[List[Dict[str, Any]]] = None, **extra: Any) -> Path:
    """Write everything needed to continue training at ``iteration`` (atomically).

    ``rng_states``: one :func:`capture_rng_state` per rank (index = rank); defaults to this process's.
    ``model`` may be DDP-wrapped; the plain module's state dict is stored.
    """
    module = getattr(model, "module", model)
    state = {
        "format": "segret-zoo-train-checkpoint/1",
        "iteration": int(iteration),
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states if rng_states is not None else [capture_rng_state()],
        "best_metric": best_metric,
        "config": config or {},
        **extra,
    }
    return atomic_save(state, path)


def load_checkpoint(path: PathLike, model: Optional[torch.nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Optional[Any] = None,
                    scaler: Optional[Any] = None, *, rank: int = 0, restore_rng: bool = True,
                    map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into the given objects and return it.

    A run folder resolves to its last checkpoint. The RNG state restored is this ``rank``'s when the
    checkpoint has one per rank, else rank 0's (a resume on another number of processes continues
    the schedule exactly, but not the random streams).
    """
    path = Path(path)
    if path.is_dir():
        found = find_last(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint (checkpoints/iter_*.pt) in {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    # weights_only plus an allowlist (numpy RNG state): a resume file never runs code
    state = load_torch_file(path, map_location=map_location)
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ValueError(f"{path} is not a segret-zoo training checkpoint (use --pretrained / checkpoint_path "
                         "for model weights)")
    state["path"] = str(path)
    apply_checkpoint(state, model, optimizer, scheduler, scaler, rank=rank, restore_rng=restore_rng)
    return state


def _fit_report(path: str, module: torch.nn.Module, weights: Dict[str, Any]) -> Optional[str]:
    """None when ``weights`` fit ``module`` exactly, else one line naming the differences."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shapes differ (checkpoint vs model, e.g. {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return (f"{path} was written by another model or class count than this run builds: {'; '.join(parts)}; "
            "pass the --model and --num-classes of that run")


def _groups_report(path: str, optimizer: torch.optim.Optimizer, saved: Dict[str, Any]) -> Optional[str]:
    """None when the saved optimizer state has this run's parameter groups (count and sizes), else one
    line: the groups come from the recipe's group style and the code's grouping rules, which differ
    between recipes and between segret-zoo versions."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list):
        return f"{path} holds no optimizer state segret-zoo can read; start a new schedule from its weights " \
               f"with --init-from {path} and another --out"
    had = [len(g.get("params", ())) for g in groups]
    has = [len(g["params"]) for g in optimizer.param_groups]
    if had == has:
        return None
    return (f"{path} was written with {len(had)} optimizer parameter groups of {had} parameters, this run builds "
            f"{len(has)} of {has} (another recipe's group style, or an earlier segret-zoo version): resume it "
            f"with the recipe and version that wrote it, or start a new schedule from its weights with "
            f"--init-from {path} and another --out")


def apply_checkpoint(state: Dict[str, Any], model: Optional[torch.nn.Module] = None,
                     optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Optional[Any] = None,
                     scaler: Optional[Any] = None, *, rank: int = 0, restore_rng: bool = True) -> None:
    """Put a state read by :func:`load_checkpoint` into the given objects (so one read serves both
    checking a checkpoint and resuming from it). A model it does not fit is a :class:`CheckpointError`."""
    if model is not None:
        module = getattr(model, "module", model)
        problem = _fit_report(str(state.get("path", "checkpoint")), module, state["model"])
        if problem:
            raise CheckpointError(problem)
        module.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        problem = _groups_report(str(state.get("path", "checkpoint")), optimizer, state["optimizer"])
        if problem:
            raise CheckpointError(problem)
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng and state.get("rng"):
        rngs = state["rng"]
        restore_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])


def list_checkpoints(run_dir: PathLike) -> List[Path]:
    """``run_dir/checkpoints/iter_*.pt`` sorted by iteration (temp files of interrupted writes are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def find_last(run_dir: PathLike) -> Optional[Path]:
    """The checkpoint with the highest iteration in ``run_dir`` (None if there is none)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
