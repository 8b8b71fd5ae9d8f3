"""SegRet-T vs SegFormer-B1 vs a straightforward implementation of the same SegRet, CPU, one table, one run.

    python benchmarks/bench_segret.py [--official /path/to/RMT.py] [--threads 2 --iters 3 --cases ...]

Cases: 512x512, 512x1024, 1024x2048 whole, and 1024x2048 slide with the Cityscapes protocol
(512x1024 windows, stride 341x682, one window per forward). Columns (batch 1, fp32, logits
bilinearly upsampled to the input size for all):

* ``segret_tiny``: this package's SegRet-T as released (encoder without rotary theta shift and
  without FFN conv) in its documented inference form, ``timm.utils.reparameterize_model(model)``
  (decoder folded, encoder BatchNorms folded);
* ``segformer_b1``: ``transformers``' ``SegformerForSemanticSegmentation`` from a B1
  ``SegformerConfig`` (random weights, nothing downloaded);
* ``straightforward``: the same SegRet written plainly: this package's encoder (same options: no
  theta shift, FFN = fc1 -> GELU -> fc2) with every retention as ``softmax(q k^T + mask) v`` over
  materialized scores and masks (the whole ``L x L`` mask in full mode, :mod:`_plain`), and the
  released decoder written as its equations (:class:`ReleasedDecoderEquations`), nothing folded;
* ``official_code`` (only with ``--official``): the official RMT code (github.com/qhfan/RMT, the
  ImageNet RMT) made into SegRet's encoder by the two changes of ``_official.SEGRET_PATCH_NOTE``
  (its theta shift returns q, k unchanged; its FFN runs fc1 -> GELU -> fc2 without the dwconv),
  with :class:`ReleasedDecoderEquations`. The released SegRet code is not loaded; this column shows
  what the official implementation style costs on the same model.

Every SegRet column has the same weights (random, every ZIR path and BatchNorm statistic non-trivial,
copied from one reference model), and before timing their outputs are checked against the unfolded
reference (``--check-size``; the run stops if one differs by more than 1e-4 of the outputs' range).

Time: medians of interleaved forwards (columns rotated every round). Memory added: resident-set
growth of one forward in a fresh process. % of matmul peak: FLOPs (``FlopCounterMode``) / time /
the best float32 GEMM rate measured at the start of the run.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import _official  # noqa: E402
from bench_rmt import _load, count_flops, parse_size, time_interleaved  # noqa: E402

from segret_zoo.models.decoder import ZIRDecoder  # noqa: E402
from segret_zoo.models.segret import SegRet  # noqa: E402

COLUMNS = ("segret_tiny", "segformer_b1", "straightforward", "official_code")
CHECK_TOLERANCE = 1e-4  # max abs error / max |output| of the reference


class ReleasedDecoderEquations(nn.Module):
    """SegRet's released decoder exactly as its equations read, nothing folded::

        r_i = ReLU(Linear_i(f_i) + BN_i(Z_i(f_i)))      (Linear_i token-wise, Z_i a 1x1 conv)
        u_i = upsample(r_i, stride 4)                    (u_1 = r_1)
        y   = ReLU(BN(conv1x1(concat(u_4, u_3, u_2, u_1))))
        out = conv1x1(dropout(y))
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.ModuleList([nn.Linear(d, channels) for d in in_channels])
        self.zero = nn.ModuleList([nn.Conv2d(d, channels, 1) for d in in_channels])
        self.zero_bn = nn.ModuleList([nn.BatchNorm2d(channels) for _ in in_channels])
        self.fuse = nn.Conv2d(channels * len(in_channels), channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @classmethod
    @torch.no_grad()
    def from_decoder(cls, decoder: ZIRDecoder) -> ReleasedDecoderEquations:
        """The equations with the weights of this package's (unfolded) decoder."""
        out = cls(decoder.in_channels, decoder.channels, decoder.num_classes)
        for i, level in enumerate(decoder.levels):
            out.linear[i].weight.copy_(level.linear.weight.flatten(1))
            out.linear[i].bias.copy_(level.linear.bias)
            out.zero[i].load_state_dict(level.zir_conv.state_dict())
            out.zero_bn[i].load_state_dict(level.zir_norm.state_dict())
        out.fuse.load_state_dict(decoder.fuse_conv.state_dict())
        out.bn.load_state_dict(decoder.fuse_norm.state_dict())
        out.classifier.load_state_dict(decoder.classifier.state_dict())
        return out.eval()

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        levels = []
        for i, f in enumerate(feats):
            b, _, h, w = f.shape
            tokens = self.linear[i](f.flatten(2).transpose(1, 2))  # B x HW x C
            r = F.relu(tokens.transpose(1, 2).reshape(b, -1, h, w) + self.zero_bn[i](self.zero[i](f)))
            levels.append(r if i == 0 else F.interpolate(r, size=size, mode="bilinear", align_corners=False))
        y = F.relu(self.bn(self.fuse(torch.cat(levels[::-1], dim=1))))
        return self.classifier(self.dropout(y))


class EncoderFeatures(nn.Module):
    """This package's encoder as a feature extractor (the four stage outputs, NCHW)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.encoder.forward_intermediates(x, intermediates_only=True)


class Straightforward(nn.Module):
    """Stage features -> :class:`ReleasedDecoderEquations` -> upsample to the input."""

    def __init__(self, features: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.decoder(self.features(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def reference_models(official_path: Optional[str], num_classes: int, seed: int = 0
                     ) -> Tuple[SegRet, Optional[nn.Module]]:
    """The unfolded SegRet-T every column copies its weights from, and (with ``official_path``) the
    official code's encoder holding the same encoder weights (the official model is randomized and
    converted into ours with ``checkpoint_filter_fn``)."""
    torch.manual_seed(seed)
    ref = SegRet(backbone="rmt_t", num_classes=num_classes, decoder_channels=256, architecture="segret_tiny").eval()
    official = None
    if official_path:
        official, encoder = _official.official_variant(official_path, "rmt_t", seed=seed, segret_encoder=True)
        ref.encoder.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")})
        _official.randomize_(ref.decoder, seed + 1)
    else:
        _official.randomize_(ref, seed)
    return ref, official


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


def build_columns(names: Sequence[str], official_path: Optional[str], num_classes: int, seed: int = 0
                  ) -> Tuple[Dict[str, nn.Module], SegRet]:
    """The requested columns (eval mode) and the unfolded reference SegRet they share weights with."""
    ref, official = reference_models(official_path if "official_code" in names else None, num_classes, seed)
    columns: Dict[str, nn.Module] = {}
    for name in names:
        if name == "segret_tiny":
            columns[name] = inference_form(ref)
        elif name == "segformer_b1":
            torch.manual_seed(seed)
            columns[name] = build_segformer_b1(num_classes)
        elif name == "straightforward":
            from _plain import use_plain_attention

            encoder = use_plain_attention(copy.deepcopy(ref.encoder))
            columns[name] = Straightforward(EncoderFeatures(encoder), ReleasedDecoderEquations.from_decoder(ref.decoder))
        elif name == "official_code":
            if official is None:
                raise ValueError("the official_code column needs --official /path/to/RMT.py")
            columns[name] = Straightforward(_official.OfficialFeatures(official),
                                            ReleasedDecoderEquations.from_decoder(ref.decoder))
        else:
            raise ValueError(f"unknown column {name!r}; choose from {list(COLUMNS)}")
    return {n: m.eval() for n, m in columns.items()}, ref


def build_column(name: str, official_path: Optional[str] = None, num_classes: int = 150) -> nn.Module:
    """One column of :func:`build_columns` (what ``bench_levers.py`` measures)."""
    return build_columns([name], official_path, num_classes)[0][name]


@torch.no_grad()
def check_outputs(columns: Dict[str, nn.Module], ref: SegRet, size: Sequence[int], seed: int = 0
                  ) -> Dict[str, Dict[str, float]]:
    """Each SegRet column's logits against the unfolded reference on one random image."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    want = ref(x)
    scale = want.abs().max().item()
    out: Dict[str, Dict[str, float]] = {}
    for name, model in columns.items():
        if name == "segformer_b1":
            continue
        err = (model(x) - want).abs().max().item()
        out[name] = {"max_abs_err": err, "max_abs": scale, "ok": err <= CHECK_TOLERANCE * scale}
    return out


