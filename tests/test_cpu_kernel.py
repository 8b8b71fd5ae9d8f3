"""The compiled CPU kernel of full-mode retention (segret_zoo/models/cpu_kernel.py): same values as the
plain formulation, used for CPU inference in float32, bfloat16 and float16 (autocast or a cast model),
and a clean fall back to SDPA where it cannot be built."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segret_zoo.models import cpu_kernel
from segret_zoo.models import retention as R
from segret_zoo.models.segret import SegRet
from tests.test_fast_paths import plain_attention

REPO = Path(__file__).resolve().parents[1]
HAS_COMPILER = sys.platform.startswith("linux") and any(shutil.which(c) for c in ("c++", "g++"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler here: retention stays on SDPA")

FULL_MODE_NET = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                     decomposed=(True, True, False, False))


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.delenv("SEGRET_ZOO_CPU_KERNEL", raising=False)
    op = cpu_kernel.manhattan_kernel()
    assert op is not None, cpu_kernel.kernel_status()
    return op


def tables(height: int, width: int, heads: int, dim: int):
    _, _, bias_w, bias_h = R.retention_positions(height, width, heads, dim, 2.0, 4.0, False, torch.float32, "cpu")
    return bias_h, bias_w


@needs_compiler
@pytest.mark.parametrize("batch,height,width,heads,dim", [
    (2, 7, 9, 4, 16),    # one query tile, one key tile, widths that are no multiple of the vector size
    (1, 12, 40, 3, 32),  # 480 tokens: a partial query tile, key tiles of 12 rows and a partial last one
    (1, 2, 600, 2, 8),   # rows wider than a key tile: one row per key tile
    (3, 1, 5, 1, 2),     # a single row (the decomposed passes' shape)
])
def test_kernel_equals_the_plain_formulation(kernel, batch, height, width, heads, dim):
    bias_h, bias_w = tables(height, width, heads, dim)
    gen = torch.Generator().manual_seed(height * width)
    # strided like the model's: B x L x N x d projections seen as B x N x L x d
    q, k, v = (torch.randn(batch, height * width, heads, dim, generator=gen).transpose(1, 2) for _ in range(3))
    ref = plain_attention(q, k, v, height, width, R.head_decays(heads, 2.0, 4.0, "cpu"), dim ** -0.5)
    out = kernel(q, k, v, bias_h[0], bias_w[0], dim ** -0.5)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)
    # what the model calls, with the kernel on, gives the same as SDPA with the whole mask
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=R.manhattan_bias(bias_h, bias_w),
                                                             scale=dim ** -0.5)
    torch.testing.assert_close(R.manhattan_attention(q, k, v, bias_h, bias_w, dim ** -0.5), dense, atol=2e-6, rtol=0)


@needs_compiler
def test_kernel_rejects_inputs_it_cannot_take(kernel):
    bias_h, bias_w = tables(3, 4, 2, 8)
    q = torch.randn(1, 2, 12, 8)
    with pytest.raises(RuntimeError, match="tables are for 3 x 4 tokens, the inputs have 10"):
        kernel(q[:, :, :10], q[:, :, :10], q[:, :, :10], bias_h[0], bias_w[0], 0.5)
    with pytest.raises(RuntimeError, match="float32"):
        kernel(q.double(), q.double(), q.double(), bias_h[0], bias_w[0], 0.5)


@needs_compiler
def test_model_inference_uses_the_kernel_with_the_values_of_sdpa(kernel, monkeypatch):
    """The model's full-mode stages run the kernel in inference and give SDPA's logits; training
    (autograd) stays on SDPA, whose backward exists."""
    torch.manual_seed(0)
    model = SegRet(backbone=FULL_MODE_NET, num_classes=3, decoder_channels=16).eval()
    x = torch.randn(2, 3, 96, 160)
    calls = []
    monkeypatch.setattr(R, "manhattan_kernel", lambda: (lambda *a: calls.append(1) or kernel(*a)))
    with torch.inference_mode():
        fast = model(x)
    assert len(calls) == 3  # two blocks of stage 3, one of stage 4
    monkeypatch.setenv("SEGRET_ZOO_CPU_KERNEL", "0")
    monkeypatch.setattr(R, "manhattan_kernel", cpu_kernel.manhattan_kernel)
    with torch.inference_mode():
        sdpa = model(x)
    torch.testing.assert_close(fast, sdpa, atol=1e-5, rtol=0)

    monkeypatch.delenv("SEGRET_ZOO_CPU_KERNEL")
    monkeypatch.setattr(R, "manhattan_kernel", lambda: (lambda *a: calls.append(1) or kernel(*a)))
    model.train()(x[:1]).sum().backward()
    assert len(calls) == 3
    assert all(p.grad is not None for p in model.encoder.parameters())


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_is_computed_in_float32_and_returned_in_its_dtype(kernel, dtype):
    bias_h, bias_w = tables(5, 12, 3, 16)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 60, 3, 16, generator=gen).transpose(1, 2).to(dtype) for _ in range(3))
    args = (q, k, v, bias_h[0].to(dtype), bias_w[0].to(dtype))
    out = kernel(*args, 0.25)
    assert out.dtype == dtype and out.shape == q.shape
    # the float32 computation on the rounded inputs, rounded once at the end: bit for bit
    assert torch.equal(out, kernel(*(t.float() for t in args), 0.25).to(dtype))
    # and within the dtype's rounding of the exact float32 answer
    exact = kernel(q.float(), k.float(), v.float(), bias_h[0], bias_w[0], 0.25)
    torch.testing.assert_close(out.float(), exact, atol=2e-2 if dtype == torch.bfloat16 else 2e-3, rtol=0)


@needs_compiler
@pytest.mark.parametrize("how", ["autocast", "bf16 model"])
def test_bfloat16_inference_uses_the_kernel(kernel, monkeypatch, how):
    """bf16 (autocast, or the model cast to bf16) takes the kernel like float32, with the logits of
    SDPA's bf16 path to bf16 rounding."""
    torch.manual_seed(0)
    model = SegRet(backbone=FULL_MODE_NET, num_classes=3, decoder_channels=16).eval()
    x = torch.randn(1, 3, 96, 160)
    if how == "bf16 model":
        model, x = model.bfloat16(), x.bfloat16()

    def run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
            return model(x).float()

    calls = []
    monkeypatch.setattr(R, "manhattan_kernel", lambda: (lambda *a: calls.append(a[0].dtype) or kernel(*a)))
    fast = run()
    assert calls == [torch.bfloat16] * 3  # two blocks of stage 3, one of stage 4, all in bf16
    monkeypatch.setenv("SEGRET_ZOO_CPU_KERNEL", "0")
    monkeypatch.setattr(R, "manhattan_kernel", cpu_kernel.manhattan_kernel)
    sdpa = run()
    assert fast.dtype == sdpa.dtype == torch.float32
    # logits of about 0.25: both bf16 paths agree to bf16 rounding (they differ from float32 by ~1e-3)
    assert fast.abs().max() > 0.1
    torch.testing.assert_close(fast, sdpa, atol=5e-3, rtol=0)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SEGRET_ZOO_CPU_KERNEL", "0")
    assert cpu_kernel.manhattan_kernel() is None
    assert cpu_kernel.kernel_status() == "off (SEGRET_ZOO_CPU_KERNEL=0)"


