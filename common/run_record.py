"""The run record: what decides a sampler's outputs, written before the first sample, checked on resume.

Every sampler that fills a folder and may be rerun to finish it (DiT ``sample_ddp``, PixArt
``inference`` / ``inference_ddp``, OpenSora ``inference``) writes ``<folder>/run.json``::

    {"record_version": 1, "settings": {...}, "info": {...}}

* ``settings`` are the values that decide the files (checkpoint identity, prompts hash, seed, steps,
  guidance, cache method and its parameters, sizes, batch layout where it changes the cache's token
  selection). A rerun into the folder must have the same settings; otherwise it is refused with a
  :class:`~duca_common.errors.UsageError` naming every differing setting with both values, before any
  model is built.
* ``info`` is for people (descriptions, how many samples were asked for) and is never compared, so a
  rerun may ask for more samples of the same run.
* A folder that already holds outputs but no record is refused too: its files cannot be attributed
  to a run. So a finished sample is only ever skipped when it belongs to the recorded run.

Checkpoint identity is the SHA-256 of the file's bytes (:func:`file_identity`), not its path, size and
modification time: the same weights copied to another machine, path or mount still match (a cluster
resume), and a different file that happens to share a name, size and time does not. Hashing costs
about one second per GB, once per start, which is noise next to sampling thousands of images. Large
fixed components (the T5 encoder, the VAE) are recorded by their flag value instead; hashing the
9 GB T5 at every start would cost more than it protects.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .runtime import write_json

RECORD_NAME = "run.json"
RECORD_VERSION = 1
HASH_CHUNK = 1 << 20                      # bytes read per hashing step
# How much of a differing value the refusal message shows.
MAX_VALUE_CHARS = 80


def _normalise(value: Any) -> Any:
    """JSON's view of ``value`` (tuples become lists, unknown objects their ``str``), so a freshly built
    record compares equal to one read back from disk."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path_or_id: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """What identifies a weights source: a file by its size and SHA-256; a folder by the sorted
    (relative name, size, SHA-256) of its files; anything else (a hub id) by its text."""
    if path_or_id is None:
        return None
    path = Path(path_or_id).expanduser()
    if path.is_file():
        return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.is_dir():
        digest, total = hashlib.sha256(), 0
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            size = f.stat().st_size
            digest.update(f"{f.relative_to(path).as_posix()}\0{size}\0{sha256_file(f)}\n".encode())
            total += size
        return {"folder_sha256": digest.hexdigest(), "bytes": total}
    return {"id": str(path_or_id)}


def text_identity(lines: Iterable[str]) -> dict[str, Any]:
    """Count and SHA-256 of a list of prompts (one per line, UTF-8)."""
    lines = list(lines)
    return {"count": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()}


@dataclass(frozen=True)
class RunRecord:
    settings: Mapping[str, Any]
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"record_version": RECORD_VERSION, "settings": _normalise(dict(self.settings)),
                "info": _normalise(dict(self.info))}

    def differences(self, recorded: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(setting, recorded value, this run's value)`` for every setting that differs."""
        mine = _normalise(dict(self.settings))
        keys = sorted(set(mine) | set(recorded))
        return [(k, recorded.get(k, "<absent>"), mine.get(k, "<absent>")) for k in keys
                if recorded.get(k, "<absent>") != mine.get(k, "<absent>")]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + "..."


def read_record(folder: Path, flag: str) -> dict[str, Any] | None:
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            raise ValueError("no 'settings' object")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{flag} {folder}: its {RECORD_NAME} is unreadable ({exc}); the files there cannot be "
                         f"attributed to a run: pass another {flag} or remove the folder") from None
    if data.get("record_version") != RECORD_VERSION:
        raise UsageError(f"{flag} {folder}: its {RECORD_NAME} has record_version {data.get('record_version')!r}, "
                         f"this version writes {RECORD_VERSION}; pass another {flag} or remove the folder")
    return data


def check_resume(folder: str | os.PathLike[str], record: RunRecord, *, flag: str,
                 outputs: Iterable[str] = ()) -> bool:
    """Refuse a folder that holds another run; True when it holds this run (a resume).

    ``outputs`` are glob patterns of the files the run writes (``"*.png"``); a folder holding such files
    without a record is refused. Nothing is written here (see :func:`write_record`)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder; pass a folder path for {flag}")
    recorded = read_record(folder, flag)
    if recorded is not None:
        diff = record.differences(recorded["settings"])
        if diff:
            shown = "; ".join(f"{k}: recorded {_short(old)}, now {_short(new)}" for k, old, new in diff[:3])
            more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
            raise UsageError(f"{flag} {folder} holds a run with other settings ({shown}{more}); its files would mix "
                             f"with this run's: pass another {flag}, or the same settings to resume it")
        return True
    if folder.is_dir():
        found = sorted({p.name for pattern in outputs for p in folder.glob(pattern)})
        if found:
            raise UsageError(f"{flag} {folder} holds {len(found)} output file(s) (e.g. {found[0]}) "
                             f"but no {RECORD_NAME}, so they cannot be attributed to this run; "
                             f"pass an empty or new {flag}")
    return False


def write_record(folder: str | os.PathLike[str], record: RunRecord) -> Path:
    """Create the folder and write the record atomically (call after :func:`check_resume`, before the first
    sample; under torchrun on rank 0 only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / RECORD_NAME, record.to_json())


def open_run(folder: str | os.PathLike[str], record: RunRecord, *, flag: str, outputs: Iterable[str] = (),
             write: bool = True) -> bool:
    """:func:`check_resume` then (``write``) :func:`write_record`; True when resuming."""
    resumed = check_resume(folder, record, flag=flag, outputs=outputs)
    if write:
        write_record(folder, record)
    return resumed
