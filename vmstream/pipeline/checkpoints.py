"""Who loads and saves a stream's snapshots: one component, whichever thread asks.

A snapshot holds the model state after a segment, the summary accumulators, the next
segment index and the last segment's end time. It is taken every `every` segments and
when a stream is stopped, saved only after every result before it is durable in the
sinks (so a stream resumed from it loses nothing), deleted when the stream finishes
(a later run starts it afresh), and kept when it stops (a later run resumes it)."""
from __future__ import annotations

import logging
from typing import Optional

from vmstream.records import Resume, SaveSnapshot, Segment

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, store, inference, every: int = 10):
        self.store = store  # LocalStateStore, KafkaStateStore, or None (no snapshots)
        self.inference = inference
        self.every = int(every)

    @property
    def enabled(self) -> bool:
        return self.store is not None

    @property
    def location(self) -> Optional[str]:
        root = getattr(self.store, "root", None)
        return str(root) if root is not None else None

    # -- decode side ---------------------------------------------------------------
    def resume_point(self, stream_id: str) -> Optional[Resume]:
        snap = self.store.load(stream_id) if self.enabled else None
        if snap is None:
            return None
        log.info("stream %s: resuming at segment %d (t > %.3f s) from its snapshot", stream_id,
                 int(snap["next_index"]), float(snap["t_end"]))
        return Resume(stream_id, snap)

    # -- inference side ------------------------------------------------------------
    def restore(self, resume: Resume) -> None:
        self.inference.restore(resume.snapshot)

    def after_segment(self, seg: Segment) -> Optional[SaveSnapshot]:
        """A snapshot when one is due after `seg` (every `every` segments)."""
        if not self.enabled or not self.every or (seg.index + 1) % self.every:
            return None
        return self.take(seg.stream_id)

    def take(self, stream_id: str) -> Optional[SaveSnapshot]:
        if not self.enabled or not self.inference.has_stream(stream_id):
            return None
        return SaveSnapshot(stream_id, self.inference.snapshot(stream_id))

    # -- sink side (after the sinks are flushed) -----------------------------------
    def save(self, snap: SaveSnapshot) -> None:
        self.store.save(snap.snapshot)

    def stream_ended(self, stream_id: str, status: str) -> None:
        if self.enabled and status != "stopped":
            # Finished (or failed for good): a later run starts it afresh.
            self.store.delete(stream_id)
