"""A small CNN that recognises the 16x16 digits; the judge of the digits metrics (``dit_duca.digits_metrics``).

It plays the role Inception plays for FID: its class prediction gives the class accuracy of generated
samples, its penultimate features give the Frechet distance to the real held-out digits. It is trained
on the train split only (``dit_duca.digits``) and ships as ``weights/digits_classifier.safetensors``;
the architecture sizes are stored in the file's metadata so loading is strict and self-describing.

Train (a few seconds on 2 CPU cores)::

    python -m dit_duca.digits_classifier --out DiT-DuCa/weights/digits_classifier.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from duca_common.runtime import HelpFormatter, atomic_path

from .digits import DIGITS_CHANNELS, DIGITS_IMAGE_SIZE, DIGITS_NUM_CLASSES, load_digits_split

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CLASSIFIER_PATH = WEIGHTS_DIR / "digits_classifier.safetensors"
# Issue 4: the classifier must reach at least 97% on the held-out split before it is shipped.
REQUIRED_HELDOUT_ACCURACY = 0.97
METADATA_KIND = "duca-digits-classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = DIGITS_IMAGE_SIZE
    in_channels: int = DIGITS_CHANNELS
    num_classes: int = DIGITS_NUM_CLASSES
    width: int = 32            # channels of the first conv stage (the second has 2x)
    feature_dim: int = 64      # penultimate features used for the Frechet distance

    def __post_init__(self) -> None:
        if self.image_size % 4 != 0 or self.image_size < 4:
            raise ValueError(f"ClassifierConfig.image_size={self.image_size} is invalid: allowed a multiple of 4")
        for name in ("in_channels", "num_classes", "width", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClassifierConfig.{name}={getattr(self, name)} is invalid: allowed an integer >= 1")


@dataclass(frozen=True)
class ClassifierTrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_shift: int = 1         # random translation (pixels) so slightly off-centre samples are still read
    noise_std: float = 0.1     # additive Gaussian noise in [-1, 1] units, for robustness to sampler noise


class DigitsClassifier(nn.Module):
    """conv-conv-pool, conv-pool, linear -> ``feature_dim`` features, linear -> logits."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        side = config.image_size // 4
        self.convs = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * w * side * side, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim) of images in [-1, 1], taken before the ReLU so that no
        feature is constant (a dead ReLU unit would make the Frechet covariance singular)."""
        return self.fc(self.convs(x).flatten(1))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def save_classifier(model: DigitsClassifier, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write the weights as safetensors with the config in the metadata (atomically: temp file, rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"kind": METADATA_KIND, "config": json.dumps(asdict(model.config)), **(extra or {})}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    return path


def load_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load a classifier written by :func:`save_classifier` (the shipped one by default), strictly."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_CLASSIFIER_PATH
    if not path.is_file():
        raise FileNotFoundError(f"digits classifier weights not found at {path}; train them with "
                                f"`python -m dit_duca.digits_classifier --out {path}`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != METADATA_KIND:
        raise ValueError(f"{path} is not a digits classifier checkpoint (metadata kind={meta.get('kind')!r}, "
                         f"expected {METADATA_KIND!r})")
    model = DigitsClassifier(ClassifierConfig(**json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval()


def augment(x: torch.Tensor, cfg: ClassifierTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random integer shifts (edge-padded with background) and Gaussian noise."""
    if cfg.max_shift > 0:
        s = cfg.max_shift
        padded = F.pad(x, (s, s, s, s), value=-1.0)
        dy, dx = torch.randint(0, 2 * s + 1, (2,), generator=gen).tolist()
        x = padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=gen)
    return x


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(images).argmax(1) == labels).float().mean())


def train_classifier(cfg: ClassifierTrainConfig = ClassifierTrainConfig(),
                     model_cfg: ClassifierConfig = ClassifierConfig(),
                     progress: bool = True) -> tuple[DigitsClassifier, float]:
    """Train on the train split; returns the model and its held-out accuracy."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = load_digits_split("train", model_cfg.image_size)
    heldout = load_digits_split("heldout", model_cfg.image_size)
    model = DigitsClassifier(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    bar = tqdm(range(cfg.epochs), desc="classifier", disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = augment(train.images[idx], cfg, gen)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), accuracy(model, heldout.images, heldout.labels)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the digits classifier used by the digits metrics.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER_PATH, help="safetensors file to write")
    parser.add_argument("--epochs", type=int, default=ClassifierTrainConfig.epochs,
                        help="passes over the train split (one-cycle learning rate over all of them)")
    parser.add_argument("--seed", type=int, default=ClassifierTrainConfig.seed,
                        help="seed of the initial weights, the batch order and the augmentation")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors, got {args.out}")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    t0 = time.perf_counter()
    model, acc = train_classifier(ClassifierTrainConfig(epochs=args.epochs, seed=args.seed))
    seconds = time.perf_counter() - t0
    print(f"held-out accuracy {acc:.2%} after {seconds:.1f} s")
    if acc < REQUIRED_HELDOUT_ACCURACY:
        raise SystemExit(f"held-out accuracy {acc:.2%} is below the required {REQUIRED_HELDOUT_ACCURACY:.0%}; "
                         f"not writing {args.out} (try more --epochs)")
    save_classifier(model, args.out, {"heldout_accuracy": f"{acc:.4f}", "train_seconds": f"{seconds:.1f}"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
