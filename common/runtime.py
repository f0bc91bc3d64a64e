"""Process-level helpers shared by the sampling scripts: devices, torchrun set-up, atomic file writes, help text."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import UsageError

__all__ = ["HelpFormatter", "UsageError", "atomic_path", "atomic_write_bytes", "init_distributed", "pick_device",
           "write_json"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The command lines' ``--help``: the description and epilog as written (usage examples keep their lines), and
    ``(default: X)`` after an option's help only where it says something: not when the help text already names
    its default, and not for a default of None or False (an unset option, a switch that is off), nor for a
    ``store_false`` switch (its True default is the option left out)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        switch_off = isinstance(action, argparse._StoreFalseAction)  # argparse has no public name for it
        if "default" in text or action.default is None or action.default is False or switch_off:
            return text
        return super()._get_help_string(action)


def pick_device(name: str | None = "auto", flag: str = "--device") -> torch.device:
    """The one way every entry point chooses its device: ``auto`` or ``None`` (CUDA when visible, else CPU)
    or an explicit torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``). A device that cannot be used
    is a ``UsageError`` naming ``flag`` and the fix."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {name!r} is not a device; pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name} asked for CUDA but no GPU is visible; pass {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: only {torch.cuda.device_count()} GPU(s) are visible; "
                             f"pass {flag} cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{flag} {name} asked for MPS but it is not available; pass {flag} cpu")
    return device


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), or (0, 1, device)
    alone. A CUDA device without an index becomes ``cuda:LOCAL_RANK``; NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder (same suffix, so writers that go by the extension still
    work); renamed onto ``path`` when the block succeeds, removed when it raises. Readers never see
    half a file, and an interrupted run leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, data: object) -> Path:
    """Pretty JSON, written atomically; values JSON does not know are written as their ``str``."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))
    return path
