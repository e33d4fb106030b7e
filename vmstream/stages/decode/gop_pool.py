"""Decoding a file's independent runs of GOPs at the same time, each on its own decoder.

Frame threading inside one H.264 decoder only overlaps pictures that do not wait on
each other. Exact sparse sampling feeds a GOP's reference chain (I, P, P, ...: each
waits on the rows of the one before), and the I picture at its head decodes alone; a
full decode also converts every frame after it comes out. Both leave cores idle.

A GOP that starts with an IDR picture takes nothing from what came before it (an IDR
empties the reference buffer), and a decoder that was flushed (after a seek, or before
resuming at a keyframe past left-out references) starts clean anyway. So the planner
cuts the file into *runs* at those points, and each run may go to its own decoder
context: the frames are the ones a single decoder fed the same packets in order gives,
bit for bit (the tests hold both to decoding everything). Within a run, packets go to
one decoder in order, exactly as the planner asked.

`GopPool` runs `workers` decoders on threads (FFmpeg's decoder and swscale release the
GIL); each converts its wanted frames itself. The planner submits one GOP window at a
time; results come back in submission order, at most `depth` windows behind, so
memory stays bounded however long a run is. `SerialDecoder` is the same interface on
one decoder in the caller's thread: the readable form, and what non-H.264 codecs use.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import av.error
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Decoded", "GopPool", "SerialDecoder", "decode_packet"]


@dataclass(slots=True)
class Decoded:
    """One wanted output frame: its pts, the converted image, the targets it serves
    (`count`; 1 when every frame is wanted)."""

    pts: Optional[int]
    image: np.ndarray
    count: int


@dataclass
class RunCounts:
    fed: int = 0
    decoded: int = 0
    decode_errors: int = 0
    missed: int = 0  # wanted frames the decoder never put out
    runs: int = 0  # runs started on a fresh decoder (pool only)


def decode_packet(cc, packet, counts: RunCounts, uri: str = "") -> list:
    """Feed one packet (None drains); broken packets are counted, not fatal."""
    try:
        out = cc.decode(packet)
    except av.error.EOFError:
        return []
    except av.error.FFmpegError as e:
        counts.decode_errors += 1
        log.debug("%s: broken packet: %s", uri, e)
        return []
    if packet is not None:
        counts.fed += 1
    counts.decoded += len(out)
    return out


class _Wanted:
    """Which output frames a run keeps: all (`None` given) or {pts: targets served}."""

    def __init__(self):
        self.every = False
        self.pts: dict[int, int] = {}

    def add(self, wanted: Optional[dict[int, int]]) -> None:
        if wanted is None:
            self.every = True
            return
        for p, n in wanted.items():
            self.pts[p] = self.pts.get(p, 0) + n

    def take(self, frame) -> int:
        if self.every:
            return 1
        return self.pts.pop(frame.pts, 0) if frame.pts is not None else 0

    def missed(self) -> int:
        return sum(1 for v in self.pts.values() if v)


class SerialDecoder:
    """The pool's interface on one decoder, in the caller's thread: packets are decoded
    as they are submitted and a new run drains and flushes the decoder."""

    def __init__(self, cc, convert: Callable, counts: RunCounts, uri: str = ""):
        self.cc, self.convert, self.counts, self.uri = cc, convert, counts, uri
        self.wanted = _Wanted()
        self.dirty = False  # packets were fed since the decoder last started clean

    def _out(self, frames) -> Iterator[Decoded]:
        for f in frames:
            k = self.wanted.take(f)
            if k:
                yield Decoded(f.pts, self.convert(f), k)

    def idr(self) -> Iterator[Decoded]:
        """The next window starts at an IDR: one decoder just reads on."""
        return iter(())

    def new_run(self) -> Iterator[Decoded]:
        """The next packets need a clean decoder (after a seek, or resuming at a
        keyframe past left-out references): drain and flush."""
        if self.dirty:
            yield from self._out(decode_packet(self.cc, None, self.counts, self.uri))
            self.cc.flush_buffers()
            self.dirty = False

    def submit(self, packets: list, wanted: Optional[dict[int, int]]) -> Iterator[Decoded]:
        self.wanted.add(wanted)
        for p in packets:
            self.dirty = True
            yield from self._out(decode_packet(self.cc, p, self.counts, self.uri))

    def finish(self) -> Iterator[Decoded]:
        yield from self._out(decode_packet(self.cc, None, self.counts, self.uri))
        self.counts.missed += self.wanted.missed()

    def close(self) -> None:
        pass


_END = object()


@dataclass
class _Run:
    windows: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    results: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    submitted: int = 0  # windows put in
    taken: int = 0  # window results taken out
    closed: bool = False


def pool_decoder_threads(threads: int, workers: int, cores: Optional[int] = None) -> int:
    """Decoder threads of one GOP-pool worker. The pool's workers are already the
    parallelism, so with FFmpeg's choice (`threads` 0) each gets its share of the cores,
    at least one: FFmpeg's own choice (frame threads per worker as if it had the machine
    alone) oversubscribes the cores and spends the difference in hand-offs between
    threads. An explicit `threads` is kept."""
    if threads:
        return threads
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


class GopPool:
    """Runs of GOP windows decoded on `workers` decoder contexts at once.

    open_decoder() -> (closeable, codec context): a fresh decoder for one worker,
    opened in its thread; convert(): a new frame converter (one per worker).
    """

    def __init__(
        self,
        open_decoder: Callable[[], tuple[Any, Any]],
        convert: Callable[[], Callable],
        counts: RunCounts,
        *,
        workers: int = 2,
        depth: int = 4,
        uri: str = "",
    ):
        if workers < 2:
            raise ValueError(f"GopPool needs workers >= 2, got {workers}")
        self.counts, self.uri, self.depth = counts, uri, max(1, depth)
        self._open, self._convert = open_decoder, convert
        self._runs: "queue.SimpleQueue[Optional[_Run]]" = queue.SimpleQueue()
        self._order: deque[_Run] = deque()  # runs not yet fully taken, oldest first
        self._current: Optional[_Run] = None
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"gop-decoder-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # -- caller side (the planner's thread)

    def new_run(self) -> Iterator[Decoded]:
        """The next window needs a clean decoder (after a seek, or resuming at a
        keyframe past left-out references): it starts a run, on a free decoder.
        Yields what is ready."""
        self._close_current()
        yield from self._take(block=False)

    def idr(self) -> Iterator[Decoded]:
        """The next window starts at an IDR: nothing after it needs what came before,
        so it starts a run too."""
        return self.new_run()

    def submit(self, packets: list, wanted: Optional[dict[int, int]]) -> Iterator[Decoded]:
        """One window: packets to feed in order, {pts: targets} wanted (None: every
        frame). Yields the frames that are ready, blocking while more than `depth`
        windows are outstanding."""
        if self._current is None:
            self._current = _Run()
            self.counts.runs += 1
            self._order.append(self._current)
            self._runs.put(self._current)
        run = self._current
        run.windows.put((packets, wanted))
        run.submitted += 1
        yield from self._take(block=False)
        while self._pending() > self.depth:
            yield from self._take(block=True)

    def finish(self) -> Iterator[Decoded]:
        self._close_current()
        while self._order:
            yield from self._take(block=True)

    def close(self) -> None:
        """Stop the workers (what is queued is dropped) and wait for them."""
        self._closing = True
        for r in self._order:
            if not r.closed:
                r.windows.put(_END)
                r.closed = True
        for _ in self._threads:
            self._runs.put(None)
        for t in self._threads:
            t.join()
        self._order.clear()
        self._current = None

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.windows.put(_END)
            self._current.closed = True
            self._current = None

    def _pending(self) -> int:
        return sum(r.submitted - r.taken for r in self._order)

    def _take(self, block: bool) -> Iterator[Decoded]:
        """Results of the oldest runs, in order: what is ready (block=False), or the
        next one, waiting for it (block=True)."""
        while self._order:
            run = self._order[0]
            if run.taken == run.submitted and not run.closed:
                return  # nothing asked of it that is not taken
            if not block and run.results.empty():
                return
            yield from self._take_one(run)
            if block:
                return

    def _take_one(self, run: _Run) -> Iterator[Decoded]:
        item = run.results.get()
        if isinstance(item, BaseException):
            raise item
        kind, frames, counts = item
        if kind == "window":
            run.taken += 1
        else:  # "end": the drain's frames and the run's counters
            self._order.popleft()
            c = self.counts
            c.fed += counts.fed
            c.decoded += counts.decoded
            c.decode_errors += counts.decode_errors
            c.missed += counts.missed
        yield from frames

    # -- worker side

    def _work(self) -> None:
        dec = cc = convert = None
        opened_error: Optional[BaseException] = None
        try:
            dec, cc = self._open()
            convert = self._convert()
        except BaseException as e:  # reported to the run that needed this worker
            opened_error = e
        try:
            while True:
                run = self._runs.get()
                if run is None:
                    return
                if opened_error is not None:
                    run.results.put(opened_error)
                    continue
                try:
                    self._run(run, cc, convert)
                except BaseException as e:  # a failure reaches the caller, in order
                    run.results.put(e)
                finally:
                    cc.flush_buffers()
        finally:
            if dec is not None:
                dec.close()

    def _run(self, run: _Run, cc, convert) -> None:
        counts = RunCounts()
        wanted = _Wanted()

        def out(frames) -> list[Decoded]:
            res = []
            for f in frames:
                k = wanted.take(f)
                if k:
                    res.append(Decoded(f.pts, convert(f), k))
            return res

        while True:
            item = run.windows.get()
            if item is _END:
                break
            if self._closing:
                continue  # drop queued work until the end marker
            packets, w = item
            wanted.add(w)
            res: list[Decoded] = []
            for p in packets:
                res += out(decode_packet(cc, p, counts, self.uri))
            run.results.put(("window", res, None))
        res = [] if self._closing else out(decode_packet(cc, None, counts, self.uri))
        counts.missed = wanted.missed()
        run.results.put(("end", res, counts))
