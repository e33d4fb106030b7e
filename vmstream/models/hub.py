"""Where checkpoint files come from: a local path, a local checkpoint directory, or the
Hugging Face hub (OpenGVLab/VideoMamba) through `huggingface_hub` and its cache.

Resolution order for a name: a file at that path; `$VMSTREAM_CHECKPOINT_DIR/<file>`;
the hub (its cache first). Offline (`HF_HUB_OFFLINE=1` or `local_files_only=True`) only the
cache is consulted. When nothing works, the error says which file to fetch from where and
where to put it.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

from .registry import HF_REPO, CheckpointInfo, get_checkpoint

CHECKPOINT_DIR_ENV = "VMSTREAM_CHECKPOINT_DIR"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


class CheckpointNotFound(FileNotFoundError):
    """No local file for a checkpoint path or name, and it could not be downloaded."""


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def resolve_checkpoint(name_or_path: Union[str, os.PathLike], *, cache_dir: Optional[Union[str, Path]] = None,
                       local_files_only: Optional[bool] = None) -> Path:
    """A local file for a checkpoint path or registry name, downloading it if needed."""
    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointNotFound(f"checkpoint path {path} is a directory, not a checkpoint file")
    try:
        info = get_checkpoint(path.name if raw.endswith(".pth") else raw)
    except KeyError as e:
        if os.sep in raw or raw.endswith(_WEIGHT_SUFFIXES):
            raise CheckpointNotFound(f"checkpoint file {path} does not exist") from None
        raise CheckpointNotFound(f"{raw!r} is neither an existing file nor a known checkpoint name: {e.args[0]}") from None
    if os.sep in raw and not path.exists():
        # An explicit path to an official file name that is not there: say so rather
        # than quietly downloading somewhere else.
        raise CheckpointNotFound(f"checkpoint file {path} does not exist; to use the official "
                                 f"{info.filename}, pass the name {info.name!r} or download it:\n"
                                 + _where_to_get(info, cache_dir))

    local_dir = os.environ.get(CHECKPOINT_DIR_ENV)
    if local_dir:
        candidate = Path(local_dir).expanduser() / info.filename
        if candidate.is_file():
            return candidate

    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) if local_files_only is None else local_files_only
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointNotFound(f"checkpoint {info.name!r} is not available locally and huggingface_hub is not "
                                 "installed to download it.\n" + _where_to_get(info, cache_dir)) from None
    try:
        return Path(hf_hub_download(HF_REPO, info.filename, cache_dir=cache_dir, local_files_only=offline))
    except Exception as e:  # offline, unreachable, 404, auth: all end the same way for the user
        reason = "offline mode, and it is not in the Hugging Face cache" if offline else f"{type(e).__name__}: {e}"
        reason = reason.splitlines()[0] if reason else type(e).__name__
        raise CheckpointNotFound(f"checkpoint {info.name!r} is not available locally and could not be downloaded "
                                 f"({reason}).\n" + _where_to_get(info, cache_dir)) from None


def _where_to_get(info: CheckpointInfo, cache_dir) -> str:
    local_dir = os.environ.get(CHECKPOINT_DIR_ENV)
    target = f"${CHECKPOINT_DIR_ENV} (now {local_dir})" if local_dir else f"a directory and set {CHECKPOINT_DIR_ENV} to it"
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"
    note = "" if info.name_confirmed else (
        f"\n  Note: the official MODEL_ZOO links this row to another file; {info.filename} follows the zoo's "
        "naming pattern but is unconfirmed.")
    return (f"  Download {info.url}\n"
            f"  and put it in {target} as {info.filename},\n"
            f"  or fetch it into the hub cache ({cache}) with: huggingface-cli download {HF_REPO} {info.filename}\n"
            f"  or pass the file directly: --checkpoint /path/to/{info.filename}" + note)


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
