"""Training data for ``dit_duca.train``: the digits, a folder of images, or a file of precomputed latents.

Every source becomes an in-memory :class:`TensorData` (images or latents (N, C, H, W) and integer labels)
split into train and held-out parts with the same fixed, stratified rule as the digits
(``dit_duca.digits.split_indices``). Sources:

* ``digits``: scikit-learn's digits at ``--image-size`` (16x16 by default, 32x32 for the 256-token
  embedded model), 10 classes (``dit_duca.digits``).
* a folder of images: class sub-folders (``root/<class>/*.png``, classes in sorted name order) or a flat
  folder (one class). Images are centre-cropped to a square, resized to ``--image-size``, converted to
  1 (grey) or 3 (RGB) channels and scaled to [-1, 1].
* a ``.pt`` or ``.npz`` file of latents: a tensor / array (N, C, H, W) under the key ``latents`` (``.npz``
  may also use ``arr_0``) and optional integer ``labels`` (N,). ``.pt`` files load with
  ``weights_only=True``. Latents are used as they are (scale them, e.g. by 0.18215 for the SD VAE, before
  saving).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duca_common.errors import read_failure

from .digits import DIGITS_IMAGE_SIZE, HELDOUT_FRACTION, SPLIT_SEED, load_digits_split, split_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LATENT_EXTENSIONS = (".pt", ".npz")
DIGITS_SOURCE = "digits"
# scikit-learn's digits are 8x8; --image-size upsamples them, never downsamples.
DIGITS_SOURCE_SIZE = 8
# Below this many examples a held-out split is not meaningful.
MIN_EXAMPLES = 10


class DataError(ValueError):
    """A training data source that cannot be used, with the reason and the fix."""


@dataclass(frozen=True)
class TensorData:
    x: torch.Tensor           # (N, C, H, W) float32
    labels: torch.Tensor      # (N,) int64
    num_classes: int
    description: str

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class TrainHeldout:
    train: TensorData
    heldout: TensorData

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def size(self) -> int:
        return int(self.train.x.shape[-1])

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def _split(x: torch.Tensor, labels: torch.Tensor, num_classes: int, description: str) -> TrainHeldout:
    if x.shape[0] < MIN_EXAMPLES:
        raise DataError(f"{description} has {x.shape[0]} examples; at least {MIN_EXAMPLES} are needed")
    train_idx, held_idx = split_indices(labels.numpy(), HELDOUT_FRACTION, SPLIT_SEED)
    if len(held_idx) == 0:
        raise DataError(f"{description}: no example is left for the held-out split; add more examples")
    t_idx, h_idx = torch.as_tensor(train_idx), torch.as_tensor(held_idx)
    return TrainHeldout(TensorData(x[t_idx], labels[t_idx], num_classes, description),
                        TensorData(x[h_idx], labels[h_idx], num_classes, description))


def load_digits_data(size: int = DIGITS_IMAGE_SIZE) -> TrainHeldout:
    """The digits' fixed split, bilinearly upsampled from 8x8 to ``size`` x ``size``."""
    if size < DIGITS_SOURCE_SIZE:
        raise DataError(f"--image-size {size} is below the digits' own {DIGITS_SOURCE_SIZE}x{DIGITS_SOURCE_SIZE}; "
                        f"pass {DIGITS_IMAGE_SIZE} (the shipped 64-token model) or 32 (256 tokens)")
    train, held = load_digits_split("train", size), load_digits_split("heldout", size)
    return TrainHeldout(TensorData(train.images, train.labels, 10, "sklearn digits (train split)"),
                        TensorData(held.images, held.labels, 10, "sklearn digits (held-out split)"))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_image(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return arr * 2.0 - 1.0


def load_image_folder(folder: Path, size: int, channels: int, progress: bool = True) -> TrainHeldout:
    if channels not in (1, 3):
        raise DataError(f"--channels must be 1 (grey) or 3 (RGB) for an image folder, got {channels}")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and _image_files(p))
    if subdirs:
        files = [(f, c) for c, d in enumerate(subdirs) for f in _image_files(d)]
        num_classes = len(subdirs)
        kind = f"{num_classes} class folders"
    else:
        files = [(f, 0) for f in _image_files(folder)]
        num_classes = 1
        kind = "one class"
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder} or its sub-folders")
    from tqdm.auto import tqdm

    bar = tqdm(files, desc="loading images", disable=not progress)
    x = torch.from_numpy(np.stack([_load_image(f, size, channels) for f, _ in bar]))
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    return _split(x, labels, num_classes, f"image folder {folder} ({len(files)} images, {kind})")


