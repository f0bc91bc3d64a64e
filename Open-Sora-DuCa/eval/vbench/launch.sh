#!/usr/bin/env bash
# VBench sampling on every local GPU, one process per GPU (run from Open-Sora-DuCa/ or anywhere):
#   bash eval/vbench/launch.sh CKPT NUM_FRAMES NAME RESOLUTION ASPECT_RATIO [NUM_SAMPLING_STEPS [FLOW]] [--flags]
# e.g. bash eval/vbench/launch.sh hpcai-tech/OpenSora-STDiT-v3 51 duca 480p 9:16
#      bash eval/vbench/launch.sh hpcai-tech/OpenSora-STDiT-v3 51 none 480p 9:16 --cache none
# No GPU: it stops and says so; --allow-cpu (or DUCA_VBENCH_ALLOW_CPU=1) samples on the CPU.
# Rerun the same command to finish an interrupted run. Details: python -m opensora_duca.vbench_launch --help
set -euo pipefail
exec "${PYTHON:-python}" -m opensora_duca.vbench_launch "$@"
