"""Reading image sets: a folder of image files or an ADM-format ``.npz`` (``arr_0``: uint8 NHWC).

Both are exposed as an :class:`ImageSet` that yields uint8 NHWC numpy batches, so 50k samples never
have to sit in memory at once. The ``.npz`` reader streams ``arr_0`` out of the zip archive.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Key of the image array in ADM sample and reference batches (``np.savez(path, images)``).
ADM_IMAGES_KEY = "arr_0"

RGB_CHANNELS = 3


class ImageSet(Protocol):
    """A sized source of uint8 RGB images, read in NHWC batches."""

    description: str

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[np.ndarray]: ...


def list_images(folder: str | Path, what: str = "image folder") -> list[Path]:
    """Sorted image files directly inside ``folder`` (not recursive).

    Raises :class:`InputError` when the folder does not exist, is a file, or holds no images.
    """
    path = Path(folder).expanduser()
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; check the path.")
    if not path.is_dir():
        raise InputError(f"{what} {path} is not a folder; pass a folder of {', '.join(IMAGE_EXTENSIONS)} files.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        others = sum(1 for _ in path.iterdir())
        raise InputError(
            f"{what} {path} holds no images ({others} other entries); expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}. Did sampling finish, or is this the parent folder?"
        )
    return files


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` x ``size`` with bicubic filtering."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), Image.BICUBIC)


def load_rgb(path: str | Path, resize: int | None = None) -> np.ndarray:
    """Load an image file as uint8 HWC RGB, optionally centre-cropped and resized to ``resize``."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if resize is not None:
                image = center_crop_resize(image, resize)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc


@dataclass
class FolderImages:
    """Image files of one folder, read in sorted order.

    Consecutive images of equal size are batched together; a size change starts a new batch
    (the Inception network resizes every image to its input size on its own).
    """

    paths: list[Path]
    description: str
    resize: int | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, resize: int | None = None, what: str = "image folder") -> FolderImages:
        return cls(list_images(folder, what), description=str(folder), resize=resize)

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        for path in self.paths:
            image = load_rgb(path, self.resize)
            if pending and (image.shape != pending[0].shape or len(pending) == batch_size):
                yield np.stack(pending)
                pending = []
            pending.append(image)
        if pending:
            yield np.stack(pending)


class NpzArrayReader:
    """Streams the rows of one array stored in an ``.npz`` archive (compressed or not)."""

    def __init__(self, path: Path, key: str):
        self.path = path
        self.key = key
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            self.shape, self.dtype, self._header_bytes = _read_npy_header(member)

    def __len__(self) -> int:
        return int(self.shape[0])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        row_shape = tuple(self.shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as member:
            member.read(self._header_bytes)
            remaining = len(self)
            while remaining > 0:
                count = min(batch_size, remaining)
                buffer = member.read(count * row_bytes)
                if len(buffer) != count * row_bytes:
                    raise InputError(f"{self.path}: '{self.key}' is truncated; re-create the .npz.")
                yield np.frombuffer(buffer, dtype=self.dtype).reshape((count, *row_shape))
                remaining -= count


def _read_npy_header(member) -> tuple[tuple[int, ...], np.dtype, int]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    if fortran_order:
        raise InputError("Fortran-ordered arrays are not supported; "
                         "save the .npz with np.savez from a C-ordered array.")
    # The header ends where the member's read position is now; np.lib.format pads it to 64 bytes.
    return tuple(shape), np.dtype(dtype), member.tell()


def npz_keys(path: Path) -> list[str]:
    """Names of the arrays in an ``.npz`` archive (without reading them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path} is not a valid .npz archive ({exc}); expected the output of np.savez.") from exc


@dataclass
class NpzImages:
    """Images of an ADM-format ``.npz``: key ``arr_0``, uint8, shape (N, H, W, 3)."""

    reader: NpzArrayReader
    description: str

    @classmethod
    def from_npz(cls, path: str | Path, what: str = "sample batch") -> NpzImages:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"{what} {path} does not exist; check the path.")
        keys = npz_keys(path)
        if ADM_IMAGES_KEY not in keys:
            raise InputError(
                f"{what} {path} has no '{ADM_IMAGES_KEY}' array (keys: {keys}); ADM-format batches store the images "
                f"under '{ADM_IMAGES_KEY}' (np.savez(path, images)). Re-save with that key or pass the image folder."
            )
        reader = NpzArrayReader(path, ADM_IMAGES_KEY)
        shape, dtype = reader.shape, reader.dtype
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != RGB_CHANNELS:
            raise InputError(
                f"{what} {path}: '{ADM_IMAGES_KEY}' is {dtype} with shape {shape}; expected uint8 NHWC RGB "
                f"(N, H, W, 3) with values 0..255. Convert with (x * 255).round().clip(0, 255).astype(np.uint8) "
                f"and transpose NCHW to NHWC if needed."
            )
        if shape[0] == 0:
            raise InputError(f"{what} {path}: '{ADM_IMAGES_KEY}' holds no images.")
        return cls(reader, description=str(path))

    def __len__(self) -> int:
        return len(self.reader)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        return self.reader.batches(batch_size)


def open_image_set(path: str | Path, resize: int | None = None, what: str = "samples") -> ImageSet:
    """An :class:`ImageSet` for a folder of images or an ADM ``.npz``; clear errors otherwise."""
    path = Path(path).expanduser()
    if path.suffix == ".npz":
        if resize is not None:
            raise InputError(f"--resize applies to image folders only; {path} is an .npz batch.")
        return NpzImages.from_npz(path, what)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; pass an image folder or an ADM .npz with '{ADM_IMAGES_KEY}'.")
    return FolderImages.from_folder(path, resize=resize, what=what)
