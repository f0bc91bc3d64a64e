"""The embedded default model: a small DiT trained on scikit-learn's digits, shipped with the package.

``load_embedded_dit()`` returns the project's own :class:`~dit_duca.models.DiT`, built from the sizes
stored in the safetensors metadata and loaded strictly from the EMA weights in
``weights/digits_dit.safetensors`` (trained by ``dit_duca.train``; command, time and loss in
docs/embedded.md). Any checkpoint exported by ``dit_duca.train`` loads the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from duca_common.cache import CacheConfig
from duca_common.errors import CheckpointError, read_failure
from duca_common.runtime import atomic_path

from .models import DiT

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_EMBEDDED_PATH = WEIGHTS_DIR / "digits_dit.safetensors"
# The second operating point (issue 16): the same digits at 16x16 pixels with patch 1, so 256 tokens per
# image as DiT-XL/2 at 256 px (docs/embedded.md, "A second operating point with 256 tokens").
EMBEDDED_256_PATH = WEIGHTS_DIR / "digits256_dit.safetensors"
# The shipped models by the name the benchmark, table and frontier scripts take (--model).
EMBEDDED_MODELS = {"digits": DEFAULT_EMBEDDED_PATH, "digits256": EMBEDDED_256_PATH}
METADATA_KIND = "duca-dit"
# How dit_duca.train describes (metadata "data") a training set of images rather than latents: a model
# trained on one of these samples pixels, so it is decoded with --vae none.
PIXEL_DATA_PREFIXES = ("sklearn digits", "image folder")


@dataclass(frozen=True)
class DiTSpec:
    """The DiT constructor arguments a checkpoint needs (stored as JSON in the safetensors metadata)."""

    input_size: int = 16
    patch_size: int = 2
    in_channels: int = 1
    hidden_size: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    class_dropout_prob: float = 0.1
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        positive = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiTSpec.{name}={value!r} is invalid: allowed an integer >= 1")
        if self.input_size % self.patch_size:
            raise ValueError(f"DiTSpec.input_size={self.input_size} is not a multiple of patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"DiTSpec.hidden_size={self.hidden_size} must split into {self.num_heads} heads")
        if self.hidden_size % 4:
            raise ValueError(f"DiTSpec.hidden_size={self.hidden_size} must be a multiple of 4 (2-D sin-cos table)")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"DiTSpec.class_dropout_prob={self.class_dropout_prob} is invalid: allowed [0, 1)")

    @property
    def tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def dit_kwargs(self) -> dict:
        """The :class:`DiT` constructor arguments (also stored as ``dit_config``, which
        ``dit_duca.loading.load_checkpoint`` reads, so ``sample.py --ckpt`` builds the same model)."""
        return asdict(self)

    def build(self, cache_config: CacheConfig | None = None) -> DiT:
        return DiT(**self.dit_kwargs(), cache_config=cache_config)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DiTSpec:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"checkpoint model spec has unknown fields {sorted(unknown)}")
        return cls(**data)


def save_dit(state_dict: dict[str, torch.Tensor], spec: DiTSpec, path: str | os.PathLike,
             extra: dict[str, str] | None = None) -> Path:
    """Write weights and spec as safetensors, atomically (temp file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {**(extra or {}), "kind": METADATA_KIND, "spec": spec.to_json(),
            "dit_config": json.dumps(spec.dit_kwargs(), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - missing, truncated or not safetensors: a bad file for the user
        raise CheckpointError(f"{path} is not a readable .safetensors file ({read_failure(exc)}); pass a DiT "
                              f"exported by dit_duca.train (--export)") from exc


def read_spec(path: str | os.PathLike) -> DiTSpec:
    """The model spec stored in a checkpoint written by :func:`save_dit`."""
    meta = read_metadata(path)
    if meta.get("kind") != METADATA_KIND or "spec" not in meta:
        raise CheckpointError(f"{path} has no DiT spec in its metadata (kind={meta.get('kind')!r}); it was not "
                              f"written by dit_duca.train. Official .pt checkpoints load through dit_duca.sample "
                              f"--ckpt instead")
    try:
        return DiTSpec.from_json(meta["spec"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the DiT spec in its metadata is unreadable ({read_failure(exc)}); export the "
                              f"model again with dit_duca.train --export") from exc


def pixel_training_data(path: str | os.PathLike) -> str | None:
    """The training data of a ``dit_duca.train`` export that was trained on images (the digits or an image
    folder), as its metadata describes it; such a model samples pixels and needs ``--vae none``. None for
    any other file: an official or latent-space checkpoint, a folder, or a file that does not say (never
    raises: reading the checkpoint itself reports a bad file)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        meta = read_metadata(path)
    except CheckpointError:
        return None
    data = meta.get("data", "")
    if meta.get("kind") == METADATA_KIND and data.startswith(PIXEL_DATA_PREFIXES):
        return data
    return None


def load_dit_checkpoint(path: str | os.PathLike, cache_config: CacheConfig | None = None,
                        device: str | torch.device = "cpu") -> DiT:
    """A DiT from a safetensors file written by :func:`save_dit`, loaded with ``strict=True``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DiT checkpoint not found at {path}")
    model = read_spec(path).build(cache_config)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:     # tensors that do not fit the spec stored beside them
        raise CheckpointError(f"{path}: the weights do not fit the DiT spec in its metadata ({read_failure(exc)}); "
                              f"export the model again with dit_duca.train --export") from exc
    return model.to(device).eval()


def load_embedded_dit(cache_config: CacheConfig | None = None, device: str | torch.device = "cpu",
                      path: str | os.PathLike | None = None) -> DiT:
    """The shipped digits DiT (EMA weights), strictly loaded, in eval mode."""
    path = Path(path) if path is not None else DEFAULT_EMBEDDED_PATH
    if not path.is_file():
        raise FileNotFoundError(f"the embedded digits DiT is missing at {path}; train it with "
                                f"`python -m dit_duca.train --export {path}` (docs/embedded.md)")
    return load_dit_checkpoint(path, cache_config, device)
