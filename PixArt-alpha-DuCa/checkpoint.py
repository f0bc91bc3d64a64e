"""Loading PixArt weights: the official ``.pth`` files and diffusers-format transformers.

* Official files (models.md B.1): a torch pickle whose ``'state_dict'`` entry holds exactly the keys of
  ``PixArt.state_dict()`` (437, or 445 for 1024-MS). Loaded with ``weights_only=True`` and
  ``strict=True``; ``pos_embed`` is then recomputed (B.4), as upstream ignores the stored table.
* diffusers format (B.10): ``transformer/diffusion_pytorch_model.safetensors`` (or ``.bin``) plus
  ``config.json`` in a local folder or a hub repo. The keys are mapped back to the original names. That
  format drops ``pos_embed`` (recomputed) and the learned null caption ``y_embedding`` (so the sampler
  falls back to T5 of the empty prompt, as diffusers' pipeline does).

The architecture is read from the weights themselves (widths, depth, token count, MS embedders), so a
checkpoint can never be paired with the wrong model; only the head count is not visible in the shapes
and follows PixArt's head width of 72.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from duca_common.errors import CheckpointError, read_failure  # noqa: F401  (the one checkpoint error)
from duca_common.validate import looks_like_hub_id

from .model import HEAD_DIM, LEWEI_SCALE, VAE_DOWNSAMPLE, PixArt, PixArtConfig

DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DIFFUSERS_SUBFOLDER = "transformer"
# diffusers' default interpolation_scale rule (B.10): max(sample_size // 64, 1).
DIFFUSERS_INTERPOLATION_DIVISOR = 64




# ---------------------------------------------------------------------------------------------------
# Architecture from weights
# ---------------------------------------------------------------------------------------------------
def config_from_state_dict(sd: dict[str, torch.Tensor], lewei_scale: float | None = None) -> PixArtConfig:
    """The PixArtConfig whose ``state_dict()`` has the shapes of ``sd`` (original key names)."""
    required = ("x_embedder.proj.weight", "y_embedder.y_proj.fc1.weight", "final_layer.linear.weight", "pos_embed")
    missing = [k for k in required if k not in sd]
    if missing:
        raise CheckpointError(f"not a PixArt-alpha checkpoint: keys {missing} are missing (found e.g. "
                              f"{sorted(sd)[:3]}); pass a PixArt-XL-2-*.pth file or a diffusers PixArt folder")
    hidden, in_ch, patch, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    tokens = sd["pos_embed"].shape[1]
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise CheckpointError(f"pos_embed has {tokens} tokens, not a square grid; this is not a PixArt checkpoint")
    out_ch = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    multi_scale = "csize_embedder.mlp.0.weight" in sd
    input_size = side * patch
    if lewei_scale is None:
        lewei_scale = LEWEI_SCALE.get(input_size * VAE_DOWNSAMPLE, 2.0 if multi_scale else 1.0)
    text_tokens, caption_channels = (sd["y_embedder.y_embedding"].shape if "y_embedder.y_embedding" in sd
                                     else (None, sd["y_embedder.y_proj.fc1.weight"].shape[1]))
    return PixArtConfig(input_size=input_size, hidden_size=hidden, depth=depth, num_heads=max(hidden // HEAD_DIM, 1),
                        patch_size=patch, in_channels=in_ch, learn_sigma=out_ch == 2 * in_ch,
                        caption_channels=caption_channels, text_tokens=text_tokens or PixArtConfig.text_tokens,
                        lewei_scale=lewei_scale, multi_scale=multi_scale)


def check_image_size(config: PixArtConfig, image_size: int, source: str) -> None:
    """A non-MS model only samples at its training size; MS accepts any multiple of 8 * patch."""
    if config.multi_scale:
        step = VAE_DOWNSAMPLE * config.patch_size
        if image_size % step:
            raise CheckpointError(f"--image_size {image_size} is not a multiple of {step}, which the MS model needs")
        return
    if image_size != config.image_size:
        raise CheckpointError(f"{source} is a {config.image_size}x{config.image_size} PixArt model "
                              f"(pos_embed of {config.base_size ** 2} tokens) but --image_size is {image_size}; "
                              f"pass --image_size {config.image_size} or the checkpoint trained at {image_size}")


# ---------------------------------------------------------------------------------------------------
# Official .pth
# ---------------------------------------------------------------------------------------------------
def read_pth_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist; download PixArt-XL-2-256x256.pth "
                              f"(hub repo PixArt-alpha/PixArt-alpha) and pass its path with --model_path")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:       # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"cannot read {str(path)!r} as a torch checkpoint ({read_failure(err)}); pass an "
                              f"official PixArt .pth (or a diffusers folder) with --model_path") from err
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{str(path)!r} holds no tensor dict under 'state_dict'; is it a PixArt checkpoint?")
    return obj


def load_state_dict_strict(model: PixArt, sd: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source} does not match the PixArt model: {len(missing)} missing keys "
                              f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, wrong shapes "
                              f"{wrong[:5]}")
    model.load_state_dict(sd, strict=True)
    model.reset_pos_embed()


def load_pth(path: str | os.PathLike, config: PixArtConfig | None = None, **model_kwargs) -> PixArt:
    """An official PixArt ``.pth`` (or one saved the same way) as a PixArt model on the CPU, fp32."""
    sd = read_pth_state_dict(path)
    config = config or config_from_state_dict(sd)
    model = PixArt(config, **model_kwargs)
    load_state_dict_strict(model, {k: v.float() for k, v in sd.items()}, str(path))
    return model


# ---------------------------------------------------------------------------------------------------
# diffusers key map (B.10)
# ---------------------------------------------------------------------------------------------------
_PREFIX_MAP = [   # original prefix -> diffusers prefix (weights and biases alike)
    ("x_embedder.proj.", "pos_embed.proj."),
    ("y_embedder.y_proj.fc1.", "caption_projection.linear_1."),
    ("y_embedder.y_proj.fc2.", "caption_projection.linear_2."),
    ("t_embedder.mlp.0.", "adaln_single.emb.timestep_embedder.linear_1."),
    ("t_embedder.mlp.2.", "adaln_single.emb.timestep_embedder.linear_2."),
    ("csize_embedder.mlp.0.", "adaln_single.emb.resolution_embedder.linear_1."),
    ("csize_embedder.mlp.2.", "adaln_single.emb.resolution_embedder.linear_2."),
    ("ar_embedder.mlp.0.", "adaln_single.emb.aspect_ratio_embedder.linear_1."),
    ("ar_embedder.mlp.2.", "adaln_single.emb.aspect_ratio_embedder.linear_2."),
    ("t_block.1.", "adaln_single.linear."),
    ("final_layer.linear.", "proj_out."),
    ("final_layer.scale_shift_table", "scale_shift_table"),
]
_BLOCK_MAP = [    # inside blocks.i / transformer_blocks.i
    ("scale_shift_table", "scale_shift_table"),
    ("attn.proj.", "attn1.to_out.0."),
    ("cross_attn.q_linear.", "attn2.to_q."),
    ("cross_attn.proj.", "attn2.to_out.0."),
    ("mlp.fc1.", "ff.net.0.proj."),
    ("mlp.fc2.", "ff.net.2."),
]
_SPLITS = [       # fused original tensors chunked along dim 0 into diffusers' separate projections
    ("attn.qkv.", ("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")),
    ("cross_attn.kv_linear.", ("attn2.to_k.", "attn2.to_v.")),
]
# Keys the diffusers format does not store.
DROPPED_KEYS = ("pos_embed", "y_embedder.y_embedding")


def to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original PixArt keys -> diffusers ``PixArtTransformer2DModel`` keys (drops DROPPED_KEYS)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in DROPPED_KEYS:
            continue
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if m:
            i, rest = m.groups()
            for orig, parts in _SPLITS:
                if rest.startswith(orig):
                    for part, chunk in zip(parts, value.chunk(len(parts), dim=0), strict=True):
                        out[f"transformer_blocks.{i}.{part}{rest[len(orig):]}"] = chunk.clone()
                    break
            else:
                out[f"transformer_blocks.{i}.{_rename(rest, _BLOCK_MAP, key)}"] = value
        else:
            out[_rename(key, _PREFIX_MAP, key)] = value
    return out


def from_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys -> original keys (without DROPPED_KEYS). Inverse of :func:`to_diffusers`."""
    inverse_prefix = [(d, o) for o, d in _PREFIX_MAP]
    inverse_block = [(d, o) for o, d in _BLOCK_MAP]
    out: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = re.match(r"transformer_blocks\.(\d+)\.(.*)", key)
        if not m:
            out[_rename(key, inverse_prefix, key)] = value
            continue
        i, rest = m.groups()
        for orig, parts in _SPLITS:
            part = next((p for p in parts if rest.startswith(p)), None)
            if part is not None:
                suffix = rest[len(part):]
                pending.setdefault((i, orig, suffix), {})[part] = value
                break
        else:
            out[f"blocks.{i}.{_rename(rest, inverse_block, key)}"] = value
    for (i, orig, suffix), got in pending.items():
        parts = next(p for o, p in _SPLITS if o == orig)
        if set(got) != set(parts):
            raise CheckpointError(f"diffusers weights of block {i} have {sorted(got)} but {orig}{suffix} needs all "
                                  f"of {list(parts)}")
        out[f"blocks.{i}.{orig}{suffix}"] = torch.cat([got[p] for p in parts], dim=0)
    return out


