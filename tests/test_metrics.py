"""IoUMetric against an independent implementation of mmsegmentation's IoU protocol."""
from __future__ import annotations

import math
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from segret_zoo.metrics import IoUMetric, intersect_and_union


def reference_mmseg(preds, labels, num_classes: int, ignore_index: int = 255) -> dict:
    """mmseg's IoUMetric written independently: a dataset-wide confusion matrix over non-ignored pixels
    (preds and labels are within 0..K-1 or ignore here), then IoU = diag / (row + col - diag),
    Acc = diag / row, nan where 0/0, means = nanmean, aAcc = trace / total labelled pixels."""
    conf = np.zeros((num_classes, num_classes), dtype=np.float64)
    for p, t in zip(preds, labels):
        p = np.asarray(p).reshape(-1).astype(np.int64)
        t = np.asarray(t).reshape(-1).astype(np.int64)
        keep = t != ignore_index
        conf += np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(num_classes, -1)
    diag = np.diag(conf)
    rows, cols = conf.sum(1), conf.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = diag / (rows + cols - diag)
        acc = diag / rows
    return {
        "aAcc": 100 * diag.sum() / conf.sum(),
        "mIoU": 100 * np.nanmean(iou),
        "mAcc": 100 * np.nanmean(acc),
        "IoU": 100 * iou,
        "Acc": 100 * acc,
    }


def _assert_close(ours: dict, ref: dict) -> None:
    for key in ("aAcc", "mIoU", "mAcc"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-10), key
    for key in ("IoU", "Acc"):
        got, want = np.array(ours[key], dtype=np.float64), ref[key]
        assert np.array_equal(np.isnan(got), np.isnan(want)), key
        assert np.allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12, atol=1e-10), key


def test_matches_reference_on_random_batches() -> None:
    rng = np.random.default_rng(0)
    K = 12
    metric = IoUMetric(K)
    preds, labels = [], []
    # labels use classes 0..8 (9..11 never in ground truth), predictions 0..10 (11 never predicted):
    # class 11 -> IoU nan (absent from both), classes 9, 10 -> IoU 0 and Acc nan
    for shape in [(2, 17, 23), (31, 9), (1, 1, 8, 40), (5, 6, 7)]:
        t = rng.integers(0, 9, shape)
        t[rng.random(shape) < 0.2] = 255
        p = np.where(rng.random(shape) < 0.6, np.where(t == 255, 0, t), rng.integers(0, 11, shape))
        preds.append(p)
        labels.append(t)
        if len(preds) % 2:  # mix numpy and torch inputs, and dtypes
            metric.update(torch.from_numpy(p), torch.from_numpy(t.astype(np.uint8)))
        else:
            metric.update(p.astype(np.int32), t)
    res = metric.compute()
    ref = reference_mmseg(preds, labels, K)
    _assert_close(res, ref)
    assert math.isnan(res["IoU"][11]) and res["IoU"][9] == 0.0 and math.isnan(res["Acc"][9])
    assert not math.isnan(res["mIoU"]) and set(res) == {"aAcc", "mIoU", "mAcc", "IoU", "Acc"}
    # per-image averaging would differ: the areas must be summed over the dataset
    per_image = np.mean([reference_mmseg([p], [t], K)["mIoU"] for p, t in zip(preds, labels)])
    assert abs(per_image - res["mIoU"]) > 1e-3


def test_hand_computed_example() -> None:
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 2, 3]])
    m = IoUMetric(4)
    m.update(pred, target)
    assert m.area_intersect.tolist() == [1, 2, 1, 0]
    assert m.area_pred.tolist() == [2, 3, 1, 0]  # the preds 2, 3 under ignore are not counted
    assert m.area_label.tolist() == [2, 2, 2, 0]
    assert m.area_union.tolist() == [3, 3, 2, 0]
    res = m.compute()
    assert res["IoU"][:3] == pytest.approx([100 / 3, 200 / 3, 50.0]) and math.isnan(res["IoU"][3])
    assert res["Acc"][:3] == pytest.approx([50.0, 100.0, 50.0]) and math.isnan(res["Acc"][3])
    assert res["aAcc"] == pytest.approx(100 * 4 / 6)
    assert res["mIoU"] == pytest.approx(50.0) and res["mAcc"] == pytest.approx(200 / 3)
    assert m.compute(digits=2)["mAcc"] == 66.67


def test_out_of_range_values_follow_histc() -> None:
    """mmseg counts with torch.histc over [0, K-1]: out-of-range preds/labels fall outside every bin."""
    m = IoUMetric(3)
    m.update(np.array([5, 0, 1, -1]), np.array([0, 7, 1, 2]))
    assert m.area_pred.tolist() == [1, 1, 0]  # pred 5 and -1 not counted; pred 0 at label 7 counted
    assert m.area_label.tolist() == [1, 1, 1]  # label 7 not counted
    assert m.area_intersect.tolist() == [0, 1, 0]


def test_reset_custom_ignore_and_errors() -> None:
    m = IoUMetric(3, ignore_index=0)
    m.update(torch.tensor([1, 2, 2]), torch.tensor([0, 2, 1]))
    assert m.area_label.tolist() == [0, 1, 1]
    m.reset()
    assert int(m.state.sum()) == 0
    r = m.compute()
    assert math.isnan(r["aAcc"]) and math.isnan(r["mIoU"]) and all(math.isnan(v) for v in r["IoU"])
    with pytest.raises(ValueError, match="same shape"):
        m.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(TypeError, match="argmax"):
        m.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        IoUMetric(0)
    assert intersect_and_union(np.array([1]), np.array([1]), 2).dtype == torch.int64


def test_sync_without_process_group_is_noop() -> None:
    m = IoUMetric(2)
    m.update(np.array([0, 1]), np.array([0, 0]))
    before = m.state.clone()
    m.sync()
    assert torch.equal(m.state, before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each rank loads metrics.py by path (it imports only numpy and torch), so the two processes start
# without importing the whole package (timm, models): this test stays a few seconds.
_WORKER = """
import importlib.util, sys
import numpy as np, torch, torch.distributed as dist
spec = importlib.util.spec_from_file_location("segret_metrics", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
rank, port, out = int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + port, rank=rank, world_size=2)
m = mod.IoUMetric(4)
rng = np.random.default_rng(rank)
m.update(rng.integers(0, 4, (16, 16)), rng.integers(0, 4, (16, 16)))
m.sync()
torch.save(m.state, out + "/rank%d.pt" % rank)
dist.destroy_process_group()
"""


def test_sync_sums_over_two_gloo_processes(tmp_path) -> None:
    import segret_zoo.metrics

    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, segret_zoo.metrics.__file__, str(rank), port,
                               str(tmp_path)]) for rank in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    expected = IoUMetric(4)
    for rank in range(2):
        rng = np.random.default_rng(rank)
        expected.update(rng.integers(0, 4, (16, 16)), rng.integers(0, 4, (16, 16)))
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), expected.state)
