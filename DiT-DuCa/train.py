"""Train the project's DiT (``dit_duca.models.DiT``) with DiT's objective, on CPU or GPU.

The default trains the embedded digits model (docs/embedded.md has the exact command, time and loss)::

    python -m dit_duca.train --results-dir results/digits --export DiT-DuCa/weights/digits_dit.safetensors

* objective: DiT's (``dit_duca.diffusion``): epsilon MSE plus the variational-bound term for the learned
  variance, uniform timesteps over the 1000-step linear schedule, so DDIM and DDPM both sample it;
* class-conditional with the null class; labels are dropped with ``--class-dropout`` (0.1, as DiT) so
  classifier-free guidance works;
* AdamW, linear warm-up then cosine decay, EMA weights (exported for sampling);
* fixed seed; one RNG stream (torch's global generator), saved with the checkpoint, so a resumed run
  continues the same stream;
* resumable checkpoints ``<results-dir>/checkpoint.pt`` (model, EMA, optimizer, schedule, step, RNG,
  elapsed time), written atomically; ``--resume`` continues one;
* a held-out split (``dit_duca.train_data``); its loss (EMA weights, fixed noise) is logged at every
  checkpoint;
* data: ``digits``, a folder of images, or a ``.pt`` / ``.npz`` of precomputed latents (``--data``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from duca_common.errors import CheckpointError, UsageError, print_error
from duca_common.outputs import check_output_dir, check_output_file
from duca_common.runtime import HelpFormatter, atomic_path
from duca_common.validate import SEED, Bound, check_number, check_numbers

from .diffusion import create_diffusion
from .embedded import DiTSpec, save_dit
from .train_data import DIGITS_SOURCE, DataError, TensorData, TrainHeldout, check_source, load_training_data

CHECKPOINT_NAME = "checkpoint.pt"
FINITE = Bound("finite number")
# Training loss reported as "final": the mean over this many last steps (one step's loss is noisy
# because its timesteps are random).
LOSS_WINDOW = 200
# Held-out loss: batches of this size, noise and timesteps drawn from this seed (the same every time).
HELDOUT_BATCH = 256
HELDOUT_SEED = 1234
# The cosine schedule decays the learning rate to this fraction of --lr at the last step.
FINAL_LR_FRACTION = 0.1


def _flag(default, text: str):
    """A field of :class:`TrainConfig` with its ``--help`` text (every field is a command-line flag)."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    data: str = _flag(DIGITS_SOURCE,
                      "'digits', a folder of images (class sub-folders or flat), or a .pt/.npz of latents")
    image_size: int = _flag(16, "image side in pixels: digits are upsampled from 8x8, folder images centre-cropped "
                                "and resized; latents keep their size")
    channels: int = _flag(1, "folders of images only: 1 grey, 3 RGB")
    # the embedded model: 6 blocks of width 128, 4 heads, patch 2 (1.9 M params; environment.md measured this
    # size trains to legible digits in minutes)
    depth: int = _flag(6, "transformer blocks")
    hidden_size: int = _flag(128, "hidden width (channels per token)")
    num_heads: int = _flag(4, "attention heads")
    patch_size: int = _flag(2, "patch side (the input side must be a multiple of it)")
    class_dropout: float = _flag(0.1, "probability of replacing a label by the null class (DiT's label dropout, "
                                      "for classifier-free guidance)")
    steps: int = _flag(4500, "total optimizer steps; a resumed run trains up to this count")  # the shipped model
    batch_size: int = _flag(64, "training samples per step, drawn with replacement")
    lr: float = _flag(1e-3, f"AdamW learning rate after the warm-up; cosine decay to {FINAL_LR_FRACTION:g} x it "
                            f"at the last step")
    weight_decay: float = _flag(0.0, "AdamW weight decay (DiT trains with none)")
    warmup_steps: int = _flag(200, "steps of linear learning-rate warm-up")
    ema_decay: float = _flag(0.999, "the EMA's largest decay: step s uses min(it, (1 + s) / (10 + s))")
    grad_clip: float = _flag(1.0, "gradient norm clip (0: none)")
    seed: int = _flag(0, "seed of torch's generator: the initial weights, batches, timesteps and noise")
    ckpt_every: int = _flag(500, "steps between checkpoints (held-out loss, checkpoint.pt, --export)")
    max_minutes: float = _flag(0.0, "stop (checkpoint, export) after this many minutes of training, summed over "
                                    "resumes (0: no limit)")

    def validate(self) -> None:
        positive = ("image_size", "depth", "hidden_size", "num_heads", "patch_size", "steps", "batch_size",
                    "ckpt_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ValueError(f"--channels must be 1 or 3, got {self.channels}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"--class-dropout must be in [0, 1), got {self.class_dropout}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")
        if not self.lr > 0.0 or self.weight_decay < 0.0 or self.warmup_steps < 0 or self.grad_clip < 0.0:
            raise ValueError("--lr must be > 0 and --weight-decay, --warmup-steps, --grad-clip >= 0")
        if self.max_minutes < 0:
            raise ValueError(f"--max-minutes must be >= 0, got {self.max_minutes}")
        check_numbers([(f"--{f.name.replace('_', '-')}", getattr(self, f.name), FINITE) for f in fields(self)
                       if isinstance(getattr(self, f.name), float)])
        check_number("--seed", self.seed, SEED)

    def spec(self, data: TrainHeldout) -> DiTSpec:
        if data.size % self.patch_size:
            raise ValueError(f"data size {data.size} is not a multiple of --patch-size {self.patch_size}")
        return DiTSpec(input_size=data.size, patch_size=self.patch_size, in_channels=data.channels,
                       hidden_size=self.hidden_size, depth=self.depth, num_heads=self.num_heads,
                       num_classes=data.num_classes, class_dropout_prob=self.class_dropout, learn_sigma=True)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to FINAL_LR_FRACTION at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    """``min(ema_decay, (1 + step) / (10 + step))``: a short average early on, so the exported EMA is not
    dominated by the initial weights after a few thousand steps (DiT's 0.9999 assumes 400k steps)."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        if param.requires_grad:
            ema_params[name].mul_(decay).add_(param.detach(), alpha=1 - decay)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, diffusion, heldout: TensorData) -> float:
    """Mean DiT loss on the held-out split with fixed noise and timesteps (does not touch the training RNG)."""
    model.eval()
    gen = torch.Generator().manual_seed(HELDOUT_SEED)
    total, count = 0.0, 0
    for start in range(0, len(heldout), HELDOUT_BATCH):
        x = heldout.x[start:start + HELDOUT_BATCH]
        y = heldout.labels[start:start + HELDOUT_BATCH]
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        loss = diffusion.training_losses(model, x, t, dict(y=y), noise=noise)["loss"]
        total += float(loss.sum())
        count += x.shape[0]
    return total / count


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file in the same folder, then an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def export_ema(ema: torch.nn.Module, spec: DiTSpec, path: Path, info: dict[str, str]) -> None:
    state = {k: v for k, v in ema.state_dict().items()}
    save_dit(state, spec, path, info)


def train(cfg: TrainConfig, results_dir: Path, export: Path | None = None, resume: bool = False,
          progress: bool = True) -> dict[str, float]:
    """Train (or resume) and return a summary: steps, final loss, held-out loss, seconds."""
    cfg.validate()
    check_source(cfg.data)
    results_dir = Path(results_dir)
    ckpt_path = results_dir / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start a new run")
    if not resume and ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} already exists; pass --resume to continue it or choose another "
                              f"--results-dir (nothing was overwritten)")
    if export is not None and export.suffix != ".safetensors":
        raise ValueError(f"--export must end in .safetensors, got {export}")
    state = None
    if resume:
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "config" not in state or "model" not in state:
                raise ValueError(f"holds a {type(state).__name__} without 'model' and 'config'")
            TrainConfig(**state["config"])
        except Exception as exc:  # noqa: BLE001 - any reader error means: not a resumable checkpoint
            raise CheckpointError(f"--resume: {ckpt_path} is not a training checkpoint of dit_duca.train "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                                  f"remove it or choose another --results-dir") from None
    if state is not None:
        saved = TrainConfig(**state["config"])
        changed = [f.name for f in fields(TrainConfig) if f.name not in ("steps", "max_minutes", "ckpt_every")
                   and getattr(saved, f.name) != getattr(cfg, f.name)]
        if changed:
            raise ValueError(f"--resume: the checkpoint was trained with different {', '.join(changed)} "
                             f"({', '.join(f'{n}={getattr(saved, n)!r}' for n in changed)}); use the same flags")

    data = load_training_data(cfg.data, cfg.image_size, cfg.channels, progress=progress)
    spec = cfg.spec(data)
    torch.manual_seed(cfg.seed)
    model = spec.build()
    ema = deepcopy(model).requires_grad_(False)
    diffusion = create_diffusion("")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    step, elapsed, losses = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        ema.load_state_dict(state["ema"], strict=True)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        # --steps may have grown since the checkpoint: the next step's rate follows this run's schedule.
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(sched.last_epoch, cfg)
        torch.set_rng_state(state["rng"])
        step, elapsed, losses = int(state["step"]), float(state["elapsed"]), list(state["losses"])
    results_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"data: {data.train.description}: {len(data.train)} train / {len(data.heldout)} held-out, "
          f"{data.channels}x{data.size}x{data.size}, {data.num_classes} classes; "
          f"model: {spec.depth} blocks x {spec.hidden_size}, {spec.tokens} tokens, {n_params / 1e6:.2f} M params"
          + (f"; resuming at step {step}" if state is not None else ""), flush=True)

    def checkpoint() -> dict[str, float]:
        held = heldout_loss(ema, diffusion, data.heldout)
        final = sum(losses[-LOSS_WINDOW:]) / max(1, len(losses[-LOSS_WINDOW:]))
        save_checkpoint(ckpt_path, dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                                        sched=sched.state_dict(), rng=torch.get_rng_state(), step=step,
                                        elapsed=elapsed, losses=losses[-LOSS_WINDOW:], config=asdict(cfg)))
        summary = dict(step=step, final_loss=final, heldout_loss=held, seconds=elapsed)
        if export is not None:
            export_ema(ema, spec, export, {k: f"{v:.6g}" for k, v in summary.items()}
                       | {"command": " ".join(sys.argv), "data": data.train.description})
        tqdm.write(f"step {step}: train loss (last {LOSS_WINDOW}) {final:.4f}, held-out loss (EMA) {held:.4f}, "
                   f"{elapsed / 60:.1f} min")
        return summary

    model.train()
    gen_batch = data.train
    bar = tqdm(total=cfg.steps, initial=step, desc="training", disable=not progress, dynamic_ncols=True)
    summary: dict[str, float] = {}
    deadline = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
    # Training time is wall time of this process (checkpoints and held-out losses included), summed over resumes.
    elapsed_before, run_start = elapsed, time.perf_counter()
    while step < cfg.steps and elapsed < deadline:
        idx = torch.randint(0, len(gen_batch), (cfg.batch_size,))
        x, y = gen_batch.x[idx], gen_batch.labels[idx]
        t = torch.randint(0, diffusion.num_timesteps, (cfg.batch_size,))
        loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        update_ema(ema, model, ema_decay_at(step, cfg))
        step += 1
        losses = (losses + [loss.item()])[-LOSS_WINDOW:]
        elapsed = elapsed_before + time.perf_counter() - run_start
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if step % cfg.ckpt_every == 0:
            summary = checkpoint()
            model.train()
    bar.close()
    if not summary or summary["step"] != step:
        summary = checkpoint()
    if step < cfg.steps:
        print(f"stopped at step {step} of {cfg.steps} after --max-minutes {cfg.max_minutes}; "
              f"continue with --resume", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--results-dir", type=Path, required=True, help="folder for checkpoint.pt")
    parser.add_argument("--export", type=Path, default=None,
                        help="write the EMA weights here (.safetensors) at every checkpoint and at the end")
    parser.add_argument("--resume", action="store_true", help="continue <results-dir>/checkpoint.pt")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in fields(TrainConfig):                   # one flag per field, its help from the field's metadata
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=f.metadata.get("help"))
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    try:
        cfg.validate()
        check_source(cfg.data)
    except (ValueError, DataError) as exc:
        parser.exit(print_error(exc))
    if args.export is not None and args.export.suffix != ".safetensors":
        parser.exit(print_error(f"--export must end in .safetensors, got {args.export}"))
    if args.threads < 0:
        parser.exit(print_error(f"--threads must be >= 0, got {args.threads}"))
    try:
        check_output_dir(args.results_dir, "--results-dir")
        if args.export is not None:
            check_output_file(args.export, "--export", suffixes=(".safetensors",))
    except UsageError as exc:
        parser.exit(print_error(exc))
    ckpt = args.results_dir / CHECKPOINT_NAME
    if args.resume and not ckpt.is_file():
        parser.exit(print_error(f"--resume: no checkpoint at {ckpt}; drop --resume to start a new run"))
    if not args.resume and ckpt.exists():
        parser.exit(print_error(f"{ckpt} already exists; pass --resume to continue it or choose another --results-dir"))
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        summary = train(cfg, args.results_dir, args.export, args.resume, progress=not args.no_progress)
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise SystemExit(print_error(exc)) from None
    print(f"done: step {summary['step']:.0f}, train loss {summary['final_loss']:.4f}, "
          f"held-out loss {summary['heldout_loss']:.4f}, {summary['seconds'] / 60:.1f} min of training")


if __name__ == "__main__":
    main()
