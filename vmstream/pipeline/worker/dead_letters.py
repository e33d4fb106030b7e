"""Dead letters: jobs that cannot run (a bad message, an input that fails) go to the
dead-letter topic with the error, the original message and where it came from; once
the topic has acknowledged one, its job counts as done."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any, Iterable, Optional

from vmstream.pipeline.worker.jobs import Job, check_job_bounds
from vmstream.redaction import redact_text, redact_uri

# Job message values above this are cut in their dead-letter copy (the dead-letter
# topic has the broker's default 1 MB message limit).
_DLQ_ORIGINAL_MAX = 256 << 10
_DLQ_ERROR_MAX = 8 << 10


def dead_letter_payload(job: Job, reason: str, error: str, *, worker_id: str, group_id: str) -> bytes:
    """The dead-letter message value: the error, the original message (as JSON if it
    was JSON, else as text or base64) and where it came from."""
    original: Any
    raw = job.value or b""
    cut = len(raw) > _DLQ_ORIGINAL_MAX
    raw = raw[:_DLQ_ORIGINAL_MAX]
    try:
        if cut:
            original = raw.decode("utf-8", errors="replace")
        else:
            check_job_bounds(raw)  # a poison job is copied as text, never parsed past the bounds
            original = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        try:
            original = raw.decode("utf-8")
        except UnicodeDecodeError:
            original = {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(original, dict) and isinstance(original.get("uri"), str):
        original["uri"] = redact_uri(original["uri"])
    payload = {
        "reason": reason,  # bad_message | refused (the job policy) | failed | error
        "error": redact_text(error[:_DLQ_ERROR_MAX]),
        "stream_id": job.stream_id,
        "uri": redact_uri(job.source.uri) if job.source is not None else None,
        "job": None if job.value is None else original,
        "job_truncated": cut,
        "source": {
            "topic": job.tp.topic,
            "partition": job.tp.partition,
            "offset": job.offset,
            "timestamp_ms": job.timestamp,
            "key": None if job.key is None else job.key.decode("utf-8", errors="replace"),
        },
        "worker": worker_id,
        "group_id": group_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return json.dumps(payload).encode("utf-8")


class DeadLetters:
    """The dead-letter topic of one worker: sends, and tells which sent jobs the topic
    has acknowledged. `producer` is a vmstream.kafka.producer.ReliableProducer (its
    `send`, `flush`, `close`); `lock` is the worker's job table lock, so a job's state
    and this list change together (a rebalance forgets both at once)."""

    def __init__(self, producer: Any, topic: str, *, worker_id: str, group_id: str, lock: Optional[Any] = None):
        self.producer = producer
        self.topic = topic
        self.worker_id = worker_id
        self.group_id = group_id
        self._lock = lock if lock is not None else threading.RLock()
        self._waiting: list[Job] = []

    def send(self, job: Job, reason: str, error: str) -> None:
        if self.producer is None:
            raise RuntimeError(f"job {job.where}: the dead-letter producer is closed")
        value = dead_letter_payload(job, reason, error, worker_id=self.worker_id, group_id=self.group_id)
        headers = [h for h in job.headers if not h[0].startswith("vmstream.dead_letter.")]
        headers += [
            ("vmstream.dead_letter.reason", reason.encode()),
            ("vmstream.dead_letter.error", redact_text(error).encode("utf-8", errors="replace")[:1024]),
        ]
        key = job.key if job.key is not None else (job.stream_id or "").encode() or None
        self.producer.send(self.topic, value, key=key, headers=headers)
        with self._lock:
            job.state = "dead-letter"
            self._waiting.append(job)

    def acknowledged(self) -> list[Job]:
        """The sent jobs the topic now has (and that are still this worker's), once all
        sent so far are acknowledged; [] while any is not."""
        if not self._waiting:
            return []
        try:
            self.producer.flush(timeout_s=0.0)
        except TimeoutError:
            return []
        with self._lock:
            waiting, self._waiting = self._waiting, []
        return [job for job in waiting if not job.revoked]

    def forget(self, tps: Iterable[Any]) -> None:
        """Sent but unacknowledged jobs of partitions that went to another worker: the
        next owner tries them again."""
        tps = set(tps)
        with self._lock:
            self._waiting = [j for j in self._waiting if j.tp not in tps]

    def flush(self, timeout_s: Optional[float] = None) -> None:
        if self.producer is not None:
            self.producer.flush(timeout_s=timeout_s)

    def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.close()
