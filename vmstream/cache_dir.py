"""Where vmstream keeps what it can rebuild: `$VMSTREAM_CACHE_DIR`, else
`$XDG_CACHE_HOME/vmstream`, else `~/.cache/vmstream`. The compiled CPU kernels
(models/ops/cpu_ext.py, under ext/) and the measured batch sizes
(pipeline/batch_size.py, batch_probe.json) live there. A leaf: it imports no layer, so
every layer may use it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """vmstream's cache directory (not created here: its users make what they need)."""
    env = os.environ.get("VMSTREAM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vmstream"
