"""KafkaStateStore against the real local broker: snapshots written by one worker are
what another loads; tombstones; big states; the incremental read."""

from __future__ import annotations

import os

import pytest

from vmstream.kafka.state import KafkaStateStore, partition_for_key
from vmstream.snapshot_codec import encode_snapshot

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def snap(sid: str, i: int, nbytes: int = 256) -> dict:
    return {
        "stream_id": sid,
        "next_index": i,
        "t_end": 1.5 * i,
        "state": os.urandom(nbytes),
        "book": f"book-{i}".encode(),
        "extra": {"i": i},
    }


def test_latest_snapshot_by_any_worker(kafka_bootstrap, kafka_topics):
    names = kafka_topics(partitions=3)
    with KafkaStateStore(kafka_bootstrap, names.state) as a, KafkaStateStore(kafka_bootstrap, names.state) as b:
        assert b.load("cam-1") is None
        written = {}
        for i in range(4):
            for sid in ("cam-1", "cam-2", "/data/videos/a b.mp4"):
                s = snap(sid, i)
                a.save(s)
                written[sid] = s
        for sid, s in written.items():
            got = b.load(sid)
            assert got["next_index"] == 3 and got["state"] == s["state"] and got["book"] == s["book"]
            assert got["extra"] == {"i": 3} and got["t_end"] == 4.5
        # Nothing new: answered from the index with one fetch, not a re-read.
        read = b.stats["messages_read"]
        assert b.load("cam-2")["state"] == written["cam-2"]["state"]
        assert b.stats["messages_read"] == read and b.stats["fetches"] >= 1
        # The other worker moves on; `a` sees its own and `b`'s writes alike.
        b.save(snap("cam-1", 9))
        assert a.load("cam-1")["next_index"] == 9
        # A tombstone: the stream finished.
        a.delete("cam-1")
        assert b.load("cam-1") is None and a.load("cam-1") is None
        assert b.load("cam-2")["next_index"] == 3
        # A new run of the same stream starts afresh and snapshots again.
        a.save(snap("cam-1", 1))
        assert b.load("cam-1")["next_index"] == 1


def test_big_state_and_size_limit(kafka_bootstrap, kafka_topics):
    names = kafka_topics(partitions=1)
    with KafkaStateStore(kafka_bootstrap, names.state) as a, KafkaStateStore(kafka_bootstrap, names.state) as b:
        assert a.max_message_bytes == 16 << 20  # the admin step raised the state topic's limit
        big = snap("m-size", 5, nbytes=6 << 20)  # several VideoMamba-M states' worth
        a.save(big)
        assert b.load("m-size")["state"] == big["state"]
        with pytest.raises(ValueError, match="max.message.bytes"):
            a.save(snap("too-big", 1, nbytes=17 << 20))


def test_keys_land_where_load_reads(kafka_bootstrap, kafka_topics):
    """`load` reads only the key's partition: it must be the producer's choice."""
    from vmstream.kafka.readers import read_messages

    names = kafka_topics(partitions=5)
    sids = [f"stream-{i}" for i in range(20)]
    with KafkaStateStore(kafka_bootstrap, names.state) as a:
        for sid in sids:
            a.save(snap(sid, 1, nbytes=8))
    msgs = read_messages(kafka_bootstrap, names.state)
    assert len(msgs) == len(sids)
    for m in msgs:
        assert m.partition == partition_for_key(m.key, 5)
    assert len({m.partition for m in msgs}) > 1


def test_missing_topic_is_a_clear_error(kafka_bootstrap):
    with pytest.raises(ValueError, match="does not exist.*kafka-topics"):
        KafkaStateStore(kafka_bootstrap, "vmstream-test-no-such-state-topic")


