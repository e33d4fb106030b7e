"""The progress bar of a run: seconds of video done over the known duration of its finite
streams, and segments so far. Shared by `run`, `worker` and `train`.

The bar is decoration. Every call into tqdm is guarded: an error is logged once and the
bar switched off, so a terminal quirk never fails a stream or stalls a run (tqdm raises
while holding its own lock, and the run's threads all report here).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Optional

log = logging.getLogger(__name__)

# With a known total: percentage, bar, seconds of video; without one (live streams only,
# or before the first probe): seconds and segments. tqdm formats `{total}` only when the
# total is a number, so the format follows the total.
_FORMAT_TOTAL = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
_FORMAT_OPEN = "{desc}: {n:.0f} s [{elapsed}{postfix}]"


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Progress:
    """Called from the runner's threads with ("stream", id, StreamInfo) when a stream
    starts, each SegmentResult, and ("done", id, status); `write` prints a line above
    the bar. `enabled`: True (on a terminal), False, or "force" (tests)."""

    def __init__(self, enabled: bool | str = True, *, file=None):
        self.enabled = enabled == "force" or (bool(enabled) and stderr_is_terminal())
        self.file = file
        self._bar = None
        self._total = 0.0
        self._done: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._length: dict[str, float] = {}
        self._live_start: dict[str, float] = {}  # live streams: the first segment's start
        self._lock = threading.Lock()
        self.segments = 0
        self.failed: Optional[str] = None

    def __call__(self, item) -> None:
        from vmstream.records import SegmentResult

        with self._lock:
            if isinstance(item, tuple) and item[0] == "stream":
                _, sid, info = item
                if info.duration and not info.live:
                    self._total += float(info.duration)
                    self._start[sid] = float(info.start_time or 0.0)
                    self._length[sid] = float(info.duration)
                self._guard(self._show_total)
            elif isinstance(item, tuple) and item[0] == "done":
                _, sid, status = item
                if status in ("ok", "truncated") and sid in self._length:
                    # The last segment ends a frame interval short of the duration.
                    self._guard(self._finish, sid)
            elif isinstance(item, SegmentResult):
                self.segments += 1
                self._guard(self._advance, item)

    # -- the bar, each step guarded ---------------------------------------------------
    def _guard(self, fn, *args) -> None:
        if not self.enabled:
            return
        try:
            fn(*args)
        except Exception as e:  # the bar is decoration: never let it fail the run
            self._switch_off(e)

    def _switch_off(self, e: BaseException) -> None:
        self.enabled = False
        self.failed = f"{type(e).__name__}: {e}"
        log.warning("progress bar switched off after an error: %s", self.failed)
        self._drop_bar()

    def _drop_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            try:
                bar.close()
            except Exception:  # closing a broken bar may fail the same way
                pass

    def _make_bar(self):
        from tqdm import tqdm

        class _Bar(tqdm):
            # No monitor thread: it only adjusts miniters, and it is one more thread
            # that can block on tqdm's lock at exit.
            monitor_interval = 0

        return _Bar(
            total=None,
            unit="s",
            desc="video",
            dynamic_ncols=True,
            file=self.file or sys.stderr,
            bar_format=_FORMAT_OPEN,
            postfix={"segments": self.segments},
        )

    def _show_total(self) -> None:
        if self._bar is None:
            self._bar = self._make_bar()
        total = round(self._total, 1)
        if total > 0:
            self._bar.total = total
            self._bar.bar_format = _FORMAT_TOTAL
        self._bar.refresh()

    def _advance(self, item) -> None:
        bar = self._bar
        if bar is None:
            return
        sid = item.stream_id
        if sid in self._start:
            done = max(0.0, item.t_end - self._start[sid])
            delta = done - self._done.get(sid, 0.0)
            self._done[sid] = done
            bar.update(round(max(delta, 0.0), 1))
        elif not self._total:
            # Only live streams (no duration): count their seconds of video as they come,
            # from each stream's first segment (the bar said `video: 0 s` for hours).
            first = self._live_start.setdefault(sid, item.t_start)
            done = max(0.0, item.t_end - first)
            delta = done - self._done.get(sid, 0.0)
            self._done[sid] = done
            bar.update(round(max(delta, 0.0), 1))
        bar.set_postfix(segments=self.segments, refresh=True)

    def _finish(self, sid: str) -> None:
        bar = self._bar
        if bar is None:
            return
        delta = self._length[sid] - self._done.get(sid, 0.0)
        self._done[sid] = self._length[sid]
        bar.update(round(max(delta, 0.0), 1))

    @contextlib.contextmanager
    def logging_above(self):
        """Log lines printed above the bar instead of through it (while the bar shows)."""
        if not self.enabled:
            yield
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            yield

    # -- lines above the bar ----------------------------------------------------------
    def write(self, line: str) -> None:
        """Print a timeline line without tearing the bar (to stdout, like the console
        sink does without a bar)."""
        if self.enabled:
            from tqdm import tqdm

            try:
                # The class-level write holds tqdm's lock, so it cannot interleave with a
                # bar being drawn by another thread; it clears and redraws every bar.
                tqdm.write(line, file=sys.stdout)
                return
            except BrokenPipeError:
                raise
            except Exception as e:
                self._switch_off(e)
        print(line, flush=True)

    def close(self) -> None:
        with self._lock:
            self._drop_bar()
