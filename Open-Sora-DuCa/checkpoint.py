"""Loading the OpenSora 1.2 weights: ``model.safetensors`` (+ ``config.json``) from a local folder or file, or
from a hub id when online (models.md C.1). Loading is strict: a missing or unexpected tensor is an error that
names the keys, since the reference's ``strict=False`` would silently leave random weights in place."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from duca_common.errors import CheckpointError  # noqa: F401  (the project's one checkpoint error)
from duca_common.validate import looks_like_hub_id

WEIGHTS_FILE = "model.safetensors"     # the HF PreTrainedModel file of both hub repos (C.1)
CONFIG_FILE = "config.json"
MAX_KEYS_SHOWN = 8


def resolve_weights(spec: str, what: str, hub_id: str) -> Path:
    """The ``model.safetensors`` file of ``spec``: that file, a folder holding it, or a hub id (downloaded)."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{what} {spec!r} is not a .safetensors file; pass the {WEIGHTS_FILE} of "
                                  f"{hub_id} or its folder")
        return path
    if path.is_dir():
        file = path / WEIGHTS_FILE
        if not file.is_file():
            raise CheckpointError(f"{what} folder {spec!r} has no {WEIGHTS_FILE}; download {hub_id} into it")
        return file
    if not looks_like_hub_id(spec):
        raise CheckpointError(f"{what} {spec!r} does not exist; pass a local folder or file, or a hub id such as "
                              f"{hub_id}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec, WEIGHTS_FILE))
    except Exception as err:   # offline, unknown repo, ...: say what to do instead
        raise CheckpointError(f"{what} {spec!r}: could not fetch {WEIGHTS_FILE} from the hub ({err}); download "
                              f"it and pass the local folder") from err


def read_config(weights: Path) -> dict:
    """``config.json`` next to the weights, or {} when there is none."""
    file = weights.parent / CONFIG_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err


def config_fields(config_cls, raw: dict, renames: dict[str, str] | None = None) -> dict:
    """The entries of a HF ``config.json`` that are fields of the dataclass ``config_cls`` (tuples restored)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in raw.items():
        key = (renames or {}).get(key, key)
        if key in names:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"{path} could not be read as safetensors ({err}); is the download complete?") from err


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what is missing, extra or misshapen."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                shown = ", ".join(keys[:MAX_KEYS_SHOWN]) + (" ..." if len(keys) > MAX_KEYS_SHOWN else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def save_safetensors(model: nn.Module, folder: str | os.PathLike, config: dict) -> Path:
    """Save like ``save_pretrained``: ``model.safetensors`` + ``config.json`` (used by tests and conversions)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return folder / WEIGHTS_FILE