def _rename(key: str, table: list[tuple[str, str]], full_key: str) -> str:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    raise CheckpointError(f"no PixArt/diffusers name mapping for key {full_key!r}; is this a PixArt-alpha transformer?")


def resolve_diffusers_folder(path_or_id: str) -> Path:
    """A local folder holding the transformer (itself or its ``transformer/`` subfolder), or a hub id."""
    local = Path(path_or_id)
    if local.is_dir():
        for folder in (local, local / DIFFUSERS_SUBFOLDER):
            if any((folder / f).is_file() for f in DIFFUSERS_WEIGHT_FILES):
                return folder
        raise CheckpointError(f"folder {str(local)!r} has none of {DIFFUSERS_WEIGHT_FILES} (nor under "
                              f"{DIFFUSERS_SUBFOLDER}/); pass a PixArt .pth file or a diffusers PixArt folder")
    if local.exists() or not looks_like_hub_id(path_or_id):
        raise CheckpointError(f"--model_path {path_or_id!r} does not exist; pass a PixArt .pth file, a diffusers "
                              f"folder, or a hub id such as PixArt-alpha/PixArt-XL-2-256x256")
    from huggingface_hub import snapshot_download
    try:
        root = snapshot_download(path_or_id, allow_patterns=[f"{DIFFUSERS_SUBFOLDER}/*"])
    except Exception as err:  # noqa: BLE001 - re-raised with the id named
        raise CheckpointError(f"could not fetch {path_or_id!r} from the hub ({type(err).__name__}); download it "
                              f"and pass the local folder") from err
    return resolve_diffusers_folder(root)


