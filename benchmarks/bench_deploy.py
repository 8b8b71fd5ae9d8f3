"""segret_tiny vs SegFormer-B1 where users deploy on the CPU: PyTorch, ONNX Runtime, OpenVINO, bf16 (issue 17).

    python benchmarks/bench_deploy.py                                   # every runtime, 512x512 and 1024x2048
    python benchmarks/bench_deploy.py --sizes 512x512 --runtimes onnxruntime,openvino --iters 5 --no-memory

Rows (runtimes), each with segret_tiny and SegFormer-B1 side by side:

* ``torch``: eager PyTorch, float32 (segret_tiny in its inference form, ``reparameterize_model``);
* ``torch-bf16``: eager under ``torch.autocast("cpu", torch.bfloat16)``;
* ``onnxruntime``: the exported ONNX files in ONNX Runtime's CPU provider, float32;
* ``openvino``: the same files compiled by OpenVINO for its CPU plugin, float32;
* ``openvino-bf16``: the same with ``INFERENCE_PRECISION_HINT=bf16`` (a CPU without native bf16
  runs float32 there, and the table says so).

The files: segret_tiny exported by :func:`segret_zoo.inference.export.export_onnx` with its defaults
(what ``segret-zoo export-onnx`` writes); SegFormer-B1 is transformers' model built from a B1 config
(random weights, nothing downloaded), its logits upsampled to the input size inside the graph as
ours are, exported by ``torch.onnx.export`` (dynamo, opset 18, dynamic batch/height/width). Both
are written to ``--work`` once and reused (``--reexport`` writes them again). Random weights: the
work per forward does not depend on their values. 150 classes, batch 1, whole images.

Time: per size and runtime, segret_tiny and SegFormer-B1 alternate (A B A B ...) for ``--iters``
rounds after ``--warmup`` forwards each at that size (one runtime's sessions at a time: each keeps the
buffers of its largest forward, GiBs at 1024x2048; ONNX Runtime's arena settles only after the second
forward there: 11.8, 13.9, then 10.1 s for segret_tiny), and the medians are reported with the share of the machine's
CPU other processes used meanwhile (a multi-threaded forward sharing a core with another job waits
at every parallel region; ``--clean K`` keeps going until both models have K forwards with the others
idle, as in ``bench_rmt.py``). ``ratio`` is segret_tiny / SegFormer-B1 in the same row, ``/ eager``
segret_tiny / its own eager float32 time at the same size.

The bar and the floor: issue 17 asks for segret_tiny <= 0.75x B1's time in every row. ``bar ms`` is
0.75x B1's time in that row; ``floor ms`` is the least time any exact implementation of segret_tiny
could take here, its FLOPs (``FlopCounterMode`` on the eager model, attention included) at this
machine's float32 matmul peak (``bench_segret.matmul_peak_gflops``, measured at the start), in the
rows that compute in float32 here. Where the floor is above the bar, no runtime, kernel or graph form can meet the bar on this machine without
computing less than the model defines.

Memory: resident-set growth of one forward in a fresh process per (runtime, model, size), after a
64x64 warm-up that does each runtime's lazy initialisation (glibc's mmap threshold pinned, peak
counter reset through ``/proc/self/clear_refs``, as in ``bench_rmt.py``).
"""
from __future__ import annotations

import argparse
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench_rmt import _cpu_ticks, _proc_kb, count_flops  # noqa: E402
from bench_segret import build_segformer_b1, inference_form, matmul_peak_gflops  # noqa: E402

from segret_zoo.inference.export import export_onnx  # noqa: E402
from segret_zoo.models.cpu_kernel import kernel_status, manhattan_kernel  # noqa: E402
from segret_zoo.models.segret import SegRet  # noqa: E402

RUNTIMES = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16")
BAR = 0.75  # issue 17: segret_tiny at most this fraction of B1's time in every row
MODELS = ("segret_tiny", "segformer_b1")
NUM_CLASSES = 150
Runner = Callable[[np.ndarray], Any]


def parse_size(text: str) -> Tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


# ------------------------------------------------------------------------------------ models and files
def build_torch(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "segret_tiny":
        return inference_form(SegRet(backbone="rmt_t", num_classes=NUM_CLASSES))
    return build_segformer_b1(NUM_CLASSES)


def export_b1(path: Path) -> None:
    """SegFormer-B1 as the issue's baseline: torch.onnx.export, dynamo, opset 18, dynamic batch/H/W."""
    model = build_torch("segformer_b1")
    dyn = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        program = torch.onnx.export(model, (torch.randn(2, 3, 128, 160),), dynamo=True, opset_version=18,
                                    input_names=["pixel_values"], output_names=["logits"],
                                    dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},))
    program.save(str(path))


def onnx_files(work: Path, reexport: bool) -> Dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    files = {name: work / f"{name}.onnx" for name in MODELS}
    for name, path in files.items():
        if path.is_file() and not reexport:
            continue
        start = time.perf_counter()
        print(f"exporting {name} to {path} ...", file=sys.stderr, flush=True)
        if name == "segret_tiny":
            export_onnx(build_torch(name), path)
        else:
            export_b1(path)
        print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return files


