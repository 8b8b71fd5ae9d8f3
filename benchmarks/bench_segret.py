"""SegRet-T end to end on CPU against a straightforward implementation and SegFormer-B1, in one run.

    python benchmarks/bench_segret.py --official /path/to/RMT.py [--threads 2 --size 512x512 --iters 7]

Columns (batch 1, logits bilinearly upsampled to the input size for all three):

* ``segret_tiny``: this package, eval mode, ZIR folded (``model.fuse_zir()``);
* ``straightforward``: the official RMT code's backbone (github.com/qhfan/RMT
  ``classfication_release/RMT.py``; stage outputs via hooks) + per-stage LayerNorm + the ZIR decoder
  written exactly as the SegRet paper's decoder equations, unfolded (:class:`EquationDecoder`), with
  the same weights as ``segret_tiny`` (the script checks that the logits agree);
* ``segformer_b1``: ``transformers``' ``SegformerForSemanticSegmentation`` built from a
  ``SegformerConfig`` for B1 (13.7M parameters, random weights, nothing downloaded).

Issue #3 bars: segret_tiny <= 0.5x the straightforward time and <= 1.2x SegFormer-B1's. Timing is the
median of interleaved forwards (columns rotated every round); ``other load`` is the share of the
machine's CPU used by other processes meanwhile (see ``bench_rmt.py``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import _official  # noqa: E402
from bench_rmt import _load, fmt_size, parse_size, time_interleaved, wait_idle  # noqa: E402

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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", default=None, help=f"path to the official RMT.py (or ${_official.ENV_VAR})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--no-segformer", action="store_true")
    parser.add_argument("--clean", type=int, default=0, metavar="K",
                        help="time until each model has K forwards with other processes idle; report those "
                             "(see bench_rmt.py --clean)")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for other processes to go idle before timing")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    official_path = _official.official_path(args.official)
    models: Dict[str, nn.Module] = {}
    check: Dict[str, Any] = {}
    if official_path:
        models.update(build_pair(official_path, args.num_classes))
        with torch.inference_mode():
            x = torch.randn(1, 3, 96, 136)
            a, b = models["segret_tiny"](x), models["straightforward"](x)
        check = {"max_abs_err": (a - b).abs().max().item(), "max_abs": b.abs().max().item()}
    else:
        print(f"NOTE: {_official.SKIP_NOTE}", file=sys.stderr)
        models["segret_tiny"] = SegRet(backbone="rmt_t", num_classes=args.num_classes).eval().fuse_zir()
    if not args.no_segformer:
        models["segformer_b1"] = build_segformer_b1(args.num_classes)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}

    load_before = _load()
    if args.wait_idle > 0:
        wait_idle(args.wait_idle)
    fns: Dict[str, Callable[[torch.Tensor], Any]] = dict(models)
    timing = time_interleaved(fns, size, args.iters, clean=args.clean, max_seconds=args.max_seconds)
    ours = timing["segret_tiny"]["median_s"]
    other = statistics.mean(t["others_share_mean"] for t in timing.values())

    print(f"\n## SegRet-T vs straightforward vs SegFormer-B1 ({args.threads} threads, {fmt_size(size)}, batch 1)")
    print(f"load average before/after: {load_before} / {_load()}; other processes' CPU share while timing: "
          f"{other * 100:.0f}%")
    if check:
        print(f"segret_tiny vs straightforward logits: max abs err {check['max_abs_err']:.2e} "
              f"(max |logit| {check['max_abs']:.1f})")
    print("\n| model | params (M) | ms (median) | ms (min) | samples | segret_tiny / model | bar |")
    print("|---|---|---|---|---|---|---|")
    bars = {"straightforward": 0.5, "segformer_b1": 1.2}
    for name, t in timing.items():
        rel = ours / t["median_s"]
        bar = ""
        if name in bars:
            bar = f"<= {bars[name]}: {'PASS' if rel <= bars[name] else 'FAIL'}"
        samples = f"{t['samples']}" + (" clean" if t["clean_only"] else "")
        print(f"| {name} | {params[name] / 1e6:.2f} | {t['median_s'] * 1e3:.0f} | {t['min_s'] * 1e3:.0f} | "
              f"{samples} | {rel:.2f} | {bar} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "threads": args.threads, "size": fmt_size(size), "iters": args.iters, "params": params,
            "timing": timing, "check": check, "load_before": load_before, "other_share": other}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
