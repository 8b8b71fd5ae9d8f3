"""Hostile and careless input (issue 16): every fault made for real, every refusal one line.

Real files (a damaged ``.pt``, 450 fuzzed ones, a ``classes.txt`` with a BOM), real signals to real
processes (SIGKILL during ``save_pretrained`` and during ``predict``), real second processes on the
same ``--out``, real environment variables read by real child processes. Models are tiny, so the
whole module runs in well under a minute.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segret_zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


def child_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tiny_model(num_classes: int = 3, **kw):
    from segret_zoo.models.segret import SegRet

    torch.manual_seed(0)
    return SegRet(backbone=TINY_BACKBONE, num_classes=num_classes, decoder_channels=16, decoder_dropout=0.0, **kw)


# ------------------------------------------------------------------------------ group 3: data lost
_SAVE_UNDER_KILL = r'''
import json, os, random, signal, sys, time
import torch
torch.set_num_threads(1)
from segret_zoo.models.segret import SegRet

folder, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parent = os.path.dirname(folder)
torch.manual_seed(0)
model = SegRet(backbone=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
               num_classes=3, decoder_channels=16)
SLOW = {"os.rename": 0.004, "os.remove": 0.001, "os.rmdir": 0.001, "os.link": 0.001, "os.mkdir": 0.001,
        "shutil.rmtree": 0.002, "os.chmod": 0.001, "ctypes.dlsym": 0.002}

def mark(i):
    with torch.no_grad():
        model.decoder.classifier.bias.fill_(float(i))
    model.id2label = {0: f"save{i}", 1: "b", 2: "c"}

mark(0)
model.save_pretrained(folder)
rng = random.Random(seed)
results, start = [], 1
for k in range(kills):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: saves forever, a little slower at every file-system step
        os.close(r)
        sys.addaudithook(lambda event, args: time.sleep(SLOW[event]) if event in SLOW else None)
        i = start
        while True:
            mark(i)
            model.save_pretrained(folder)
            os.write(w, b".")
            i += 1
    os.close(w)
    time.sleep(rng.uniform(0.0, 0.12))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done = 0
    while chunk := os.read(r, 4096):
        done += len(chunk)
    os.close(r)
    hidden = sorted(p for p in os.listdir(parent) if p.startswith(".")) + \
        sorted(p for p in os.listdir(folder) if p.startswith("."))
    try:
        loaded = SegRet.from_pretrained(folder)
        label = loaded.id2label[0]
        bias = sorted(set(loaded.decoder.classifier.bias.tolist()))
        results.append(dict(kill=k, label=label, bias=bias, first=start, last=start + done, hidden=hidden))
    except Exception as err:
        results.append(dict(kill=k, error=f"{type(err).__name__}: {err}", hidden=hidden))
    start += done + 1
model.save_pretrained(folder)  # a complete save after the last kill cleans up after it
results.append(dict(final_hidden=sorted(p for p in os.listdir(parent) if p.startswith("."))
                    + sorted(p for p in os.listdir(folder) if p.startswith("."))))
print(json.dumps(results))
'''


def test_save_pretrained_killed_at_random_moments_leaves_a_complete_save(tmp_path):
    """SIGKILL a real process in the middle of ``save_pretrained`` 40 times: the folder always loads
    and is exactly one complete save (weights and config.json of the same save), and a killed save
    leaves at most its own staging folder, which the next save removes."""
    script = tmp_path / "driver.py"
    script.write_text(_SAVE_UNDER_KILL)
    folder = tmp_path / "saves" / "model"
    folder.parent.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(folder), "40", "16"], env=child_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    final = results.pop()
    for r in results:
        assert "error" not in r, r
        number = int(r["label"][len("save"):])
        assert r["bias"] == [float(number)], f"weights of one save beside the config of another: {r}"
        assert number <= r["last"], r
        assert len(r["hidden"]) <= 1, f"temporaries pile up: {r}"
    assert final["final_hidden"] == []
    assert len({r["label"] for r in results}) > 10  # the kills did land on many different saves
