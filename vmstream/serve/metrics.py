"""Prometheus metrics in its text format (no client library: a few counters and
histograms, thread-safe)."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[tuple, float] = defaultdict(float)
        self.hist: dict[tuple, list] = {}
        self.gauges: dict[str, callable] = {}
        self.help = {
            "vmstream_queries_total": ("counter", "search queries answered, by kind"),
            "vmstream_errors_total": ("counter", "requests answered with an error, by status"),
            "vmstream_request_seconds": ("histogram", "request latency, by route"),
        }

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def observe(self, name: str, seconds: float, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            h = self.hist.get(key)
            if h is None:
                h = self.hist[key] = [[0] * len(BUCKETS_S), 0.0, 0]
            for i, b in enumerate(BUCKETS_S):
                if seconds <= b:
                    h[0][i] += 1
            h[1] += seconds
            h[2] += 1

    def gauge(self, name: str, help_text: str, fn) -> None:
        self.gauges[name] = fn
        self.help[name] = ("gauge", help_text)

    def render(self) -> str:
        lines = []
        seen = set()

        def head(name):
            if name not in seen and name in self.help:
                kind, text = self.help[name]
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
            seen.add(name)

        with self._lock:
            counters = sorted(self.counters.items())
            hist = sorted((k, (list(v[0]), v[1], v[2])) for k, v in self.hist.items())
        for (name, labels), v in counters:
            head(name)
            lines.append(f"{name}{_labels(dict(labels))} {v:g}")
        for (name, labels), (buckets, total, count) in hist:
            head(name)
            base = dict(labels)
            for b, c in zip(BUCKETS_S, buckets):
                lines.append(f"{name}_bucket{_labels({**base, 'le': f'{b:g}'})} {c}")
            lines.append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {count}")
            lines.append(f"{name}_sum{_labels(base)} {total:.6f}")
            lines.append(f"{name}_count{_labels(base)} {count}")
        for name, fn in sorted(self.gauges.items()):
            try:
                value = fn()
            except Exception:  # a store mid-swap: leave the gauge out of this scrape
                continue
            head(name)
            lines.append(f"{name} {float(value):g}")
        return "\n".join(lines) + "\n"