def read_diffusers_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    for name in DIFFUSERS_WEIGHT_FILES:
        file = folder / name
        if file.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file
                return load_file(str(file))
            return torch.load(file, map_location="cpu", weights_only=True)
    raise CheckpointError(f"no weights in {str(folder)!r}")


def load_diffusers(path_or_id: str, **model_kwargs) -> PixArt:
    """A diffusers-format PixArt transformer (local folder or hub id) as our PixArt model, fp32 on the CPU."""
    folder = resolve_diffusers_folder(path_or_id)
    sd = {k: v.float() for k, v in from_diffusers(read_diffusers_state_dict(folder)).items()}
    config_file = folder / "config.json"
    hub = json.loads(config_file.read_text()) if config_file.is_file() else {}
    # pos_embed is not stored: give config_from_state_dict the grid from config.json's sample_size.
    if "sample_size" not in hub:
        raise CheckpointError(f"{str(config_file)!r} is missing or has no 'sample_size'; a diffusers PixArt folder "
                              f"needs its config.json")
    side = hub["sample_size"] // sd["x_embedder.proj.weight"].shape[2]
    hidden = sd["x_embedder.proj.weight"].shape[0]
    interp = hub.get("interpolation_scale") or max(hub["sample_size"] // DIFFUSERS_INTERPOLATION_DIVISOR, 1)
    probe = dict(sd, pos_embed=torch.empty(1, side * side, hidden))
    config = config_from_state_dict(probe, lewei_scale=float(interp))
    if "num_attention_heads" in hub:
        config = PixArtConfig(**{**config.__dict__, "num_heads": hub["num_attention_heads"]})
    model = PixArt(config, **model_kwargs)
    expected = model.state_dict()
    full = dict(sd, pos_embed=expected["pos_embed"], **{"y_embedder.y_embedding": expected["y_embedder.y_embedding"]})
    load_state_dict_strict(model, full, str(folder))
    with torch.no_grad():
        model.y_embedder.y_embedding.zero_()
    model.has_null_caption = False
    return model


def load_transformer(path_or_id: str, **model_kwargs) -> PixArt:
    """``.pth``/``.pt`` file -> official loader; anything else -> diffusers folder or hub id."""
    if str(path_or_id).endswith((".pth", ".pt")) or Path(path_or_id).is_file():
        return load_pth(path_or_id, **model_kwargs)
    return load_diffusers(str(path_or_id), **model_kwargs)