def test_runner_resumes_from_kafka_snapshots(tmp_path, kafka_bootstrap, kafka_topics, media):
    """The runner with the Kafka store: stop mid-stream in one runner, finish in
    another (a fresh store, as on another worker): same results as one run."""
    import numpy as np
    import torch

    from tests.fixtures.media import make_video
    from tests.fixtures.videomamba import make_tiny_model
    from vmstream.pipeline.assembly import build_runner
    from vmstream.pipeline.config import load_config
    from vmstream.records import SegmentResult
    from vmstream.stages.sinks.base import Sink
    from vmstream.stages.sources import resolve_sources

    names = kafka_topics(partitions=2)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": make_tiny_model(seed=3).state_dict()}, ckpt)
    video = make_video(str(tmp_path / "v.mp4"), fps=10, seconds=40, gop=20, size=(64, 48))
    cfg = load_config(
        overrides={
            "model": {"checkpoint": str(ckpt), "name": None, "top_k": 3},
            "decode": {"fps": 4.0, "img_size": 32},
            "output": {"dir": str(tmp_path / "out"), "console": False, "parquet": False, "faiss": False},
            "runner": {"progress": False, "snapshot_every": 1, "queue_size": 1},
        }
    )

    class Collect(Sink):
        name = "collect"

        def __init__(self):
            self.results = {}

        def write(self, r):
            if isinstance(r, SegmentResult):
                self.results[r.segment_index] = r.embedding

    (src,) = resolve_sources([video])
    full = Collect()
    build_runner(cfg, sinks=[full], state_store=None).run([src])
    assert len(full.results) == 40

    part = Collect()
    with KafkaStateStore(kafka_bootstrap, names.state) as store:

        def progress(item):
            if isinstance(item, SegmentResult) and item.segment_index == 2:
                runner.stop()

        runner = build_runner(cfg, sinks=[part], state_store=store, progress=progress)
        assert runner.run([src]).stopped
    # The stop lands within the runner's queues (bounded), well before the end.
    assert 3 <= len(part.results) < 40
    rest = Collect()
    with KafkaStateStore(kafka_bootstrap, names.state) as store:
        saved = store.load(src.stream_id)
        assert saved is not None and saved["next_index"] >= 3
        build_runner(cfg, sinks=[rest], state_store=store).run([src])
        assert store.load(src.stream_id) is None  # finished: tombstoned
    assert min(rest.results) == saved["next_index"]
    got = {**part.results, **rest.results}
    assert sorted(got) == sorted(full.results)
    np.testing.assert_allclose(
        np.stack([got[i] for i in sorted(got)]),
        np.stack([full.results[i] for i in sorted(full.results)]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_snapshot_bytes_are_the_shared_format(kafka_bootstrap, kafka_topics):
    from vmstream.kafka.readers import latest_by_key

    names = kafka_topics(partitions=1)
    s = snap("fmt", 2)
    with KafkaStateStore(kafka_bootstrap, names.state) as a:
        a.save(s)
    (m,) = latest_by_key(kafka_bootstrap, names.state).values()
    assert m.key == b"fmt" and m.value == encode_snapshot(s)


def test_kafka_topics_command(kafka_bootstrap, capsys):
    """`vmstream kafka-topics`: the admin step as a vmstream subcommand."""
    import uuid

    from vmstream.cli import main

    prefix = f"cli{uuid.uuid4().hex[:8]}"
    try:
        assert main(["kafka-topics", "--bootstrap", kafka_bootstrap, "--prefix", prefix, "--partitions", "2"]) == 0
        assert f"{prefix}.state: created" in capsys.readouterr().out
        assert main(["kafka-topics", "--bootstrap", kafka_bootstrap, "--prefix", prefix, "--describe"]) == 0
        out = capsys.readouterr().out
        assert f"{prefix}.state: partitions=2" in out and "'cleanup.policy': 'compact'" in out
    finally:
        assert main(["kafka-topics", "--bootstrap", kafka_bootstrap, "--prefix", prefix, "--delete"]) == 0
    with pytest.raises(SystemExit):  # argparse's usage error, as for every subcommand
        main(["kafka-topics", "--no-such-flag"])
