"""`model.max_batch: auto`: the number of streams per forward that gives the most
segments per second on this machine, measured on the run's own segments and remembered.

Why measure: batching streams pays where one segment leaves the hardware idle (a GPU,
many cores: bigger matmuls, more scan channels in parallel) and does little or harm on
a few CPU cores, where one Ti segment already keeps them busy and a bigger batch only
grows the working set (benchmarks/model_speed.py prints segments/s for 1, 4 and 16
streams). Which side a machine is on depends on its cores, caches, precision and model,
so no fixed number suits them all.

How: a first run starts at once with batches of 1 (`AdaptiveBatch`); while streams run
together it times the real forward steps at batch sizes 1, 2, 4, ... up to the streams
decoded at once (`runner.max_streams`; the runner never batches more), each size's first
full batch a warm-up and the median of the next `STEPS` its rate; the sweep stops once a
size falls clearly below the best, and the smallest size within `TOLERANCE` of the best
wins (a smaller batch means less latency and memory for the same throughput). Nothing
runs before the first segment: an earlier version probed on random clips first, a
silent 30 s to 4 minutes on a 2-core machine while a live source waited. The answer is
cached per machine, model shape, precision, device, thread count and kernel code
(`ops_fingerprint`: faster kernels move the best size) in <cache>/batch_probe.json
(vmstream's cache directory, `vmstream.cache_dir`); later runs start at it. A number in the
config skips all of this. A run with one stream at a time has nothing to measure and
runs at 1.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from vmstream.cache_dir import cache_root

log = logging.getLogger(__name__)

__all__ = [
    "TOLERANCE",
    "MAX_PROBED",
    "STEPS",
    "candidates",
    "choose",
    "sweep",
    "ops_fingerprint",
    "probe_key",
    "resolve_max_batch",
    "batch_policy",
    "FixedBatch",
    "AdaptiveBatch",
]

TOLERANCE = 0.05  # sizes within 5 % of the best throughput count as equal (timing noise)
MAX_PROBED = 16
STEPS = 3  # timed full batches per size, after one warm-up; their median is the size's rate


def candidates(max_streams: int, limit: int = MAX_PROBED) -> list[int]:
    """Batch sizes worth probing: powers of two up to the streams decoded at once, and that count."""
    top = max(1, min(int(max_streams), limit))
    sizes = [1 << k for k in range(top.bit_length()) if (1 << k) <= top]
    return sizes if sizes[-1] == top else sizes + [top]


def choose(throughput: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest batch size within `tolerance` of the best segments/s."""
    if not throughput:
        raise ValueError("no batch size was measured")
    best = max(throughput.values())
    return min(b for b, v in throughput.items() if v >= (1 - tolerance) * best)


def sweep(measure: Callable[[int], float], sizes: list[int], tolerance: float = TOLERANCE) -> dict[int, float]:
    """segments/s of each size in order, stopping at the first one clearly below the best so far
    (throughput that has started to fall does not come back at larger sizes)."""
    out: dict[int, float] = {}
    for b in sizes:
        out[b] = measure(b)
        if out[b] < (1 - tolerance) * max(out.values()):
            break
    return out


@functools.lru_cache(maxsize=1)
def ops_fingerprint() -> str:
    """A hash of the model ops' code (vmstream/models/ops: the Python and the C++ kernels):
    a probe measured with other kernels says nothing about these."""
    import vmstream.models.ops as ops

    root = Path(ops.__file__).parent
    h = hashlib.sha256()
    for f in sorted([*root.glob("*.py"), *root.glob("csrc/*")]):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def probe_key(model, *, frames: int, device, precision: str) -> str:
    card = model.card
    return "|".join(
        str(x)
        for x in (
            _cpu_name(),
            torch.__version__,
            torch.device(device).type,
            torch.get_num_threads(),
            type(model).__name__,
            card.embed_dim,
            card.depth,
            card.img_size,
            card.patch_size,
            frames,
            precision,
            ops_fingerprint(),
        )
    )


class FixedBatch:
    """A batch size known before the run: a number in the config, or one measured earlier."""

    def __init__(self, size: int):
        self.size = max(1, int(size))

    def limit(self) -> int:
        return self.size

    def observe(self, batch: int, seconds: float) -> None:
        pass


