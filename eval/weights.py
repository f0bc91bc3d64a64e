"""Locating weights: a local path, the torch hub cache, or a download when the network is reachable.

Every network the harness uses (Inception, LPIPS backbone and heads, CLIP) is resolved here *before*
any image is read, so a missing file fails fast with a message that names the file and where to
get it.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import MissingWeightsError

# Environment variables that declare the machine offline; HF_HUB_OFFLINE is the Hugging Face one,
# DUCA_EVAL_OFFLINE is ours (it also stops torch-hub style downloads).
OFFLINE_ENV_VARS = ("DUCA_EVAL_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Seconds to wait for a TCP connection before declaring the network unreachable. Short on purpose:
# it is only a probe, the download itself has no such limit.
NETWORK_PROBE_TIMEOUT_S = 3.0

HTTPS_PORT = 443
HTTP_PORT = 80


@dataclass(frozen=True)
class WeightSource:
    """Where a weights file comes from.

    Attributes:
        label: human name used in messages.
        filename: file name looked up in (and downloaded to) the torch hub checkpoint folder.
        url: download address, or ``None`` when the file cannot be downloaded automatically.
        flag: the CLI flag that takes a local path to this file.
        aliases: other file names of the same weights, also accepted in the hub folder.
    """

    label: str
    filename: str
    url: str | None
    flag: str
    aliases: tuple[str, ...] = ()

    def how_to_get(self) -> str:
        where = f"download {self.url}" if self.url else "obtain the file"
        return (
            f"{where} on a machine with internet access, copy it here and pass {self.flag} PATH "
            f"(or place it at {hub_checkpoint_dir() / self.filename})"
        )


def offline_by_env() -> bool:
    """True when one of :data:`OFFLINE_ENV_VARS` is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENV_VARS)


def behind_proxy(url: str) -> bool:
    """A proxy serves ``url`` (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, not bypassed by ``NO_PROXY``,
    whose entries may name a port), by urllib's rules. HTTP clients differ in edge cases (a ``NO_PROXY`` entry
    with a leading dot: urllib also bypasses the domain itself)."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    proxies = urllib.request.getproxies()
    try:
        host = f"{parsed.hostname}:{parsed.port}" if parsed.port else parsed.hostname
    except ValueError:   # a port that is not a number: no proxy decision to make
        return False
    return (parsed.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host)


def network_reachable(url: str, timeout_s: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Probe the host of ``url`` with a TCP connection. False when the environment declares the machine offline
    (that wins); True behind a proxy, which a TCP probe cannot see through (the download reports failures)."""
    if offline_by_env():
        return False
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    if behind_proxy(url):
        return True
    try:  # the URL's own port, else the scheme's (a mirror such as HF_ENDPOINT=http://host:8080 is probed there)
        port = parsed.port or (HTTP_PORT if parsed.scheme == "http" else HTTPS_PORT)
    except ValueError:  # a port that is not a number
        return False
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(path: str | os.PathLike | None, source: WeightSource) -> Path:
    """Return a local file for ``source``.

    Order: the explicit ``path`` (which must exist); the torch hub cache; a download from
    ``source.url`` when the network is reachable. Raises :class:`MissingWeightsError` naming the
    file and where to get it otherwise.
    """
    if path is not None:
        candidate = Path(path).expanduser()
        if candidate.is_file():
            return candidate
        raise MissingWeightsError(
            f"{source.label} weights not found at {candidate} (given by {source.flag}); {source.how_to_get()}."
        )
    for name in (source.filename, *source.aliases):
        if (hub_checkpoint_dir() / name).is_file():
            return hub_checkpoint_dir() / name
    cached = hub_checkpoint_dir() / source.filename
    if source.url is not None and network_reachable(source.url):
        import torch.hub

        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(source.url, str(cached), progress=True)
        except Exception as exc:  # any network or disk failure becomes the same actionable error
            raise MissingWeightsError(
                f"{source.label} weights ({source.filename}) could not be downloaded from {source.url}: {exc}; "
                f"{source.how_to_get()}."
            ) from exc
        return cached
    raise MissingWeightsError(
        f"{source.label} weights ({source.filename}) are not on disk and the network is unreachable; "
        f"{source.how_to_get()}."
    )
