"""What a run reports at its end: counts, each stage's busy time, the bottleneck, failures."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageTimes:
    items: int = 0
    busy_s: float = 0.0


@dataclass
class RunReport:
    wall_s: float = 0.0
    streams: int = 0
    streams_failed: int = 0
    streams_stopped: int = 0  # ended early by stop()/cancel(): resumable from a snapshot
    segments: int = 0
    frames: int = 0
    decode: StageTimes = field(default_factory=StageTimes)
    inference: StageTimes = field(default_factory=StageTimes)
    sinks: StageTimes = field(default_factory=StageTimes)
    sink_busy: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # (stream_id, uri, message)
    summaries: list = field(default_factory=list)
    stopped: bool = False  # stop() was called (streams_stopped says which streams it cut short)
    statuses: dict = field(default_factory=dict)  # stream_id -> final status

    def bottleneck(self) -> str:
        # Decode busy time is summed over its threads; normalise by the wall time of
        # the run, so "busy fraction" compares stages fairly.
        busy = {"decode": self.decode.busy_s, "inference": self.inference.busy_s, "sinks": self.sinks.busy_s}
        return max(busy, key=busy.get)

    def add_sink_time(self, name: str, seconds: float) -> None:
        self.sink_busy[name] = self.sink_busy.get(name, 0.0) + seconds

    def format(self) -> str:
        # At most 80 columns (the per-sink times on a line of their own), so a terminal
        # of that width shows it unwrapped.
        w = max(self.wall_s, 1e-9)
        lines = [
            f"run: {self.streams} streams ({self.streams_failed} failed), {self.segments} segments, "
            f"{self.frames} frames in {self.wall_s:.1f} s",
            f"  decode     {self.frames / w:8.1f} frames/s    busy {self.decode.busy_s:7.1f} s "
            f"({100 * self.decode.busy_s / w:5.1f}%, all threads)",
            f"  inference  {self.segments / w:8.2f} segments/s  busy {self.inference.busy_s:7.1f} s "
            f"({100 * self.inference.busy_s / w:5.1f}%)",
            f"  sinks      {self.sinks.items / w:8.1f} records/s   busy {self.sinks.busy_s:7.1f} s "
            f"({100 * self.sinks.busy_s / w:5.1f}%)",
        ]
        if self.sink_busy:
            lines.append("  per sink:  " + ", ".join(f"{k} {v:.1f} s" for k, v in self.sink_busy.items()))
        lines.append(f"  bottleneck: {self.bottleneck()}")
        for sid, uri, msg in self.failures:
            lines.append(f"  FAILED {msg}" if msg.startswith((sid, uri or sid)) else f"  FAILED {sid}: {msg}")
        return "\n".join(lines)
