"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1, written from the paper's definition on torchvision backbones.

d(x, y) = sum_l mean_hw( w_l . (f_l(x)/||f_l(x)|| - f_l(y)/||f_l(y)||)^2 )

where f_l are the activations after five ReLU stages of the backbone, normalised to unit length
over channels, and w_l are learned non-negative per-channel weights (1x1 convolutions without
bias). Inputs are scaled to [-1, 1] and then standardised with the LPIPS scaling constants.

Weights come from two files: the torchvision ImageNet backbone (``alexnet-owt-7be5be79.pth`` or
``vgg16-397923af.pth``) and the LPIPS v0.1 linear heads (``alex.pth`` / ``vgg.pth`` from the
LPIPS release, keys ``lin{l}.model.1.weight`` of shape (1, C_l, 1, 1)).

The heads are found offline when torchmetrics is installed: it ships the same release files in
``torchmetrics/functional/image/lpips_models/{net}.pth``. Order: ``--lpips-heads``, that copy, the torch
hub folder, a download; with none of them the error says where to get the file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from duca_common.errors import read_failure

from .errors import InputError, MissingWeightsError
from .weights import WeightSource, resolve_weights

# Input standardisation of LPIPS v0.1 ("ScalingLayer"), applied to images in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# Added to the channel norm before dividing, as in the LPIPS release (avoids 0/0 on flat regions).
NORM_EPS = 1e-10

LPIPS_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"


@dataclass(frozen=True)
class Backbone:
    """A torchvision feature network cut after the five ReLUs that LPIPS reads."""

    torchvision_name: str
    # End index (exclusive) in ``model.features`` of each stage; stage l reads after its last ReLU.
    stage_ends: tuple[int, ...]
    channels: tuple[int, ...]
    weights: WeightSource


BACKBONES: dict[str, Backbone] = {
    # AlexNet: relu1..relu5 are features[1], [4], [7], [9], [11].
    "alex": Backbone(
        "alexnet", (2, 5, 8, 10, 12), (64, 192, 384, 256, 256),
        WeightSource("AlexNet backbone (torchvision ImageNet)", "alexnet-owt-7be5be79.pth",
                     "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "--lpips-backbone"),
    ),
    # VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 are features[3], [8], [15], [22], [29].
    "vgg": Backbone(
        "vgg16", (4, 9, 16, 23, 30), (64, 128, 256, 512, 512),
        WeightSource("VGG16 backbone (torchvision ImageNet)", "vgg16-397923af.pth",
                     "https://download.pytorch.org/models/vgg16-397923af.pth", "--lpips-backbone"),
    ),
}

DEFAULT_NET = "alex"  # the LPIPS release's default network


def head_key(layer: int) -> str:
    """State-dict key of the linear head of ``layer`` in the LPIPS release files."""
    return f"lin{layer}.model.1.weight"


# Where torchmetrics keeps its copy of the LPIPS v0.1 heads, relative to its package folder (1.9).
TORCHMETRICS_HEADS_DIR = ("functional", "image", "lpips_models")


def torchmetrics_heads(net: str) -> Path | None:
    """The LPIPS v0.1 heads file shipped inside the installed torchmetrics, or None (not installed / absent)."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*TORCHMETRICS_HEADS_DIR, f"{net}.pth")
        if path.is_file():
            return path
    return None


def head_source(net: str) -> WeightSource:
    return WeightSource(
        f"LPIPS v0.1 linear heads ({net})", f"lpips-v0.1-{net}.pth", LPIPS_HEADS_URL.format(net=net), "--lpips-heads"
    )


@dataclass
class LPIPSWeights:
    net: str
    backbone: Path
    heads: Path


def resolve_lpips_weights(net: str = DEFAULT_NET, backbone: str | Path | None = None,
                          heads: str | Path | None = None) -> LPIPSWeights:
    """Local files for the backbone and the heads of ``net`` (see :func:`resolve_weights`)."""
    if net not in BACKBONES:
        raise InputError(f"unknown LPIPS network {net!r}; choose one of {sorted(BACKBONES)}")
    backbone_path = resolve_weights(backbone, BACKBONES[net].weights)
    shipped = torchmetrics_heads(net) if heads is None else None
    if shipped is not None:
        return LPIPSWeights(net, backbone_path, shipped)
    try:
        heads_path = resolve_weights(heads, head_source(net))
    except MissingWeightsError as exc:
        if heads is not None:
            raise
        raise MissingWeightsError(f"{exc} Installing torchmetrics (pip install torchmetrics==1.9.0) also provides "
                                  f"them offline: it ships the file as "
                                  f"{'/'.join(TORCHMETRICS_HEADS_DIR)}/{net}.pth.") from exc
    return LPIPSWeights(net, backbone_path, heads_path)


class LPIPS(nn.Module):
    """LPIPS distance between image batches in [0, 1], shape (N, 3, H, W); returns (N,)."""

    def __init__(self, weights: LPIPSWeights):
        super().__init__()
        import torchvision

        spec = BACKBONES[weights.net]
        self.net = weights.net
        backbone = getattr(torchvision.models, spec.torchvision_name)(weights=None)
        try:
            backbone.load_state_dict(_load_state_dict(weights.backbone, "backbone"))
        except RuntimeError as exc:
            raise InputError(
                f"{weights.backbone} is not a torchvision {spec.torchvision_name} state dict ({exc}); "
                f"use {spec.weights.url}"
            ) from exc
        starts = (0,) + spec.stage_ends[:-1]
        self.stages = nn.ModuleList(
            nn.Sequential(*[backbone.features[i] for i in range(start, end)])
            for start, end in zip(starts, spec.stage_ends, strict=True)
        )
        heads = _load_state_dict(weights.heads, "heads")
        missing = [head_key(i) for i in range(len(spec.channels)) if head_key(i) not in heads]
        if missing:
            raise InputError(f"{weights.heads} lacks LPIPS head keys {missing}; "
                             f"expected the LPIPS v0.1 '{weights.net}.pth'")
        head_weights = []
        for layer, channels in enumerate(spec.channels):
            weight = heads[head_key(layer)].float()
            if tuple(weight.shape) != (1, channels, 1, 1):
                raise InputError(
                    f"{weights.heads}: {head_key(layer)} has shape {tuple(weight.shape)}, "
                    f"expected (1, {channels}, 1, 1) for the {weights.net} backbone"
                )
            head_weights.append(weight.flatten())
        self.head_weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in head_weights)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2.0 - 1.0) - self.shift) / self.scale
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS))
        return feats

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        try:
            feats_a, feats_b = self._features(a), self._features(b)
        except RuntimeError as exc:
            raise InputError(
                f"images of size {tuple(a.shape[-2:])} are too small for the LPIPS {self.net} backbone ({exc})"
            ) from exc
        total = torch.zeros(a.shape[0], device=a.device)
        for fa, fb, w in zip(feats_a, feats_b, self.head_weights, strict=True):
            per_pixel = ((fa - fb) ** 2 * w.view(1, -1, 1, 1)).sum(dim=1)
            total += per_pixel.mean(dim=(1, 2))
        return total


def _load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise InputError(f"cannot read LPIPS {what} weights {path}: {read_failure(exc)}; pass the file listed for "
                         f"--lpips-{what} in docs/evaluation.md") from exc
    if not isinstance(state, dict):
        raise InputError(f"LPIPS {what} weights {path} hold a {type(state).__name__}, expected a state dict")
    return state
