"""2-process DDP (gloo, CPU, launched by torchrun) gives the losses of 1 process on the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segret_zoo import IoUMetric, SegRet
from segret_zoo.train.distributed import InfiniteShardedSampler

WORKER = '''
import sys
import torch
torch.set_num_threads(1)
from segret_zoo.train.engine import TrainConfig, train

class TensorSet:
    num_classes = 3
    classes = ("a", "b", "c")

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 3, (n, 32, 32), generator=g)
        self.y[: n // 2, :5] = 255  # unequal valid-pixel counts across images and ranks

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

def make_cfg(out):
    backbone = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    return TrainConfig(model="segret_tiny", model_kwargs=dict(backbone=backbone, decoder_channels=32,
                       decoder_dropout=0.0), train_dataset=TensorSet(6, 0), val_dataset=TensorSet(4, 1),
                       iters=3, batch_size=4, warmup_iters=1, lr=1e-3, eval_interval=100, ckpt_interval=100,
                       log_interval=1, out_dir=out, progress=False)

if __name__ == "__main__":
    train(make_cfg(sys.argv[1]))
'''


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sampler_global_batches_do_not_depend_on_world_size_or_resume():
    def global_batches(world: int, accum: int, start: int, iters: int) -> list:
        streams = [iter(InfiniteShardedSampler(5, 4, world, r, accum, seed=3, start_iter=start)) for r in range(world)]
        out = []
        for _ in range(iters):
            step = []
            for _a in range(accum):
                for s in streams:
                    step += [next(s) for _ in range(4 // (world * accum))]
            out.append(sorted(step, key=lambda t: t[1]))
        return out

    ref = global_batches(1, 1, 0, 6)
    assert global_batches(2, 1, 0, 6) == ref
    assert global_batches(2, 2, 0, 6) == ref
    assert global_batches(1, 1, 2, 4) == ref[2:]
    # each epoch (5 positions) is a permutation of the dataset
    flat = [i for step in ref for i, _ in step]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    with pytest.raises(ValueError, match="divisible"):
        InfiniteShardedSampler(5, 4, 3, 0)


def test_two_process_gloo_matches_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                env.get("PYTHONPATH", "")]))
    ddp_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(ddp_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    namespace: dict = {"__name__": "worker"}
    exec(compile(WORKER, str(script), "exec"), namespace)
    single = namespace["train"](namespace["make_cfg"](str(tmp_path / "single")))
    assert single["world_size"] == 1

    ddp = _records(ddp_dir)
    one = [r for r in single["history"]]
    a = [r["loss"] for r in one if r["type"] == "train"]
    b = [r["loss"] for r in ddp if r["type"] == "train"]
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    # evaluation: each rank scores its shard and the confusion matrices are summed, so the 2-process
    # mIoU is exactly the 1-process mIoU of the same weights. (The two runs' final weights differ by
    # rounding noise, see below, which flips a few argmax pixels of this barely trained model: their
    # mIoUs are compared through the same weights, not to each other.)
    ddp_eval = [r["mIoU"] for r in ddp if r["type"] == "eval"]
    assert len(ddp_eval) == 1 and [r["iter"] for r in ddp if r["type"] == "eval"] == [3]
    model = SegRet.from_pretrained(ddp_dir / "last").eval()
    val = namespace["TensorSet"](4, 1)
    metric = IoUMetric(3, ignore_index=255)
    with torch.no_grad():
        metric.update(model(val.x).argmax(1), val.y)
    assert ddp_eval[0] == pytest.approx(metric.compute()["mIoU"], rel=1e-6, abs=1e-6)
    single_eval = [r["mIoU"] for r in one if r["type"] == "eval"]
    assert len(single_eval) == 1 and abs(single_eval[0] - ddp_eval[0]) < 1.0
    # parameters and the decoder BatchNorm running statistics (SyncBN) agree as well. Tolerance: the
    # biases in front of the BatchNorm have a gradient that is mathematically 0, so it is rounding noise,
    # which Adam normalizes into steps of about lr (1e-3) in either direction.
    pa = load_file(str(tmp_path / "single" / "last" / "model.safetensors"))
    pb = load_file(str(ddp_dir / "last" / "model.safetensors"))
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], rtol=1e-3, atol=3e-3, msg=k)
    torch.testing.assert_close(pb["decoder.fuse_norm.running_var"], pa["decoder.fuse_norm.running_var"],
                               rtol=1e-5, atol=1e-6)