def _memory_child(name: str, case: str, threads: int, official_path: str, num_classes: int) -> None:
    from bench_rmt import _proc_kb

    torch.set_num_threads(threads)
    size, protocol = CASES[case]
    columns, ref = build_columns([name], official_path or None, num_classes)
    model = columns[name]
    del ref
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


DESCRIPTIONS = {
    "segret_tiny": "this package, timm.utils.reparameterize_model form",
    "segformer_b1": "transformers SegformerForSemanticSegmentation, B1 config",
    "straightforward": "this package's encoder (no theta shift, FFN fc1-GELU-fc2) with plain softmax(qk^T + mask)v "
                       "retention over materialized L x L masks + the released decoder as its equations, unfolded",
    "official_code": _official.SEGRET_PATCH_NOTE + "; + the released decoder as its equations, unfolded",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_memory-child":
        _memory_child(argv[1], argv[2], int(argv[3]), argv[4], int(argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", default=None,
                        help=f"path to the official RMT.py (or ${_official.ENV_VAR}): adds the official_code column")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--no-straightforward", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--check-size", default="200x232", help="input of the output check (H x W)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    official_path = _official.official_path(args.official)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    names = ["segret_tiny", "segformer_b1"] + ([] if args.no_straightforward else ["straightforward"])
    names += ["official_code"] if official_path else []
    if not official_path:
        print(f"NOTE: {_official.SKIP_NOTE}", file=sys.stderr)
    models, ref = build_columns(names, official_path, args.num_classes)
    check = check_outputs(models, ref, parse_size(args.check_size))
    del ref
    print(f"output check at {args.check_size} vs the unfolded SegRet (max abs error / max |logit|): " + ", ".join(
        f"{n} {c['max_abs_err']:.1e} / {c['max_abs']:.1f} {'ok' if c['ok'] else 'FAIL'}" for n, c in check.items()))
    if not all(c["ok"] for c in check.values()):
        print("the columns do not compute the same SegRet: not timing them", file=sys.stderr)
        return 1
    peak = matmul_peak_gflops(args.threads)
    load_before = _load()
    rows: List[Dict[str, Any]] = []
    for case in cases:
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

    print(f"\n## SegRet-T as released vs SegFormer-B1 vs straightforward implementations "
          f"({args.threads} threads, fp32, batch 1, {args.num_classes} classes)")
    for n in names:
        print(f"- {n}: {DESCRIPTIONS[n]}")
    print(f"matmul peak {peak:.0f} GFLOP/s; load before/after {load_before} / {_load()}")
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
                                               "columns": {n: DESCRIPTIONS[n] for n in names},
                                               "output_check": check}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
