r"""Upstream OpenSora's entry point, run by path from ``Open-Sora-DuCa/`` (or the repository root):

    python scripts/inference.py configs/opensora-v1-2/inference/sample.py --num-frames 2s --resolution 480p \
        --aspect-ratio 9:16 --prompt "a beautiful waterfall"

The same program as ``python -m opensora_duca.inference`` (see its --help); the config file is read as data.
Needs the project installed (``pip install -e .`` at the repository root).
"""

import sys

from opensora_duca.inference import main

if __name__ == "__main__":
    sys.exit(main())