def ov_bf16_native() -> Optional[bool]:
    try:
        import openvino as ov
    except ImportError:
        return None
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def make_runner(runtime: str, name: str, path: Path, threads: int) -> Runner:
    """A callable taking a 1x3xHxW float32 array and running one forward."""
    if runtime.startswith("torch"):
        torch.set_num_threads(threads)
        model = build_torch(name)
        bf16 = runtime == "torch-bf16"

        def run_torch(x: np.ndarray) -> Any:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(torch.from_numpy(x))
        return run_torch
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"pixel_values": x})[0]
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if runtime == "openvino-bf16" else "f32"}
    request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})[0]


def runs_float32(runtime: str, info: Dict[str, Any]) -> bool:
    """Whether the row computes in float32 here, so that the float32 matmul peak bounds it (bf16 on a
    CPU with native bf16 has another peak: its rows get no floor)."""
    if runtime == "torch-bf16":
        return False
    return runtime != "openvino-bf16" or not info.get("openvino_bf16_native")


def available(runtime: str) -> Optional[str]:
    """None when the runtime can run here, else why not."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}.get(runtime)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed"
    return None


# ------------------------------------------------------------------------------------------- timing
def time_rotation(runners: Dict[str, Runner], x: np.ndarray, iters: int, clean: int, max_seconds: float,
                  clock: str = "wall", clean_share: float = 0.05, warmup: int = 2) -> Dict[str, Dict[str, Any]]:
    """Median ms per runner, all runners in rotation after ``warmup`` forwards each at this size."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name](x)
    times: Dict[str, List[float]] = {n: [] for n in names}
    others: Dict[str, List[float]] = {n: [] for n in names}
    start = time.monotonic()

    def n_clean(n: str) -> int:
        return sum(o < clean_share for o in others[n])

    i = 0
    while i < iters or (clean and min(map(n_clean, names)) < clean and time.monotonic() - start < max_seconds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            busy0, total0, own0 = _cpu_ticks()
            t0 = now()
            runners[name](x)
            times[name].append((now() - t0) * 1e3)
            busy1, total1, own1 = _cpu_ticks()
            others[name].append(max(0, (busy1 - busy0) - (own1 - own0)) / max(1, total1 - total0))
        i += 1
    out = {}
    for name in names:
        sel = [t for t, o in zip(times[name], others[name]) if o < clean_share] if clean else []
        use = sel if clean and len(sel) >= min(clean, 3) else times[name]
        out[name] = {"ms": statistics.median(use), "min_ms": min(times[name]), "all_ms": times[name],
                     "others_share_mean": statistics.mean(others[name]), "clean_only": use is sel}
    return out


# ------------------------------------------------------------------------------------------- memory
def _memory_child(runtime: str, name: str, path: str, size: str, threads: int) -> None:
    run = make_runner(runtime, name, Path(path), threads)
    run(np.zeros((1, 3, 64, 64), np.float32))  # lazy initialisation (kernels, primitives, arenas)
    h, w = parse_size(size)
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    gc.collect()
    before = _proc_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
    out = run(x)
    peak = _proc_kb("VmHWM")
    del out
    print(json.dumps({"growth_mb": (peak - before) / 1024}))


def measure_memory(runtime: str, name: str, path: Path, size: Tuple[int, int], threads: int) -> Optional[float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--_memory-child", runtime, name, str(path), f"{size[0]}x{size[1]}",
           str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"memory {runtime} {name} {size}: {proc.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth_mb"]


# ------------------------------------------------------------------------------------------- report
def machine() -> Dict[str, Any]:
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        import openvino
        ov_version = openvino.__version__
    except ImportError:
        ov_version = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "torch": torch.__version__, "onnxruntime": ort_version, "openvino": ov_version,
            "torch_bf16_native": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
            "openvino_bf16_native": ov_bf16_native(), "retention_kernel": kernel_status()}


