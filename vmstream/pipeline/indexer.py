"""`vmstream index`: one store (FAISS + Parquet result tables) built from the results
topics of a fleet of workers, exactly once.

    Indexer(cfg, out="fleet-store").run()      # until SIGTERM / SIGINT / stop()

The store under OUT is laid out as `vmstream run --out OUT` writes it (OUT/index the
FAISS store, OUT/segments, OUT/events, OUT/summaries the result tables), so `vmstream
search --index OUT`, `read_table(OUT, "segments")` and `vmstream store verify` work on
it unchanged. With `output.store.backend: milvus` the vectors go to Milvus instead of
OUT/index (the commit is then a flush followed by the consumer record beside the store's
description: `store/milvus_store.py` has that exactly-once argument); `--shard I/N`
lets N indexers share the partitions, each with its own OUT.

Exactly once. The indexer reads every partition of the three results topics itself
(assigned, not subscribed: there is one indexer per store, its store's lock sees to
that) and commits in cycles: the FAISS adds of the cycle, the Parquet rows flushed
(durable), then one `VideoStore.commit(consumer=...)` that writes the changes *and*
the offsets it consumed (with the stream versions it has seen) into the store's one
commit point, CURRENT. On start it seeks every partition to the offsets CURRENT holds
(the beginning for a partition it has none for); the consumer group's committed
offsets are written after each cycle for monitoring only, never read back.

- FAISS: CURRENT names the generation, log files and offsets as one atomic rename.
  After a kill -9, the store opens at its last commit and the records after those
  offsets are read again: none added twice (uids are upserts anyway), none lost.
- Parquet: the result tables have no commit point of their own; their parts are
  durable before the CURRENT that claims their offsets (flush first, commit second),
  so nothing committed is missing. Parts written after the last commit (a crash
  between flush and commit, or mid-cycle) hold rows that are consumed again on
  restart and written again: identical rows, the same records from the same log.
  Rows are keyed (segments by uid, summaries by stream id, events by the whole row),
  and every reader de-duplicates by key (`read_table`; `PartTable` compacts on open
  and close), so a reader sees each row once. A version change (below) re-drops the
  stream's rows when it is consumed again, so rows of a replaced version that were
  written before a crash do not survive either.
- Stream versions: a record's `stream_version` names the content it came from. A
  record of another version than the one the store holds for its stream, produced
  (Kafka timestamp) at or after that version's first record, starts the new version:
  the stream's vectors and rows are removed first (as FaissSink/ParquetSink.begin_stream
  do for a fresh start). One produced before it is a late record of a replaced
  version (the topics are read at their own pace, so a new version's event can
  arrive before the old version's last segments) and is skipped. The versions are
  part of the committed consumer record, so a restart decides exactly as before.
  This assumes the workers' clocks agree to better than the time between two runs
  of one stream.
- Poison records (not a vmstream record, a newer schema, a segment that does not fit
  the store: another model, another dimension) go to the dead-letter topic with
  their reason, and the indexer goes on. The dead letters are flushed before the
  commit that moves past them: a crash can send one twice, never lose one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vmstream.errors import UserError
from vmstream.kafka.codec import RecordFormatError, decode_message
from vmstream.kafka.topics import TopicNames
from vmstream.records import SegmentResult

log = logging.getLogger(__name__)

CONSUMER_FORMAT = 1


@dataclass
class IndexerStats:
    records: int = 0
    segments: int = 0
    dead_letters: int = 0
    stale: int = 0
    replaced: int = 0
    commits: int = 0
    # Seconds from each segment's production (its Kafka timestamp) to the commit that made
    # it durable and searchable; filled only when asked (record_lag), for the benchmark.
    lags_s: list = field(default_factory=list)


def read_consumer(out: Any) -> Optional[dict]:
    """The consumer record committed in the store under `out` (None if none)."""
    from vmstream.store import files, store_backend
    from vmstream.store.milvus_store import read_consumer_file

    if store_backend(Path(out) / "index") == "milvus":
        return read_consumer_file(Path(out) / "index")
    state, problems = files.read_state(Path(out) / "index")
    if state is None:
        return None
    return state.consumer


def _tp_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class Indexer:
    """Consumes the results topics into the store under `out` (see module doc).

    `commit_interval_s`: longest a consumed record waits before it is committed (and
    searchable); `commit_records`: a cycle ends early after this many records."""

    def __init__(
        self,
        cfg,
        out: Any,
        *,
        commit_interval_s: float = 1.0,
        commit_records: int = 4096,
        record_lag: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        if not cfg.kafka.bootstrap:
            raise UserError("vmstream index needs a broker: --kafka BOOTSTRAP or kafka.bootstrap in the config")
        self.cfg = cfg
        self.out = Path(out)
        self.names = TopicNames.from_config(cfg.kafka)
        self.topics = [self.names.segments, self.names.events, self.names.summaries]
        self.commit_interval_s = float(commit_interval_s)
        self.commit_records = int(commit_records)
        self.stats = IndexerStats()
        self.record_lag = record_lag
        # (i, n): this indexer takes the partitions p with p % n == i. A stream's records
        # are keyed to one partition, so shards never share a stream: n indexers, each with
        # its own OUT (Parquet tables and consumer record), can feed one Milvus collection.
        self.shard = (int(shard[0]), int(shard[1]))
        if not 0 <= self.shard[0] < self.shard[1]:
            raise UserError(f"--shard {shard[0]}/{shard[1]}: give I/N with 0 <= I < N")
        self._stop = threading.Event()
        self._offsets: dict[str, int] = {}
        self._streams: dict[str, list] = {}  # stream id -> [version, first Kafka timestamp ms]
        self._pending: list = []  # (SegmentResult, message) awaiting their FAISS add
        self._uncommitted = 0
        self._lag_ts: list[int] = []
        self.store = self.parquet = self.consumer = self.producer = None
        self.last_commit_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def open(self) -> None:
        from vmstream.pipeline.assembly import open_configured_store
        from vmstream.stages.sinks.parquet import ParquetSink

        self.out.mkdir(parents=True, exist_ok=True)
        kind = None if self.cfg.output.faiss_kind == "auto" else self.cfg.output.faiss_kind
        if self.cfg.output.store.backend == "none":
            raise UserError("output.store.backend: none keeps no store; the indexer needs faiss or milvus")
        self.store = open_configured_store(self.cfg, self.out / "index", kind=kind)
        try:
            self.parquet = ParquetSink(self.out, max_delay_s=None)
            held = self.store.consumer or {}
            if held and held.get("format") != CONSUMER_FORMAT:
                raise UserError(
                    f"video store {self.out / 'index'}: its consumer record is of format "
                    f"{held.get('format')!r}, this vmstream reads {CONSUMER_FORMAT}"
                )
            if held and list(held.get("shard") or [0, 1]) != list(self.shard):
                raise UserError(
                    f"video store {self.out}: it holds shard {held.get('shard')} of the partitions, "
                    f"asked for {list(self.shard)}"
                )
            self._offsets = {k: int(v) for k, v in (held.get("offsets") or {}).items()}
            self._streams = {k: list(v) for k, v in (held.get("streams") or {}).items()}
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from vmstream.kafka.client import UNREACHABLE, client_options, connect_error

        k = self.cfg.kafka
        try:
            self.consumer = KafkaConsumer(
                bootstrap_servers=k.bootstrap,
                group_id=k.indexer_group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=16 << 20,
                **client_options(k.client, "consumer"),
            )
            self.producer = KafkaProducer(
                bootstrap_servers=k.bootstrap, acks="all", **client_options(k.client, "producer")
            )
        except UNREACHABLE as e:
            raise UserError(connect_error(k.bootstrap, 30, k.client, e)) from None
        self._assign()

    def _assign(self) -> None:
        """Assign every partition of the results topics, each at the store's offset."""
        from kafka import TopicPartition

        tps = []
        for t in self.topics:
            ps = self.consumer.partitions_for_topic(t)
            if ps is None:
                from vmstream.kafka.client import create_hint

                raise UserError(
                    f"Kafka topic {t!r} does not exist on {self.cfg.kafka.bootstrap}; "
                    + create_hint(self.cfg.kafka.bootstrap)
                )
            tps += [TopicPartition(t, p) for p in sorted(ps) if p % self.shard[1] == self.shard[0]]
        if set(tps) == set(self.consumer.assignment()):
            return
        new = [tp for tp in tps if tp not in self.consumer.assignment()]
        self.consumer.assign(tps)
        for tp in new:
            at = self._offsets.get(_tp_key(tp.topic, tp.partition))
            if at is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, at)
        log.info("indexing %d partitions of %s into %s", len(tps), ", ".join(self.topics), self.out)

    def close(self) -> None:
        errors = []
        for name in ("consumer", "producer"):
            c = getattr(self, name)
            setattr(self, name, None)
            if c is not None:
                try:
                    c.close()
                except Exception as e:  # noqa: BLE001 - close the rest
                    errors.append(e)
        for name in ("parquet", "store"):
            c = getattr(self, name)
            setattr(self, name, None)
            if c is not None:
                try:
                    c.close()
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
        if errors:
            raise errors[0]

    def run(self, *, idle_exit_s: Optional[float] = None) -> int:
        """Index until stopped (SIGTERM/SIGINT when run in the main thread), or, with
        `idle_exit_s`, until nothing new came for that long. Returns the exit status."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self.open()
        try:
            self.loop(idle_exit_s=idle_exit_s)
            self.commit()
        finally:
            self.close()
        return 0

    def loop(self, *, idle_exit_s: Optional[float] = None) -> None:
        last_commit = last_data = time.monotonic()
        last_assign = last_report = last_commit
        while not self._stop.is_set():
            batch = self.consumer.poll(timeout_ms=100, max_records=self.commit_records)
            now = time.monotonic()
            for tp, msgs in batch.items():
                for m in msgs:
                    self._apply(m)
                    self._offsets[_tp_key(tp.topic, tp.partition)] = m.offset + 1
                    self._uncommitted += 1
            if batch:
                last_data = now
            if self._uncommitted and (
                self._uncommitted >= self.commit_records or now - last_commit >= self.commit_interval_s
            ):
                self.commit()
                last_commit = time.monotonic()
            if now - last_report >= 60.0:
                st = self.stats
                log.info(
                    "indexed %d records (%d segments; %d dead-lettered, %d late records of replaced versions "
                    "skipped, %d streams replaced) into %s",
                    st.records,
                    st.segments,
                    st.dead_letters,
                    st.stale,
                    st.replaced,
                    self.out,
                )
                last_report = now
            if now - last_assign >= 10.0:  # partitions an operator added meanwhile
                self._assign()
                last_assign = now
            if idle_exit_s is not None and now - last_data >= idle_exit_s and not self._uncommitted:
                return

    # -- one record --------------------------------------------------------------------
    def _apply(self, m) -> None:
        self.stats.records += 1
        try:
            rec = decode_message(m.value, m.headers, topic=m.topic, partition=m.partition, offset=m.offset)
        except RecordFormatError as e:
            self._dead_letter(m, "bad_record", str(e))
            return
        sid, version = rec.stream_id, rec.stream_version or ""
        held = self._streams.get(sid)
        if held is None:
            self._streams[sid] = [version, int(m.timestamp)]
        elif held[0] == version:
            # The topics are read at their own pace: the version's earliest record seen
            # decides, whichever topic it came on, so a restart decides the same.
            held[1] = min(int(held[1]), int(m.timestamp))
        else:
            if int(m.timestamp) < int(held[1]):
                self.stats.stale += 1
                log.debug(
                    "stream %s: skipping a late record of replaced version %s (%s[%d]@%d)",
                    sid,
                    version,
                    m.topic,
                    m.partition,
                    m.offset,
                )
                return
            self._replace(sid, version, int(m.timestamp))
        if isinstance(rec, SegmentResult):
            if rec.embedding is None:
                self._dead_letter(m, "refused", f"segment {rec.segment_index} of stream {sid!r} has no embedding")
                return
            self._pending.append((rec, m))
            if len(self._pending) >= 512:
                self._add_pending()
        else:
            self._write_row(rec, m)

    def _replace(self, sid: str, version: str, ts: int) -> None:
        log.info("stream %s: version %s replaces %s", sid, version[:12], self._streams[sid][0][:12])
        self._add_pending()
        self.store.remove_stream(sid)
        self.parquet.begin_stream(sid, version, replace=True)
        self._streams[sid] = [version, ts]
        self.stats.replaced += 1

    def _write_row(self, rec, m) -> bool:
        try:
            self.parquet.write(rec)
            return True
        except (ValueError, TypeError) as e:
            self._dead_letter(m, "refused", str(e))
            return False

    def _add_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            self.store.add_results([r for r, _ in pending])
            accepted = pending
        except ValueError:
            accepted = []  # find the culprits: each is dead-lettered, the rest go in
            for r, m in pending:
                try:
                    self.store.add_results([r])
                    accepted.append((r, m))
                except ValueError as e:
                    self._dead_letter(m, "refused", str(e))
        for r, m in accepted:
            if self._write_row(r, m):
                self.stats.segments += 1
                if self.record_lag:
                    self._lag_ts.append(int(m.timestamp))

    def _dead_letter(self, m, reason: str, error: str) -> None:
        self.stats.dead_letters += 1
        log.warning("%s[%d]@%d: dead-lettered (%s): %s", m.topic, m.partition, m.offset, reason, error)
        raw = m.value or b""
        try:
            original: Any = json.loads(raw[: 256 << 10].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            original = {"base64": base64.b64encode(raw[: 256 << 10]).decode("ascii")}
        payload = {
            "reason": reason,
            "error": error[:8192],
            "record": original,
            "source": {
                "topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "timestamp_ms": m.timestamp,
                "key": None if m.key is None else m.key.decode("utf-8", errors="replace"),
            },
            "indexer": f"{os.uname().nodename}:{os.getpid()}",
            "store": str(self.out),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        headers = [
            ("vmstream.dead_letter.reason", reason.encode()),
            ("vmstream.dead_letter.error", error.encode("utf-8", errors="replace")[:1024]),
        ]
        self.producer.send(self.names.dead_letter, json.dumps(payload).encode(), key=m.key, headers=headers)

    # -- the commit point ------------------------------------------------------------
    def consumer_record(self) -> dict:
        return {
            "format": CONSUMER_FORMAT,
            "topics": self.topics,
            "shard": list(self.shard),
            "offsets": dict(self._offsets),
            "streams": {k: list(v) for k, v in self._streams.items()},
        }

    def commit(self) -> None:
        """Everything consumed so far, durable in the store with its offsets (module doc)."""
        self._add_pending()
        self.producer.flush(timeout=60)  # dead letters before the offsets that pass them
        self.parquet.flush()  # the rows before the CURRENT that claims them
        self.store.commit(consumer=self.consumer_record())
        self._uncommitted = 0
        self.stats.commits += 1
        self.last_commit_at = time.monotonic()
        if self._lag_ts:
            now_ms = time.time() * 1000
            self.stats.lags_s += [(now_ms - t) / 1000 for t in self._lag_ts]
            self._lag_ts = []
        self._commit_hint()

    def _commit_hint(self) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        offsets = {}
        for key, off in self._offsets.items():
            topic, _, part = key.rpartition(":")
            offsets[TopicPartition(topic, int(part))] = OffsetAndMetadata(off, "", -1)
        try:
            self.consumer.commit(offsets)
        except Exception as e:  # noqa: BLE001 - a hint for monitoring; the store holds the truth
            log.debug("committing the indexer's offsets to its group failed (the store has them): %s", e)
