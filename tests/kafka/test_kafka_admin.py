"""Topic administration against the real broker."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from vmstream.cli.kafka_topics import main
from vmstream.kafka.topics import (
    STATE_MAX_MESSAGE_BYTES,
    TopicNames,
    TopicSpec,
    admin_client,
    delete_topics,
    describe_topics,
    ensure_topics,
    vmstream_topics,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


@pytest.fixture
def names(kafka_bootstrap):
    n = TopicNames.with_prefix(f"adm{uuid.uuid4().hex[:8]}")
    yield n
    delete_topics(kafka_bootstrap, n.all(), timeout_s=10)


def _describe(bootstrap, topics):
    admin = admin_client(bootstrap)
    try:
        return describe_topics(admin, topics)
    finally:
        admin.close()


def test_names_and_prefix():
    d = TopicNames()
    assert (d.jobs, d.segments, d.state, d.dead_letter) == (
        "vmstream.jobs",
        "vmstream.segments",
        "vmstream.state",
        "vmstream.dead-letter",
    )
    c = TopicNames.with_prefix("cam")
    assert c.all() == ["cam.jobs", "cam.segments", "cam.events", "cam.summaries", "cam.state", "cam.dead-letter"]
    assert c.sink_topics() == {"segment": "cam.segments", "event": "cam.events", "summary": "cam.summaries"}
    from vmstream.pipeline.config import PipelineConfig

    # The pipeline config's default topic names are these.
    assert TopicNames.from_config(PipelineConfig().kafka) == d
    with pytest.raises(ValueError, match="prefix"):
        TopicNames.with_prefix("bad prefix!")
    with pytest.raises(ValueError, match="partitions"):
        vmstream_topics(partitions=0)


def test_ensure_topics_creates_them_with_their_configs_once(kafka_bootstrap, names):
    specs = vmstream_topics(names, partitions=3)
    report = ensure_topics(kafka_bootstrap, specs)
    assert report == {n: "created" for n in names.all()}
    d = _describe(kafka_bootstrap, names.all())
    assert {n: d[n]["partitions"] for n in names.all()} == {
        names.jobs: 3,
        names.segments: 3,
        names.events: 3,
        names.summaries: 3,
        names.state: 3,
        names.dead_letter: 1,
    }
    state = d[names.state]["configs"]
    assert state["cleanup.policy"] == "compact"
    assert int(state["max.message.bytes"]) == STATE_MAX_MESSAGE_BYTES
    assert d[names.segments]["configs"]["cleanup.policy"] == "delete"
    # Running it again (another worker starting) changes nothing.
    assert ensure_topics(kafka_bootstrap, specs) == {n: "exists" for n in names.all()}


def test_drifted_config_is_restored_and_partitions_are_not_silently_changed(kafka_bootstrap, names, caplog):
    from kafka.admin import ConfigResource, ConfigResourceType

    specs = vmstream_topics(names, partitions=2)
    ensure_topics(kafka_bootstrap, specs)
    admin = admin_client(kafka_bootstrap)
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    names.state,
                    {"max.message.bytes": "1000000", "retention.bytes": "123456789"},
                )
            ],
            incremental=True,
        )
    finally:
        admin.close()
    # Config changes reach the broker's metadata asynchronously.
    deadline = time.monotonic() + 10
    while _describe(kafka_bootstrap, [names.state])[names.state]["configs"]["max.message.bytes"] != "1000000":
        assert time.monotonic() < deadline, "the altered config never showed"
        time.sleep(0.1)
    report = ensure_topics(kafka_bootstrap, specs)
    assert report[names.state] == "updated" and report[names.jobs] == "exists"
    cfg = _describe(kafka_bootstrap, [names.state])[names.state]["configs"]
    assert int(cfg["max.message.bytes"]) == STATE_MAX_MESSAGE_BYTES
    assert cfg["retention.bytes"] == "123456789", "an operator's own setting was reset"

    more = vmstream_topics(names, partitions=4)
    with caplog.at_level("WARNING", logger="vmstream.kafka.topics"):
        assert ensure_topics(kafka_bootstrap, more)[names.segments] == "exists"
    assert f"{names.segments} has 2 partitions, the spec asks for 4" in caplog.text
    assert _describe(kafka_bootstrap, [names.segments])[names.segments]["partitions"] == 2
    report = ensure_topics(kafka_bootstrap, more, grow_partitions=True)
    assert report[names.segments] == "updated"
    assert _describe(kafka_bootstrap, [names.segments])[names.segments]["partitions"] == 4
    # Fewer partitions than exist is fine (a worker with an older, smaller config).
    assert ensure_topics(kafka_bootstrap, vmstream_topics(names, partitions=1))[names.segments] == "exists"


def test_state_topic_takes_snapshots_over_the_default_limit(kafka_bootstrap, names):
    from vmstream.kafka.producer import ReliableProducer
    from vmstream.kafka.readers import latest_by_key

    ensure_topics(kafka_bootstrap, vmstream_topics(names, partitions=1))
    snapshot = os.urandom(3 << 20)  # about a VideoMamba-M state (~2.8 MB), 3x the default limit
    p = ReliableProducer(kafka_bootstrap, max_request_size=STATE_MAX_MESSAGE_BYTES)
    try:
        p.send(names.state, snapshot, b"stream-1")
        p.send(names.state, snapshot[::-1], b"stream-1")  # a newer snapshot of the same stream
        p.flush(timeout_s=60)
    finally:
        p.close()
    # What a resuming worker reads: the latest snapshot per stream; a tombstone ends one.
    p = ReliableProducer(kafka_bootstrap)
    try:
        p.send(names.state, b"small", b"stream-2")
        p.send(names.state, b"done soon", b"stream-3")
        p.send(names.state, None, b"stream-3")  # a finished stream's tombstone
        p.flush(timeout_s=30)
    finally:
        p.close()
    latest = latest_by_key(kafka_bootstrap, names.state)
    assert sorted(latest) == [b"stream-1", b"stream-2"]
    assert latest[b"stream-1"].value == snapshot[::-1] and latest[b"stream-2"].value == b"small"


def test_create_error_is_reported_with_the_topic_name(kafka_bootstrap):
    bad = TopicSpec(f"bad{uuid.uuid4().hex[:8]}", 1, 3)  # one broker cannot hold 3 replicas
    with pytest.raises(RuntimeError, match=f"{bad.name}.*InvalidReplicationFactor"):
        ensure_topics(kafka_bootstrap, [bad])


def test_command_line(kafka_bootstrap, capsys):
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    n = TopicNames.with_prefix(prefix)
    try:
        assert main(["--bootstrap", kafka_bootstrap, "--prefix", prefix, "--partitions", "2"]) == 0
        out = capsys.readouterr().out
        assert f"{n.state}: created" in out and f"{n.jobs}: created" in out
        assert main(["--bootstrap", kafka_bootstrap, "--prefix", prefix, "--describe"]) == 0
        out = capsys.readouterr().out
        assert f"{n.state}: partitions=2" in out and "'cleanup.policy': 'compact'" in out
        assert main(["--bootstrap", kafka_bootstrap, "--prefix", prefix, "--delete"]) == 0
        assert n.state in capsys.readouterr().out
        assert _describe(kafka_bootstrap, n.all()) == {}
    finally:
        delete_topics(kafka_bootstrap, n.all())