class AdaptiveBatch:
    """Batch sizes measured on the run's own forward steps, as they flow.

    The inference loop asks `limit()` before each step and tells `observe(batch, seconds)`
    after it. Only full batches (as many segments as the size under test) say anything
    about a size; with fewer streams ready the loop simply runs what it has. Once the sweep
    ends, `on_done(measured, choice)` is called once and the choice holds."""

    def __init__(
        self,
        sizes: list[int],
        *,
        on_done: Optional[Callable[[dict, int], None]] = None,
        steps: int = STEPS,
        tolerance: float = TOLERANCE,
    ):
        self.sizes = list(sizes)
        self.steps = steps
        self.tolerance = tolerance
        self.on_done = on_done
        self.measured: dict[int, float] = {}
        self.choice: Optional[int] = None if len(self.sizes) > 1 else self.sizes[0]
        self._at = 0
        self._times: list[float] = []
        self._warm = False

    def limit(self) -> int:
        return self.choice if self.choice is not None else self.sizes[self._at]

    def observe(self, batch: int, seconds: float) -> None:
        if self.choice is not None or batch != self.sizes[self._at]:
            return
        if not self._warm:  # a size's first batch pays for allocation and cold caches
            self._warm = True
            return
        self._times.append(seconds)
        if len(self._times) < self.steps:
            return
        size = self.sizes[self._at]
        self.measured[size] = size / max(statistics.median(self._times), 1e-9)
        self._times, self._warm = [], False
        falling = self.measured[size] < (1 - self.tolerance) * max(self.measured.values())
        if falling or self._at == len(self.sizes) - 1:
            self.choice = choose(self.measured, self.tolerance)
            if self.on_done is not None:
                self.on_done(dict(self.measured), self.choice)
            return
        self._at += 1
        log.info(
            "model.max_batch auto: %.2f segments/s at batch %d; trying %d",
            self.measured[size],
            size,
            self.sizes[self._at],
        )


def batch_policy(
    setting: Union[int, str],
    *,
    model,
    max_streams: int,
    device,
    frames: int,
    precision: str = "fp32",
    cache_file: Optional[Path] = None,
):
    """The run's batch policy: `FixedBatch` for a number, a cached measurement or a single
    stream at a time; else `AdaptiveBatch`, which starts at 1 and measures as the run goes
    (nothing runs before the first segment), caching its answer."""
    known = resolve_max_batch(
        setting,
        model=model,
        max_streams=max_streams,
        device=device,
        frames=frames,
        precision=precision,
        cache_file=cache_file,
    )
    if known is not None:
        return FixedBatch(known)
    sizes = candidates(max_streams)
    cache_file = cache_file or _default_cache()
    key = probe_key(model, frames=frames, device=device, precision=precision)

    def remember(measured: dict, choice: int) -> None:
        log.info(
            "model.max_batch auto: %d (segments/s at batch %s; remembered)",
            choice,
            ", ".join(f"{b}: {v:.2f}" for b, v in measured.items()),
        )
        log.debug("model.max_batch auto: measured on this run's segments, cached in %s", cache_file)
        cached = _read(cache_file)
        cached[key] = {"sizes": sizes, "measured": {str(b): v for b, v in measured.items()}}
        _write(cache_file, cached)

    return AdaptiveBatch(sizes, on_done=remember)


def resolve_max_batch(
    setting: Union[int, str],
    *,
    model,
    max_streams: int,
    device,
    frames: int,
    precision: str = "fp32",
    cache_file: Optional[Path] = None,
    measure: Optional[Callable[[int], float]] = None,
) -> Optional[int]:
    """`setting` when it is a number; for "auto" the cached best, 1 when one stream runs at a
    time, else (nothing measured yet) None, or with `measure(batch) -> segments/s` given
    the sweep of it, cached (benchmarks and tests; runs measure as they go: batch_policy).

    `cache_file` None means <cache>/batch_probe.json.
    """
    if setting != "auto":
        return int(setting)
    sizes = candidates(max_streams)
    if sizes == [1]:
        return 1
    cache_file = cache_file or _default_cache()
    key = probe_key(model, frames=frames, device=device, precision=precision)
    cached = _read(cache_file)
    hit = cached.get(key)
    if isinstance(hit, dict) and hit.get("sizes") == sizes:
        try:
            return choose({int(b): float(v) for b, v in hit["measured"].items()})
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # a damaged entry: measure again
    if measure is None:
        return None
    t0 = time.perf_counter()
    measured = sweep(measure, sizes)
    pick = choose(measured)
    log.info(
        "model.max_batch auto: %d (segments/s by batch size: %s; probed in %.1f s, cached in %s)",
        pick,
        ", ".join(f"{b}: {v:.2f}" for b, v in measured.items()),
        time.perf_counter() - t0,
        cache_file,
    )
    cached[key] = {"sizes": sizes, "measured": {str(b): v for b, v in measured.items()}}
    _write(cache_file, cached)
    return pick


def _default_cache() -> Path:
    return cache_root() / "batch_probe.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: probe again


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: probe again next time
        log.info("model.max_batch auto: cannot cache the probe in %s (%s)", path, e)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"
