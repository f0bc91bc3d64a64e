#!/usr/bin/env bash
# The prepared GPU run: one GPU, at most 10 minutes (duca_scripts.gpu_bench; docs/benchmarks.md).
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: results/gpu_bench
#
# Uncached vs FORA / ToCa / DuCa / TaylorSeer, wall time and peak memory, eager then torch.compile, for
# DiT-XL/2 at 256 and 512 px, PixArt-XL/2 at 1024 px and OpenSora 1.2 at 480p (few frames), random
# weights at the real shapes (DIT_CKPT=path/DiT-XL-2-256x256.pt uses real DiT weights). The Python script
# stops starting new parts after 540 s; `timeout` is the hard stop at 10 minutes. Writes
# OUT_DIR/gpu_bench.json and OUT_DIR/gpu_bench.md (ratios to the FLOPs speed-ups included) and
# OUT_DIR/gpu_bench.png (per workload: wall-clock against FLOPs speed-up of each method, eager and compiled,
# with the y = x line; peak memory below; not written when every part was skipped).
set -euo pipefail

OUT="${1:-results/gpu_bench}"
EXTRA=()
if [ -n "${DIT_CKPT:-}" ]; then EXTRA+=(--dit-ckpt "$DIT_CKPT"); fi

# exit 2 (a usage error, as every entry point) with one line when no GPU is visible; any other failure of
# the probe (torch missing) keeps its own message and status
set +e
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)"
probe=$?
set -e
if [ "$probe" -eq 2 ]; then
    echo "error: gpu_check: no CUDA device is visible; run it on a GPU machine" >&2
    exit 2
elif [ "$probe" -ne 0 ]; then
    exit "$probe"
fi
timeout 600 python -m duca_scripts.gpu_bench --device cuda --out "$OUT" --progress "${EXTRA[@]}"
