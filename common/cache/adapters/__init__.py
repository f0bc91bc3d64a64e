"""The cache engine attached from outside to models the project does not own.

``duca_common.cache.adapters.diffusers``: diffusers' ``DiTPipeline`` / ``PixArtAlphaPipeline`` (and their
``DiTTransformer2DModel`` / ``PixArtTransformer2DModel``) without editing diffusers::

    from duca_common.cache.adapters.diffusers import apply_cache, remove_cache
"""
