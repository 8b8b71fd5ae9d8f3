"""The training engine: ``TrainConfig`` and ``train(cfg)``, iteration-based as in mmsegmentation.

Design points (and why):

- **Deterministic data stream.** An endless sampler maps iteration ``t`` to a fixed global batch
  (:class:`~segret_zoo.train.distributed.InfiniteShardedSampler`), and raw-image augmentation draws
  from a generator seeded by ``(seed, global sample position)``. So the data a step sees does not
  depend on DataLoader workers, on the number of processes, or on whether the run was resumed.
- **Exact global-batch loss.** The pixel cross-entropy is summed over all micro-batches and ranks
  and divided by the global count of valid pixels (class-weighted if weights are given), i.e. what
  one process with the whole batch computes; DDP, accumulation and one big batch agree.
- **Nothing is lost.** Checkpoints (model, optimizer, scheduler, scaler, every rank's RNG states,
  logging accumulators) are written atomically; SIGINT/SIGTERM finish the step, save and return
  ``interrupted=True``; a non-finite loss raises :class:`NonFiniteLossError` *before* the bad
  update, so the last checkpoint on disk is the last good one.
- **Rank 0 writes** (checkpoints, ``metrics.jsonl``, ``curves.png``, ``best/`` and ``last/``
  ``save_pretrained`` exports); every rank computes, and metrics are all-reduced.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segret_zoo.data.checks import CHECK_MODES, check_dataset
from segret_zoo.data.classes import (
    DATA_KINDS,
    DATASET_DEFAULTS,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    slide_stride,
)
from segret_zoo.data.datasets import build_dataset, parse_spec
from segret_zoo.data.transforms import build_train_transform, seed_worker
from segret_zoo.devices import resolve_device
from segret_zoo.errors import CheckpointError, DatasetLayoutError, OptionError, ResumeMismatchError, UserError
from segret_zoo.evaluate import evaluate
from segret_zoo.factory import load_model
from segret_zoo.files import (
    FolderLock,
    clean_stale_temporaries,
    prepare_output_dir,
    write_json_atomic,
    write_text_atomic,
)
from segret_zoo.metrics import IoUMetric
from segret_zoo.models.segret import default_pretrained_cfg
from segret_zoo.train import distributed as D
from segret_zoo.train.checkpoint import (
    CHECKPOINT_DIR,
    apply_checkpoint,
    capture_rng_state,
    checkpoint_name,
    find_last,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from segret_zoo.train.optim import PARAMWISE, build_optimizer, build_scheduler, describe_groups, param_groups
from segret_zoo.train.plot import plot_curves
from segret_zoo.train.recipes import (
    NO_RECIPE,
    RECIPES,
    model_size,
    recipe_dataset,
    recipe_for,
    resolve_recipe_name,
)
from segret_zoo.validate import check_float, check_int, check_num_classes, check_size_pair

__all__ = ["TrainConfig", "train", "resolve_config", "planned_param_groups", "config_dict", "NonFiniteLossError",
           "METRICS_FILE", "PLOT_FILE", "BUILTIN_DEFAULTS"]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"
_AMP = ("none", "bf16", "fp16")


# what a field left at None gets when no recipe sets it either: a short fine-tuning run with the
# configs' common settings (AdamW 1e-4, decay 0.01, poly 0.9 to 0, no warm-up) and the parameter
# groups of the nine configs with a paramwise_cfg (encoder norms at lr x0.1, no decay on norms,
# biases and gammas decayed as mmcv does: optim.PARAMWISE)
BUILTIN_DEFAULTS: Dict[str, Any] = dict(
    model="segret_tiny", seed=0, head_lr_mult=1.0, iters=1000, batch_size=8, lr=1e-4, weight_decay=0.01,
    warmup_iters=0, warmup_ratio=1e-6, poly_power=0.9, min_lr=0.0, **PARAMWISE, crop_size=(512, 512),
    scale=(2048, 512), eval_interval=1000, ckpt_interval=1000,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped before applying that update."""


@dataclass
class TrainConfig:
    """Everything a run needs. ``batch_size`` is the *global* batch (all processes x accumulation steps).

    A ``recipe`` fills crop/batch/iters/scale/lr/schedule/intervals for every field left at None
    (not given); fields you set yourself always win, even when they equal a built-in default. What
    neither sets comes from ``BUILTIN_DEFAULTS``. ``recipe=None`` picks the authors' recipe for the
    model's size and the ``data`` kind (``segret_small`` + ``ade20k:...`` -> ``small-ade20k``) when
    both are known; ``recipe="none"`` uses none. ``sources`` is filled by :func:`resolve_config`:
    where each value came from (``flag``, ``recipe NAME``, ``default``, ``resumed run``).
    ``scale=False`` trains without the random resize.
    ``stop_at`` ends the run early at that iteration while the schedule still runs to ``iters`` (so
    a later ``resume`` continues it exactly; a resume refuses changed run settings, see
    ``_RESUME_FIXED``; ``init_from`` starts a new schedule from a run's weights).
    """

    model: Optional[str] = None  # None: segret_tiny (or, when resuming, the checkpoint's)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    num_classes: Optional[int] = None
    id2label: Optional[Dict[int, str]] = None
    pretrained: Union[bool, str] = False
    pretrained_backbone: Union[bool, str] = False
    checkpoint_path: Optional[str] = None
    train_dataset: Any = None
    val_dataset: Any = None
    data: Optional[str] = None
    recipe: Optional[str] = None
    # recipe-able fields: None = "the recipe's value, else BUILTIN_DEFAULTS" (resolved by resolve_config)
    iters: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    head_lr_mult: Optional[float] = None
    encoder_norm_lr_mult: Optional[float] = None  # lr x this for the encoder's norms (block LNs, stem/downsample BNs)
    norm_decay_mult: Optional[float] = None  # weight decay x this for every norm's weight and bias
    bias_decay_mult: Optional[float] = None  # weight decay x this for biases, layer-scale gammas, other 1-D tensors
    warmup_iters: Optional[int] = None
    warmup_ratio: Optional[float] = None
    poly_power: Optional[float] = None
    min_lr: Optional[float] = None
    crop_size: Optional[Tuple[int, int]] = None
    scale: Union[None, bool, Tuple[int, int]] = None  # False: no resize
    accum_steps: int = 1
    amp: str = "none"
    grad_checkpointing: bool = False
    class_weights: Optional[Sequence[float]] = None
    eval_interval: Optional[int] = None
    ckpt_interval: Optional[int] = None
    time_budget_s: Optional[float] = None
    workers: int = 0
    seed: Optional[int] = None
    out_dir: str = "runs/x"
    resume: Optional[str] = None
    init_from: Optional[str] = None  # a training checkpoint or run folder: its weights, a new schedule
    check_data: str = "full"  # full | quick | off: mask sizes and labels checked before iteration 1
    progress: bool = True
    device: Optional[str] = None
    channels_last: bool = False
    sync_bn: bool = True
    # beyond the shared contract
    stop_at: Optional[int] = None
    log_interval: int = 10
    keep_checkpoints: int = 2
    clip_grad: Optional[float] = None
    eval_batch_size: Optional[int] = None
    overwrite: bool = False
    handle_signals: bool = True
    sources: Dict[str, str] = field(default_factory=dict)  # filled by resolve_config


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
# the command-line spelling of each field, so one message serves both ways in
_CLI_NAMES = {
    "iters": "--iters", "batch_size": "--batch-size", "lr": "--lr", "head_lr_mult": "--head-lr-mult",
    "warmup_iters": "--warmup-iters", "crop_size": "--crop", "scale": "--scale", "accum_steps": "--accum",
    "eval_interval": "--eval-interval", "ckpt_interval": "--ckpt-interval", "log_interval": "--log-interval",
    "time_budget_s": "--time-budget", "num_classes": "--num-classes", "workers": "--workers", "seed": "--seed",
    "class_weights": "--class-weights", "data": "--data",
}


