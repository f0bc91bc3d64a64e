"""Inception-v3 features of the ADM evaluator, computed with torch-fidelity's TF-ported network.

The ADM evaluator runs TensorFlow's ``classify_image_graph_def.pb`` (Inception 2015-12-05) and reads
three tensors per image:

* ``pool_3:0`` -> 2048-d pool features (FID, precision, recall);
* ``mixed_6/conv:0`` first 7 channels -> spatial features (sFID); in TF-graph naming ``mixed_6``
  is the seventh mixed block, which torchvision / torch-fidelity call ``Mixed_6d``, and ``conv``
  is its 1x1 branch (``Mixed_6d.branch1x1``, after batch norm and ReLU): 17 x 17 x 7 = 2023 values,
  flattened in TensorFlow's HWC order so that statistics match ADM's ``mu_s`` / ``sigma_s``;
* pool features times ``softmax/weights`` (no bias) -> logits for the Inception Score; this is
  torch-fidelity's ``logits_unbiased``.

torch-fidelity converted the same TF weights to PyTorch and reproduces TF1's bilinear resize to
299 x 299 and the (x - 128) / 128 input scaling, so features agree with TF to float32 rounding
(see docs/evaluation.md for the remaining differences).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duca_common.errors import read_failure

from .errors import InputError
from .images import ImageSet
from .weights import WeightSource, resolve_weights

INCEPTION_WEIGHTS = WeightSource(
    label="Inception-v3 (TF 2015-12-05, ported by torch-fidelity)",
    filename="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    flag="--inception-weights",
    # pytorch-fid's conversion of the same TF graph, with the same parameter names.
    aliases=("pt_inception-2015-12-05-6726825d.pth",),
)

POOL_FEATURE = "2048"  # torch-fidelity's name for pool_3
LOGITS_FEATURE = "logits_unbiased"  # torch-fidelity's name for pool_3 @ softmax/weights

# ADM: ``spatial = spatial[..., :7]`` on mixed_6/conv (Mixed_6d.branch1x1).
SPATIAL_MODULE = "Mixed_6d.branch1x1"
SPATIAL_CHANNELS = 7

DEFAULT_BATCH_SIZE = 64


@dataclass
class InceptionActivations:
    """Per-image features: pool (N, 2048), spatial (N, 2023), logits (N, 1008); float32."""

    pool: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.pool.shape[0])


def resolve_inception_weights(path: str | Path | None) -> Path:
    """Local Inception weights file (explicit path, torch hub cache, or download when online)."""
    return resolve_weights(path, INCEPTION_WEIGHTS)


class InceptionFeatures:
    """Pool, spatial and logit features of uint8 images, on ``device``."""

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.device = torch.device(device)
        self.weights_path = Path(weights_path)
        # torch-fidelity unpickles its weights with weights_only=False, which runs any code a hostile file holds:
        # the file is read once, checked here with weights_only=True (tensors and containers only), and only
        # those checked bytes are handed to torch-fidelity (torch.load takes a file object)
        try:
            data = self.weights_path.read_bytes()
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any reader error means: not a plain state dict
            raise InputError(
                f"{self.weights_path} is not a usable torch-fidelity Inception-v3 state dict (not a plain state "
                f"dict, refused unloaded: {read_failure(exc)}); "
                f"download {INCEPTION_WEIGHTS.url} and pass it with {INCEPTION_WEIGHTS.flag}"
            ) from exc
        try:
            model = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                [POOL_FEATURE, LOGITS_FEATURE],
                feature_extractor_weights_path=io.BytesIO(data),
            )
        except (RuntimeError, KeyError, ValueError) as exc:   # a state dict of other keys or shapes
            raise InputError(
                f"{self.weights_path} is not a usable torch-fidelity Inception-v3 state dict ({exc}); "
                f"download {INCEPTION_WEIGHTS.url} and pass it with {INCEPTION_WEIGHTS.flag}"
            ) from exc
        self.model = model.to(self.device)
        self._spatial: torch.Tensor | None = None
        self.model.get_submodule(SPATIAL_MODULE).register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output) -> None:
        # NCHW -> NHWC before flattening: TensorFlow's layout, so mu_s / sigma_s line up with ADM's.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float()

    @torch.no_grad()
    def __call__(self, images_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = torch.from_numpy(np.array(images_nhwc, copy=True)).to(self.device).permute(0, 3, 1, 2)
        pool, logits = self.model(batch)
        spatial = self._spatial
        self._spatial = None
        return pool.cpu().numpy(), spatial.cpu().numpy(), logits.cpu().numpy()


def compute_activations(
    images: ImageSet,
    extractor: InceptionFeatures,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    label: str = "inception",
) -> InceptionActivations:
    """Run ``extractor`` over every image of ``images`` with a progress bar."""
    from tqdm.auto import tqdm

    pools, spatials, logits = [], [], []
    with tqdm(total=len(images), desc=label, unit="img", disable=not progress) as bar:
        for batch in images.batches(batch_size):
            pool, spatial, logit = extractor(batch)
            pools.append(pool)
            spatials.append(spatial)
            logits.append(logit)
            bar.update(len(batch))
    return InceptionActivations(np.concatenate(pools), np.concatenate(spatials), np.concatenate(logits))


ExtractorFactory = Callable[[], InceptionFeatures]
