"""Output-path checks every entry point runs before it builds a model.

An output that cannot be written used to be discovered after sampling, with a traceback, and the
work was lost. :func:`check_output_file` and :func:`check_output_dir` find that out in milliseconds and
raise :class:`~duca_common.errors.UsageError` with one line naming the flag, the path and the fix.

Whether a folder can be written is decided by writing: an empty probe file is created in the nearest
existing folder and removed at once. ``os.access`` is not enough: as root it answers "writable" for
read-only folders, ``/proc`` and ``/sys``, where a real write still fails. The probe leaves nothing
behind and no folder is created by a check.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UsageError

PROBE_PREFIX = ".duca-write-probe-"


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        # a broken symlink "does not exist" but cannot be created over either
        if current.is_symlink():
            return current
        current = current.parent
    return current


def _probe(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else the reason."""
    try:
        fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(name)
    return None


def _check_creatable_folder(path: Path, flag: str, shown: Path) -> None:
    """``path`` is a folder, or can be created as one (every missing parent too)."""
    anchor = _nearest_existing(path)
    if anchor.is_symlink() and not anchor.exists():
        raise UsageError(f"{flag} {shown}: {anchor} is a broken symbolic link; remove it or pass another {flag}")
    if not anchor.is_dir():
        where = "is" if anchor == shown else f"lies under {anchor}, which is"
        raise UsageError(f"{flag} {shown} {where} a file, not a folder; pass a folder path for {flag}")
    reason = _probe(anchor)
    if reason is not None:
        what = "folder" if anchor == shown else f"folder {anchor}"
        raise UsageError(f"{flag} {shown}: the {what} cannot be written ({reason}); "
                         f"pass a writable location for {flag}")


def check_output_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """An output folder: exists and is writable, or can be created. Nothing is created here."""
    folder = Path(path).expanduser()
    _check_creatable_folder(folder, flag, folder)
    return folder


def check_output_file(path: str | os.PathLike[str], flag: str, *, suffixes: tuple[str, ...] = ()) -> Path:
    """An output file: not a folder, its folder exists and is writable (or can be created), and an existing
    file there can be replaced. ``suffixes`` (e.g. ``(".png",)``) restricts the file type."""
    target = Path(path).expanduser()
    if str(path) == "" or target.name in ("", ".", ".."):
        raise UsageError(f"{flag} {str(path)!r} is not a file name; pass a file path such as out/result"
                         f"{suffixes[0] if suffixes else '.json'}")
    if target.is_dir():
        raise UsageError(f"{flag} {target} is a folder; pass a file path inside it, "
                         f"e.g. {target / ('result' + (suffixes[0] if suffixes else '.json'))}")
    if suffixes and target.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {target} must end in {' or '.join(suffixes)}")
    _check_creatable_folder(target.parent, flag, target)
    return target


def image_suffixes() -> tuple[str, ...]:
    """File suffixes Pillow can write (``.png``, ``.jpg``, ...): an image output with another suffix would
    fail only after sampling."""
    from PIL import Image

    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE))
