"""Reference statistics: ADM reference batches, our own statistics files, or folders (cached).

A reference is one of

* an ADM reference batch such as ``VIRTUAL_imagenet256_labeled.npz``: ``mu`` / ``sigma`` (pool),
  ``mu_s`` / ``sigma_s`` (spatial) and ``arr_0`` (uint8 NHWC images, whose pool features the
  precision / recall manifold needs);
* a statistics file written by this harness (same keys, plus ``pool``: the pool features, instead
  of images);
* a folder of images: its activations are computed once and cached as such a statistics file,
  keyed by the folder's file names, sizes and modification times, the resize setting and the
  Inception weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duca_common.runtime import atomic_path

from .errors import InputError
from .fid import GaussianStats
from .images import ADM_IMAGES_KEY, FolderImages, NpzImages, npz_keys
from .inception import InceptionActivations

# Keys of ADM reference batches (guided-diffusion evaluations/README) and of our statistics files.
KEY_MU, KEY_SIGMA, KEY_MU_S, KEY_SIGMA_S = "mu", "sigma", "mu_s", "sigma_s"
KEY_POOL_FEATURES = "pool"

# Bump when the feature definition changes, so stale cache files are not reused.
CACHE_FORMAT_VERSION = 1

CACHE_DIR_ENV = "DUCA_EVAL_CACHE"


def default_cache_dir() -> Path:
    """``$DUCA_EVAL_CACHE`` or ``~/.cache/duca_eval``."""
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "duca_eval")).expanduser()


@dataclass
class ReferenceStats:
    """What the metrics need from the reference set; ``None`` where the source lacks it."""

    pool: GaussianStats
    spatial: GaussianStats | None
    pool_features: np.ndarray | None
    num_images: int | None
    source: str

    @classmethod
    def from_activations(cls, acts: InceptionActivations, source: str) -> ReferenceStats:
        return cls(
            pool=GaussianStats.from_features(acts.pool),
            spatial=GaussianStats.from_features(acts.spatial),
            pool_features=acts.pool,
            num_images=len(acts),
            source=source,
        )

    def save(self, path: str | Path) -> Path:
        """Write an ADM-compatible statistics file (usable as a reference later)."""
        path = Path(path).expanduser()
        arrays = {KEY_MU: self.pool.mu, KEY_SIGMA: self.pool.sigma}
        if self.spatial is not None:
            arrays.update({KEY_MU_S: self.spatial.mu, KEY_SIGMA_S: self.spatial.sigma})
        if self.pool_features is not None:
            arrays[KEY_POOL_FEATURES] = self.pool_features
        # Write then rename, so an interrupted run never leaves a truncated file behind.
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)
        return path


def folder_fingerprint(folder: FolderImages, weights_path: Path) -> str:
    """Hash of the folder listing (names, sizes, mtimes), resize setting and weights file."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION};resize={folder.resize}".encode())
    weights_stat = weights_path.stat()
    digest.update(f"{weights_path.resolve()};{weights_stat.st_size};{weights_stat.st_mtime_ns}".encode())
    for path in folder.paths:
        stat = path.stat()
        digest.update(f"{path.resolve()};{stat.st_size};{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def read_stats_npz(path: Path) -> tuple[ReferenceStats | None, bool]:
    """Statistics stored in ``path``; returns (stats or None, whether ``arr_0`` images are present)."""
    keys = npz_keys(path)
    has_images = ADM_IMAGES_KEY in keys
    if KEY_MU not in keys or KEY_SIGMA not in keys:
        if has_images:
            return None, True
        raise InputError(
            f"reference {path} has keys {keys}; expected ADM statistics ('{KEY_MU}', '{KEY_SIGMA}', optionally "
            f"'{KEY_MU_S}', '{KEY_SIGMA_S}') and/or images under '{ADM_IMAGES_KEY}' (uint8 NHWC). "
            f"Use an ADM reference batch, a file written with --save-ref-stats, or an image folder."
        )
    with np.load(path) as data:
        spatial = None
        if KEY_MU_S in keys and KEY_SIGMA_S in keys:
            spatial = GaussianStats(data[KEY_MU_S], data[KEY_SIGMA_S])
        pool_features = data[KEY_POOL_FEATURES] if KEY_POOL_FEATURES in keys else None
        stats = ReferenceStats(
            pool=GaussianStats(data[KEY_MU], data[KEY_SIGMA]),
            spatial=spatial,
            pool_features=pool_features,
            num_images=None if pool_features is None else int(pool_features.shape[0]),
            source=str(path),
        )
    return stats, has_images


def check_reference_path(path: str | Path) -> Path:
    """Validate a reference path cheaply (before any model is loaded)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(
            f"reference {path} does not exist; pass a reference batch / statistics .npz or a folder of images."
        )
    if path.is_file():
        if path.suffix != ".npz":
            raise InputError(f"reference {path} is a file but not an .npz; pass an .npz or an image folder.")
        read_stats_npz(path)  # raises on wrong keys
    return path


@dataclass
class ReferenceOptions:
    """How to turn a reference path into statistics.

    Attributes:
        batch_size: images per Inception forward pass.
        resize: centre-crop and resize reference *folder* images to this square size (COCO).
        cache_dir: where statistics computed from images are cached; ``None`` disables caching.
        need_pool_features: compute pool features from ``arr_0`` when a file has statistics but
            no features (precision / recall need them).
        progress: show progress bars.
    """

    batch_size: int = 64
    resize: int | None = None
    cache_dir: Path | None = None
    need_pool_features: bool = True
    progress: bool = True


def _file_fingerprint(path: Path, weights_path: Path) -> str:
    stat, weights_stat = path.stat(), weights_path.stat()
    text = (
        f"v{CACHE_FORMAT_VERSION};{path.resolve()};{stat.st_size};{stat.st_mtime_ns};"
        f"{weights_path.resolve()};{weights_stat.st_size};{weights_stat.st_mtime_ns}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cached_or_computed(images, fingerprint: str, get_extractor, options: ReferenceOptions, source: str):
    """Statistics of ``images`` from the cache, or computed (and cached)."""
    from .inception import compute_activations

    cache_file = None if options.cache_dir is None else Path(options.cache_dir) / f"ref-{fingerprint}.npz"
    if cache_file is not None and cache_file.is_file():
        stats, _ = read_stats_npz(cache_file)
        stats.source = f"{source} (cached: {cache_file})"
        return stats
    acts = compute_activations(
        images, get_extractor(), options.batch_size, options.progress, label="reference"
    )
    stats = ReferenceStats.from_activations(acts, source)
    if cache_file is not None:
        stats.save(cache_file)
    return stats


def load_reference(path: str | Path, get_extractor, options: ReferenceOptions) -> ReferenceStats:
    """Reference statistics for ``path`` (see module docstring). ``get_extractor()`` builds the
    Inception network lazily, so a reference given as statistics needs no forward pass."""
    path = check_reference_path(path)
    if path.is_dir():
        folder = FolderImages.from_folder(path, resize=options.resize, what="reference folder")
        weights = get_extractor().weights_path
        return _cached_or_computed(folder, folder_fingerprint(folder, weights), get_extractor, options, str(path))
    stats, has_images = read_stats_npz(path)
    if stats is not None and (stats.pool_features is not None or not options.need_pool_features or not has_images):
        return stats
    images = NpzImages.from_npz(path, what="reference batch")
    weights = get_extractor().weights_path
    computed = _cached_or_computed(images, _file_fingerprint(path, weights), get_extractor, options, str(path))
    if stats is None:
        return computed
    # As the ADM evaluator does: Gaussian statistics from the file, manifold features from arr_0.
    stats.pool_features = computed.pool_features
    stats.num_images = computed.num_images
    return stats
