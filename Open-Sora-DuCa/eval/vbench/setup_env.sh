#!/usr/bin/env bash
# Create VBench's own environment beside the project (vbench==0.1.5 pins numpy < 2, timm <= 1.0.12 and
# transformers 4.33.2, which the project's environment cannot share):
#   bash eval/vbench/setup_env.sh [ENV_DIR] [--dry-run]
# ENV_DIR defaults to <repository root>/.venv-vbench (what calc.sh uses). About 6.7 GB and 5-6 minutes
# (shared/reference/environment.md), plus detectron2 built from source for the four GRiT dimensions
# (object_class, multiple_objects, color, spatial_relationship). --dry-run prints the commands only.
# Overrides: PYTHON (the interpreter, default python3), TORCH_SPEC (e.g. "torch==2.1.2 torchvision==0.16.2"
# with --index-url in PIP_EXTRA for a CUDA build).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
ENV_DIR="$ROOT/.venv-vbench"
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "error: unknown option $arg; pass [ENV_DIR] [--dry-run]" >&2; exit 2 ;;
        *) ENV_DIR="$arg" ;;
    esac
done
PYTHON="${PYTHON:-python3}"
# VBench 0.1.5 itself and its pins come from its wheel's metadata; the extra pins are the reference's
# requirements-eval.txt [vbench] section (detectron2 at commit ff53992, pyiqa 0.1.10, lvis 0.5.3).
VBENCH_SPEC="vbench==0.1.5"
EXTRA_SPECS=("pyiqa==0.1.10" "lvis==0.5.3" "imageio>=2.34.1")
DETECTRON2_SPEC="detectron2 @ git+https://github.com/facebookresearch/detectron2.git@ff53992"

run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

if [[ -e "$ENV_DIR" && ! -x "$ENV_DIR/bin/python" ]]; then
    echo "error: $ENV_DIR exists and is not a virtual environment; pass another ENV_DIR" >&2
    exit 2
fi
if ! command -v "$PYTHON" >/dev/null; then
    echo "error: $PYTHON not found; set PYTHON to a Python 3.10 or 3.11 interpreter" >&2
    exit 2
fi
PIP="$ENV_DIR/bin/python -m pip"
[[ -x "$ENV_DIR/bin/python" ]] || run "$PYTHON" -m venv "$ENV_DIR"
run $PIP install --upgrade pip wheel setuptools
if [[ -n "${TORCH_SPEC:-}" ]]; then
    # shellcheck disable=SC2086
    run $PIP install $TORCH_SPEC ${PIP_EXTRA:-}
fi
run $PIP install "$VBENCH_SPEC" "${EXTRA_SPECS[@]}"
# detectron2 builds from GitHub: where github.com cannot be reached the other 12 dimensions still score, so a
# failure here is reported at the end instead of stopping the script (calc.sh refuses the four GRiT dimensions
# up front until detectron2 is installed).
DETECTRON2_OK=1
run $PIP install --no-build-isolation "$DETECTRON2_SPEC" || DETECTRON2_OK=0
run "$ENV_DIR/bin/python" -c "import numpy, transformers, vbench; assert numpy.__version__ < '2', numpy.__version__; assert transformers.__version__ == '4.33.2', transformers.__version__; print('VBench environment ready:', numpy.__version__, transformers.__version__)"
echo "score with: bash $HERE/calc.sh VIDEO_DIR   (VBENCH_ENV=$ENV_DIR if not the default)"
if [[ $DETECTRON2_OK -eq 0 ]]; then
    echo "warning: detectron2 could not be installed (it builds from github.com); object_class, multiple_objects," \
         "color and spatial_relationship cannot be scored until it is: rerun this script where github.com is" \
         "reachable. The other 12 dimensions score now (calc.sh VIDEO_DIR --start 0 --end 6, then --start 10)." >&2
    exit 3
fi
