"""Issue 25 against a real broker and a real `vmstream worker`: playlists that would walk
a job out of its policy, poison job records, a password in a job's URL, damaged
records on the state topic. Each ends in a dead letter (or a fresh start), the worker
goes on and serves the good job after them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.http_files import http_servers  # noqa: F401  (fixture)
from tests.kafka.test_worker import (  # noqa: F401  (fixtures)
    REPO,
    committed,
    records,
    segments_of,
    send_jobs,
    summaries_of,
    videos,
    wait_until,
    workers,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def make_ts(path: Path) -> Path:
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=10:duration=4",
            "-c:v",
            "libx264",
            "-g",
            "10",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mpegts",
            str(path),
        ],
        check=True,
    )
    return path


def playlist(*entries: str) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:4", "#EXT-X-MEDIA-SEQUENCE:0"]
    for e in entries:
        lines += ["#EXTINF:4.0,", e]
    return "\n".join(lines + ["#EXT-X-ENDLIST", ""])


def dead_letters(bootstrap: str, names, n: int) -> dict:
    from vmstream.kafka.readers import read_messages

    dead = wait_until(
        lambda: len(m := read_messages(bootstrap, names.dead_letter)) >= n and m, 120, f"{n} dead letters"
    )
    out = {}
    for m in dead:
        d = json.loads(m.value)
        sid = d["stream_id"] or (d["job"].get("stream_id") if isinstance(d["job"], dict) else None)
        out[sid if isinstance(sid, str) and sid else f"@{d['source']['offset']}"] = d
    return out


def test_playlists_cannot_walk_a_job_out_of_its_policy(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos, http_servers
):
    """The issue's attack: root/evil.m3u8 naming /elsewhere/secret.ts ended "done (ok)"
    with the outside video's segments; so did a master playlist over it, an ffconcat
    list, and an allowed host's playlist naming a host the policy does not allow."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = make_ts(elsewhere / "secret.ts")
    root = tmp_path / "root"
    root.mkdir()
    (root / "evil.m3u8").write_text(playlist(str(secret)))
    (root / "nested.m3u8").write_text("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=100000\nevil.m3u8\n")
    (root / "evil.ffconcat").write_text(f"ffconcat version 1.0\nfile {secret}\n")
    (root / "disguised.mp4").write_text(playlist(str(secret)))  # FFmpeg goes by the data, not the name
    other = http_servers("127.0.0.2")  # a host the policy does not allow
    other.files["/secret.ts"] = secret.read_bytes()
    allowed = http_servers("127.0.0.1")
    allowed.files["/list.m3u8"] = playlist(other.url("/secret.ts")).encode()

    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    policy = {
        "schemes": ["file", "http"],
        "roots": [str(root), str(Path(videos["short"]).parent)],
        "hosts": ["127.0.0.1"],
    }
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group, kafka={"jobs": policy})
    w = workers(cfg, "a")
    hostile = {
        "evil": str(root / "evil.m3u8"),
        "nested": str(root / "nested.m3u8"),
        "concat": str(root / "evil.ffconcat"),
        "disguised": str(root / "disguised.mp4"),
        "web": allowed.url("/list.m3u8"),
    }
    send_jobs(
        kafka_bootstrap,
        names.jobs,
        [{"stream_id": sid, "uri": uri} for sid, uri in hostile.items()]
        + [{"stream_id": "good", "uri": videos["short"]}],
        partition=0,
    )
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, "good") and r, 120, "the good job's summary"
    )
    by_sid = dead_letters(kafka_bootstrap, names, len(hostile))
    assert sorted(by_sid) == sorted(hostile)
    for sid, d in by_sid.items():
        if sid == "disguised":  # FFmpeg's HLS demuxer wants an .m3u8 name: just not a video
            assert d["reason"] == "failed" and "not a video" in d["error"]
            continue
        assert d["reason"] == "refused", (sid, d)
        assert "kafka.jobs.formats" in d["error"], (sid, d["error"])
    wait_until(
        lambda: committed(kafka_bootstrap, group, names.jobs) == {0: len(hostile) + 1}, 60, "every job committed"
    )
    recs = records(kafka_bootstrap, names)
    assert {r.stream_id for r in recs} == {"good"}  # not one segment of the secret video
    assert other.hits == {}  # the refused host was never asked
    assert w.proc.poll() is None
    assert w.terminate() == 0


def test_poison_job_records_are_dead_lettered_and_the_worker_goes_on(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos
):
    """A job nesting deeply (100k levels in the attack) raised RecursionError and stopped the worker, and a
    restarted worker read the same record and stopped again."""
    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    w = workers(cfg, "a")
    poison = [
        b"[" * 30_000 + b"]" * 30_000,  # under the size bound, past the parser's recursion limit
        json.dumps({"stream_id": "deep", "uri": "@"}).replace('"@"', '{"a":' * 10_000 + "1" + "}" * 10_000).encode(),
        json.dumps({"stream_id": "huge", "uri": "/x" * 200_000}).encode(),
        b"\xff\xfe\x00garbage",
        json.dumps({"stream_id": ["not", "a", "string"], "uri": 5}).encode(),
        json.dumps({"uri": "\u0000"}).encode(),
    ]
    send_jobs(kafka_bootstrap, names.jobs, poison + [{"stream_id": "good", "uri": videos["short"]}], partition=0)
    wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, "good"),
        120,
        "the good job's summary after the poison",
    )
    by_offset = {d["source"]["offset"]: d for d in dead_letters(kafka_bootstrap, names, len(poison)).values()}
    assert sorted(by_offset) == list(range(len(poison)))
    assert all(d["reason"] == "bad_message" for d in by_offset.values())
    assert "nests 30000 levels" in by_offset[0]["error"]
    assert "nests 10001 levels" in by_offset[1]["error"]
    assert "at most 65536" in by_offset[2]["error"]
    assert "UTF-8" in by_offset[3]["error"]
    wait_until(
        lambda: committed(kafka_bootstrap, group, names.jobs) == {0: len(poison) + 1}, 60, "every record committed"
    )
    assert w.proc.poll() is None and "stopping without committing" not in w.log()
    assert w.terminate() == 0
    # A restarted worker finds nothing left to choke on.
    w2 = workers(cfg, "b")
    w2.wait_log(r"assigned partitions \[\S")
    assert w2.terminate() == 0


