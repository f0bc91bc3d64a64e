"""Open-Sora-DuCa: OpenSora 1.2 (STDiT3-XL/2, OpenSora-VAE-v1.2, rectified flow) on the shared DuCa cache engine.

Modules: ``stdit3`` (the transformer), ``rflow`` (the sampler), ``vae`` (the video VAE pipeline),
``text`` (T5 conditioning), ``inference`` (``python -m opensora_duca.inference``: prompts and VBench sampling).
"""
