"""RMT backbones: parameters, FLOPs, CPU latency and peak memory of the fast retention path against
the plain formulation and (when given) the official RMT code, as ratios measured in one run.

    python benchmarks/bench_rmt.py --official /path/to/RMT.py --json rmt.json      # full table
    python benchmarks/bench_rmt.py --quick                                          # rmt_t only, small
    python benchmarks/bench_rmt.py --encoder segret --official /path/to/RMT.py      # SegRet's encoders

``--encoder imagenet`` (default) measures the timm models ``rmt_*``: the ImageNet RMT, with the
rotary theta shift and the FFN's depthwise conv. ``--encoder segret`` measures the same variants
built as SegRet's released encoder (``SEGRET_ENCODER_ARGS``: no theta shift, FFN fc1 -> GELU ->
fc2), what ``segret_*`` run; the official column is then the official code with the two changes of
``_official.SEGRET_PATCH_NOTE``, and the parameter targets (the ImageNet backbones') do not apply.

Columns, all on the stage features (stem + four stages, what segmentation uses; no ImageNet head):

* ``fast``: this package (``scaled_dot_product_attention``, 4-D masks, the compiled CPU kernel for
  full mode, and for ``imagenet`` the complex-product rotary shift);
* ``plain``: the same model and weights with attention written as ``softmax(q k^T + bias) v``
  (``benchmarks/_plain.py``);
* ``official``: ``classfication_release/RMT.py`` of github.com/qhfan/RMT with the same weights
  (converted official -> ours with ``checkpoint_filter_fn``), stage outputs taken with hooks.

Method: latency is the median (and minimum) of ``--iters`` forwards per column, the columns
interleaved (A, B, C, B, C, A, ...) so that load on a shared machine hits them alike; ratios come
from the medians. Peak memory is the growth of the resident set during one forward, measured in a
fresh subprocess per cell: after a warm-up forward at 64x64 the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``) and ``VmHWM - VmRSS(before)`` is read after the forward. glibc's mmap
threshold is pinned (``MALLOC_MMAP_THRESHOLD_=65536``) in those subprocesses so freed tensors leave
the resident set instead of being cached by the allocator (which would hide growth).
With ``--official`` the script also checks the outputs against the official code (max abs error of
the ImageNet logits and the four stage features, random weights and BatchNorm statistics).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import _official  # noqa: E402
from _plain import use_plain_attention  # noqa: E402

import segret_zoo  # noqa: E402,F401  (registers rmt_*)

VARIANTS = ("rmt_t", "rmt_s", "rmt_b", "rmt_l")
# backbone parameters without the ImageNet head (issue #2 bar, within 0.1%)
TARGET_BACKBONE_PARAMS = {"rmt_t": 12.78e6, "rmt_s": 25.41e6, "rmt_b": 52.60e6, "rmt_l": 93.78e6}
IMPLS = ("fast", "plain", "official")
Size = Tuple[int, int]


def parse_size(text: str) -> Size:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def fmt_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


# ------------------------------------------------------------------------------------ models
ENCODERS = ("imagenet", "segret")


def build_models(variant: str, official_path: Optional[str], impls: Sequence[str], seed: int = 0,
                 encoder: str = "imagenet") -> Dict[str, torch.nn.Module]:
    """The requested implementations of ``variant`` with identical (random) weights, eval mode;
    ``encoder="segret"``: built as SegRet's released encoder (no theta shift, no FFN conv)."""
    import timm

    from segret_zoo.models.segret import SEGRET_ENCODER_ARGS

    segret = encoder == "segret"
    models: Dict[str, torch.nn.Module] = {}
    if official_path:
        official, ours = _official.official_variant(official_path, variant, seed=seed, segret_encoder=segret)
        if "official" in impls:
            models["official"] = _official.OfficialFeatures(official).eval()
    else:
        torch.manual_seed(seed)
        ours = timm.create_model(variant, **(SEGRET_ENCODER_ARGS if segret else {})).eval()
    if "fast" in impls:
        models["fast"] = ours
    if "plain" in impls:
        models["plain"] = use_plain_attention(copy.deepcopy(ours)).eval()
    return models


