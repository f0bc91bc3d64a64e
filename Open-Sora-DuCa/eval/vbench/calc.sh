#!/usr/bin/env bash
# Score a VBench video folder with VBench 0.1.5 in its own environment (made by setup_env.sh):
#   bash eval/vbench/calc.sh VIDEO_DIR [SCORE_DIR] [--offline] [--start I --end J] [--check-only]
# The environment is VBENCH_ENV, else <repository root>/.venv-vbench. Details: calc_vbench.py's docstring.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
ENV_DIR="${VBENCH_ENV:-$ROOT/.venv-vbench}"
PY="$ENV_DIR/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "error: no VBench environment at $ENV_DIR; create it with: bash $HERE/setup_env.sh (or set VBENCH_ENV)" >&2
    exit 2
fi
exec "$PY" "$HERE/calc_vbench.py" "$@"
