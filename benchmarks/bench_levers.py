"""The CPU levers of SegRet-T's inference, measured one at a time (issue 9, item 4).

    python benchmarks/bench_levers.py                 # all levers, a few minutes on 2 threads
    python benchmarks/bench_levers.py --only attention,faults
    python benchmarks/bench_levers.py --iters 1 --sizes 128x128     # a smoke run: every lever, small

Each lever is timed in one process, its variants interleaved (A, B, A, B, ...), medians reported.
The whole-model levers run ``segret_tiny`` as released (``bench_segret.build_column``: no rotary
theta shift, FFN fc1 -> GELU -> fc2, the ``reparameterize_model`` form) at ``--sizes``; the
attention levers are one layer of stage 3 of rmt_t at 1024x2048, the same in SegRet's encoder and in
the ImageNet RMT (the rotary shift happens before the attention, on the ImageNet RMT only; its
complex-product lever is ``bench_rmt.py``'s ``fast`` vs ``plain`` with ``--encoder imagenet``):

* ``queries``: full-mode retention at stage 3 of rmt_t for a 1024x2048 input (8 heads, 8192 tokens,
  head dim 32), no mask, split into SDPA calls of 128 ... 2048 queries: the CPU flash kernel takes
  small query tiles below about 768 queries per call;
* ``attention``: the same layer with its decay bias: the whole mask (2 GiB), a bias rebuilt for
  every block of rows (the previous path), row-shift tables of 2-8 rows
  (``retention.row_shift_table``), the compiled CPU kernel (decay from the 1-D tables inside its
  tiles, no mask) and no mask at all (the floor);
* ``cpu_kernel``: segret_tiny's whole forward (``--sizes``) with full-mode retention in
  the compiled CPU kernel (``segret_zoo/models/csrc``) against SDPA with a mask or row-shift table;
* ``bf16``: full-mode retention in bfloat16 (autocast or a bf16 model) at stage 3 of rmt_t for
  ``--sizes`` inputs: the compiled kernel (q, k, v widened to float32 once, no mask)
  against SDPA's bf16 flash kernel with the mask or row-shift table (the path bf16 took before),
  and float32 in the kernel for scale; then segret_tiny's whole forward under bf16 autocast with
  each. On CPUs with native bf16 matmul (AMX) SDPA's products run in bf16, so this is the lever to
  run there before changing the default;
* ``inplace``: the same forward with residual sums and GELUs written into their branch's fresh
  output against fresh tensors for each (identical values, checked); in SegRet's encoder that is
  the blocks' three residuals, the FFN's GELU and the stem's GELUs (the FFN conv's residual exists
  in the ImageNet RMT only);
* ``kernel``: the flash SDPA against ``baddbmm + softmax + bmm`` at the shapes of every stage's
  attention at 512x512;
* ``upsample``: the 150-class logits upsampled to 512x512: plain bilinear, ``antialias=True``
  (identical values when upsampling, other kernel), and the cost of writing fresh output pages alone;
* ``faults``: minor page faults and time per forward of segret_tiny and SegFormer-B1 at the first of ``--sizes``
  (fresh ``mmap`` pages are zeroed by the kernel on first touch; compare runs with
  ``THP_MEM_ALLOC_ENABLE=1`` or ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` set);
* ``compile``: segret_tiny at the first of ``--sizes``, eager against ``torch.compile`` (inductor),
  compile time reported separately (opt-in ``--compile`` of predict and eval); the compiled graph
  runs full mode as one SDPA with the whole mask built in the graph (retention.py's table).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from segret_zoo.models import retention as R  # noqa: E402
from segret_zoo.models import rmt as RMT  # noqa: E402
from segret_zoo.models.cpu_kernel import kernel_status, manhattan_kernel  # noqa: E402

LEVERS = ("queries", "attention", "kernel", "cpu_kernel", "bf16", "inplace", "upsample", "faults", "compile")


def interleaved(fns: Dict[str, Callable[[], object]], iters: int) -> Dict[str, float]:
    """Median seconds of each callable, run in rotation after one warm-up each."""
    for fn in fns.values():
        fn()
    samples: Dict[str, list] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def report(title: str, times: Dict[str, float], base: Optional[str] = None, unit: float = 1e3) -> None:
    base = base or next(iter(times))
    print(f"\n### {title}\n\n| variant | ms (median) | / {base} |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t * unit:.1f} | {t / times[base]:.2f} |")


def stage3_inputs(height: int = 64, width: int = 128, heads: int = 8, dim: int = 32):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, height * width, heads, dim, generator=gen).transpose(1, 2) for _ in range(3))
    _, _, bias_w, bias_h = R.retention_positions(height, width, heads, dim, 2.0, 6.0, False, torch.float32,
                                                 torch.device("cpu"))
    return q, k, v, bias_h, bias_w


def lever_queries(iters: int) -> None:
    q, k, v, _, _ = stage3_inputs()
    length = q.shape[2]

    def split(n: int) -> Callable[[], None]:
        def run() -> None:
            for s in range(0, length, n):
                F.scaled_dot_product_attention(q[:, :, s:s + n], k, v, scale=0.17)
        return run

    report("queries per SDPA call (stage 3 at 1024x2048, no mask)",
           interleaved({f"{n} queries": split(n) for n in (128, 256, 512, 768, 1024, 2048)}, iters))


def lever_attention(iters: int) -> None:
    q, k, v, bias_h, bias_w = stage3_inputs()
    heads, length = q.shape[1], q.shape[2]
    height, width = bias_h.shape[-1], bias_w.shape[-1]
    per_row = heads * width * (2 * height - 1) * width * 4
    full = R.manhattan_bias(bias_h, bias_w)

    def rebuilt_per_block() -> torch.Tensor:  # the previous path: one row per call, bias built each time
        out = q.new_empty(1, length, heads, q.shape[-1])
        cols = bias_w[:, :, :, None, :]
        for r0 in range(height):
            block = (bias_h[:, :, r0, None, :, None] + cols).reshape(1, heads, width, length)
            s0, s1 = r0 * width, (r0 + 1) * width
            out[:, s0:s1] = F.scaled_dot_product_attention(q[:, :, s0:s1], k, v, attn_mask=block,
                                                           scale=0.17).transpose(1, 2)
        return out

    tables = {rows: R.row_shift_table(bias_h, bias_w, rows) for rows in (2, 4, 8)}

    def with_table(rows: int) -> Callable[[], torch.Tensor]:  # a stage's later blocks: the table exists
        def run() -> torch.Tensor:
            out = q.new_empty(1, length, heads, q.shape[-1])
            for r0 in range(0, height, rows):
                r1 = min(r0 + rows, height)
                block = R._row_block_bias(tables[rows], r0, r1, height, width)
                out[:, r0 * width:r1 * width] = F.scaled_dot_product_attention(
                    q[:, :, r0 * width:r1 * width], k, v, attn_mask=block, scale=0.17).transpose(1, 2)
            return out
        return run

    def build(rows: int) -> Callable[[], torch.Tensor]:
        return lambda: R.row_shift_table(bias_h, bias_w, rows)

    fns = {"whole 2 GiB mask (built before)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=full,
                                                                                    scale=0.17),
           "bias rebuilt per block of 1 row": rebuilt_per_block}
    fns.update({f"row-shift table, {r} rows ({r * per_row >> 20} MiB, built before)": with_table(r)
                for r in (2, 4, 8)})
    op = manhattan_kernel()
    if op is not None:
        fns["compiled CPU kernel (decay from the 1-D tables, no mask)"] = lambda: op(q, k, v, bias_h[0], bias_w[0], 0.17)
    else:
        print(f"(compiled CPU kernel: {kernel_status()})")
    fns["no mask (floor)"] = lambda: F.scaled_dot_product_attention(q, k, v, scale=0.17)
    fns.update({f"building the {r}-row table (once per stage)": build(r) for r in (2, 4, 8)})
    report("full-mode retention, one layer of stage 3 at 1024x2048 (8 heads, 8192 tokens)",
           interleaved(fns, iters), base="bias rebuilt per block of 1 row")


def _flash_vs_math(batch: int, heads: int, seq: int, dim: int, iters: int) -> Dict[str, float]:
    q, k, v = (torch.randn(batch, heads, seq, dim) for _ in range(3))
    mask = torch.randn(1, heads, seq, seq)
    scale = dim ** -0.5

    def math() -> torch.Tensor:
        s = torch.baddbmm(mask.expand(batch, heads, seq, seq).reshape(batch * heads, seq, seq),
                          q.reshape(-1, seq, dim), k.reshape(-1, seq, dim).transpose(1, 2), alpha=scale)
        return torch.bmm(torch.softmax(s, -1), v.reshape(-1, seq, dim))

    return interleaved({"flash": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
                        "math": math}, iters)


def lever_kernel(iters: int) -> None:
    times: Dict[str, float] = {}
    for shape in ((128, 4, 128, 16), (64, 4, 64, 32), (32, 8, 32, 32), (1, 8, 1024, 32)):
        res = _flash_vs_math(*shape, iters)
        tag = "x".join(map(str, shape))
        times[f"flash {tag}"], times[f"math {tag}"] = res["flash"], res["math"]
    report("SDPA flash kernel vs baddbmm + softmax + bmm (512x512 shapes: stage 1 rows, stage 2 rows, stage-3 size rows as in rmt_s/b/l, full stage 3 of rmt_t)",
           times)


def lever_upsample(iters: int) -> None:
    x = torch.randn(1, 150, 128, 128)
    plain = F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False)
    aa = F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False, antialias=True)
    print(f"\nantialias=True vs plain, max abs difference: {(aa - plain).abs().max().item():.1e}")
    del plain, aa
    report("150-class logits 128x128 -> 512x512", interleaved({
        "bilinear": lambda: F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False),
        "bilinear antialias=True": lambda: F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False,
                                                         antialias=True),
        "fresh 150x512x512 output filled (page faults + writes only)": lambda: torch.empty(1, 150, 512, 512).fill_(1),
    }, iters))


SIZES: Sequence[tuple] = ((512, 512), (1024, 2048))  # of the whole-model levers; --sizes


def _whole_model_sizes() -> Sequence[tuple]:
    return SIZES


def lever_cpu_kernel(iters: int) -> None:
    """segret_tiny's whole forward with full-mode retention in the compiled kernel vs on SDPA (mask or
    row-shift table), switched per call through SEGRET_ZOO_CPU_KERNEL in one process."""
    import os

    from bench_segret import build_column

    if manhattan_kernel() is None:
        print(f"\n(cpu_kernel lever skipped: the kernel is {kernel_status()})")
        return
    model = build_column("segret_tiny", None, 150)
    previous = os.environ.get("SEGRET_ZOO_CPU_KERNEL")

    def run(x: torch.Tensor, on: bool) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            os.environ["SEGRET_ZOO_CPU_KERNEL"] = "1" if on else "0"
            return model(x)
        return call

    try:
        for size in _whole_model_sizes():
            x = torch.randn(1, 3, *size)
            n = iters if size[0] * size[1] <= 512 * 1024 else max(2, iters // 2)
            report(f"segret_tiny at {size[0]}x{size[1]}, full-mode retention", interleaved({
                "SDPA with a mask / row-shift table": run(x, False), "compiled CPU kernel": run(x, True)}, n))
    finally:
        if previous is None:
            os.environ.pop("SEGRET_ZOO_CPU_KERNEL", None)
        else:
            os.environ["SEGRET_ZOO_CPU_KERNEL"] = previous


def lever_bf16(iters: int) -> None:
    """bf16 full-mode retention: the compiled kernel (widened to float32, no mask) vs SDPA's bf16 kernel
    with the mask / row-shift table; then the whole segret_tiny forward under bf16 autocast."""
    import os

    from bench_segret import build_column

    op = manhattan_kernel()
    if op is None:
        print(f"\n(bf16 lever skipped: the kernel is {kernel_status()})")
        return
    bf16 = torch.bfloat16
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    print(f"\nnative bf16 matmul on this CPU (oneDNN): {native}")
    def variants(height: int, width: int) -> Dict[str, Callable[[], object]]:
        q, k, v, bias_h, bias_w = stage3_inputs(height, width)
        qb, kb, vb, bhb, bwb = (t.to(bf16) for t in (q, k, v, bias_h, bias_w))
        return {"SDPA bf16 with mask / row-shift table": lambda: R.blocked_manhattan_attention(qb, kb, vb, bhb, bwb, 0.17),
                "kernel, bf16 widened to float32": lambda: op(qb, kb, vb, bhb[0], bwb[0], 0.17),
                "kernel, float32": lambda: op(q, k, v, bias_h[0], bias_w[0], 0.17)}

    for size in _whole_model_sizes():  # stage 3 (stride 16) of each input size
        height, width = -(-size[0] // 16), -(-size[1] // 16)
        n = iters if height * width <= 1024 else max(2, iters // 2)
        report(f"stage-3 attention at {size[0]}x{size[1]}, bf16", interleaved(variants(height, width), n))
    model = build_column("segret_tiny", None, 150)
    previous = os.environ.get("SEGRET_ZOO_CPU_KERNEL")

    def run(x: torch.Tensor, on: bool) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            os.environ["SEGRET_ZOO_CPU_KERNEL"] = "1" if on else "0"
            with torch.autocast("cpu", dtype=bf16):
                return model(x)
        return call

    try:
        for size in _whole_model_sizes():
            x = torch.randn(1, 3, *size)
            n = iters if size[0] * size[1] <= 512 * 1024 else max(2, iters // 2)
            report(f"segret_tiny at {size[0]}x{size[1]}, bf16 autocast, full-mode retention", interleaved({
                "SDPA bf16 with a mask / row-shift table": run(x, False), "compiled CPU kernel": run(x, True)}, n))
    finally:
        if previous is None:
            os.environ.pop("SEGRET_ZOO_CPU_KERNEL", None)
        else:
            os.environ["SEGRET_ZOO_CPU_KERNEL"] = previous


def _out_of_place_block(self, x, sin, cos, bias_a, bias_b):  # RetBlock.forward with fresh sums
    x = x + self.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), sin, cos, bias_a, bias_b)))
    return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def _out_of_place_ffn(self, x):  # ConvFFN.forward with F.gelu (and a fresh sum where the FFN has its conv)
    x = F.gelu(self.fc1(x))
    if self.dwconv is None:  # SegRet's encoder: fc1 -> GELU -> fc2
        return self.fc2(x)
    return self.fc2(x + self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def _out_of_place_stem(self, x):  # Stem.forward with F.gelu
    x = x.contiguous(memory_format=torch.channels_last)
    x = F.gelu(self.bn1(self.conv1(x)))
    x = F.gelu(self.bn2(self.conv2(x)))
    x = F.gelu(self.bn3(self.conv3(x)))
    return self.bn4(self.conv4(x))


def lever_inplace(iters: int) -> None:
    """Residual sums and GELUs written into their branch's fresh output (inference) vs fresh tensors
    (the forms before), whole segret_tiny forward, the block methods swapped per call in one process."""
    from bench_segret import build_column

    model = build_column("segret_tiny", None, 150)
    inplace = (RMT.RetBlock.forward, RMT.ConvFFN.forward, RMT.Stem.forward)
    fresh = (_out_of_place_block, _out_of_place_ffn, _out_of_place_stem)

    def run(x: torch.Tensor, methods) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            RMT.RetBlock.forward, RMT.ConvFFN.forward, RMT.Stem.forward = methods
            return model(x)
        return call

    try:
        for size in _whole_model_sizes():
            x = torch.randn(1, 3, *size)
            torch.testing.assert_close(run(x, fresh)(), run(x, inplace)(), atol=0, rtol=0)
            n = iters if size[0] * size[1] <= 512 * 1024 else max(2, iters // 2)
            report(f"segret_tiny at {size[0]}x{size[1]}, residuals and GELU", interleaved({
                "fresh tensors": run(x, fresh), "in place": run(x, inplace)}, n))
    finally:
        RMT.RetBlock.forward, RMT.ConvFFN.forward, RMT.Stem.forward = inplace


def lever_faults(iters: int) -> None:
    from bench_segret import build_column

    size = SIZES[0]
    x = torch.randn(1, 3, *size)
    print(f"\n### page faults per forward at {size[0]}x{size[1]}\n\n| model | minor faults | MiB faulted in | ms (mean) |\n|---|---|---|---|")
    for name in ("segret_tiny", "segformer_b1"):
        model = build_column(name, None, 150)
        with torch.inference_mode():
            model(x)
            model(x)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for _ in range(iters):
                model(x)
            seconds = (time.perf_counter() - t0) / iters
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / iters
        print(f"| {name} | {faults:.0f} | {faults * 4096 / 2 ** 20:.0f} | {seconds * 1e3:.0f} |")


def lever_compile(iters: int) -> None:
    from bench_segret import build_column

    size = SIZES[0]
    x = torch.randn(1, 3, *size)
    eager = build_column("segret_tiny", None, 150)
    compiled = torch.compile(eager)
    with torch.inference_mode():
        t0 = time.perf_counter()
        compiled(x)
        first = time.perf_counter() - t0
        torch.testing.assert_close(compiled(x), eager(x), atol=1e-3, rtol=1e-3)
        times = interleaved({"eager": lambda: eager(x), "torch.compile (inductor)": lambda: compiled(x)}, iters)
    print(f"\ntorch.compile: first call (compilation) {first:.1f} s")
    report(f"segret_tiny at {size[0]}x{size[1]}, eager vs compiled", times)


def main(argv: Optional[Sequence[str]] = None) -> int:
    global SIZES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--only", default=",".join(LEVERS), help=f"comma-separated subset of {list(LEVERS)}")
    parser.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in SIZES),
                        help="comma-separated H x W of the whole-model levers (cpu_kernel, inplace; the first: "
                             "faults, compile)")
    args = parser.parse_args(argv)
    SIZES = tuple(tuple(int(v) for v in size.lower().split("x")) for size in args.sizes.split(",") if size.strip())
    torch.set_num_threads(args.threads)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(LEVERS))
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; choose from {list(LEVERS)}")
    print(f"## CPU levers ({args.threads} threads, fp32, torch {torch.__version__})")
    with torch.inference_mode():
        for name in chosen:
            if name == "compile":
                continue
            globals()[f"lever_{name}"](args.iters)
    if "compile" in chosen:
        lever_compile(args.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
