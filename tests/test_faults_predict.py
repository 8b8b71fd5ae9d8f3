"""Predict under memory pressure and with failing batch members (issue 10, item 7).

The tiled post-processing must give exactly the labels of the one-shot computation (one full-size
upsample, softmax, argmax), and one image that fails must not fail the rest of its batch.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segret_zoo.inference.postprocess import labels_from_views, row_tiles
from segret_zoo.inference.predictor import Segmenter
from tests.test_inference_predictor import random_image, tiny_segret

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def one_shot(views, size):
    """Today's computation: every view upsampled to full size at once, softmax-averaged, argmax."""
    acc = None
    for lg, flipped in views:
        up = F.interpolate(lg, size=size, mode="bilinear", align_corners=False)
        if flipped:
            up = up.flip(-1)
        score = up if len(views) == 1 else up.softmax(dim=1)
        acc = score if acc is None else acc + score
    return acc[0].argmax(dim=0).to(torch.uint8), (acc[0].softmax(0) if len(views) == 1 else acc[0] / len(views))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size", [(157, 203), (40, 41), (64, 96)])
def test_row_tiles_give_the_one_shot_labels_exactly(layout, size):
    gen = torch.Generator().manual_seed(size[0])
    views = [(torch.randn(1, 150, 64, 96, generator=gen).contiguous(memory_format=layout) * 4, False)]
    ref_labels, ref_probs = one_shot(views, size)
    for tile_bytes in (1, 150 * size[1] * 4 * 7, 1 << 30):  # one row, 7 rows, everything at once
        labels, probs = labels_from_views(views, size, torch.uint8, return_probs=True, tile_bytes=tile_bytes)
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(probs, ref_probs, atol=2e-5, rtol=0)  # two-pass rounding
    assert len(row_tiles(size[0], size[1], 150, 1)) == size[0]


def test_tta_tiles_are_bit_identical_and_match_one_shot():
    gen = torch.Generator().manual_seed(3)
    size = (121, 170)
    base = torch.randn(1, 150, 48, 68, generator=gen) * 4
    views = [(base, False), (base.flip(-1), True), (torch.randn(1, 150, 72, 102, generator=gen) * 4, False)]
    ref_labels, ref_probs = one_shot(views, size)
    small = labels_from_views(views, size, torch.uint8, return_probs=True, tile_bytes=1)
    whole = labels_from_views(views, size, torch.uint8, return_probs=True, tile_bytes=1 << 30)
    assert torch.equal(small[0], whole[0])  # tiling changes no label
    torch.testing.assert_close(small[1], whole[1], atol=1e-6, rtol=0)  # softmax kernels round per shape
    assert torch.equal(small[0], ref_labels)
    torch.testing.assert_close(small[1], ref_probs, atol=2e-5, rtol=0)


@pytest.mark.parametrize("tta", [False, True])
def test_segmenter_labels_do_not_depend_on_tile_size(tta):
    model = tiny_segret(num_classes=150, seed=4)
    rgb = random_image(250, 333, seed=4)
    kwargs = dict(tta=tta, scales=(0.75, 1.0) if tta else None)
    tiny_tiles = Segmenter(model, tile_bytes=1, **kwargs)(rgb, return_probs=True)
    one_tile = Segmenter(model, tile_bytes=1 << 32, **kwargs)(rgb, return_probs=True)
    np.testing.assert_array_equal(tiny_tiles[0], one_tile[0])
    np.testing.assert_allclose(tiny_tiles[1], one_tile[1], atol=1e-6, rtol=0)


_OOM_SCRIPT = textwrap.dedent("""
    import resource, sys, warnings
    import numpy as np, torch
    sys.path.insert(0, {root!r})
    from segret_zoo.inference.predictor import Segmenter
    from tests.test_inference_predictor import random_image, tiny_segret
    torch.set_num_threads(1)
    model = tiny_segret(num_classes=150)
    seg = Segmenter(model, mode="whole", test_scale=False, batch_size=3)
    small = [random_image(48, 64, seed=s) for s in range(2)]
    expected = [seg.predict_arrays([a])[0] for a in small]
    huge = np.zeros((12000, 12000, 3), np.uint8)  # 1.6 GiB of float32 input alone: cannot fit below
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    limit = vm + (1 << 30)  # 1 GiB more address space than this process already has
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = seg.predict_each([small[0], huge, small[1]])
    assert isinstance(out[1], Exception), out[1]
    assert all(np.array_equal(a, b) for a, b in zip((out[0], out[2]), expected))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = seg.predict([small[0], huge, small[1]], on_error="warn")
    assert again[1] is None and np.array_equal(again[0], expected[0]) and np.array_equal(again[2], expected[1])
    assert len(caught) == 1 and "image 1" in str(caught[0].message)
    print("OK", type(out[1]).__name__)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_one_image_out_of_memory_does_not_fail_its_batch(tmp_path):
    """A real allocation failure (address-space limit) on one image of a batch of three."""
    script = tmp_path / "oom.py"
    script.write_text(_OOM_SCRIPT.format(root=str(ROOT)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout
