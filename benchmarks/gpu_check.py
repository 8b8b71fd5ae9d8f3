"""One script for every GPU code path of the zoo (about 5-8 min on one GPU):

    python benchmarks/gpu_check.py                 # CUDA
    python benchmarks/gpu_check.py --device cpu    # the same checks, small, as far as CPU allows

1. parity of full-mode retention: flex_attention (decay as score_mod) vs SDPA with the full mask vs
   the plain softmax(q k^T + bias) v; and (CUDA) the whole SegRet-T's eager forward (flex compiled
   once) vs ``torch.compile`` of it (flex traced by dynamo), the two CUDA rows of retention.py's table;
2. a few training steps in bf16 autocast and in fp16 with GradScaler: the loss must decrease;
3. single-process DDP (NCCL on CUDA, gloo on CPU): a few steps, loss decreasing;
4. ``Segmenter`` predict under autocast vs fp32 (label agreement);
5. throughput vs SegFormer-B1 at 512x512 and 1024x2048, batch 8 (bf16 autocast; eager and
   ``torch.compile``).

The models are SegRet as released (encoder without rotary theta shift and FFN conv), random weights.

Prints one JSON line per check and a summary table; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segret_zoo.models import retention as R  # noqa: E402
from segret_zoo.models.segret import SegRet  # noqa: E402

RESULTS: List[Dict[str, Any]] = []


def report(name: str, ok: bool, **info: Any) -> None:
    RESULTS.append({"check": name, "ok": bool(ok), **info})
    print(json.dumps(RESULTS[-1]), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_parity(device: torch.device, small: bool) -> None:
    height, width, heads, dim = (8, 12, 4, 32) if small else (32, 64, 16, 32)
    _, _, bias_w, bias_h = R.retention_positions(height, width, heads, dim, 2.0, 6.0, False, torch.float32, device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, heads, height * width, dim, generator=gen).to(device) for _ in range(3))
    idx = torch.arange(height * width, device=device)
    dist = ((idx[:, None] // width - idx[None] // width).abs() + (idx[:, None] % width - idx[None] % width).abs())
    decay = R.head_decays(heads, 2.0, 6.0, device)
    plain = torch.softmax(q.double() @ k.double().transpose(-1, -2) * dim ** -0.5
                          + decay.double()[:, None, None] * dist.double(), -1) @ v.double()
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=R.manhattan_bias(bias_h, bias_w), scale=dim ** -0.5)
    blocked = R.blocked_manhattan_attention(q, k, v, bias_h, bias_w, dim ** -0.5, table_bytes=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex_eager = R.flex_manhattan_attention(q, k, v, bias_h, bias_w, dim ** -0.5, compiled=False)
        flex = R.flex_manhattan_attention(q, k, v, bias_h, bias_w, dim ** -0.5, compiled=device.type == "cuda")
    errs = {n: (t.double() - plain).abs().max().item() for n, t in
            (("sdpa", sdpa), ("blocked", blocked), ("flex_eager", flex_eager), ("flex", flex))}
    report("retention parity (vs plain, float64)", max(errs.values()) < 1e-4, max_abs_err=errs)


def check_compiled_model(device: torch.device, small: bool) -> None:
    if device.type != "cuda":
        report("SegRet eager vs torch.compile", True, skipped="a CUDA path (flex traced by dynamo); on CPU the "
               "compiled graph is bench_levers.py's compile lever and tests/test_inference_export.py")
        return
    import timm
    from _official import randomize_

    model = timm.utils.reparameterize_model(randomize_(SegRet("rmt_t", num_classes=150), seed=0).eval()).to(device)
    x = torch.randn(2, 3, 256, 320, generator=torch.Generator(device="cpu").manual_seed(0)).to(device)
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, dynamic=False)(x)
    err = (eager - compiled).abs().max().item()
    scale = eager.abs().max().item()
    report("SegRet eager vs torch.compile", err <= 1e-4 * scale, max_abs_err=err, max_abs=scale)


def tiny_model(device: torch.device, small: bool, num_classes: int = 19) -> SegRet:
    backbone = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4)) if small else "rmt_t"
    torch.manual_seed(0)
    return SegRet(backbone=backbone, num_classes=num_classes).to(device)


def train_steps(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, steps: int, size: int,
                scaler: Any = None) -> List[float]:
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(4, 3, size, size, generator=gen).to(device)
    y = (torch.arange(size, device=device)[None, None, :] * 4 // size).expand(4, size, size).contiguous()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(loss.item())
    return losses


def check_training(device: torch.device, small: bool) -> None:
    size = 64 if small else 256
    steps = 8
    losses = train_steps(tiny_model(device, small), device, torch.bfloat16, steps, size)
    report("train bf16 autocast", losses[-1] < losses[0], losses=[round(v, 4) for v in losses])
    if device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
        losses = train_steps(tiny_model(device, small), device, torch.float16, steps, size, scaler=scaler)
        report("train fp16 + GradScaler", losses[-1] < losses[0] and all(v == v for v in losses),
               losses=[round(v, 4) for v in losses], scale=scaler.get_scale())
    else:
        report("train fp16 + GradScaler", True, skipped="fp16 autocast training is a CUDA path")


def check_ddp(device: torch.device, small: bool) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        model = tiny_model(device, small)
        ddp = DDP(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        losses = train_steps(ddp, device, dtype, 6, 64 if small else 256)
        report(f"DDP single process ({backend})", losses[-1] < losses[0], losses=[round(v, 4) for v in losses])
    finally:
        dist.destroy_process_group()


def check_predict(device: torch.device, small: bool) -> None:
    import numpy as np

    from segret_zoo.inference.predictor import Segmenter

    model = tiny_model(device, small, num_classes=150).eval()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    fp32 = Segmenter(model, dtype="fp32" if device.type == "cpu" else None)(rgb)
    amp = Segmenter(model, dtype="bf16")(rgb)
    agree = float((fp32 == amp).mean())
    report("predict with bf16 autocast", agree > 0.9, label_agreement=round(agree, 4))


def time_fn(fn: Callable[[], Any], device: torch.device, iters: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def check_throughput(device: torch.device, small: bool, batch: int, iters: int) -> None:
    import timm
    from bench_segret import build_segformer_b1

    sizes = [(128, 128), (128, 256)] if small else [(512, 512), (1024, 2048)]
    dtype = torch.bfloat16
    seg = timm.utils.reparameterize_model(SegRet("rmt_t", num_classes=150).eval()).to(device)
    b1 = build_segformer_b1(150).to(device)
    columns = {"segret_tiny": seg, "segformer_b1": b1}
    if not small:
        columns["segret_tiny compiled"] = torch.compile(seg, dynamic=False)
        columns["segformer_b1 compiled"] = torch.compile(b1, dynamic=False)
    for size in sizes:
        x = torch.randn(batch, 3, *size, device=device)
        row: Dict[str, float] = {}
        for name, model in columns.items():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                seconds = time_fn(lambda m=model, t=x: m(t), device, iters)
            row[name] = round(batch / seconds, 2)
        report(f"throughput {size[0]}x{size[1]} batch {batch} (img/s, bf16)", True, **row,
               segret_over_b1=round(row["segret_tiny"] / row["segformer_b1"], 3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skip", default="",
                        help="comma-separated checks to skip: parity,compiled,train,ddp,predict,throughput")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu for the CPU subset", file=sys.stderr)
        return 2
    small = device.type != "cuda"
    batch = args.batch if not small else 1
    skip = set(filter(None, args.skip.split(",")))
    checks = {"parity": lambda: check_parity(device, small), "compiled": lambda: check_compiled_model(device, small),
              "train": lambda: check_training(device, small),
              "ddp": lambda: check_ddp(device, small), "predict": lambda: check_predict(device, small),
              "throughput": lambda: check_throughput(device, small, batch, args.iters if not small else 1)}
    for name, fn in checks.items():
        if name in skip:
            continue
        try:
            fn()
        except Exception as err:  # a failing check is reported; the others still run
            report(name, False, error=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    print("\n| check | ok |\n|---|---|\n" + "\n".join(f"| {r['check']} | {'skipped' if 'skipped' in r else 'yes' if r['ok'] else 'NO'} |"
                                               for r in RESULTS))
    return 0 if all(r["ok"] for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
