"""Live sources: reconnect with bounded exponential backoff.

A camera feed drops; the decoder notices (EOF, an error, or no data for `timeout`
seconds), waits `initial` seconds, tries again, doubling the wait up to `max_delay`,
and gives up after `max_tries` failed attempts or `give_up_after` seconds without
video. The stream keeps its id (so the model keeps its state) and the outage is
reported: a "gap" StreamEvent and `Frame.gap` on the first frame after it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class ReconnectPolicy:
    initial: float = 0.5        # first wait, seconds
    max_delay: float = 10.0     # cap on one wait
    factor: float = 2.0         # growth per failed attempt
    jitter: float = 0.1         # +- fraction, so many cameras do not retry in lockstep
    max_tries: Optional[int] = None        # failed attempts in a row before giving up
    give_up_after: Optional[float] = 300.0  # seconds without video before giving up

    def __post_init__(self) -> None:
        def pos(name, v, allow_zero=False):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (v == 0 and not allow_zero):
                raise ValueError(f"reconnect.{name} must be a finite number > 0, got {v!r}")

        pos("initial", self.initial)
        pos("max_delay", self.max_delay)
        if self.max_delay < self.initial:
            raise ValueError(f"reconnect.max_delay ({self.max_delay}) < initial ({self.initial})")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not self.factor >= 1:
            raise ValueError(f"reconnect.factor must be >= 1, got {self.factor!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f"reconnect.jitter must be in [0, 1), got {self.jitter!r}")
        if self.max_tries is not None and (isinstance(self.max_tries, bool)
                                           or not isinstance(self.max_tries, int) or self.max_tries < 0):
            raise ValueError(f"reconnect.max_tries must be an int >= 0 or None, got {self.max_tries!r}")
        if self.give_up_after is not None:
            pos("give_up_after", self.give_up_after)

    def delays(self, rng: Optional[random.Random] = None) -> Iterator[float]:
        """The waits before attempt 1, 2, ... (unbounded; the caller counts tries/time)."""
        rng = rng or random.Random()
        d = float(self.initial)
        while True:
            j = 1.0 + self.jitter * (2.0 * rng.random() - 1.0) if self.jitter else 1.0
            yield min(self.max_delay, d * j)
            d = min(self.max_delay, d * self.factor)