def print_table(rows: List[Dict[str, Any]], info: Dict[str, Any], threads: int, clock: str) -> None:
    what = "ms" if clock == "wall" else "CPU ms (process time, not elapsed)"
    print(f"\n## segret_tiny vs SegFormer-B1 by runtime ({threads} threads, batch 1, {NUM_CLASSES} classes, "
          f"logits at the input size; {what})\n")
    print(f"CPU: {info['cpu']}; torch {info['torch']}, onnxruntime {info['onnxruntime']}, openvino "
          f"{info['openvino']}; native bf16: torch {info['torch_bf16_native']}, OpenVINO "
          f"{info['openvino_bf16_native']}; retention kernel: {info['retention_kernel']}\n")
    peak = info.get("matmul_peak_gflops")
    if peak:
        print(f"float32 matmul peak {peak:.0f} GFLOP/s; GFLOP per forward (ours / B1): " + ", ".join(
            f"{size} {g['segret_tiny'] / 1e9:.1f} / {g['segformer_b1'] / 1e9:.1f}"
            for size, g in info.get("flops", {}).items()) + "\n")
    print(f"| size | runtime | segret_tiny ms | SegFormer-B1 ms | ratio | / own eager fp32 | bar ms ({BAR} x B1) "
          "| floor ms (ours at peak) | memory added (MiB) ours / B1 | memory ratio | others' CPU share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = (f"{r['mem_ours']:.0f} / {r['mem_b1']:.0f}" if r.get("mem_ours") is not None
               and r.get("mem_b1") is not None else "-")
        mem_ratio = f"{r['mem_ours'] / r['mem_b1']:.2f}" if r.get("mem_ours") and r.get("mem_b1") else "-"
        eager = f"{r['vs_eager']:.2f}" if r.get("vs_eager") is not None else "-"
        floor = f"{r['floor_ms']:.0f}" if r.get("floor_ms") is not None else "-"
        if r.get("floor_ms") is not None and r["floor_ms"] > r["bar_ms"]:
            floor = f"**{floor}** (above the bar)"
        print(f"| {r['size']} | {r['runtime']} | {r['ours_ms']:.0f} | {r['b1_ms']:.0f} | {r['ratio']:.2f} | {eager} "
              f"| {r['bar_ms']:.0f} | {floor} | {mem} | {mem_ratio} | {r['others']:.0%} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_memory-child":
        _memory_child(argv[1], argv[2], argv[3], argv[4], int(argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="512x512,1024x2048")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated subset of {list(RUNTIMES)}")
    parser.add_argument("--iters", type=int, default=5, help="timed rounds per size (each runs every pair once)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per pair and size first")
    parser.add_argument("--no-floor", action="store_true", help="skip the FLOP count and matmul peak (the floor "
                                                                 "column; costs one eager forward per model and size)")
    parser.add_argument("--clean", type=int, default=0, help="keep timing until every pair has this many "
                                                             "forwards with other processes idle")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="cap on --clean's extra rounds, per size")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time (the figure to publish); cpu: this process's CPU time, for "
                             "--threads 1 on a machine other jobs share (ratios then hold up; absolute times "
                             "and any multi-thread effect do not)")
    parser.add_argument("--work", default="bench_deploy_files", help="folder for the exported ONNX files")
    parser.add_argument("--reexport", action="store_true", help="export the ONNX files again")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's work: use it with --threads 1")

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        parser.error(f"unknown runtime(s) {unknown}; choose from {list(RUNTIMES)}")
    skipped = {r: why for r in runtimes if (why := available(r))}
    for runtime, why in skipped.items():
        print(f"skipping {runtime}: {why}", file=sys.stderr)
    runtimes = [r for r in runtimes if r not in skipped]
    torch.set_num_threads(args.threads)
    manhattan_kernel()  # build the retention kernel before anything is timed
    info = machine()
    if not args.no_floor:
        info["matmul_peak_gflops"] = matmul_peak_gflops(args.threads)
        info["flops"] = {}
    files = onnx_files(Path(args.work), args.reexport) if any(not r.startswith("torch") for r in runtimes) else {}
    rows: List[Dict[str, Any]] = []
    for size in (parse_size(s) for s in args.sizes.split(",") if s.strip()):
        x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
        if not args.no_floor:
            info["flops"][f"{size[0]}x{size[1]}"] = {name: count_flops(build_torch(name), size) for name in MODELS}
        timing: Dict[str, Dict[str, Any]] = {}
        for rt in runtimes:
            # one runtime at a time, its two models alternating: a runtime keeps the buffers of its
            # largest forward (at 1024x2048, GiBs per model), so all of them at once would not fit
            runners = {f"{rt}/{name}": make_runner(rt, name, files.get(name, Path()), args.threads)
                       for name in MODELS}
            timing.update(time_rotation(runners, x, args.iters, args.clean, args.max_seconds, args.clock,
                                        warmup=args.warmup))
            del runners
            gc.collect()
        eager = timing.get("torch/segret_tiny", {}).get("ms")
        for rt in runtimes:
            ours, b1 = timing[f"{rt}/segret_tiny"], timing[f"{rt}/segformer_b1"]
            row = {"size": f"{size[0]}x{size[1]}", "runtime": rt, "ours_ms": ours["ms"], "b1_ms": b1["ms"],
                   "ratio": ours["ms"] / b1["ms"], "vs_eager": ours["ms"] / eager if eager else None,
                   "bar_ms": BAR * b1["ms"],
                   "floor_ms": (info["flops"][f"{size[0]}x{size[1]}"]["segret_tiny"] / info["matmul_peak_gflops"]
                                / 1e6 if not args.no_floor and runs_float32(rt, info) else None),
                   "others": (ours["others_share_mean"] + b1["others_share_mean"]) / 2,
                   "ours_all_ms": ours["all_ms"], "b1_all_ms": b1["all_ms"]}
            if not args.no_memory:
                row["mem_ours"] = measure_memory(rt, "segret_tiny", files.get("segret_tiny", Path()), size,
                                                 args.threads)
                row["mem_b1"] = measure_memory(rt, "segformer_b1", files.get("segformer_b1", Path()), size,
                                               args.threads)
            rows.append(row)
        print(f"done {size[0]}x{size[1]}", file=sys.stderr, flush=True)
    print_table(rows, info, args.threads, args.clock)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "clock": args.clock, "machine": info,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
