"""`model.max_batch: auto`: the number of streams per forward that gives the most
segments per second on this machine, measured once and remembered.

Why measure: batching streams pays where one segment leaves the hardware idle (a GPU,
many cores: bigger matmuls, more scan channels in parallel) and does little or harm on
a few CPU cores, where one Ti segment already keeps them busy and a bigger batch only
grows the working set (benchmarks/model_speed.py prints segments/s for 1, 4 and 16
streams). Which side a machine is on depends on its cores, caches, precision and model,
so no fixed number suits them all.

How: forward_segment on random clips of the run's shape, batch sizes 1, 2, 4, ... up to
the streams decoded at once (`runner.max_streams`; the runner never batches more),
each warmed up once and then timed; the sweep stops once a size falls clearly below the
best, and the smallest size within `TOLERANCE` of the best wins (a smaller batch means
less latency and memory for the same throughput). The answer is cached per machine,
model shape, precision, device, thread count and kernel code (`ops_fingerprint`: faster
kernels move the best size) in <cache>/batch_probe.json (the
kernel cache's directory, $VMSTREAM_CACHE_DIR), so only the first run pays the probe
(a few seconds). A number in the config skips all of this.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

log = logging.getLogger(__name__)

__all__ = ["TOLERANCE", "MAX_PROBED", "candidates", "choose", "sweep", "ops_fingerprint", "probe_key",
           "resolve_max_batch"]

TOLERANCE = 0.05  # sizes within 5 % of the best throughput count as equal (timing noise)
MAX_PROBED = 16


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
    return "|".join(str(x) for x in (
        _cpu_name(), torch.__version__, torch.device(device).type, torch.get_num_threads(),
        type(model).__name__, card.embed_dim, card.depth, card.img_size, card.patch_size, frames, precision,
        ops_fingerprint()))


def resolve_max_batch(setting: Union[int, str], *, model, max_streams: int, device, frames: int,
                      precision: str = "fp32", cache_file: Optional[Path] = None,
                      measure: Optional[Callable[[int], float]] = None) -> int:
    """`setting` when it is a number; for "auto" the measured best (cached).

    `measure(batch) -> segments/s` replaces the real probe (tests); `cache_file` None
    means <cache>/batch_probe.json.
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
            pass  # a damaged entry: probe again
    if measure is None:
        measure = _forward_probe(model, frames=frames, device=device)
    t0 = time.perf_counter()
    measured = sweep(measure, sizes)
    pick = choose(measured)
    log.info("model.max_batch auto: %d (segments/s by batch size: %s; probed in %.1f s, cached in %s)", pick,
             ", ".join(f"{b}: {v:.2f}" for b, v in measured.items()), time.perf_counter() - t0, cache_file)
    cached[key] = {"sizes": sizes, "measured": {str(b): v for b, v in measured.items()}}
    _write(cache_file, cached)
    return pick


def _forward_probe(model, *, frames: int, device) -> Callable[[int], float]:
    size = model.card.img_size
    channels = model.card.in_chans

    @torch.inference_mode()
    def measure(batch: int) -> float:
        clip = torch.randn(batch, channels, frames, size, size, device=device)
        state = model.init_state(batch, device=device)
        model.forward_segment(clip, state)  # warm-up: allocator, kernels, caches
        t = time.perf_counter()
        model.forward_segment(clip, state)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return batch / (time.perf_counter() - t)

    return measure


def _default_cache() -> Path:
    from vmstream.models.ops.cpu_ext import cache_root

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