def features_fn(impl: str, model: torch.nn.Module) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    if impl == "official":
        return model
    return lambda x: model.forward_intermediates(x, intermediates_only=True)


# ---------------------------------------------------------------------------- measurements
def count_params(model: torch.nn.Module) -> Tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    return total - head, total


def _count_cpu_flash_attention() -> None:
    """``FlopCounterMode`` knows the CUDA SDPA kernels but neither the CPU flash one nor this package's
    compiled CPU retention kernel, whose FLOPs would be left out (``q k^T`` and ``p v``:
    ``2 B N Lq S (d + d_v)``)."""
    from torch.utils import flop_counter

    from segret_zoo.models.cpu_kernel import manhattan_kernel

    manhattan_kernel()  # registers torch.ops.segret_zoo where it can be built
    ops = [getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)]
    if hasattr(torch.ops, "segret_zoo") and hasattr(torch.ops.segret_zoo, "manhattan_attention"):
        ops.append(torch.ops.segret_zoo.manhattan_attention)
    for op in ops:
        if op is None or op in flop_counter.flop_registry:
            continue

        @flop_counter.register_flop_formula(op)
        def _flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            b, n, lq, d = query_shape
            return 2 * b * n * lq * key_shape[-2] * (d + value_shape[-1])


def count_flops(fn: Callable[[torch.Tensor], Any], size: Size) -> int:
    import warnings

    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_flash_attention()

    x = torch.randn(1, 3, *size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(x)
    return counter.get_total_flops()


def _cpu_ticks() -> Tuple[int, int, int]:
    """(busy ticks of the whole machine, all ticks, ticks of this process) from /proc, or zeros."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        idle = fields[3] + fields[4]
        return sum(fields[:8]) - idle, sum(fields[:8]), int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return 0, 0, 0


def wait_idle(max_wait_s: float, window_s: float = 1.0, threshold: float = 0.05) -> float:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` of the machine for one
    ``window_s``; returns the share seen last. For shared machines: a multi-threaded forward whose
    threads compete with another job for a core waits at every parallel region."""
    deadline = time.monotonic() + max_wait_s
    share = 1.0
    while True:
        busy0, total0, own0 = _cpu_ticks()
        time.sleep(window_s)
        busy1, total1, own1 = _cpu_ticks()
        share = max(0, (busy1 - busy0) - (own1 - own0)) / max(1, total1 - total0)
        if share < threshold or time.monotonic() > deadline:
            return share


def time_interleaved(fns: Dict[str, Callable[[torch.Tensor], Any]], size: Size, iters: int, warmup: int = 1,
                     clean: int = 0, max_seconds: float = 600.0, clean_share: float = 0.05
                     ) -> Dict[str, Dict[str, Any]]:
    """Median and min seconds per column; columns interleaved, order rotated every round.

    Each forward also records the share of the machine's CPU time used by *other* processes
    meanwhile (``others``). With ``clean > 0``, rounds continue (up to ``max_seconds``) until every
    column has ``clean`` forwards with ``others < clean_share``, and the medians are taken over those
    ("clean") forwards: on a shared machine a multi-threaded forward whose thread shares a core with
    another job waits at every parallel region, which says nothing about the code.
    """
    x = torch.randn(1, 3, *size)
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    others: Dict[str, List[float]] = {n: [] for n in names}
    start = time.monotonic()

    def n_clean(n: str) -> int:
        return sum(o < clean_share for o in others[n])

    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                fns[n](x)
        i = 0
        while i < iters or (clean and min(map(n_clean, names)) < clean and time.monotonic() - start < max_seconds):
            for n in names[i % len(names):] + names[:i % len(names)]:
                busy0, total0, own0 = _cpu_ticks()
                t0 = time.perf_counter()
                fns[n](x)
                times[n].append(time.perf_counter() - t0)
                busy1, total1, own1 = _cpu_ticks()
                others[n].append(max(0, (busy1 - busy0) - (own1 - own0)) / max(1, total1 - total0))
            i += 1
    out: Dict[str, Dict[str, Any]] = {}
    for n in names:
        sel = [t for t, o in zip(times[n], others[n]) if o < clean_share] if clean else []
        use = sel if clean and len(sel) >= min(clean, 3) else times[n]
        out[n] = {"median_s": statistics.median(use), "min_s": min(times[n]), "all_s": times[n],
                  "others_share": others[n], "others_share_mean": statistics.mean(others[n]),
                  "clean_only": use is sel, "samples": len(use)}
    return out


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _memory_child(impl: str, variant: str, size: Size, threads: int, official_path: Optional[str],
                  encoder: str = "imagenet") -> Dict[str, Any]:
    torch.set_num_threads(threads)
    fn = features_fn(impl, build_models(variant, official_path, (impl,), encoder=encoder)[impl])
    with torch.inference_mode():
        fn(torch.randn(1, 3, 64, 64))  # lazy initialisation (oneDNN primitives, ...)
        x = torch.randn(1, 3, *size)
        gc.collect()
        before = _proc_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
            method = "VmHWM after clear_refs"
        except OSError:
            method = "VmHWM since process start (clear_refs unavailable: includes model building)"
        out = fn(x)
        peak = _proc_kb("VmHWM")
        del out
    return {"growth_mb": (peak - before) / 1024, "rss_before_mb": before / 1024, "method": method}


def measure_memory(impl: str, variant: str, size: Size, threads: int, official_path: Optional[str],
                   encoder: str = "imagenet") -> Dict[str, Any]:
    """Run one forward in a fresh interpreter and return its resident-set growth."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--_memory-child", impl, variant, fmt_size(size), str(threads),
           official_path or "", encoder]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@torch.no_grad()
def check_official(variant: str, official_path: str, size: Size, seed: int = 0, encoder: str = "imagenet"
                   ) -> Dict[str, Any]:
    """Max abs error (and the outputs' max magnitude) of ours vs the official code, same weights."""
    official, ours = _official.official_variant(official_path, variant, seed=seed, segret_encoder=encoder == "segret")
    feats_official = _official.OfficialFeatures(official).eval()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    result: Dict[str, Any] = {"input": [1, 3, *size]}
    a, b = official(x), ours(x)
    result["logits"] = {"max_abs_err": (a - b).abs().max().item(), "max_abs": a.abs().max().item()}
    for i, (fa, fb) in enumerate(zip(feats_official(x), ours.forward_intermediates(x, intermediates_only=True))):
        result[f"stage{i}"] = {"shape": list(fa.shape), "max_abs_err": (fa - fb).abs().max().item(),
                               "max_abs": fa.abs().max().item()}
    result["max_abs_err"] = max(v["max_abs_err"] for k, v in result.items() if isinstance(v, dict))
    return result


# ------------------------------------------------------------------------------------ report
def ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def ms(entry: Optional[Dict[str, float]]) -> str:
    return f"{entry['median_s'] * 1e3:.0f} (min {entry['min_s'] * 1e3:.0f})" if entry else "-"


def print_tables(res: Dict[str, Any]) -> None:
    what = "SegRet's released encoders (no theta shift, no FFN conv)" if res["env"].get("encoder") == "segret" \
        else "ImageNet RMT (rmt_*)"
    print(f"\n## RMT backbones, {what} ({res['env']['threads']} threads, {res['env']['cpu']}, torch {res['env']['torch']})")
    print(f"load average before/after: {res['env']['load_before']} / {res['env']['load_after']}")
    if res["env"].get("official_note"):
        print(f"NOTE: {res['env']['official_note']}")
    print("\n| variant | backbone params (M) | target (M) | with ImageNet head (M) | "
          + " | ".join(f"GFLOPs {s} fast / official" for s in res["sizes"]) + " |")
    print("|---|---|---|---|" + "---|" * len(res["sizes"]))
    for v, r in res["variants"].items():
        flops = " | ".join(f"{r['gflops'][s]:.2f} / " + (f"{r['gflops_official'][s]:.2f}" if s in r["gflops_official"]
                                                          else "-") for s in res["sizes"])
        target = "-" if res["env"].get("encoder") == "segret" else (
            f"{TARGET_BACKBONE_PARAMS[v] / 1e6:.2f} ({(r['params_backbone'] / TARGET_BACKBONE_PARAMS[v] - 1) * 100:+.3f}%)")
        print(f"| {v} | {r['params_backbone'] / 1e6:.2f} | {target} | "
              f"{r['params_total'] / 1e6:.2f} | {flops} |")
    print("(FLOPs: torch.utils.flop_counter.FlopCounterMode; counts matmuls, convs and SDPA, not elementwise ops)")

    if any(r["latency"] for r in res["variants"].values()):
        print_latency(res)
    print_memory_and_check(res)


def print_latency(res: Dict[str, Any]) -> None:
    print("\n### Latency, stage features, batch 1 (ms: median (min) of interleaved runs)")
    print("| variant | size | fast | plain | official | plain / fast | official / fast | other load |")
    print("|---|---|---|---|---|---|---|---|")
    for v, r in res["variants"].items():
        for s, t in r["latency"].items():
            f, p, o = t.get("fast"), t.get("plain"), t.get("official")
            load = statistics.mean(c["others_share_mean"] for c in t.values())
            clean = " (clean only)" if all(c.get("clean_only") for c in t.values()) else ""
            print(f"| {v} | {s} | {ms(f)} | {ms(p)} | {ms(o)} | "
                  f"{ratio(p and p['median_s'], f['median_s'])} | {ratio(o and o['median_s'], f['median_s'])} | "
                  f"{load * 100:.0f}%{clean} |")
    print("(other load: mean share of the machine's CPU time used by other processes during the timed "
          "forwards; above ~10% the timings of a multi-threaded run are inflated by scheduling waits. "
          "'clean only': medians over the forwards with other processes idle, see --clean)")


def print_memory_and_check(res: Dict[str, Any]) -> None:
    if res.get("memory"):
        print("\n### Peak memory: resident-set growth of one forward (MB, fresh process per cell)")
        print("| variant | size | fast | plain | official | fast / plain | fast / official |")
        print("|---|---|---|---|---|---|---|")
        for row in res["memory"]:
            cells = {i: row.get(i, {}).get("growth_mb") for i in IMPLS}
            txt = {i: (f"{c:.0f}" if c is not None else row.get(i, {}).get("error", "-")) for i, c in cells.items()}
            print(f"| {row['variant']} | {row['size']} | {txt['fast']} | {txt['plain']} | {txt['official']} | "
                  f"{ratio(cells['fast'], cells['plain'])} | {ratio(cells['fast'], cells['official'])} |")

    if res.get("equivalence"):
        print("\n### Outputs vs the official code (same random weights; max abs error / max |output|)")
        print("| variant | input | logits | stage 1 | stage 2 | stage 3 | stage 4 | max err <= 1e-4 |")
        print("|---|---|---|---|---|---|---|---|")
        for v, e in res["equivalence"].items():
            cols = " | ".join(f"{e[k]['max_abs_err']:.1e} / {e[k]['max_abs']:.1f}"
                              for k in ("logits", "stage0", "stage1", "stage2", "stage3"))
            print(f"| {v} | {'x'.join(map(str, e['input'][2:]))} | {cols} | "
                  f"{'PASS' if e['max_abs_err'] <= 1e-4 else 'FAIL'} |")


# -------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--encoder", choices=ENCODERS, default="imagenet",
                        help="imagenet: the rmt_* timm models; segret: the same variants as SegRet's released encoder")
    parser.add_argument("--sizes", nargs="+", default=["512x512", "512x1024"], help="H x W of the latency rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed forwards per column")
    parser.add_argument("--official", default=None, help=f"path to the official RMT.py (or ${_official.ENV_VAR})")
    parser.add_argument("--memory-sizes", nargs="*", default=None,
                        help="sizes of the memory rows (default: --sizes; plus 1024x1024 for rmt_t)")
    parser.add_argument("--no-memory", action="store_true", help="skip the (slow) subprocess memory rows")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-formulation column")
    parser.add_argument("--no-latency", action="store_true", help="only parameters, FLOPs, memory and the check")
    parser.add_argument("--check-size", default="200x232", help="input of the output check vs the official code")
    parser.add_argument("--quick", action="store_true", help="rmt_t only, 256x256, 3 iterations, memory at 512x512")
    parser.add_argument("--json", default=None, help="write all numbers here")
    parser.add_argument("--clean", type=int, default=0, metavar="K",
                        help="time until every column has K forwards with other processes idle (< 5%% of the "
                             "machine) and report medians over those; for shared machines")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time limit per row for --clean")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="before each latency row wait up to S seconds for the other processes to go idle")
    parser.add_argument("--_memory-child", nargs=6, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory_child:
        impl, variant, size, threads, official_path, encoder = args._memory_child
        print(json.dumps(_memory_child(impl, variant, parse_size(size), int(threads), official_path or None,
                                       encoder)))
        return 0

    if args.quick:
        args.variants, args.sizes, args.iters = ["rmt_t"], ["256x256"], 3
        if args.memory_sizes is None:
            args.memory_sizes = ["512x512"]
    torch.set_num_threads(args.threads)
    official_path = _official.official_path(args.official)
    impls = [i for i in IMPLS if not (i == "plain" and args.no_plain) and not (i == "official" and not official_path)]
    sizes = [parse_size(s) for s in args.sizes]
    res: Dict[str, Any] = {
        "sizes": [fmt_size(s) for s in sizes], "variants": {}, "memory": [], "equivalence": {},
        "env": {"threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(), "load_before": _load(),
                "iters": args.iters, "official": official_path, "encoder": args.encoder,
                "official_note": _official.SKIP_NOTE if not official_path else (
                    _official.SEGRET_PATCH_NOTE if args.encoder == "segret" else None)},
    }
    if not official_path:
        print(f"NOTE: {_official.SKIP_NOTE}", file=sys.stderr)

    for variant in args.variants:
        models = build_models(variant, official_path, impls, encoder=args.encoder)
        fns = {i: features_fn(i, m) for i, m in models.items()}
        backbone, total = count_params(models["fast"])
        entry: Dict[str, Any] = {"params_backbone": backbone, "params_total": total, "gflops": {},
                                 "gflops_official": {}, "latency": {}}
        for size in sizes:
            entry["gflops"][fmt_size(size)] = count_flops(fns["fast"], size) / 1e9
            if "official" in fns:
                entry["gflops_official"][fmt_size(size)] = count_flops(fns["official"], size) / 1e9
            if args.no_latency:
                continue
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            entry["latency"][fmt_size(size)] = time_interleaved(fns, size, args.iters, clean=args.clean,
                                                                max_seconds=args.max_seconds)
            print(f"{variant} {fmt_size(size)}: " + ", ".join(
                f"{k} {v['median_s'] * 1e3:.0f} ms" for k, v in entry["latency"][fmt_size(size)].items()),
                file=sys.stderr)
        res["variants"][variant] = entry
        if official_path:
            res["equivalence"][variant] = check_official(variant, official_path, parse_size(args.check_size),
                                                          encoder=args.encoder)
        del models, fns
        gc.collect()

    if not args.no_memory:
        mem_sizes = [parse_size(s) for s in args.memory_sizes] if args.memory_sizes is not None else sizes
        rows = [(v, s) for v in args.variants for s in mem_sizes]
        if "rmt_t" in args.variants and not args.quick and ("rmt_t", (1024, 1024)) not in rows:
            rows.append(("rmt_t", (1024, 1024)))  # issue #2 bar: fast growth <= 0.5x the official's
        for variant, size in rows:
            row: Dict[str, Any] = {"variant": variant, "size": fmt_size(size)}
            for impl in impls:
                row[impl] = measure_memory(impl, variant, size, args.threads, official_path, args.encoder)
            res["memory"].append(row)
            print(f"memory {variant} {fmt_size(size)}: " + ", ".join(
                f"{i} {row[i].get('growth_mb', float('nan')):.0f} MB" for i in impls), file=sys.stderr)

    res["env"]["load_after"] = _load()
    print_tables(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
