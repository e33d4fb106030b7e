"""Where checkpoint files come from: a local path, a local checkpoint directory, or the
Hugging Face hub (OpenGVLab/VideoMamba) through `huggingface_hub` and its cache.

Resolution order for a name: a file at that path; `$VMSTREAM_CHECKPOINT_DIR/<file>`;
the hub (its cache first). Offline (`HF_HUB_OFFLINE=1` or `local_files_only=True`) only the
cache is consulted. When nothing works, the error says which file to fetch from where and
where to put it.

Before asking the hub, one TCP connect to its host (`$HF_ENDPOINT`, or a proxy from the
environment) with a 2 s limit tells whether it can be reached at all: without a network,
huggingface_hub would retry six times over ~23 s, printing each warning twice (its own
handler and the application's), before the same answer. Unreachable, only the cache is
consulted and the error says so once. The hub's own retry warnings are kept quiet during
the download; the error that ends it is ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

from .registry import HF_REPO, CheckpointInfo, get_checkpoint

CHECKPOINT_DIR_ENV = "VMSTREAM_CHECKPOINT_DIR"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
HUB_PROBE_TIMEOUT_S = 2.0
_HUB_LOGGERS = ("huggingface_hub", "urllib3", "httpx", "httpcore")


class CheckpointNotFound(FileNotFoundError):
    """No local file for a checkpoint path or name, and it could not be downloaded."""


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def resolve_checkpoint(
    name_or_path: Union[str, os.PathLike],
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    local_files_only: Optional[bool] = None,
) -> Path:
    """A local file for a checkpoint path or registry name, downloading it if needed."""
    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointNotFound(f"checkpoint path {path} is a directory, not a checkpoint file")
    if path.exists():  # a FIFO, socket or device (/dev/zero): reading one never ends
        raise CheckpointNotFound(f"checkpoint path {path} is not a regular file")
    try:
        info = get_checkpoint(path.name if raw.endswith(".pth") else raw)
    except KeyError as e:
        if os.sep in raw or raw.endswith(_WEIGHT_SUFFIXES):
            raise CheckpointNotFound(f"checkpoint file {path} does not exist") from None
        raise CheckpointNotFound(
            f"{raw!r} is neither an existing file nor a known checkpoint name: {e.args[0]}"
        ) from None
    if os.sep in raw and not path.exists():
        # An explicit path to an official file name that is not there: say so rather
        # than quietly downloading somewhere else.
        raise CheckpointNotFound(
            f"checkpoint file {path} does not exist; to use the official "
            f"{info.filename}, pass the name {info.name!r} or download it:\n" + _where_to_get(info, cache_dir)
        )

    local_dir = os.environ.get(CHECKPOINT_DIR_ENV)
    if local_dir:
        candidate = Path(local_dir).expanduser() / info.filename
        if candidate.is_file():
            return candidate

    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) if local_files_only is None else local_files_only
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:
        raise CheckpointNotFound(
            f"checkpoint {info.name!r} is not available locally and huggingface_hub is not "
            "installed to download it.\n" + _where_to_get(info, cache_dir)
        ) from None
    # huggingface_hub reads HF_ENDPOINT once, at import; read it now, and hand the same
    # endpoint to both the probe and the download.
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    unreachable = None if offline else hub_unreachable(endpoint)
    try:
        with _quiet_hub_logs():
            return Path(
                hf_hub_download(
                    HF_REPO,
                    info.filename,
                    cache_dir=cache_dir,
                    endpoint=endpoint,
                    local_files_only=offline or unreachable is not None,
                )
            )
    except Exception as e:  # offline, unreachable, 404, auth: all end the same way for the user
        if offline:
            reason = "offline mode, and it is not in the Hugging Face cache"
        elif unreachable:
            reason = f"the hub at {endpoint} is unreachable: {unreachable}; it is not in the Hugging Face cache either"
        else:
            # "cannot find the requested files in the local cache ... check your connection"
            # wraps what the hub answered (a 404, a 401): report that answer.
            answer = e.__cause__ if type(e).__name__ == "LocalEntryNotFoundError" and e.__cause__ else e
            reason = f"{type(answer).__name__}: {answer}".splitlines()[0]
        raise CheckpointNotFound(
            f"checkpoint {info.name!r} is not available locally and could not be downloaded "
            f"({reason}).\n" + _where_to_get(info, cache_dir)
        ) from None


def hub_unreachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the hub at `endpoint` cannot be reached (None when a TCP connection to it, or to
    the proxy the environment names for it, opens within `timeout` seconds)."""
    url = urlsplit(endpoint)
    if not url.hostname:
        return f"HF_ENDPOINT {endpoint!r} is not a URL"
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        purl = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = purl.hostname or host, purl.port or (443 if purl.scheme == "https" else 80)
    failure: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            failure.append(e.strerror or str(e) or type(e).__name__)

    # A thread: name resolution ignores the socket's timeout and can hang for many seconds.
    probe = threading.Thread(target=connect, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout + 0.5)
    if probe.is_alive():
        return f"no answer from {host}:{port} within {timeout:g} s"
    return f"cannot connect to {host}:{port} ({failure[0]})" if failure else None


@contextlib.contextmanager
def _quiet_hub_logs():
    """huggingface_hub logs every retry through its own stderr handler and again through
    the application's; the error we raise afterwards says everything the user can act on."""
    loggers = [logging.getLogger(name) for name in _HUB_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _where_to_get(info: CheckpointInfo, cache_dir) -> str:
    local_dir = os.environ.get(CHECKPOINT_DIR_ENV)
    target = (
        f"${CHECKPOINT_DIR_ENV} (now {local_dir})" if local_dir else f"a directory and set {CHECKPOINT_DIR_ENV} to it"
    )
    hf_home = os.environ.get("HF_HOME")
    cache = (
        cache_dir
        or os.environ.get("HF_HUB_CACHE")
        or (os.path.join(hf_home, "hub") if hf_home else "~/.cache/huggingface/hub")
    )
    note = (
        ""
        if info.name_confirmed
        else (
            f"\n  Note: the official MODEL_ZOO links this row to another file; {info.filename} follows the zoo's "
            "naming pattern but is unconfirmed."
        )
    )
    return (
        f"  Download {info.url}\n"
        f"  and put it in {target} as {info.filename},\n"
        f"  or fetch it into the hub cache ({cache}) with: {_download_command()} {HF_REPO} {info.filename}\n"
        f"  or pass the file directly: --checkpoint /path/to/{info.filename}" + note
    )


def _download_command() -> str:
    """huggingface_hub's command line as installed: `hf` since 0.34 (1.x has only `hf`)."""
    try:
        from huggingface_hub import __version__

        major, minor = (int(x) for x in __version__.split(".")[:2])
    except (ImportError, ValueError):
        return "hf download"
    return "hf download" if (major, minor) >= (0, 34) else "huggingface-cli download"


def file_digest(path: Union[str, os.PathLike], length: int = 16) -> str:
    """sha256 of a file's bytes, as a hex prefix: the checkpoint identity in results."""
    p = Path(path).resolve()
    st = p.stat()
    return _digest(str(p), st.st_size, st.st_mtime_ns)[:length]


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size/mtime: recompute when the file changes
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
