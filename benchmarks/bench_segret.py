"""SegRet-T vs SegFormer-B1 vs the straightforward implementation, CPU, one table, one run.

    python benchmarks/bench_segret.py [--official /path/to/RMT.py] [--threads 2 --iters 3 --cases ...]

Cases: 512x512, 512x1024, 1024x2048 whole, and 1024x2048 slide with the Cityscapes protocol
(512x1024 windows, stride 341x682, one window per forward). Columns (batch 1, fp32, logits
bilinearly upsampled to the input size for all):

* ``segret_tiny``: this package in its documented inference form,
  ``timm.utils.reparameterize_model(model)`` (ZIR decoder and encoder BatchNorms folded);
* ``segformer_b1``: ``transformers``' ``SegformerForSemanticSegmentation`` from a B1
  ``SegformerConfig`` (random weights, nothing downloaded);
* ``straightforward``: the official RMT code + the paper-equation decoder when ``--official`` is
  given, else this package's encoder with the plain ``softmax(q k^T + L x L mask) v`` retention
  and the decoder unfolded.

Time: medians of interleaved forwards (columns rotated every round). Memory added: resident-set
growth of one forward in a fresh process. % of matmul peak: FLOPs (``FlopCounterMode``) / time /
the best float32 GEMM rate measured at the start of the run.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import _official  # noqa: E402
from bench_rmt import _load, count_flops, time_interleaved  # noqa: E402

from segret_zoo.models.segret import SegRet  # noqa: E402


class EquationDecoder(nn.Module):
    """The ZIR decoder exactly as the paper writes it, nothing folded::

        F_i  = Linear_i(f_i)            F'_i = F_i + Z_i(f_i)
        M    = concat_i(upsample(F'_i, stride 4))
        y    = ReLU(BN(conv1x1(M)))      out = conv1x1(dropout(y))
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.ModuleList([nn.Conv2d(d, channels, 1) for d in in_channels])
        self.zero = nn.ModuleList([nn.Conv2d(d, channels, 1) for d in in_channels])
        self.fuse = nn.Conv2d(channels * len(in_channels), channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        levels = []
        for linear, zero, f in zip(self.linear, self.zero, feats):
            level = linear(f) + zero(f)
            levels.append(F.interpolate(level, size=size, mode="bilinear", align_corners=False))
        y = F.relu(self.bn(self.fuse(torch.cat(levels, dim=1))))
        return self.classifier(self.dropout(y))


class Straightforward(nn.Module):
    """Official RMT backbone + per-stage LayerNorm + :class:`EquationDecoder` + upsample to the input."""

    def __init__(self, official_features: nn.Module, dims: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = official_features
        self.norms = nn.ModuleList([nn.LayerNorm(d) for d in dims])
        self.decoder = EquationDecoder(dims, channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for norm, f in zip(self.norms, self.backbone(x))]
        return F.interpolate(self.decoder(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def build_pair(official_path: str, num_classes: int, seed: int = 0) -> Dict[str, nn.Module]:
    """segret_tiny (folded) and the straightforward model with the same random weights."""
    official, encoder = _official.official_variant(official_path, "rmt_t", seed=seed)
    ours = SegRet(backbone="rmt_t", num_classes=num_classes, decoder_channels=256).eval()
    ours.encoder.load_state_dict(
        {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}, strict=False)
    # random decoder and norm weights (ZIR paths non-zero, BatchNorm statistics random)
    gen = torch.Generator().manual_seed(seed)
    for module in list(ours.feature_norms) + list(ours.decoder.modules()):
        if isinstance(module, nn.Conv2d):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.weight[0].numel() ** 0.5)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)

    dims = ours.encoder.embed_dims
    plain = Straightforward(_official.OfficialFeatures(official), dims, 256, num_classes).eval()
    plain.norms.load_state_dict(ours.feature_norms.state_dict())
    dec, src = plain.decoder, ours.decoder
    dec.linear.load_state_dict(src.linears.state_dict())
    dec.zero.load_state_dict(src.zir.state_dict())
    dec.fuse.load_state_dict(src.fuse_conv.state_dict())
    dec.bn.load_state_dict(src.fuse_norm.state_dict())
    dec.classifier.load_state_dict(src.classifier.state_dict())
    return {"segret_tiny": ours.fuse_zir(), "straightforward": plain}


def build_segformer_b1(num_classes: int) -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
                             decoder_hidden_size=256, num_labels=num_classes)
    model = SegformerForSemanticSegmentation(config).eval()

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.model(pixel_values=x).logits
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return Wrapped().eval()


def build_plain(num_classes: int, seed: int = 0) -> nn.Module:
    """The straightforward implementation without the official code: this package's encoder with the
    plain ``softmax(q k^T + mask) v`` retention (full L x L masks, :mod:`_plain`) and the decoder
    unfolded, i.e. the paper's equations run as written."""
    from _plain import use_plain_attention

    torch.manual_seed(seed)
    return use_plain_attention(SegRet(backbone="rmt_t", num_classes=num_classes).eval())


def inference_form(model: nn.Module) -> nn.Module:
    """The documented one-call inference form: ``timm.utils.reparameterize_model`` (a folded copy)."""
    import timm

    return timm.utils.reparameterize_model(model.eval()).eval()


def slide(fn: Callable[[torch.Tensor], torch.Tensor], crop: Sequence[int], stride: Sequence[int]
          ) -> Callable[[torch.Tensor], torch.Tensor]:
    """mmseg slide inference (border-aligned windows, logits summed / counted), one window per forward."""
    from segret_zoo.inference.predictor import slide_windows

    def run(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        acc: Optional[torch.Tensor] = None
        count = torch.zeros(1, 1, h, w)
        for y1, y2, x1, x2 in slide_windows(h, w, tuple(crop), tuple(stride)):
            out = fn(x[:, :, y1:y2, x1:x2])
            if acc is None:
                acc = torch.zeros(1, out.shape[1], h, w)
            acc[:, :, y1:y2, x1:x2] += out
            count[:, :, y1:y2, x1:x2] += 1
        assert acc is not None
        return acc / count

    return run


def matmul_peak_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best-of GEMM throughput of this machine (float32, ``threads``): the denominator of '% of peak'."""
    import time

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


CASES = {  # name -> (input size, slide crop/stride or None): the Cityscapes protocol for slide
    "512x512": ((512, 512), None),
    "512x1024": ((512, 1024), None),
    "1024x2048": ((1024, 2048), None),
    "1024x2048 slide": ((1024, 2048), ((512, 1024), (341, 682))),
}


def build_column(name: str, official_path: Optional[str], num_classes: int) -> nn.Module:
    if name == "segret_tiny":
        return inference_form(SegRet(backbone="rmt_t", num_classes=num_classes))
    if name == "segformer_b1":
        return build_segformer_b1(num_classes)
    if official_path:
        return build_pair(official_path, num_classes)["straightforward"]
    return build_plain(num_classes)


def _memory_child(name: str, case: str, threads: int, official_path: str, num_classes: int) -> None:
    from bench_rmt import _proc_kb

    torch.set_num_threads(threads)
    size, protocol = CASES[case]
    model = build_column(name, official_path or None, num_classes)
    fn = slide(model, *protocol) if protocol else model
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
        x = torch.randn(1, 3, *size)
        gc.collect()
        before = _proc_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        out = fn(x)
        peak = _proc_kb("VmHWM")
        del out
    print(json.dumps({"growth_mb": (peak - before) / 1024}))


def measure_memory(name: str, case: str, threads: int, official_path: Optional[str], num_classes: int
                   ) -> Optional[float]:
    """Resident-set growth (MiB) of one forward in a fresh process (glibc mmap threshold pinned)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--_memory-child", name, case, str(threads), official_path or "",
           str(num_classes)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"memory {name} {case}: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth_mb"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_memory-child":
        _memory_child(argv[1], argv[2], int(argv[3]), argv[4], int(argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", default=None, help=f"path to the official RMT.py (or ${_official.ENV_VAR})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--no-straightforward", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    official_path = _official.official_path(args.official)
    names = ["segret_tiny", "segformer_b1"] + ([] if args.no_straightforward else ["straightforward"])
    models = {n: build_column(n, official_path, args.num_classes) for n in names}
    straight = "official RMT code + paper-equation decoder" if official_path else \
        "this encoder with plain softmax(qk^T + LxL mask)v retention + unfolded decoder (no official RMT.py given)"
    peak = matmul_peak_gflops(args.threads)
    load_before = _load()
    rows: List[Dict[str, Any]] = []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        size, protocol = CASES[case]
        fns = {n: (slide(m, *protocol) if protocol else m) for n, m in models.items()}
        flops = {n: count_flops(f, size) for n, f in fns.items()}
        timing = time_interleaved(fns, size, args.iters)
        for n in names:
            mem = None if args.no_memory else measure_memory(n, case, args.threads, official_path, args.num_classes)
            t = timing[n]["median_s"]
            rows.append({"case": case, "model": n, "ms": t * 1e3, "gflop": flops[n] / 1e9,
                         "peak_pct": 100 * flops[n] / t / (peak * 1e9), "mem_mb": mem,
                         "others_share": timing[n]["others_share_mean"], "samples": timing[n]["samples"]})
        print(f"done {case}", file=sys.stderr, flush=True)

    print(f"\n## segret_tiny (timm reparameterize_model form) vs SegFormer-B1 vs straightforward "
          f"({args.threads} threads, fp32, batch 1, {args.num_classes} classes)")
    print(f"straightforward = {straight}; matmul peak {peak:.0f} GFLOP/s; load before/after {load_before} / {_load()}")
    print("\n| case | model | ms (median) | GFLOP | % of matmul peak | memory added (MiB) | time / B1 | memory / B1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b1 = next(x for x in rows if x["case"] == r["case"] and x["model"] == "segformer_b1")
        mem = f"{r['mem_mb']:.0f}" if r["mem_mb"] is not None else "-"
        mem_ratio = f"{r['mem_mb'] / b1['mem_mb']:.2f}" if r["mem_mb"] and b1["mem_mb"] else "-"
        print(f"| {r['case']} | {r['model']} | {r['ms']:.0f} | {r['gflop']:.1f} | {r['peak_pct']:.0f}% | {mem} | "
              f"{r['ms'] / b1['ms']:.2f} | {mem_ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "peak_gflops": peak, "rows": rows,
                                               "straightforward": straight}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
