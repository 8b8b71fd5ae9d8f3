#!/usr/bin/env bash
# Re-measure every table of benchmarks/README.md ("Measured here"), in the README's order, on an
# idle machine (nothing else running: the scripts report other processes' CPU share, and a
# multi-threaded forward sharing a core with another job says nothing about the code).
#
#   bash benchmarks/run_all.sh [OUT_DIR]            # ~45 min on an idle 2-core machine
#   QUICK=1 bash benchmarks/run_all.sh [OUT_DIR]    # smoke run: every command with its smallest options
#
# Each step writes OUT_DIR/<step>.txt (the tables as printed, stderr included) and, where the script
# has --json, OUT_DIR/<step>.json. Columns are interleaved inside each script; the steps run one
# after the other. With SEGRET_ZOO_OFFICIAL_RMT=/path/to/RMT.py (github.com/qhfan/RMT,
# classfication_release/RMT.py) bench_segret.py adds the official_code column (about +10 min in
# step 1, +5 min in step 2: the official code materializes 2 GiB masks at 1024x2048).
# Estimated minutes per step (idle 2-core machine, from the earlier design's timings) in brackets.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${1:-/tmp/segret-bench-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
THREADS="${THREADS:-2}"
QUICK="${QUICK:-0}"

step() {  # step NAME COMMAND...: run one command, tee its output, time it
    local name="$1"
    shift
    echo "== $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee "$OUT/$name.txt"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/$name.txt"
    echo "== $name took $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

if [ "$QUICK" = 1 ]; then
    step segret_quick python benchmarks/bench_segret.py --threads "$THREADS" --cases 512x512 --iters 1 \
        --no-memory --check-size 64x96 --json "$OUT/segret_quick.json"
    step predict_quick python benchmarks/bench_predict.py --threads "$THREADS" --size 128 --iters 1 --warmup 0 \
        --no-onnx --json "$OUT/predict_quick.json"
    step levers_quick python benchmarks/bench_levers.py --threads "$THREADS" --iters 1 --sizes 128x128 \
        --only queries,kernel,cpu_kernel,inplace,upsample,faults
    step predict_memory_quick python benchmarks/bench_predict_memory.py --threads "$THREADS" --megapixels 0.3 --compare
    step deploy_quick python benchmarks/bench_deploy.py --threads "$THREADS" --sizes 64x96 --iters 1 --no-memory \
        --work "$OUT/deploy_files" --json "$OUT/deploy_quick.json"
    echo "smoke run done: $OUT"
    exit 0
fi

# 1. bench_segret run 1: 512x512 and 1024x2048 whole, all columns, memory [~12]
step segret_run1 python benchmarks/bench_segret.py --threads "$THREADS" --cases 512x512,1024x2048 --iters 5 \
    --json "$OUT/segret_run1.json"
# 2. run 2: 512x1024 whole and the Cityscapes slide protocol at 1024x2048 [~8]
step segret_run2 python benchmarks/bench_segret.py --threads "$THREADS" --cases "512x1024,1024x2048 slide" \
    --iters 3 --json "$OUT/segret_run2.json"
# 3-5. segret_tiny vs B1 only, repeated (the VM drifts between runs) [~3, ~2, ~1]
step segret_run3 python benchmarks/bench_segret.py --threads "$THREADS" --cases 512x512,1024x2048 --iters 5 \
    --no-straightforward --json "$OUT/segret_run3.json"
step segret_run4 python benchmarks/bench_segret.py --threads "$THREADS" --cases 1024x2048,512x512 --iters 5 \
    --no-straightforward --no-memory --json "$OUT/segret_run4.json"
step segret_run5 python benchmarks/bench_segret.py --threads "$THREADS" --cases 512x512 --iters 9 \
    --no-straightforward --no-memory --json "$OUT/segret_run5.json"
# 6. Segmenter predict, unfolded vs folded model (and onnxruntime: drop --no-onnx, +2 min) [~1]
step predict python benchmarks/bench_predict.py --model segret_tiny --threads "$THREADS" --iters 10 --no-onnx \
    --json "$OUT/predict.json"
# 7. the levers, one process each [~7 in all; compile ~2]
for lever in queries attention kernel cpu_kernel bf16 inplace upsample faults compile; do
    step "lever_$lever" python benchmarks/bench_levers.py --threads "$THREADS" --iters 5 --only "$lever"
done
# 7b. the allocator-settings row: the faults lever (time per forward of both models) under each setting [~1]
step lever_faults_thp env THP_MEM_ALLOC_ENABLE=1 \
    python benchmarks/bench_levers.py --threads "$THREADS" --iters 5 --only faults
step lever_faults_malloc env MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 \
    python benchmarks/bench_levers.py --threads "$THREADS" --iters 5 --only faults
# 8. peak RSS of predict on large photos [~1]
step predict_memory_12mp python benchmarks/bench_predict_memory.py --threads "$THREADS" --megapixels 12
step predict_memory_3mp python benchmarks/bench_predict_memory.py --threads "$THREADS" --megapixels 3 --compare
# 9. the deployment runtimes (issue 17): both models exported once into OUT/deploy_files (~2 min),
# every runtime at 512x512; at 1024x2048 the fp32 ones (PyTorch bf16 on a CPU without native bf16
# is emulated: B1 alone takes minutes per forward there) [~10, ~12]
step deploy_512 python benchmarks/bench_deploy.py --threads "$THREADS" --sizes 512x512 --iters 5 \
    --work "$OUT/deploy_files" --json "$OUT/deploy_512.json"
step deploy_1024 python benchmarks/bench_deploy.py --threads "$THREADS" --sizes 1024x2048 \
    --runtimes torch,onnxruntime,openvino --iters 3 --work "$OUT/deploy_files" --json "$OUT/deploy_1024.json"
echo "all tables re-measured: $OUT"