def test_without_a_compiler_retention_falls_back_to_sdpa_after_one_warning(tmp_path):
    """A real machine without a compiler: PATH without c++/ninja and an empty extensions folder. The
    build fails, one warning says why and what to do, and the model gives the SDPA logits."""
    script = textwrap.dedent("""
        import warnings, torch
        from segret_zoo.models import cpu_kernel
        from segret_zoo.models.segret import SegRet
        torch.manual_seed(0)
        model = SegRet(backbone=%r, num_classes=3, decoder_channels=16).eval()
        x = torch.randn(1, 3, 64, 96)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                a = model(x)
                b = model(x)
        mine = [str(w.message) for w in caught if "segret_zoo" in str(w.message)]
        assert len(mine) == 1, mine
        print(mine[0])
        print(cpu_kernel.kernel_status())
        torch.save(a, %r)
        assert torch.equal(a, b)
    """) % (FULL_MODE_NET, str(tmp_path / "logits.pt"))
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC", "SEGRET_ZOO_CPU_KERNEL")}
    env.update(PATH=str(bare), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning, status = proc.stdout.strip().splitlines()[-2:]
    assert "the compiled CPU retention kernel is unavailable" in warning
    assert "install a C++ compiler and ninja" in warning and "SEGRET_ZOO_CPU_KERNEL=0" in warning
    assert status.startswith("unavailable: building it failed")

    torch.manual_seed(0)
    model = SegRet(backbone=FULL_MODE_NET, num_classes=3, decoder_channels=16).eval()
    with torch.no_grad():
        expected = model(torch.randn(1, 3, 64, 96))
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=0)
