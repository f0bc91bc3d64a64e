"""Open-Sora-DuCa: OpenSora 1.2 (STDiT3-XL/2, OpenSora-VAE-v1.2, rectified flow) on the shared DuCa cache engine.

Modules: ``stdit3`` (the transformer), ``rflow`` (the sampler), ``vae`` (the video VAE pipeline),
``pipeline`` (one video), ``inference`` (``python -m opensora_duca.inference`` = ``scripts/inference.py CONFIG``:
prompts and VBench sampling), ``config`` (upstream's config files, read as data), ``aspect`` (pixel tables),
``vbench_launch`` (``eval/vbench/launch.sh``), ``vbench_table`` (VBench totals, table, plot).
"""