def _name(field_name: str) -> str:
    cli = _CLI_NAMES.get(field_name)
    return f"{field_name} ({cli})" if cli else field_name


def _check_values(cfg: TrainConfig) -> None:
    """Every number of a resolved config within its limits (:mod:`segret_zoo.validate`), before any work."""
    for name in ("iters", "batch_size", "accum_steps", "eval_interval", "ckpt_interval", "log_interval"):
        setattr(cfg, name, check_int(getattr(cfg, name), _name(name), 1))
    cfg.workers = check_int(cfg.workers, _name("workers"), 0)
    cfg.seed = check_int(cfg.seed, _name("seed"), 0)
    cfg.warmup_iters = check_int(cfg.warmup_iters, _name("warmup_iters"), 0)
    cfg.lr = check_float(cfg.lr, _name("lr"), above=0.0)
    cfg.head_lr_mult = check_float(cfg.head_lr_mult, _name("head_lr_mult"), above=0.0,
                                   hint="it multiplies the decoder's learning rate")
    cfg.weight_decay = check_float(cfg.weight_decay, "weight_decay", 0.0)
    cfg.warmup_ratio = check_float(cfg.warmup_ratio, "warmup_ratio (--warmup-ratio)", maximum=1.0, above=0.0)
    cfg.poly_power = check_float(cfg.poly_power, "poly_power (--poly-power)", 0.0)
    cfg.min_lr = check_float(cfg.min_lr, "min_lr (--min-lr)", 0.0)
    for name in ("encoder_norm_lr_mult", "norm_decay_mult", "bias_decay_mult"):
        setattr(cfg, name, check_float(getattr(cfg, name), f"{name} (--{name.replace('_', '-')})", 0.0))
    if cfg.time_budget_s is not None:
        cfg.time_budget_s = check_float(cfg.time_budget_s, _name("time_budget_s"), above=0.0)
    if cfg.clip_grad is not None:
        cfg.clip_grad = check_float(cfg.clip_grad, "clip_grad", above=0.0)
    if cfg.stop_at is not None:
        cfg.stop_at = check_int(cfg.stop_at, "stop_at", 1)
    if cfg.num_classes is not None:
        cfg.num_classes = check_num_classes(cfg.num_classes, _name("num_classes"))
    cfg.crop_size = check_size_pair(cfg.crop_size, _name("crop_size"))
    if cfg.scale is False:
        cfg.scale = None  # no random resize
    elif cfg.scale is not None:
        cfg.scale = check_size_pair(cfg.scale, _name("scale"))
    if cfg.class_weights is not None:
        weights = [check_float(w, _name("class_weights") + f" value {i}", 0.0)
                   for i, w in enumerate(cfg.class_weights)]
        if weights and not any(weights):
            raise OptionError(f"{_name('class_weights')} are all 0: the loss would be 0/0; give the classes "
                              "that count a positive weight")
        cfg.class_weights = weights


def check_run_settings(cfg: TrainConfig) -> None:
    """What only a complete config can be checked for: training data, and a warm-up within the schedule.

    Why the warm-up: with ``warmup_iters > iters`` the learning rate never reaches the ``lr`` asked
    for, and the run silently trains at a fraction of it.
    """
    if cfg.train_dataset is None and not cfg.data:
        raise OptionError("no training data: pass --data ade20k:PATH (data='ade20k:PATH', or folder:PATH, "
                          "...) or train_dataset=...")
    if cfg.warmup_iters > cfg.iters:
        src = cfg.sources or {}

        def where(key: str) -> str:  # where the value came from: a recipe, a flag, the default
            origin = src.get(key) or ""
            return {"flag": " (given)", "default": " (the default)", "": ""}.get(origin, f" (from {origin})")

        raise OptionError(
            f"{_name('warmup_iters')} {cfg.warmup_iters}{where('warmup_iters')} is longer than {_name('iters')} "
            f"{cfg.iters}{where('iters')}: the learning rate would never reach its peak {cfg.lr:g}; pass "
            f"--warmup-iters {min(max(cfg.iters // 10, 1), cfg.iters)} (warmup_iters=) or any value up to "
            f"{cfg.iters}, 0 for none, or more --iters")


