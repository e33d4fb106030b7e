"""Stream versions on Kafka: carried in the payload, and the readers keep the newest."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from vmstream.kafka.codec import decode_message, dedupe_by_uid, encode_record
from vmstream.records import SCHEMA_VERSION, SegmentResult, StreamEvent, StreamSummary


def seg(i: int, version: str, sid: str = "cam", value: float = 0.0) -> SegmentResult:
    return SegmentResult(
        stream_id=sid,
        segment_index=i,
        t_start=i,
        t_end=i + 1,
        labels=["a"],
        scores=[1.0],
        label_ids=[0],
        embedding=np.full(4, value, np.float32),
        stream_version=version,
    )


def test_records_carry_their_stream_version_through_kafka():
    assert SCHEMA_VERSION >= 2
    for rec in (
        seg(3, "v1"),
        StreamEvent("cam", "end", 0.0, 1.0, stream_version="v1"),
        StreamSummary("cam", ["a"], [1.0], [0], "last", 1.0, 1, stream_version="v1"),
    ):
        enc = encode_record(rec)
        back = decode_message(enc.value, enc.headers)
        assert type(back) is type(rec) and back.stream_version == "v1"
    # A record of a writer before versions decodes with an empty version.
    enc = encode_record(seg(0, ""))
    assert decode_message(enc.value, enc.headers).stream_version == ""


def test_dedupe_keeps_the_newest_version_of_each_stream_and_the_newest_copy():
    """Issue 11: a 15-segment run, then an 8-segment rerun over new content: the reader
    kept the first copy of each uid (old content) and the old segments 8-14."""
    old = [seg(i, "v1", value=1.0) for i in range(15)]
    new = [seg(i, "v2", value=2.0) for i in range(8)]
    other = [seg(i, "w1", sid="other") for i in range(2)]
    got = dedupe_by_uid(old[:5] + other[:1] + old[5:] + new + other[1:] + [seg(7, "v2", value=3.0)])
    cam = [r for r in got if r.stream_id == "cam"]
    assert [r.segment_index for r in cam] == list(range(8))
    assert {r.stream_version for r in cam} == {"v2"}
    assert [float(r.embedding[0]) for r in cam] == [2.0] * 7 + [3.0]  # the last copy wins
    assert [r.segment_index for r in got if r.stream_id == "other"] == [0, 1]
    # Events and summaries of the old version go too; identical copies collapse.
    ev_old = StreamEvent("cam", "end", 0.0, 15.0, stream_version="v1")
    ev_new = StreamEvent("cam", "end", 0.0, 8.0, stream_version="v2")
    got = dedupe_by_uid([ev_old, ev_new, StreamEvent("cam", "end", 0.0, 8.0, stream_version="v2")])
    assert got == [ev_new]
    # Records without a version (older writers) are kept as before.
    nan_ev = StreamEvent("legacy", "gap", math.nan, math.nan)
    assert len(dedupe_by_uid([seg(0, "", sid="legacy"), seg(0, "", sid="legacy"), nan_ev])) == 2


def test_dedupe_agrees_with_the_parquet_sink_on_which_version_stands():
    def summ(v, n):
        return StreamSummary("cam", ["a"], [1.0], [0], "last", float(n), n, stream_version=v)

    # v2 under way: its segments stand, v1's summary no longer does.
    got = dedupe_by_uid([seg(i, "v1") for i in range(4)] + [summ("v1", 4)] + [seg(0, "v2")])
    assert [(type(r).__name__, r.stream_version) for r in got] == [("SegmentResult", "v2")]
    # A, then B, then A again (a file restored with its mtime): the last run stands.
    got = dedupe_by_uid(
        [seg(i, "A") for i in range(4)]
        + [summ("A", 4)]
        + [seg(i, "B") for i in range(2)]
        + [summ("B", 2)]
        + [seg(i, "A", value=5.0) for i in range(3)]
    )
    assert [(r.stream_version, r.segment_index) for r in got] == [("A", 0), ("A", 1), ("A", 2)]
    assert {float(r.embedding[0]) for r in got} == {5.0}
    # Segments and summaries read from their own topics, one after the other.
    got = dedupe_by_uid([seg(0, "v1"), seg(0, "v2"), seg(1, "v2"), summ("v1", 1), summ("v2", 2)])
    assert [(type(r).__name__, r.stream_version) for r in got] == [("SegmentResult", "v2")] * 2 + [
        ("StreamSummary", "v2")
    ]


@pytest.mark.kafka
def test_record_consumer_follows_a_stream_to_its_new_version(kafka_bootstrap, kafka_topics):
    """Live: a new version's segments are new, not duplicates of the old uids."""
    from kafka import KafkaProducer

    from vmstream.kafka.readers import RecordConsumer, read_results

    names = kafka_topics(partitions=1)
    sent = (
        [seg(i, "v1", value=1.0) for i in range(5)]
        + [seg(4, "v1", value=1.0)]  # a re-send
        + [seg(i, "v2", value=2.0) for i in range(3)]
    )
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for r in sent:
            enc = encode_record(r)
            p.send(names.segments, enc.value, key=enc.key, headers=enc.headers).get(30)
    finally:
        p.close()
    got = []
    with RecordConsumer(kafka_bootstrap, [names.segments], from_beginning=True) as c:
        deadline = time.monotonic() + 30
        while len(got) < 8 and time.monotonic() < deadline:
            got += c.poll(0.5)
        got += c.poll(1.0)
        assert c.duplicates == 1 and c.new_versions == 1
    # v2's segments 0-2 are not duplicates of v1's uids.
    assert [(r.stream_version, r.segment_index) for r in got] == [("v1", i) for i in range(5)] + [
        ("v2", i) for i in range(3)
    ]
    # The batch reader: only the newest version stands.
    final = read_results(kafka_bootstrap, names.segments, timeout_s=30)
    assert [(r.stream_version, r.segment_index) for r in final] == [("v2", i) for i in range(3)]
