#!/usr/bin/env bash
# GPU check: the speed benchmark on the DiT-XL/2 shape (random weights, 256 px latents) on one GPU.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: results/gpu_check
#
# One image + its CFG twin, 50 DDIM steps (the paper's setting), warm-up 1, 3 timed repeats, the DiT
# presets of the paper's rows side by side with the uncached run; CUDA events for time, the CUDA
# allocator for peak memory, one extra profiled run per method for the engine's own time. On an H200 /
# A100 a DiT-XL/2 CFG forward takes ~10-30 ms, so the sampling runs take about a minute and the meta-
# device FLOPs pass (CPU) about as long: well under 5 minutes. The second invocation repeats the
# comparison with torch.compile on the blocks' attention and MLP (set COMPILE=0 to skip it).
# Writes OUT_DIR/eager/benchmark.{json,md} (and OUT_DIR/compile/...).
set -euo pipefail

OUT="${1:-results/gpu_check}"
DEVICE="${DEVICE:-cuda}"
COMPILE="${COMPILE:-1}"
METHODS="dit-fora-n3 dit-toca-n3-r93 dit-duca-n3-r95 dit-duca-n5-r95 dit-taylorseer-n3-o3"

python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); run it on a GPU machine")
print("GPU:", torch.cuda.get_device_name(0))
PY

start=$(date +%s)
python -m duca_scripts.benchmark_speed --model DiT-XL/2 --device "$DEVICE" --steps 50 --images 1 \
    --warmup 1 --repeats 3 --methods $METHODS --out "$OUT/eager"
if [ "$COMPILE" = "1" ]; then
    # measured FLOPs are identical to the eager pass: skip the meta counter to stay inside the time budget
    python -m duca_scripts.benchmark_speed --model DiT-XL/2 --device "$DEVICE" --steps 50 --images 1 \
        --warmup 2 --repeats 3 --methods dit-duca-n3-r95 dit-fora-n3 --compile --skip-measured-flops \
        --out "$OUT/compile"
fi
echo "gpu_check: done in $(( $(date +%s) - start )) s; JSON in $OUT/eager/benchmark.json"
