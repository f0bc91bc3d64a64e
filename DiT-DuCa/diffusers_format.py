"""DiT weights in the diffusers format (``DiTTransformer2DModel``), both directions.

Users bring either the official ``DiT-XL-2-*.pt`` (facebookresearch names, :mod:`dit_duca.models`) or a
diffusers folder: a ``DiTPipeline`` snapshot (``model_index.json`` + ``transformer/``) or the transformer
folder itself (``config.json`` + ``diffusion_pytorch_model.safetensors`` / ``.bin`` / a sharded index).
:func:`read_diffusers_dit` turns such a folder into our key names plus the constructor arguments of our
``DiT``; :func:`to_diffusers` / :func:`diffusers_config` / :func:`save_diffusers` go the other way.

The name map (read from diffusers 0.42 ``models/transformers/dit_transformer_2d.py``, ``attention.py``):

======================================  ===============================================================
ours (official DiT)                     diffusers ``DiTTransformer2DModel``
======================================  ===============================================================
``x_embedder.proj``                     ``pos_embed.proj``
``t_embedder.mlp.0`` / ``.mlp.2``       ``transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1`` / ``linear_2``
``y_embedder.embedding_table``          ``transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table``
``blocks.{i}.adaLN_modulation.1``       ``transformer_blocks.{i}.norm1.linear``
``blocks.{i}.attn.qkv`` (fused, q k v)  ``transformer_blocks.{i}.attn1.to_q`` / ``to_k`` / ``to_v``
``blocks.{i}.attn.proj``                ``transformer_blocks.{i}.attn1.to_out.0``
``blocks.{i}.mlp.fc1`` / ``fc2``        ``transformer_blocks.{i}.ff.net.0.proj`` / ``ff.net.2``
``final_layer.adaLN_modulation.1``      ``proj_out_1``
``final_layer.linear``                  ``proj_out_2``
``pos_embed`` (fixed sin-cos table)     not stored (diffusers recomputes it; so do we on load)
======================================  ===============================================================

diffusers gives every block its own copy of the timestep and label embedders (the output layer uses block
0's); DiT has one. Export copies ours into every block; import takes block 0's and refuses weights whose
blocks disagree (they cannot be one DiT).

Two computations differ by design in diffusers' DiT, whatever the weights (docs/diffusers.md):

* the timestep frequencies: ``Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`` gives
  ``exp(-ln(10000) k / 127)``, DiT uses ``exp(-ln(10000) k / 128)`` (k = 0..127);
* the layer norm before the MLP uses ``config.norm_eps`` (default 1e-5, and the official hub config does not
  set it), DiT uses 1e-6.

Our exports write ``norm_eps=1e-6``; :func:`match_official_dit` also sets the frequency shift of a loaded
diffusers model to DiT's, after which it computes the official DiT forward (tested to ~1e-6).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import torch

from duca_common.errors import CheckpointError

from .models import DiT

DIFFUSERS_CLASS_NAMES = ("DiTTransformer2DModel", "Transformer2DModel")   # the second: pre-0.28 hub configs
TRANSFORMER_SUBFOLDER = "transformer"                 # DiTPipeline layout: <root>/transformer/
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SHARD_INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
# DiT's layer norms (facebookresearch/DiT models.py: LayerNorm(..., eps=1e-6)); written into exported configs.
DIT_NORM_EPS = 1e-6
# DiT's timestep frequencies divide by half the table width (shift 0); diffusers' DiT embedder uses shift 1.
DIT_FREQ_SHIFT = 0
# The diffusers DiT settings our DiT implements; anything else is a different architecture.
REQUIRED_SETTINGS = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate",
                     "norm_elementwise_affine": False, "attention_bias": True}
# diffusers' FeedForward in DiTTransformer2DModel has a fixed width multiplier of 4 (no ff_inner_dim option).
DIFFUSERS_MLP_RATIO = 4

_BLOCK_MAP = [          # (ours inside blocks.{i}., diffusers inside transformer_blocks.{i}.)
    ("adaLN_modulation.1.", "norm1.linear."),
    ("attn.proj.", "attn1.to_out.0."),
    ("mlp.fc1.", "ff.net.0.proj."),
    ("mlp.fc2.", "ff.net.2."),
]
_QKV = ("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")
_EMBEDDER_MAP = [       # shared embedders: ours -> diffusers, per block
    ("t_embedder.mlp.0.", "norm1.emb.timestep_embedder.linear_1."),
    ("t_embedder.mlp.2.", "norm1.emb.timestep_embedder.linear_2."),
    ("y_embedder.embedding_table.", "norm1.emb.class_embedder.embedding_table."),
]
_TOP_MAP = [
    ("x_embedder.proj.", "pos_embed.proj."),
    ("final_layer.adaLN_modulation.1.", "proj_out_1."),
    ("final_layer.linear.", "proj_out_2."),
]
DROPPED_KEYS = ("pos_embed",)     # recomputed from the geometry on both sides


def _diffusers_defaults() -> dict:
    """Constructor defaults of ``DiTTransformer2DModel`` (what a config without a key means)."""
    from diffusers import DiTTransformer2DModel

    params = inspect.signature(DiTTransformer2DModel.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


# ------------------------------------------------------------------------------------------------
# Ours -> diffusers
# ------------------------------------------------------------------------------------------------

def to_diffusers(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Our (official DiT) state dict -> ``DiTTransformer2DModel`` keys. ``pos_embed`` is dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in DROPPED_KEYS:
            continue
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if m:
            i, rest = m.groups()
            if rest.startswith("attn.qkv."):
                suffix = rest[len("attn.qkv."):]
                for name, chunk in zip(_QKV, value.chunk(3, dim=0), strict=True):
                    out[f"transformer_blocks.{i}.{name}{suffix}"] = chunk.clone()
                continue
            out[f"transformer_blocks.{i}.{_rename(rest, _BLOCK_MAP, key)}"] = value
            continue
        emb = next(((o, d) for o, d in _EMBEDDER_MAP if key.startswith(o)), None)
        if emb is not None:
            for i in range(depth):
                out[f"transformer_blocks.{i}.{emb[1]}{key[len(emb[0]):]}"] = value.clone()
            continue
        out[_rename(key, _TOP_MAP, key)] = value
    return out


def diffusers_config(model: DiT) -> dict:
    """The ``DiTTransformer2DModel`` config of ``model`` (with DiT's ``norm_eps``)."""
    hidden = model.hidden_size
    mlp_hidden = model.blocks[0].mlp.fc1.out_features
    if mlp_hidden != DIFFUSERS_MLP_RATIO * hidden:
        raise CheckpointError(f"this DiT has an MLP of width {mlp_hidden} = {mlp_hidden / hidden:g} x hidden; "
                              f"diffusers' DiTTransformer2DModel only has {DIFFUSERS_MLP_RATIO} x hidden")
    if model.y_embedder.dropout_prob <= 0:
        raise CheckpointError("this DiT has no null-class row (class_dropout_prob 0); diffusers' DiT always has one")
    return {"_class_name": "DiTTransformer2DModel", "num_attention_heads": model.num_heads,
            "attention_head_dim": hidden // model.num_heads, "in_channels": model.in_channels,
            "out_channels": model.out_channels, "num_layers": model.depth, "sample_size": model.input_size,
            "patch_size": model.patch_size, "num_embeds_ada_norm": model.num_classes, "norm_eps": DIT_NORM_EPS,
            **REQUIRED_SETTINGS}


def save_diffusers(model: DiT, folder: str | Path) -> Path:
    """Write ``folder/config.json`` and ``folder/diffusion_pytorch_model.safetensors`` (a transformer folder
    that ``DiTTransformer2DModel.from_pretrained`` and :func:`read_diffusers_dit` both read)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    config = diffusers_config(model)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in to_diffusers(model.state_dict(), model.depth).items()}
    save_file(state, str(folder / WEIGHT_FILES[0]))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return folder


def match_official_dit(transformer) -> None:
    """Make a loaded diffusers ``DiTTransformer2DModel`` compute DiT's timestep frequencies (shift 0).

    Sets an attribute of each block's ``norm1.emb.time_proj`` (no diffusers code is changed). Combined
    with ``norm_eps=1e-6`` in the config, the model then computes the official DiT forward."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = DIT_FREQ_SHIFT


# ------------------------------------------------------------------------------------------------
# diffusers -> ours
# ------------------------------------------------------------------------------------------------

def from_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``DiTTransformer2DModel`` keys -> ours (without ``pos_embed``). Inverse of :func:`to_diffusers`."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    embedders: dict[str, dict[int, torch.Tensor]] = {}
    inverse_block = [(d, o) for o, d in _BLOCK_MAP]
    inverse_top = [(d, o) for o, d in _TOP_MAP]
    for key, value in sd.items():
        m = re.match(r"transformer_blocks\.(\d+)\.(.*)", key)
        if not m:
            out[_rename(key, inverse_top, key)] = value
            continue
        i, rest = m.groups()
        part = next((p for p in _QKV if rest.startswith(p)), None)
        if part is not None:
            qkv.setdefault((i, rest[len(part):]), {})[part] = value
            continue
        emb = next(((o, d) for o, d in _EMBEDDER_MAP if rest.startswith(d)), None)
        if emb is not None:
            embedders.setdefault(emb[0] + rest[len(emb[1]):], {})[int(i)] = value
            continue
        out[f"blocks.{i}.{_rename(rest, inverse_block, key)}"] = value
    for (i, suffix), parts in qkv.items():
        if set(parts) != set(_QKV):
            raise CheckpointError(f"diffusers DiT weights of block {i} have {sorted(parts)} but need all of "
                                  f"{list(_QKV)} ({suffix.rstrip('.')})")
        out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    for name, per_block in embedders.items():
        first = per_block[min(per_block)]
        differing = [i for i, v in sorted(per_block.items()) if v.shape != first.shape or not torch.equal(v, first)]
        if differing:
            raise CheckpointError(f"the per-block copies of {name} differ (blocks {differing[:5]} differ from block "
                                  f"{min(per_block)}); DiT has one timestep/label embedder, so these weights are not "
                                  f"a DiT")
        out[name] = first
    return out


def _rename(key: str, table: list[tuple[str, str]], full_key: str) -> str:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    raise CheckpointError(f"no DiT/diffusers name mapping for key {full_key!r}; is this a DiT transformer "
                          f"(DiTTransformer2DModel)?")


def is_diffusers_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a diffusers transformer (itself or under ``transformer/``)."""
    path = Path(path)
    return path.is_dir() and any((f / CONFIG_FILE).is_file() for f in (path, path / TRANSFORMER_SUBFOLDER))


def transformer_folder(path: str | Path) -> Path:
    """The folder with the transformer's config.json: ``path`` itself or ``path/transformer``."""
    path = Path(path)
    for folder in (path, path / TRANSFORMER_SUBFOLDER):
        if (folder / CONFIG_FILE).is_file() and (
                any((folder / w).is_file() for w in WEIGHT_FILES + SHARD_INDEX_FILES)):
            return folder
    raise CheckpointError(f"{path} is not a diffusers DiT folder: expected {CONFIG_FILE} and one of "
                          f"{', '.join(WEIGHT_FILES + SHARD_INDEX_FILES)} in it or in its {TRANSFORMER_SUBFOLDER}/ "
                          f"subfolder (a DiTPipeline snapshot)")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from duca_common.vae import read_state_dict

    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    for name in SHARD_INDEX_FILES:
        if (folder / name).is_file():
            weight_map = json.loads((folder / name).read_text()).get("weight_map", {})
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{folder / name} lists the shard {shard}, which is missing")
                state.update(read_state_dict(folder / shard))
            return state
    raise CheckpointError(f"no weights in {folder}")


def dit_kwargs_from_config(config: dict, source: str) -> dict:
    """Our ``DiT(**kwargs)`` from a diffusers ``config.json`` (absent keys take diffusers' defaults)."""
    name = config.get("_class_name")
    if name is not None and name not in DIFFUSERS_CLASS_NAMES:
        raise CheckpointError(f"{source} holds a {name}, not a DiT transformer ({' or '.join(DIFFUSERS_CLASS_NAMES)})")
    cfg = {**_diffusers_defaults(), **config}
    wrong = {k: cfg.get(k) for k, v in REQUIRED_SETTINGS.items() if cfg.get(k) != v}
    if wrong:
        hint = (" (norm_type 'ada_norm_single' is PixArt-alpha: load it with pixart_duca)"
                if cfg.get("norm_type") == "ada_norm_single" else "")
        raise CheckpointError(f"{source} is not a DiT: {wrong} where DiT needs "
                              f"{ {k: REQUIRED_SETTINGS[k] for k in wrong} }{hint}")
    in_channels = cfg["in_channels"]
    out_channels = cfg["out_channels"] if cfg["out_channels"] is not None else in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(f"{source}: out_channels {out_channels} is neither in_channels ({in_channels}) nor twice "
                              f"it (learned sigma); DiT supports only those")
    return dict(input_size=cfg["sample_size"], patch_size=cfg["patch_size"], in_channels=in_channels,
                hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"], depth=cfg["num_layers"],
                num_heads=cfg["num_attention_heads"], mlp_ratio=float(DIFFUSERS_MLP_RATIO),
                num_classes=cfg["num_embeds_ada_norm"], learn_sigma=out_channels == 2 * in_channels)


def read_diffusers_dit(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict in our names with ``pos_embed`` recomputed, our ``DiT`` kwargs) from a diffusers folder."""
    folder = transformer_folder(path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not valid JSON: {exc}") from exc
    kwargs = dit_kwargs_from_config(config, str(folder))
    try:
        raw = _read_weights(folder)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read the weights in {folder}: {type(exc).__name__}: {exc}") from exc
    state = from_diffusers(raw)
    with torch.device("meta"):
        probe = DiT(**kwargs)
    expected = probe.state_dict()
    if ("x_embedder.proj.weight" in state
            and expected["x_embedder.proj.weight"].shape != state["x_embedder.proj.weight"].shape):
        raise CheckpointError(f"{folder}: the patch embedding has shape {tuple(state['x_embedder.proj.weight'].shape)} "
                              f"but config.json describes {tuple(expected['x_embedder.proj.weight'].shape)}")
    # the fixed sin-cos table diffusers does not store: our own, for this geometry
    side = kwargs["input_size"] // kwargs["patch_size"]
    from duca_common.layers import pos_embed_2d
    state["pos_embed"] = pos_embed_2d(kwargs["hidden_size"], (side, side), base_size=side, lewei_scale=1.0).float()
    return state, kwargs
