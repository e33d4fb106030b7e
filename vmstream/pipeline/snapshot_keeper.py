"""Who loads and saves a stream's snapshots: one component, whichever thread asks.

A snapshot holds the model state after a segment, the summary accumulators, the next
segment index and the last segment's end time. It is taken every `every` segments and
when a stream is stopped, saved only after every result before it is durable in the
sinks (so a stream resumed from it loses nothing), deleted when the stream finishes
(a later run starts it afresh), and kept when it stops (a later run resumes it).

A snapshot records the stream's version (`versions.content_version`) and the model that
made it (name and checkpoint digest); it resumes only that version with that model: when
the content changed, the snapshot is discarded and the stream starts over; one made by
another model is set aside (the state store keeps it) and the stream starts over. The
state store itself refuses damaged snapshots and those of other streams (snapshots.py). Starting a stream also claims its id (`versions.StreamIds`) unless
`allow_replace` lets any input take any id (`vmstream run`: the user is the operator)."""

from __future__ import annotations

import logging
from typing import Optional

from vmstream.pipeline.versions import StreamIds, StreamIdTaken, content_version, snapshot_version
from vmstream.records import Resume, SaveSnapshot, Segment, StreamStart

log = logging.getLogger(__name__)


class SnapshotKeeper:
    def __init__(self, store, inference, every: int = 10, *, allow_replace: bool = True):
        self.store = store  # LocalStateStore, KafkaStateStore, or None (no snapshots)
        self.inference = inference
        self.every = int(every)
        self.allow_replace = bool(allow_replace)
        self._versions: dict[str, str] = {}  # running streams' versions, for their snapshots

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
        try:
            # Read in full before the stream starts: a damaged snapshot found in the
            # inference thread would stop the whole pipeline (a worker, on every restart).
            # The local store sets a foreign file aside itself; any other store's record
            # under this key is not this stream's state either (the next save replaces it).
            if snap.get("stream_id") != stream_id:
                raise ValueError(f"it is the snapshot of stream {snap.get('stream_id')!r}")
            float(snap["t_end"]), int(snap["next_index"])
            self.inference.read_snapshot(snap)
        except Exception as e:
            log.warning(
                "stream %s: its snapshot is damaged or not this model's (%s: %s); set aside, the stream starts over",
                stream_id,
                type(e).__name__,
                e,
            )
            return None
        return Resume(stream_id, snap)

    def begin(self, source, resume: Optional[Resume]) -> tuple[StreamStart, Optional[Resume]]:
        """The stream's StreamStart (its version now) and the resume that still applies:
        a snapshot of another version is discarded. Claims the stream id (StreamIdTaken);
        ValueError when the file cannot be read (an unusable input, like a failed probe)."""
        sid = source.stream_id
        try:
            version = content_version(source)
        except OSError as e:
            raise ValueError(f"{source.uri}: cannot read it: {e.strerror or e}") from None
        if self.enabled and not self.allow_replace:
            try:
                StreamIds(self.store).claim(sid, source.uri, allow_replace=False)
            except StreamIdTaken:
                raise
            except Exception as e:
                # The store's trouble, not the input's: an error (retried by the worker),
                # never "failed" (a TimeoutError is an OSError, like an unreadable file).
                raise RuntimeError(f"stream {sid}: reading its id record: {type(e).__name__}: {e}") from e
        if resume is not None and self._model_of(resume.snapshot) not in (None, self._model()):
            reason = f"made by model {self._model_of(resume.snapshot)}, this run's is {self._model()}"
            if hasattr(self.store, "set_aside"):
                self.store.set_aside(sid, reason)
            else:
                log.warning("stream %s: its snapshot was %s: starting over", sid, reason)
                self.store.delete(sid)
            resume = None
        if resume is not None and snapshot_version(resume.snapshot) != version:
            log.warning(
                "stream %s: its content changed since its snapshot (version %s, now %s): starting over",
                sid,
                snapshot_version(resume.snapshot) or "unknown",
                version,
            )
            self.store.delete(sid)
            resume = None
        if resume is not None:
            log.info(
                "stream %s: resuming at segment %d (t > %.3f s) from its snapshot",
                sid,
                int(resume.snapshot["next_index"]),
                float(resume.snapshot["t_end"]),
            )
        self._versions[sid] = version
        return StreamStart(sid, version, resumed=resume is not None), resume

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
        snap = self.inference.snapshot(stream_id)
        snap["extra"] = dict(snap.get("extra") or {}, stream_version=self._versions.get(stream_id), model=self._model())
        return SaveSnapshot(stream_id, snap)

    def _model(self) -> Optional[str]:
        meta = getattr(self.inference, "meta", None)
        if meta is None:
            return None
        return f"{meta.name}@{meta.checkpoint_digest or 'no-checkpoint'}"

    @staticmethod
    def _model_of(snapshot: dict) -> Optional[str]:
        # None: a snapshot of an older vmstream, which did not record its model.
        return (snapshot.get("extra") or {}).get("model")

    # -- sink side (after the sinks are flushed) -----------------------------------
    def save(self, snap: SaveSnapshot) -> None:
        self.store.save(snap.snapshot)

    def stream_ended(self, stream_id: str, status: str) -> None:
        self._versions.pop(stream_id, None)
        if self.enabled and status != "stopped":
            # Finished (or failed for good): a later run starts it afresh.
            self.store.delete(stream_id)
