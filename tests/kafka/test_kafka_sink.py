"""The Kafka results sink against a real broker (scripts/kafka-local)."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from vmstream.kafka.client import client_options
from vmstream.kafka.codec import (
    H_KIND,
    H_PAYLOAD,
    H_SCHEMA,
    H_UID,
    RecordFormatError,
    decode_message,
    dedupe_by_uid,
    encode_record,
)
from vmstream.kafka.producer import KafkaDeliveryError
from vmstream.kafka.readers import RecordConsumer, read_records, read_results
from vmstream.records import SCHEMA_VERSION, SegmentResult, StreamEvent, StreamSummary
from vmstream.stages.sinks.kafka import KafkaSink

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def outage_broker(tmp_path_factory):
    """A private broker the outage tests stop and start (the shared one stays up)."""
    from tests.fixtures.kafka import KafkaBroker, _skip_reason

    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-outage"))
    broker.start()
    yield broker
    broker.clean()


def make_result(stream: str, i: int, dim: int = 16, seed: int = 0) -> SegmentResult:
    rng = np.random.default_rng(hash((stream, i, seed)) % 2**32)
    return SegmentResult(
        stream_id=stream,
        segment_index=i,
        t_start=2.0 * i,
        t_end=2.0 * i + 1.9,
        labels=["walking", "running"],
        scores=[0.75, 0.125],
        label_ids=[3, 7],
        embedding=rng.standard_normal(dim).astype(np.float32),
        model="videomamba_tiny",
        checkpoint_digest="abc123",
        num_frames=8,
        gaps=[(1.0, 1.5)] if i == 1 else [],
        uri=f"file:///videos/{stream}.mp4",
    )


def assert_same(a: SegmentResult, b: SegmentResult) -> None:
    ra, rb = a.to_row(), b.to_row()
    ea, eb = ra.pop("embedding"), rb.pop("embedding")
    assert ra == rb
    # Float32 embeddings survive JSON bit for bit (as float64 decimal and back).
    assert np.array_equal(np.asarray(ea, np.float32), np.asarray(eb, np.float32))


def raw_messages(bootstrap: str, topic: str):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        end = c.end_offsets(parts)
        out = []
        deadline = time.monotonic() + 30
        while any(c.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, "timed out reading back"
            for msgs in c.poll(timeout_ms=200).values():
                out += msgs
        return out
    finally:
        c.close()


def test_round_trip_keys_and_order_per_stream(kafka_bootstrap, kafka_topics, tmp_path):
    names = kafka_topics(partitions=3)
    streams = [f"cam-{k}" for k in range(5)]
    written = [make_result(s, i) for i in range(12) for s in streams]  # interleaved
    event = StreamEvent("cam-0", "gap", t_start=math.nan, t_end=3.5, message="lost", details={"n": 2})
    summary = StreamSummary("cam-1", ["running"], [0.9], [7], "last", 24.0, 12, 0.0, 23.9)
    with KafkaSink(kafka_bootstrap, topics=names.sink_topics(), spill_dir=tmp_path) as sink:
        for r in written:
            sink.write(r)
        sink.write(event)
        sink.write(summary)
        sink.flush()
        assert sink.stats.acked == sink.stats.written == len(written) + 2
        assert sink.producer.pending == 0
        cfg = sink.producer.producer.config
        assert cfg["acks"] == -1 or cfg["acks"] == "all"
        assert cfg["enable_idempotence"] is True

    msgs = raw_messages(kafka_bootstrap, names.segments)
    assert len(msgs) == len(written)
    part_of: dict[str, set] = {}
    last_index: dict[str, int] = {}
    for m in msgs:  # per partition, in log order
        h = dict(m.headers)
        assert h[H_SCHEMA] == str(SCHEMA_VERSION).encode() and h[H_KIND] == b"segment"
        assert h[H_PAYLOAD] == b"inline"
        row = json.loads(m.value)
        assert m.key == row["stream_id"].encode()
        assert h[H_UID] == str(row["uid"]).encode()
        part_of.setdefault(row["stream_id"], set()).add(m.partition)
        assert row["segment_index"] == last_index.get(row["stream_id"], -1) + 1
        last_index[row["stream_id"]] = row["segment_index"]
    assert all(len(p) == 1 for p in part_of.values()), part_of
    assert len({p for ps in part_of.values() for p in ps}) > 1, "5 keys all hashed to one partition"

    back = read_results(kafka_bootstrap, names.segments)
    want = sorted(written, key=lambda r: (r.stream_id, r.segment_index))
    assert len(back) == len(want)
    for a, b in zip(back, want):
        assert_same(a, b)

    (ev,) = read_records(kafka_bootstrap, names.events)
    assert isinstance(ev, StreamEvent) and math.isnan(ev.t_start) and ev.t_end == 3.5
    assert ev.details == {"n": 2} and ev.message == "lost"
    (su,) = read_records(kafka_bootstrap, names.summaries)
    assert su == summary


def test_oversized_record_goes_to_parquet_with_a_reference(kafka_bootstrap, kafka_topics, tmp_path):
    names = kafka_topics(partitions=1)
    small = make_result("big-stream", 0)
    big = make_result("big-stream", 1, dim=200_000)  # ~4 MB of JSON, over the 1 MB limit
    with KafkaSink(kafka_bootstrap, topics=names.sink_topics(), spill_dir=tmp_path / "spill") as sink:
        assert sink.message_limits[names.segments] == 1_048_588
        sink.write(small)
        sink.write(big)
        sink.flush()
        assert sink.stats.spilled == 1

    msgs = raw_messages(kafka_bootstrap, names.segments)
    assert [dict(m.headers)[H_PAYLOAD] for m in msgs] == [b"inline", b"parquet-ref"]
    ref_msg = json.loads(msgs[1].value)
    assert len(msgs[1].value) < 1000
    assert ref_msg["uid"] == big.uid and ref_msg["segment_index"] == 1
    path = Path(urllib.parse.urlparse(ref_msg["$ref"]["uri"]).path)
    assert path.parent.parent == tmp_path / "spill" and path.exists()
    assert not list(path.parent.glob(".*tmp*")), "temporary spill file left behind"

    back = read_results(kafka_bootstrap, names.segments)
    assert len(back) == 2
    assert_same(back[0], small)
    assert_same(back[1], big)


def test_inline_limit_and_broker_refusal_both_spill(kafka_bootstrap, kafka_topics, tmp_path):
    from kafka.admin import ConfigResource, ConfigResourceType

    from vmstream.kafka.client import admin_client

    names = kafka_topics(partitions=1)
    # A chosen inline limit: 2 KB.
    with KafkaSink(kafka_bootstrap, topics=names.sink_topics(), spill_dir=tmp_path, inline_limit_bytes=2000) as sink:
        sink.write(make_result("s", 0, dim=8))
        sink.write(make_result("s", 1, dim=1000))
        sink.flush()
        assert sink.stats.spilled == 1
    # The topic's limit lowered after the sink read it: the broker refuses the record,
    # and the sink turns it into a reference instead of failing or dropping it.
    with KafkaSink(kafka_bootstrap, topics=names.sink_topics(), spill_dir=tmp_path) as sink:
        admin = admin_client(kafka_bootstrap)
        try:
            admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, names.segments, {"max.message.bytes": "4000"})],
                incremental=True,
            )
            # Config changes reach the broker's metadata asynchronously.
            from vmstream.kafka.client import topic_message_limit

            deadline = time.monotonic() + 10
            while topic_message_limit(admin, names.segments) != 4000:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            admin.close()
        sink.write(make_result("s", 2, dim=1000))  # ~20 KB of JSON, under the 1 MB read at start
        sink.flush(timeout_s=60)
        assert sink.stats.spilled == 1 and sink.stats.resent >= 1
    payloads = [dict(m.headers)[H_PAYLOAD] for m in raw_messages(kafka_bootstrap, names.segments)]
    assert payloads == [b"inline", b"parquet-ref", b"parquet-ref"]
    back = read_results(kafka_bootstrap, names.segments)
    for i, dim in enumerate([8, 1000, 1000]):
        assert_same(back[i], make_result("s", i, dim=dim))


def test_broker_restart_mid_run_loses_nothing(outage_broker, kafka_topics, tmp_path):
    broker = outage_broker
    broker.start()  # no-op when running
    names = kafka_topics(partitions=2, bootstrap=broker.bootstrap)
    streams = ["a", "b", "c"]
    n_per = 40
    sink = KafkaSink(
        broker.bootstrap,
        topics=names.sink_topics(),
        spill_dir=tmp_path,
        # Shorter than the outage below, so records expire in the producer and the
        # sink's own re-send path runs, not only the producer's internal retries.
        delivery_timeout_ms=1500,
        retry_backoff_s=0.2,
        max_retry_backoff_s=1.0,
        give_up_s=120,
    )
    errors: list[BaseException] = []
    progress = {"n": 0}

    def produce():
        try:
            for i in range(n_per):
                for s in streams:
                    sink.write(make_result(s, i))
                    progress["n"] += 1
                time.sleep(0.05)
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=produce)
    t.start()
    while progress["n"] < 30:
        time.sleep(0.01)
    broker.stop()
    time.sleep(2.5)  # > delivery_timeout_ms: in-flight batches expire
    broker.start()
    t.join(120)
    assert not t.is_alive() and not errors, errors
    sink.flush(timeout_s=90)
    stats = sink.stats
    sink.close()
    assert stats.written == len(streams) * n_per
    assert stats.acked == stats.written
    assert stats.resent > 0, "the outage did not exercise the re-send path"

    raw = read_records(broker.bootstrap, names.segments, dedupe=False)
    assert len(raw) >= stats.written
    back = read_results(broker.bootstrap, names.segments)
    assert [(r.stream_id, r.segment_index) for r in back] == [(s, i) for s in streams for i in range(n_per)]
    for r in back:
        assert_same(r, make_result(r.stream_id, r.segment_index))
    # Order per stream survives in the log too, apart from re-sent duplicates.
    for s in streams:
        idx = [r.segment_index for r in dedupe_by_uid(raw) if r.stream_id == s]
        assert idx == list(range(n_per))


def test_backpressure_blocks_then_resumes_and_give_up_raises(outage_broker, kafka_topics, tmp_path):
    broker = outage_broker
    broker.start()
    names = kafka_topics(partitions=1, bootstrap=broker.bootstrap)
    record_bytes = len(encode_record(make_result("s", 0, dim=256)).value)
    sink = KafkaSink(
        broker.bootstrap,
        topics=names.sink_topics(),
        spill_dir=tmp_path,
        max_buffer_bytes=10 * record_bytes,
        delivery_timeout_ms=2000,
        retry_backoff_s=0.2,
        max_retry_backoff_s=0.5,
        give_up_s=60,
    )
    sink.write(make_result("s", 0, dim=256))
    sink.flush()
    broker.stop()
    assert not broker.running()

    done = threading.Event()
    errors: list[BaseException] = []

    def produce():
        try:
            for i in range(1, 40):
                sink.write(make_result("s", i, dim=256))
            done.set()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(1.5)
    assert not done.is_set() and not errors, "write did not block on a full buffer while the broker was down"
    assert sink.producer.pending_bytes <= 11 * record_bytes + 200
    broker.start()
    t.join(60)
    assert done.is_set() and not errors, errors
    sink.flush(timeout_s=60)
    assert sink.stats.blocked_s > 1.0
    assert [r.segment_index for r in read_results(broker.bootstrap, names.segments)] == list(range(40))

    # Now an outage longer than give_up_s: the sink raises, and keeps the records.
    sink.producer.give_up_s = 1.5
    broker.stop()
    for i in range(40, 45):
        sink.write(make_result("s", i, dim=256))
    with pytest.raises(KafkaDeliveryError) as ei:
        sink.flush(timeout_s=60)
    assert "not acknowledged" in str(ei.value)
    kept = sink.undelivered()
    assert len(kept) == 5 and len(ei.value.undelivered) == 5
    assert [json.loads(v)["segment_index"] for _, _, v, _ in kept] == list(range(40, 45))
    with pytest.raises(KafkaDeliveryError):
        sink.write(make_result("s", 45, dim=256))
    with pytest.raises(KafkaDeliveryError):
        sink.close()


def test_kafka_local_start_is_idempotent_and_status_tells(kafka_broker):
    import subprocess

    from tests.fixtures.kafka import SCRIPT

    assert kafka_broker.running()
    status = subprocess.run(
        [str(SCRIPT), "status", "--state-dir", str(kafka_broker.state_dir)], capture_output=True, text=True
    )
    assert status.returncode == 0 and f"bootstrap={kafka_broker.bootstrap}" in status.stdout
    assert "sasl_bootstrap=127.0.0.1:" in status.stdout
    before = kafka_broker.bootstrap
    assert kafka_broker.start() == before  # already running: same address, no second JVM
    missing = subprocess.run(
        [str(SCRIPT), "status", "--state-dir", str(kafka_broker.state_dir) + "-none"], capture_output=True, text=True
    )
    assert missing.returncode == 3 and "stopped" in missing.stdout


def test_missing_topics_and_unreachable_broker_fail_clearly(kafka_bootstrap, tmp_path):
    with pytest.raises(ValueError, match="do not exist.*kafka-topics"):
        KafkaSink(kafka_bootstrap, topics={"segment": "no-such-topic-xyz"}, spill_dir=tmp_path)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"cannot connect to Kafka at 127.0.0.1:{port}"):
        KafkaSink(f"127.0.0.1:{port}", spill_dir=tmp_path, connect_timeout_s=2)
    assert time.monotonic() - t0 < 30


def test_live_consumer_sees_records_and_skips_duplicates(kafka_bootstrap, kafka_topics, tmp_path):
    from kafka import KafkaProducer

    names = kafka_topics(partitions=2)
    with (
        RecordConsumer(kafka_bootstrap, names.segments) as consumer,
        KafkaSink(kafka_bootstrap, topics=names.sink_topics(), spill_dir=tmp_path) as sink,
    ):
        for i in range(5):
            sink.write(make_result("live", i))
        sink.flush()
        # A duplicate of segment 2, as a re-send after an outage would make.
        enc = encode_record(make_result("live", 2))
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        p.send(names.segments, enc.value, enc.key, enc.headers).get(10)
        p.close()
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        got += consumer.poll(0.5)
        assert [r.segment_index for r in got] == list(range(5))
        assert consumer.duplicates == 1


def test_security_settings_pass_through_to_a_sasl_listener(kafka_bootstrap, kafka_sasl, kafka_topics, tmp_path):
    sasl_bootstrap, cfg = kafka_sasl
    names = kafka_topics(partitions=1)
    with KafkaSink(sasl_bootstrap, topics=names.sink_topics(), client_config=cfg, spill_dir=tmp_path) as sink:
        assert sink.producer.producer.config["sasl_mechanism"] == "PLAIN"
        sink.write(make_result("sasl", 0))
        sink.flush()
    (back,) = read_results(sasl_bootstrap, names.segments, client_config=cfg)
    assert_same(back, make_result("sasl", 0))
    # Without the settings, or with a wrong password, the listener refuses us.
    for bad in ({}, {**cfg, "sasl_plain_password": "wrong"}):
        with pytest.raises(ConnectionError, match="cannot connect to Kafka"):
            KafkaSink(
                sasl_bootstrap, topics=names.sink_topics(), client_config=bad, spill_dir=tmp_path, connect_timeout_s=2
            )


# ------------------------------------------------------------------ no broker needed


def test_client_options_pass_security_settings_and_catch_typos():
    opts = client_options(
        {
            "security.protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "u",
            "sasl_plain_password": "p",
            "ssl_cafile": "/ca.pem",
        }
    )
    assert opts == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
        "ssl_cafile": "/ca.pem",
    }
    with pytest.raises(ValueError, match="sasl_mechanism"):
        client_options({"sasl_mechanisms": "PLAIN"})
    with pytest.raises(ValueError, match="set by vmstream"):
        client_options({"bootstrap_servers": "x:1"})
    assert "group_id" in client_options({"group.id": "g"}, "consumer")


def test_decode_refuses_foreign_and_newer_messages():
    enc = encode_record(make_result("s", 0))
    assert decode_message(enc.value, enc.headers).uid == make_result("s", 0).uid
    with pytest.raises(RecordFormatError, match="no vmstream headers"):
        decode_message(enc.value, [], topic="t", partition=0, offset=5)
    newer = [(k, str(SCHEMA_VERSION + 1).encode() if k == H_SCHEMA else v) for k, v in enc.headers]
    with pytest.raises(RecordFormatError, match=r"t\[0\]@5 has schema version .* newer"):
        decode_message(enc.value, newer, topic="t", partition=0, offset=5)
    with pytest.raises(RecordFormatError, match="not JSON"):
        decode_message(b"\xff{", enc.headers)


def test_json_has_no_nan_and_duplicates_are_removed_by_uid():
    ev = StreamEvent("s", "error", message="boom")
    enc = encode_record(ev)
    assert b"NaN" not in enc.value
    json.loads(enc.value)  # strict JSON
    back = decode_message(enc.value, enc.headers)
    assert math.isnan(back.t_start) and back.message == "boom"
    a, b = make_result("s", 0), make_result("s", 1)
    assert [r.segment_index for r in dedupe_by_uid([a, b, a, ev, ev])[:2]] == [0, 1]
    assert len(dedupe_by_uid([a, b, a, ev, ev])) == 3
