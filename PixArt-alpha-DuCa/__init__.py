"""PixArt-alpha XL/2 (256, 512, 1024-MS) with DuCa / ToCa / FORA caching through ``duca_common.cache``.

Modules: ``model`` (PixArt), ``checkpoint`` (official .pth and diffusers loading), ``text`` (T5 and caption
cleaning), ``dpm_solver``, ``vae``, ``pipeline`` (CFG sampling, FLOPs), ``cli`` and ``scripts`` (inference,
inference_ddp). See docs/pixart.md.
"""