def test_job_fuzz_small(kafka_bootstrap):
    """benchmarks/job_fuzz.py in small (the closing note's figures come from 1,000)."""
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "job_fuzz.py"),
            "--count",
            "60",
            "--seed",
            "7",
            "--bootstrap",
            kafka_bootstrap,
            "--timeout",
            "180",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    figures = dict(line.split("=", 1) for line in p.stdout.splitlines() if line.startswith("job_fuzz_"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert figures["job_fuzz_good_job_served"] == "1" and figures["job_fuzz_committed_all"] == "1"
    assert figures["job_fuzz_worker_exits"] == figures["job_fuzz_tracebacks"] == "0"
    assert figures["job_fuzz_results_of_bad_jobs"] == "0"
    assert int(figures["job_fuzz_dead_lettered"]) == int(figures["job_fuzz_records"]) == 60


def test_a_password_in_a_job_url_is_written_nowhere(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos, http_servers
):
    """`http://user:password@host/...` was in the worker's log, the state topic and every
    segment record's uri."""
    from vmstream.kafka.readers import read_messages
    from vmstream.records import StreamSummary

    srv = http_servers("127.0.0.1")
    srv.files["/short.mp4"] = Path(videos["short"]).read_bytes()
    url = srv.url("/short.mp4").replace("http://", "http://alice:s3cr3t-pw@")
    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    w = workers(cfg, "a")
    send_jobs(
        kafka_bootstrap,
        names.jobs,
        [{"uri": url}, {"stream_id": "bad", "uri": url.replace(".mp4", ".mkv")}],
        partition=0,
    )
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and any(isinstance(x, StreamSummary) for x in r) and r,
        120,
        "the job's summary",
    )
    dead_letters(kafka_bootstrap, names, 1)
    (sid,) = {r.stream_id for r in recs}
    assert "s3cr3t" not in sid
    assert segments_of(recs, sid) and all(r.uri == srv.url("/short.mp4") for r in recs)
    raw = [
        m.value
        for m in read_messages(
            kafka_bootstrap, [names.segments, names.events, names.summaries, names.state, names.dead_letter]
        )
    ]
    assert raw and not [v for v in raw if v and b"s3cr3t" in v]
    assert w.terminate() == 0
    assert "s3cr3t" not in w.log() and srv.url("/short.mp4") in w.log()


def test_a_damaged_state_record_starts_its_stream_over(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos
):
    """A snapshot on the state topic with an unexpected key stopped the worker, and it
    stopped again on every restart; garbage bytes there failed the job on every try."""
    import io

    import torch
    from kafka import KafkaProducer

    from vmstream.pipeline.versions import content_version
    from vmstream.snapshot_codec import encode_snapshot
    from vmstream.stages.sources import source_from_uri

    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    src = source_from_uri(videos["short"], stream_id="odd-key")
    book = io.BytesIO()
    torch.save(
        {
            "next_index": 2,
            "segments": 2,
            "t_start": 0.0,
            "t_end": 2.0,
            "uri": src.uri,
            "last_logits": None,
            "sum_logits": None,
            "failed": "",
            "planted": 1,
        },
        book,
    )
    snap = encode_snapshot(
        {
            "stream_id": "odd-key",
            "next_index": 2,
            "t_end": 2.0,
            "state": b"",
            "book": book.getvalue(),
            "extra": {"stream_version": content_version(src)},
        }
    )
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    p.send(names.state, snap, key=b"odd-key").get(30)
    p.send(names.state, b"\x00garbage, not a snapshot", key=b"garbage").get(30)
    p.close()
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    w = workers(cfg, "a")
    send_jobs(
        kafka_bootstrap,
        names.jobs,
        [{"stream_id": "odd-key", "uri": videos["short"]}, {"stream_id": "garbage", "uri": videos["short"]}],
        partition=0,
    )
    recs = wait_until(
        lambda: (
            (r := records(kafka_bootstrap, names)) and summaries_of(r, "odd-key") and summaries_of(r, "garbage") and r
        ),
        120,
        "both jobs' summaries",
    )
    # Each started over: every segment from the first, none skipped by the planted state.
    assert sorted(segments_of(recs, "odd-key")) == sorted(segments_of(recs, "garbage")) == [0, 1, 2, 3]
    wait_until(lambda: committed(kafka_bootstrap, group, names.jobs) == {0: 2}, 60, "both jobs committed")
    assert w.proc.poll() is None
    log = w.log()
    assert "set aside, the stream starts over" in log and "stopping without committing" not in log
    assert w.terminate() == 0