def load_latent_file(path: Path) -> TrainHeldout:
    if path.suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise DataError(f"--data {path}: cannot read it ({read_failure(exc)}); pass a .pt holding a latent "
                            f"tensor (N, C, H, W) or a dict with 'latents'") from exc
        if isinstance(obj, torch.Tensor):
            latents, labels = obj, None
        elif isinstance(obj, dict) and "latents" in obj:
            latents, labels = obj["latents"], obj.get("labels")
        else:
            raise DataError(f"{path} must hold a tensor (N, C, H, W) or a dict with key 'latents' "
                            f"(and optional 'labels'); found {type(obj).__name__}"
                            + (f" with keys {sorted(obj)}" if isinstance(obj, dict) else ""))
    else:
        if not zipfile.is_zipfile(path):
            raise DataError(f"--data {path} is not a .npz archive (not a zip file); write it with "
                            f"np.savez(path, latents=..., labels=...)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                key = "latents" if "latents" in npz.files else "arr_0" if "arr_0" in npz.files else None
                if key is None:
                    raise DataError(f"{path} has keys {npz.files}; expected 'latents' (or 'arr_0') and optional "
                                    f"'labels'")
                latents = torch.from_numpy(npz[key])
                labels = torch.from_numpy(npz["labels"]) if "labels" in npz.files else None
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - not a zip, truncated, object arrays: a bad file for the user
            raise DataError(f"--data {path}: cannot read it as a numeric .npz ({read_failure(exc)}); write it with "
                            f"np.savez(path, latents=..., labels=...)") from exc
    latents = torch.as_tensor(latents)
    if latents.ndim != 4 or latents.shape[-1] != latents.shape[-2]:
        raise DataError(f"latents in {path} must be (N, C, H, W) with H == W, got {tuple(latents.shape)}")
    if not latents.is_floating_point():
        raise DataError(f"latents in {path} must be floating point, got {latents.dtype}")
    if labels is None:
        labels, num_classes = torch.zeros(latents.shape[0], dtype=torch.int64), 1
    else:
        labels = torch.as_tensor(labels)
        if labels.shape != (latents.shape[0],) or labels.is_floating_point() or labels.min() < 0:
            raise DataError(f"labels in {path} must be non-negative integers of shape ({latents.shape[0]},), "
                            f"got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.long()
        num_classes = int(labels.max()) + 1
    return _split(latents.float().contiguous(), labels, num_classes, f"latents {path} {tuple(latents.shape)}")


def check_source(source: str) -> None:
    """Fail fast (before any loading) on a source that does not exist or has an unsupported type."""
    if source == DIGITS_SOURCE:
        return
    path = Path(source)
    if not path.exists():
        raise DataError(f"--data {source}: no such file or folder; pass 'digits', a folder of images, "
                        f"or a {' / '.join(LATENT_EXTENSIONS)} file of latents")
    if path.is_file() and path.suffix not in LATENT_EXTENSIONS:
        raise DataError(f"--data {source}: unsupported file type {path.suffix!r}; latents must be "
                        f"{' or '.join(LATENT_EXTENSIONS)}")


def load_training_data(source: str, image_size: int, channels: int, progress: bool = True) -> TrainHeldout:
    check_source(source)
    if source == DIGITS_SOURCE:
        return load_digits_data(image_size)
    path = Path(source)
    return load_image_folder(path, image_size, channels, progress) if path.is_dir() else load_latent_file(path)