def _data_kind(data: Optional[str]) -> Optional[str]:
    """The dataset kind of a ``data`` spec (``ade20k``, ``cocostuff10k``, ``folder`` ...), None if unknown."""
    if not data:
        return None
    try:
        return parse_spec(data)[0]
    except (ValueError, OSError):  # a bad spec is reported when the dataset is built
        return None


def _pick_recipe(cfg: TrainConfig, model: str) -> Tuple[Optional[str], str]:
    """(recipe name or None, where that choice came from)."""
    size = model_size(model)
    if cfg.recipe == NO_RECIPE:
        return None, "flag"
    if cfg.recipe:
        name = resolve_recipe_name(cfg.recipe, size)
        return name, "flag" if name == cfg.recipe else f"flag ({cfg.recipe} for {model})"
    kind = _data_kind(cfg.data)
    name = recipe_for(size, recipe_dataset(kind))
    if name is not None:
        return name, f"auto: {model} on {kind} ({RECIPES[name]['config']})"
    if cfg.data is None:
        why = "training data given as a dataset object"
    elif recipe_dataset(kind) is None:
        why = f"no recipe for {kind or 'this'} data"
    else:
        why = f"the size of model {model} is unknown"
    return None, f"auto: none ({why}; name one with --recipe)"


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill what was not given (None) from the recipe, then ``BUILTIN_DEFAULTS``; normalize and check;
    record in ``cfg.sources`` where every value came from.

    Why None and not the default value as "not given": a user who asks for the default explicitly
    (``--eval-interval 1000`` with a recipe whose interval is 4000) must get it. A run that resumes
    is checked as a whole (:func:`check_run_settings`) once the checkpoint's settings are merged in.
    """
    cfg = dataclasses.replace(cfg)
    sources: Dict[str, str] = {}
    for f in dataclasses.fields(cfg):
        if f.name in ("sources", "train_dataset", "val_dataset"):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(cfg, f.name)
        sources[f.name] = "default" if value is None or _plain(value) == _plain(default) else "flag"
    if cfg.model is None:
        cfg.model = BUILTIN_DEFAULTS["model"]
    name, sources["recipe"] = _pick_recipe(cfg, cfg.model)
    cfg.recipe = name
    recipe = RECIPES[name] if name else {}
    for key, builtin in BUILTIN_DEFAULTS.items():
        if getattr(cfg, key) is None:
            if key in recipe:
                setattr(cfg, key, copy.deepcopy(recipe[key]))
                sources[key] = f"recipe {name}"
            else:
                setattr(cfg, key, builtin)
                sources[key] = "default"
    cfg.sources = sources
    if cfg.check_data not in CHECK_MODES:
        raise ValueError(f"check_data must be one of {', '.join(CHECK_MODES)}, got {cfg.check_data!r}")
    if cfg.resume and cfg.init_from:
        raise ValueError("pass either resume (continue a run exactly) or init_from (its weights, a new schedule)")
    if cfg.amp not in _AMP:
        raise ValueError(f"amp must be one of {', '.join(_AMP)}, got {cfg.amp!r}")
    _check_values(cfg)
    if not cfg.resume:
        check_run_settings(cfg)
    if isinstance(cfg.resume, os.PathLike):
        cfg.resume = os.fspath(cfg.resume)
    if isinstance(cfg.init_from, os.PathLike):
        cfg.init_from = os.fspath(cfg.init_from)
    cfg.out_dir = os.fspath(cfg.out_dir)
    return cfg


def _group_settings(cfg: TrainConfig) -> Dict[str, float]:
    """The parameter-group multipliers of a resolved config (see :mod:`segret_zoo.train.optim`)."""
    return {k: float(getattr(cfg, k)) for k in ("encoder_norm_lr_mult", "norm_decay_mult", "bias_decay_mult")}


def planned_param_groups(cfg: TrainConfig) -> Optional[List[Dict[str, Any]]]:
    """The optimizer groups (:func:`~segret_zoo.train.optim.describe_groups`) a resolved config's run
    will build, from its model built on the meta device (no memory, no weights); None when the model
    is not a zoo name (a saved folder or Hub repo is only read when the run starts)."""
    from segret_zoo.factory import create_model, parse_model_name

    try:
        arch, _ = parse_model_name(str(cfg.model))
    except ValueError:
        return None
    num_classes = cfg.num_classes
    info = DATA_KINDS.get(_data_kind(cfg.data) or "")
    if num_classes is None and info is not None:
        num_classes = int(DATASET_DEFAULTS[info["tag"]]["num_classes"])
    model = create_model(arch, num_classes=num_classes, device="meta", **cfg.model_kwargs)
    groups = param_groups(model, float(cfg.lr), float(cfg.weight_decay), float(cfg.head_lr_mult),
                          **_group_settings(cfg))
    return describe_groups(groups)


def config_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """JSON-friendly view of the config (dataset objects become their repr)."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("train_dataset", "val_dataset") and v is not None:
            v = repr(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return json.loads(json.dumps(out, default=str))


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
class _SampleRNG:
    """Generator-style RNG for the transforms, re-seeded from ``(seed, position)`` before each sample."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.gen = np.random.default_rng([self.seed, 0])

    def reseed(self, position: int) -> None:
        self.gen = np.random.default_rng([self.seed, int(position)])

    def random(self) -> float:
        return float(self.gen.random())

    def integers(self, low: int, high: int) -> int:
        return int(self.gen.integers(low, high))

    def uniform(self, low: float, high: float) -> float:
        return float(self.gen.uniform(low, high))


def _is_tensor_sample(dataset: Any) -> bool:
    """True when ``dataset[i]`` already gives (float tensor image, mask tensor)."""
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset!r} is empty")
    item = dataset[0]
    return isinstance(item[0], torch.Tensor)


class _TrainView(Dataset):
    """Indexed by ``(index, position)`` from the sampler; applies the seeded train transform to raw pairs."""

    def __init__(self, dataset: Any, transform: Any, rng: Optional[_SampleRNG]) -> None:
        self.dataset = dataset
        self.transform = transform
        self.rng = rng

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, position = key
        if self.transform is None:
            image, mask = self.dataset[index]
        else:
            raw = self.dataset.get_raw(index) if hasattr(self.dataset, "get_raw") else self.dataset[index]
            assert self.rng is not None
            self.rng.reseed(position)
            image, mask = self.transform(*raw)
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask))
        return image, mask.long()


def _build_datasets(cfg: TrainConfig) -> Tuple[Any, Any]:
    train_ds, val_ds = cfg.train_dataset, cfg.val_dataset
    if train_ds is None or (val_ds is None and cfg.data):
        if train_ds is None:
            train_ds = build_dataset(cfg.data, split="train")  # type: ignore[arg-type]
        if val_ds is None and cfg.data:
            try:
                val_ds = build_dataset(cfg.data, split="val")
            except DatasetLayoutError as err:
                warnings.warn(f"no validation split ({err}); training without evaluation", stacklevel=3)
    return train_ds, val_ds


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
def _build_model(cfg: TrainConfig, train_ds: Any) -> nn.Module:
    num_classes = cfg.num_classes or getattr(train_ds, "num_classes", None)
    id2label = cfg.id2label
    classes = getattr(train_ds, "classes", None)
    if id2label is None and classes is not None and num_classes is not None and len(classes) == num_classes:
        id2label = {i: str(c) for i, c in enumerate(classes)}
    model = load_model(cfg.model, cfg.checkpoint_path, num_classes=num_classes, pretrained=cfg.pretrained,
                       pretrained_backbone=cfg.pretrained_backbone, id2label=id2label, **cfg.model_kwargs)
    model.train()
    pcfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pcfg, dict):  # the exported model should describe how it was trained / is to be tested
        pcfg["crop_size"] = tuple(cfg.crop_size)
        pcfg["stride"] = slide_stride(cfg.crop_size)
        info = DATA_KINDS.get(_data_kind(cfg.data) or "")
        if info is not None:  # a benchmark: its official test protocol (the random resize's scale is not it)
            arch = pcfg.get("architecture") or getattr(model, "architecture", None)
            proto = default_pretrained_cfg(arch, info["tag"])
            pcfg.update({k: proto[k] for k in ("test_scale", "test_size_divisor", "test_mode")})
            pcfg.update(dataset=info["tag"], dataset_name=info["dataset_name"],
                        reduce_zero_label=info["reduce_zero_label"])
        elif cfg.scale is not None:
            pcfg["test_scale"] = tuple(cfg.scale)
    return model


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# signals, logging
# --------------------------------------------------------------------------------------------------
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _train_worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker and make it deaf to SIGINT/SIGTERM.

    Why: ``timeout``, SLURM and ``kill -- -PGID`` signal the whole process group; a worker that died
    of it would take the main process down before it could save. The main process decides when to
    stop and then shuts its workers down itself. The signals were blocked while the worker was forked
    (see :func:`_blocked_stop_signals`); ignoring them first, then unblocking, drops any pending one.
    """
    seed_worker(worker_id)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def _blocked_stop_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while DataLoader workers are forked, so none dies before it can ignore them
    (a held signal is delivered to this process as soon as the block ends)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _worker_error(err: BaseException) -> BaseException:
    """A user error raised in a DataLoader worker, as the one line it was (torch re-raises it with the
    worker's whole traceback as its message)."""
    text = str(err)
    if "\n" not in text or not isinstance(err, UserError):
        return err
    names = (f"{type(err).__module__}.{type(err).__qualname__}: ", f"{type(err).__name__}: ")
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        for name in names:
            if line.startswith(name):
                return type(err)(line[len(name):])
    return type(err)(lines[-1])


def _shutdown_workers(data: Iterator) -> None:
    """Stop a DataLoader iterator's workers now, on every way out of the loop.

    Why: the workers ignore SIGTERM (:func:`_train_worker_init`), and an exception's traceback keeps the
    iterator alive, so its own ``__del__`` may never run; at interpreter exit, ``multiprocessing`` then
    SIGTERMs its daemon children and joins them, which waits forever on a worker that ignores it.
    ``_shutdown_workers`` is the method the iterator's ``__del__`` calls (idempotent); single-process
    iterators have none.
    """
    shutdown = getattr(data, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class _SignalStop:
    """SIGINT/SIGTERM set a flag checked after each step; a second signal aborts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._first = 0.0
        self._old: Dict[int, Any] = {}
        self._old_chld: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    # a repeat this soon is the same stop delivered twice: the process group's signal plus torchrun
    # (or another launcher) forwarding its own copy; only a later one means "abort without saving"
    REPEAT_GRACE_S = 2.0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            if time.monotonic() - self._first < self.REPEAT_GRACE_S:
                return
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        self._first = time.monotonic()
        if hasattr(signal, "SIGCHLD") and self._old_chld is None:
            # torch's SIGCHLD handler raises wherever the main process happens to be when a worker
            # exits (mid-step even); during a stop, the loop checks its workers itself
            self._old_chld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        print(f"\nreceived {signal.Signals(signum).name}: finishing this iteration and saving a checkpoint "
              "(send again to abort without saving)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
        if self._old_chld is not None:
            signal.signal(signal.SIGCHLD, self._old_chld)
            self._old_chld = None


def _read_history(path: Path, upto: int) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if int(rec.get("iter", 0)) <= upto:
                records.append(rec)
    return records


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) a SegRet model; returns ``dict(run_dir, iters, seconds, best_miou, last_miou,
    best_dir, last_dir, history, interrupted, stop_reason, checkpoint)``.

    Launch with ``torchrun --nproc_per_node N`` for DDP; every rank calls ``train`` with the same config.
    Raises :class:`NonFiniteLossError` if the loss becomes NaN/inf (nothing of that step is saved).
    """
    raw = cfg
    cfg = resolve_config(cfg)
    device = resolve_device(cfg.device)
    info = D.init_distributed(device.type)
    if device.type == "cuda" and info.distributed:
        device = torch.device("cuda", info.local_rank)
    try:
        return _Run(cfg, info, device, raw).run()
    finally:
        D.cleanup(info)


# settings that define a run: resuming with another value would not continue it
_RESUME_FIXED = ("model", "model_kwargs", "num_classes", "batch_size", "iters", "lr", "weight_decay",
                 "head_lr_mult", "encoder_norm_lr_mult", "norm_decay_mult", "bias_decay_mult", "warmup_iters",
                 "warmup_ratio", "poly_power", "min_lr", "crop_size", "scale", "seed", "class_weights")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _merge_resume(raw: TrainConfig, saved: Dict[str, Any], path: Path) -> TrainConfig:
    """The config of a resumed run: what was not given comes from the checkpoint's run; a given value
    that differs from it is refused (one line naming every difference and the way out)."""
    merged = dataclasses.replace(raw)
    given = resolve_config(raw)
    differences, taken = [], []
    for name in _RESUME_FIXED:
        if name not in saved:
            continue  # a checkpoint from before this setting was recorded
        value = getattr(raw, name)
        if value is None or (name == "model_kwargs" and not value):
            old = saved[name]
            if name in ("crop_size", "scale") and isinstance(old, list):
                old = tuple(old)
            if name == "scale" and old is None:
                old = False  # recorded "no resize"
            setattr(merged, name, old)
            taken.append(name)
        elif _plain(getattr(given, name)) != _plain(saved[name]):
            differences.append(f"{name} {_plain(saved[name])} -> {_plain(getattr(given, name))}")
    if merged.train_dataset is None and not merged.data and saved.get("data"):
        merged.data = saved["data"]  # the run folder records its data: --resume needs no --data
    if differences:
        raise ResumeMismatchError(
            f"cannot resume {path}: it continues a run exactly, but this run changes {', '.join(differences)}; "
            f"drop those options to continue it, or start a new schedule from its weights with "
            f"--init-from {path} (init_from=) and another --out")
    resolved = resolve_config(merged)
    resolved.sources.update({name: f"resumed run ({path.name})" for name in taken})
    return resolved


class _Run:
    def __init__(self, cfg: TrainConfig, info: D.DistInfo, device: torch.device,
                 raw: Optional[TrainConfig] = None) -> None:
        self.cfg = cfg
        self.raw = raw if raw is not None else cfg
        self.info = info
        self.device = device
        self.run_dir = Path(cfg.out_dir)
        self.is_main = info.is_main
        self.history: List[Dict[str, Any]] = []
        self.best_miou = float("nan")
        self.last_miou = float("nan")
        self.best_dir: Optional[Path] = None
        self.last_ckpt: Optional[Path] = None
        self._lock: Optional[FolderLock] = None

    # ---------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg, info = self.cfg, self.info
        world = info.world_size
        if cfg.batch_size % (world * cfg.accum_steps):
            raise ValueError(f"batch size {cfg.batch_size} (global) must be divisible by processes x accumulation "
                             f"steps = {world} x {cfg.accum_steps}")
        self.micro = cfg.batch_size // (world * cfg.accum_steps)
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA GPU; use amp='bf16' or 'none' on the CPU")

        self._on_main(self._lock_run_dir)  # before anything in it is read, renamed or cleaned
        resume_path, resume_state = self._find_resume()
        if resume_state is not None:
            self.cfg = cfg = _merge_resume(self.raw, resume_state.get("config") or {}, resume_path)
        check_run_settings(cfg)
        self._on_main(lambda: self._prepare_run_dir(resume_path))

        _seed_all(cfg.seed)
        self.train_ds, self.val_ds = _build_datasets(cfg)
        self._on_main(self._check_data)
        model = _build_model(cfg, self.train_ds)
        self.num_classes = int(model.num_classes)
        ds_classes = getattr(self.train_ds, "num_classes", None)
        if ds_classes is not None and int(ds_classes) != self.num_classes:
            raise ValueError(f"the model predicts {self.num_classes} classes but the training data has {ds_classes}; "
                             "pass num_classes (the classifier is re-initialized)")
        if cfg.init_from:
            self._init_from(model)
        self.cfg.num_classes = self.num_classes  # recorded resolved, so a resume can compare it
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if info.distributed and cfg.sync_bn:  # every BatchNorm trains (the encoder's too), as in the official runs
            model = D.convert_sync_batchnorm(model, self.device.type)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.module = model
        _seed_all(cfg.seed + info.rank)  # different dropout / drop-path draws per rank, as mmseg does

        self.optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.head_lr_mult, **_group_settings(cfg))
        if self.is_main:  # the resolved run, where each value came from, and the optimizer's groups
            write_json_atomic(self.run_dir / "train_config.json",
                              {**config_dict(self.cfg), "param_groups": describe_groups(self.optimizer.param_groups)})
        self.scheduler = build_scheduler(self.optimizer, cfg.iters, cfg.warmup_iters, cfg.warmup_ratio,
                                         cfg.poly_power, cfg.min_lr, cfg.lr)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.class_weights = (torch.as_tensor(list(cfg.class_weights), dtype=torch.float32, device=self.device)
                              if cfg.class_weights is not None else None)
        if self.class_weights is not None and self.class_weights.numel() != self.num_classes:
            raise ValueError(f"class_weights has {self.class_weights.numel()} values for {self.num_classes} classes")

        # peek at the samples' type now: a dataset that draws from the global RNGs must not do so after
        # they are restored from a checkpoint
        self.train_mode_raw = not _is_tensor_sample(self.train_ds)
        self.val_tensors = self.val_ds is not None and _is_tensor_sample(self.val_ds)
        self.start_iter = 0
        self.log_acc = [0.0, 0]  # loss sum and iterations since the last log record
        if resume_state is not None:
            self._load(resume_path, resume_state)
        if self.is_main:
            self.history = _read_history(self.run_dir / METRICS_FILE, self.start_iter)
            self._rewrite_history()
            evals = [r["mIoU"] for r in self.history if r.get("type") == "eval" and r.get("mIoU") is not None]
            if evals:
                self.last_miou = float(evals[-1])
                # checkpoints are written before the evaluation of their iteration: its result is in the log
                if not (self.best_miou >= max(evals)):
                    self.best_miou = float(max(evals))
            if (self.run_dir / "best").is_dir():
                self.best_dir = self.run_dir / "best"

        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = DDP(model, device_ids=ids)
        else:
            self.model = model

        transform, rng = None, None
        if self.train_mode_raw:
            rng = _SampleRNG(cfg.seed)
            pcfg = getattr(model, "pretrained_cfg", {}) or {}
            transform = build_train_transform(
                crop_size=cfg.crop_size, scale=cfg.scale, mean=pcfg.get("mean", IMAGENET_MEAN),
                std=pcfg.get("std", IMAGENET_STD), rng=rng)  # type: ignore[arg-type]
        self.sampler = D.InfiniteShardedSampler(len(self.train_ds), cfg.batch_size, info.world_size, info.rank,
                                                cfg.accum_steps, cfg.seed, True, self.start_iter)
        self.loader = self._make_loader(_TrainView(self.train_ds, transform, rng))

    def _make_loader(self, view: Dataset) -> DataLoader:
        cfg = self.cfg
        gen = torch.Generator()
        gen.manual_seed(cfg.seed + 7919 * self.info.rank + self.start_iter)  # not the global RNG: resume-safe
        return DataLoader(view, batch_size=self.micro, sampler=self.sampler, num_workers=cfg.workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=_train_worker_init, generator=gen,
                          persistent_workers=cfg.workers > 0, drop_last=False)

    def _on_main(self, job: Any) -> None:
        """Run ``job`` on rank 0 only; its user error stops every rank (none waits at a collective)."""
        error = None
        if self.is_main:
            try:
                job()
            except (UserError, ValueError, OSError) as err:
                error = err
        error = D.broadcast_object(error)
        if error is not None:
            raise error  # type: ignore[misc]

    def _check_data(self) -> None:
        """Every mask's size and labels, before iteration 1 (cached in the run folder)."""
        cache = self.run_dir / ".data_check"
        for split, ds in (("train", self.train_ds), ("val", self.val_ds)):
            start = time.perf_counter()
            report = check_dataset(ds, split, self.cfg.check_data, cache_dir=cache)
            if self.cfg.progress and report.checked and not report.cached:
                print(f"checked {report.checked} {split} masks ({self.cfg.check_data}) in "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr)

    def _read_candidates(self, candidates: List[Path], where: str) -> Tuple[Optional[Path], Optional[Dict[str, Any]]]:
        """The newest readable checkpoint of ``candidates`` (newest last); unreadable ones are set aside
        with a warning, so a save killed half-way (or a damaged file) costs only the iterations since
        the previous checkpoint."""
        failures = []
        for path in reversed(candidates):
            try:
                return path, load_checkpoint(path, restore_rng=False)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # truncated zip, bad pickle, not a checkpoint: all "unreadable"
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                failures.append(f"{path.name} ({reason})")
                if len(candidates) == 1:
                    raise CheckpointError(f"cannot resume from {path}: {reason}") from None
                if self.is_main:
                    bad = path.with_name(path.name + ".unreadable")
                    try:
                        path.rename(bad)
                    except OSError:
                        bad = path
                    warnings.warn(f"checkpoint {path} cannot be read ({reason}); set aside as {bad.name}, "
                                  "falling back to the previous one", stacklevel=3)
        raise CheckpointError(f"no readable checkpoint in {where}: {'; '.join(failures)}; start over with "
                              "--overwrite (overwrite=True) or another --out")

    def _find_resume(self) -> Tuple[Optional[Path], Optional[Dict[str, Any]]]:
        resume = self.cfg.resume
        if not resume:
            return None, None
        if resume == "auto":
            found = list_checkpoints(self.run_dir)
            if not found:
                if self.cfg.train_dataset is None and not self.cfg.data:
                    raise OptionError(f"--resume auto: no checkpoint in {self.run_dir} to continue, so this is a "
                                      "new run and needs --data (data=)")
                if self.is_main:
                    print(f"resume=auto: no checkpoint in {self.run_dir}, starting from scratch", file=sys.stderr)
                return None, None
            return self._read_candidates(found, str(self.run_dir))
        path = Path(resume)
        if path.is_dir():
            found = list_checkpoints(path)
            if not found:
                raise FileNotFoundError(f"resume: no checkpoints/iter_*.pt in {path}")
            return self._read_candidates(found, str(path))
        if not path.is_file():
            raise FileNotFoundError(f"resume: checkpoint {path} not found (pass a file, a run folder or 'auto')")
        return self._read_candidates([path], str(path))

    def _init_from(self, model: nn.Module) -> None:
        """Weights of a training checkpoint (or a run folder's last one) for a new schedule."""
        path = Path(self.cfg.init_from)  # type: ignore[arg-type]
        try:  # load_checkpoint resolves a run folder to its last checkpoint
            state = load_checkpoint(path, restore_rng=False)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"init_from: {err} (pass a training checkpoint or a run folder)") from None
        except (UserError, ValueError):
            raise
        except Exception as err:
            raise CheckpointError(f"init_from: cannot read {path}: {(str(err).splitlines() or ['?'])[0]}") from None
        path = Path(state["path"])
        apply_checkpoint(state, model)
        if self.is_main:
            print(f"initialised from {path} (iteration {state['iteration']}); a new schedule starts at 0",
                  file=sys.stderr)

    def _lock_run_dir(self) -> None:
        """One run per folder: a second process on the same ``--out`` (a job restarted while it still runs)
        would interleave its metrics, checkpoints and exports with this one's. The lock dies with this
        process, however it ends."""
        prepare_output_dir(self.run_dir, "--out (out_dir)")
        self._lock = FolderLock(self.run_dir, "another training run", "--out").acquire()

    def _prepare_run_dir(self, resume_path: Optional[Path]) -> None:
        prepare_output_dir(self.run_dir, "--out (out_dir)")
        for folder in (self.run_dir, self.run_dir / CHECKPOINT_DIR, self.run_dir / "best", self.run_dir / "last"):
            for stale in clean_stale_temporaries(folder):
                print(f"removed {stale}, left by a save that was killed", file=sys.stderr)
        if resume_path is None and list_checkpoints(self.run_dir):
            if not self.cfg.overwrite:
                raise ValueError(f"{self.run_dir} already holds a training run; continue it with --resume auto "
                                 "(resume='auto'), start it over with --overwrite (overwrite=True), or choose "
                                 "another --out (out_dir)")
            for p in list_checkpoints(self.run_dir):
                p.unlink()
            for name in (METRICS_FILE, PLOT_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
        write_json_atomic(self.run_dir / "train_config.json", config_dict(self.cfg))

    def _load(self, path: Path, state: Dict[str, Any]) -> None:
        apply_checkpoint(state, self.module, self.optimizer, self.scheduler, self.scaler,
                         rank=self.info.rank, restore_rng=True)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.info.world_size and self.is_main:
            warnings.warn(f"resuming a {saved_world}-process run on {self.info.world_size} processes: the schedule "
                          "and data order continue exactly, random augmentation streams do not", stacklevel=2)
        self.start_iter = int(state["iteration"])
        best = state.get("best_metric")
        self.best_miou = float(best) if best is not None else float("nan")
        self.log_acc = list(state.get("log_acc", [0.0, 0]))
        self.last_ckpt = path
        if self.is_main:
            print(f"resumed from {path} at iteration {self.start_iter}", file=sys.stderr)

    # ---------------------------------------------------------------------------------------- logging
    def _log(self, record: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {k: _json_safe(v) for k, v in record.items()}
        self.history.append(record)
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _rewrite_history(self) -> None:
        write_text_atomic(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.history))

    def _plot(self) -> None:
        if self.is_main:
            try:
                plot_curves(self.history, self.run_dir / PLOT_FILE)
            except Exception as err:  # a plot must never kill a long run
                warnings.warn(f"could not draw {PLOT_FILE}: {err}", stacklevel=2)

    # ---------------------------------------------------------------------------------------- step
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        nb = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb).float()
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=nb).long()

    def _valid_weight(self, y: torch.Tensor) -> torch.Tensor:
        valid = y != IGNORE_INDEX
        if self.class_weights is None:
            return valid.sum().to(torch.float64)
        return self.class_weights[y[valid].clamp(0, self.num_classes - 1)].to(torch.float64).sum()

    def _step(self, batches: List[Tuple[torch.Tensor, torch.Tensor]], stop_flags: Tuple[float, float]
              ) -> Tuple[float, bool, bool]:
        """One optimizer step over ``accum_steps`` micro-batches. Returns (global loss, signal stop, deadline)."""
        cfg, world = self.cfg, self.info.world_size
        denom_local = sum((self._valid_weight(y) for _, y in batches), torch.zeros((), dtype=torch.float64,
                                                                                     device=self.device))
        denom = D.all_reduce_sum(denom_local).clamp_min(1e-12)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for a, (x, y) in enumerate(batches):
            sync = (self.model.no_sync() if isinstance(self.model, nn.parallel.DistributedDataParallel)
                    and a < len(batches) - 1 else contextlib.nullcontext())
            with sync:
                with self._autocast():
                    logits = self.model(x)
                pixel_sum = F.cross_entropy(logits.float(), y, weight=self.class_weights,
                                            ignore_index=IGNORE_INDEX, reduction="sum")
                loss = pixel_sum * (world / denom.to(pixel_sum.dtype))
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += pixel_sum.detach().to(torch.float64)
        vec = torch.stack([loss_sum, torch.tensor(stop_flags[0], dtype=torch.float64, device=self.device),
                           torch.tensor(stop_flags[1], dtype=torch.float64, device=self.device)])
        vec = D.all_reduce_sum(vec)
        loss_value = float(vec[0] / denom)
        if not math.isfinite(loss_value):
            return loss_value, bool(vec[1] > 0), bool(vec[2] > 0)
        if cfg.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with warnings.catch_warnings():  # fp16: a skipped first step makes torch warn about the order
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        return loss_value, bool(vec[1] > 0), bool(vec[2] > 0)

    # ---------------------------------------------------------------------------------------- eval / save
    @torch.no_grad()
    def _evaluate(self, iteration: int) -> Optional[Dict[str, Any]]:
        if self.val_ds is None:
            return None
        model = self.module
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        rng_state = capture_rng_state()  # evaluation must not shift the training's random streams
        try:
            if self.val_tensors:
                res = self._evaluate_tensors(model)
            else:
                res = evaluate(model, self.val_ds, device=self.device, progress=False,
                               distributed=self.info.distributed, dtype=self.amp_dtype)
        finally:
            model.train(was_training)
            restore_rng_state(rng_state)
        self.last_miou = float(res["mIoU"])
        self._log({"type": "eval", "iter": iteration, "mIoU": res["mIoU"], "aAcc": res["aAcc"],
                   "mAcc": res["mAcc"], "seconds": round(time.perf_counter() - start, 3)})
        if self.is_main and self.cfg.progress:
            print(f"iter {iteration}: mIoU {res['mIoU']:.2f}  aAcc {res['aAcc']:.2f}  mAcc {res['mAcc']:.2f}",
                  file=sys.stderr)
        improved = math.isfinite(self.last_miou) and not (self.best_miou >= self.last_miou)
        if improved:
            self.best_miou = self.last_miou
            if self.is_main:
                self.module.save_pretrained(self.run_dir / "best")
                self.best_dir = self.run_dir / "best"
        return res

    def _evaluate_tensors(self, model: nn.Module) -> Dict[str, Any]:
        """Fast whole-image evaluation of a dataset of ready (image tensor, mask tensor) pairs."""
        metric = IoUMetric(self.num_classes, ignore_index=IGNORE_INDEX)
        indices = list(range(len(self.val_ds)))[self.info.rank::self.info.world_size]
        bs = self.cfg.eval_batch_size or max(1, self.micro)
        for i in range(0, len(indices), bs):
            items = [self.val_ds[j] for j in indices[i:i + bs]]
            x = torch.stack([it[0] for it in items]).to(self.device).float()
            y = torch.stack([torch.as_tensor(it[1]) for it in items]).to(self.device)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = model(x)
            metric.update(logits.argmax(1), y)
        metric.sync()
        return metric.compute()

    def _save(self, iteration: int) -> None:
        rngs = D.all_gather_object(capture_rng_state())
        if self.is_main:
            path = self.run_dir / "checkpoints" / checkpoint_name(iteration)
            save_checkpoint(path, model=self.module, optimizer=self.optimizer, scheduler=self.scheduler,
                            scaler=self.scaler, iteration=iteration,
                            best_metric=self.best_miou if math.isfinite(self.best_miou) else None,
                            config=config_dict(self.cfg), rng_states=rngs, world_size=self.info.world_size,
                            log_acc=list(self.log_acc))
            self.last_ckpt = path
            keep = max(1, int(self.cfg.keep_checkpoints))
            for old in list_checkpoints(self.run_dir)[:-keep]:
                old.unlink(missing_ok=True)
        D.barrier()

    # ---------------------------------------------------------------------------------------- loop
    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        stopper = _SignalStop()
        if cfg.handle_signals:  # before setup: a stop during the data check or model build is a stop too
            stopper.install()
        try:
            self._setup()
            return self._loop(stopper, t0)
        finally:
            stopper.restore()
            if self._lock is not None:
                self._lock.release()

    def _loop(self, stopper: _SignalStop, t0: float) -> Dict[str, Any]:
        cfg = self.cfg
        end = cfg.iters if cfg.stop_at is None else min(cfg.iters, cfg.stop_at)
        deadline = t0 + cfg.time_budget_s if cfg.time_budget_s is not None else None
        it = self.start_iter
        last_eval = last_save = it if self.start_iter else -1
        stop_reason = "completed" if it >= cfg.iters else None
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=it, desc="train", unit="it", dynamic_ncols=True)
        with _blocked_stop_signals():  # workers start here; see _train_worker_init
            data: Iterator = iter(self.loader)
        log_t, log_imgs = time.perf_counter(), 0
        try:
            while it < end:
                try:
                    batches = [self._to_device(*next(data)) for _ in range(cfg.accum_steps)]
                except UserError as err:
                    raise _worker_error(err) from None
                except RuntimeError as err:
                    if stopper.signum and "DataLoader worker" in str(err):
                        # a worker killed by the same signal (e.g. one started outside this engine's
                        # worker_init_fn): that is the stop, not a crash; the last step is complete
                        stop_reason = signal.Signals(stopper.signum).name
                        break
                    raise
                lr = float(self.optimizer.param_groups[0]["lr"])
                flags = (float(stopper.signum > 0), float(deadline is not None and time.perf_counter() >= deadline))
                loss, sig_stop, time_stop = self._step(batches, flags)
                if not math.isfinite(loss):
                    self._log({"type": "error", "iter": it + 1, "loss": None, "event": "non-finite loss"})
                    self._plot()
                    kept = self.last_ckpt or find_last(self.run_dir)
                    where = (f"the last good checkpoint is {kept} (resume with --resume auto, e.g. with a lower "
                             f"--lr or --amp none)" if kept else "no checkpoint had been written yet")
                    raise NonFiniteLossError(f"loss became {loss} at iteration {it + 1}; stopped without applying "
                                             f"or saving that update; {where}")
                it += 1
                log_imgs += cfg.batch_size
                self.log_acc[0] += loss
                self.log_acc[1] += 1
                if bar is not None:
                    bar.update(1)
                    elapsed = max(time.perf_counter() - log_t, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{log_imgs / elapsed:.1f}")
                if it % cfg.log_interval == 0 or it == end:
                    now = time.perf_counter()
                    self._log({"type": "train", "iter": it, "loss": self.log_acc[0] / self.log_acc[1], "lr": lr,
                               "img_s": round(log_imgs / max(now - log_t, 1e-9), 3),
                               "time": round(now - t0, 3)})
                    self.log_acc = [0.0, 0]
                    log_t, log_imgs = now, 0
                if sig_stop:
                    stop_reason = signal.Signals(stopper.signum).name if stopper.signum else "signal"
                    break
                if time_stop:
                    stop_reason = "time_budget"
                    break
                if it % cfg.ckpt_interval == 0 and it < end:  # saved first: an evaluation error costs nothing
                    self._save(it)
                    last_save = it
                if it % cfg.eval_interval == 0 and it < end:
                    self._evaluate(it)
                    last_eval = it
                    self._plot()
        finally:
            _shutdown_workers(data)
            if bar is not None:
                bar.close()
        if stop_reason is None:
            stop_reason = "completed" if it >= cfg.iters else "stop_at"
        interrupted = stop_reason not in ("completed", "stop_at", "time_budget")
        if last_save != it or self.last_ckpt is None:  # save, then evaluate: training is never at stake
            self._save(it)
        if self.is_main:
            self.module.save_pretrained(self.run_dir / "last")
        if not interrupted and last_eval != it:
            self._evaluate(it)
        if self.is_main and self.val_ds is None:
            self.best_dir = None
        self._plot()
        D.barrier()
        signum = stopper.signum if interrupted else 0
        if self.is_main:
            msg = {"completed": "finished", "stop_at": f"stopped at iteration {it} (stop_at)",
                   "time_budget": "time budget reached"}.get(stop_reason, f"interrupted by {stop_reason}")
            print(f"{msg}: {it}/{cfg.iters} iterations; checkpoint {self.last_ckpt}; model exported to "
                  f"{self.run_dir / 'last'}", file=sys.stderr)
        return {
            "run_dir": str(self.run_dir), "iters": it, "seconds": time.perf_counter() - t0,
            "best_miou": self.best_miou, "last_miou": self.last_miou,
            "best_dir": str(self.best_dir) if self.best_dir is not None else None,
            "last_dir": str(self.run_dir / "last"), "history": list(self.history),
            "interrupted": interrupted, "stop_reason": stop_reason, "signal": signum,
            "checkpoint": str(self.last_ckpt) if self.last_ckpt is not None else None,
            "world_size": self.info.world_size,
        }
