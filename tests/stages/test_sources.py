"""Sources: files, directories, globs, URLs and job dicts become Sources."""

import os

import pytest

from vmstream.stages.decode.pyav import PyAVDecoder
from vmstream.stages.media import InputNotFoundError, NotAVideoError, NoVideoTrackError
from vmstream.stages.sources import (
    Source,
    SourceSpecError,
    is_live_uri,
    probe_sources,
    redact_uri,
    resolve_sources,
    source_from_job,
)


def test_a_file_is_one_stream_with_a_stable_id(h264_mp4, monkeypatch, tmp_path):
    (s,) = resolve_sources(h264_mp4)
    assert s.uri == os.path.abspath(h264_mp4) and s.stream_id == s.uri and not s.live
    # The same file named relatively from another directory: the same id.
    monkeypatch.chdir(os.path.dirname(h264_mp4))
    (again,) = resolve_sources([os.path.basename(h264_mp4)])
    assert again.stream_id == s.stream_id
    (url,) = resolve_sources(["file://" + h264_mp4])
    assert url.stream_id == s.stream_id


def test_a_directory_is_each_video_file_sorted_recursively(video_dir):
    srcs = resolve_sources([video_dir])
    names = [os.path.relpath(s.uri, video_dir) for s in srcs]
    # notes.txt has no video extension and is left out; broken/sound files are listed
    # (their problems show when probed).
    assert names == ["a.mp4", "broken.mp4", "sound.mp4", os.path.join("sub", "b.webm")]
    assert len({s.stream_id for s in srcs}) == 4


def test_probe_sources_reports_and_skips_broken_files(video_dir):
    rep = probe_sources(resolve_sources([video_dir]), PyAVDecoder())
    ok = sorted(os.path.basename(s.uri) for s, _ in rep.ok)
    assert ok == ["a.mp4", "b.webm"]
    failed = {os.path.basename(s.uri): type(e) for s, e in rep.failed}
    assert failed == {"broken.mp4": NotAVideoError, "sound.mp4": NoVideoTrackError}
    with pytest.raises(NotAVideoError, match="broken.mp4"):
        rep.raise_if_failed()


def test_globs_and_missing_inputs(video_dir, tmp_path):
    srcs = resolve_sources([os.path.join(video_dir, "**", "*.webm")])
    assert [os.path.basename(s.uri) for s in srcs] == ["b.webm"]
    with pytest.raises(InputNotFoundError, match="no files match"):
        resolve_sources([str(tmp_path / "*.mkv")])
    with pytest.raises(InputNotFoundError, match="nope.mp4"):
        resolve_sources([str(tmp_path / "nope.mp4")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no video files"):
        resolve_sources([str(tmp_path / "empty")])


def test_duplicate_inputs_are_refused(h264_mp4):
    with pytest.raises(ValueError, match="given twice"):
        resolve_sources([h264_mp4, h264_mp4])
    with pytest.raises(ValueError, match="same stream id"):
        resolve_sources([{"stream_id": "cam", "uri": "rtsp://a/1"}, {"stream_id": "cam", "uri": "rtsp://b/2"}])


def test_urls_are_live_unless_they_name_a_file():
    for u in (
        "rtsp://cam/1",
        "rtmp://x/live",
        "srt://1.2.3.4:9000",
        "tcp://127.0.0.1:5000",
        "udp://239.0.0.1:1234",
        "pipe:0",
        "http://cam.local/mjpeg",
        "https://x/live.m3u8",
    ):
        assert is_live_uri(u), u
    for u in ("https://example.com/archive/clip.mp4", "/data/a.ts", "C://video.mp4", "file:///a.mkv"):
        assert not is_live_uri(u), u
    (s,) = resolve_sources(["rtsp://admin:secret@10.0.0.5:554/stream1"])
    assert s.live and s.uri == "rtsp://admin:secret@10.0.0.5:554/stream1"
    assert s.stream_id == "rtsp://10.0.0.5:554/stream1"  # no credentials in ids and sinks
    assert redact_uri("tcp://127.0.0.1:5000") == "tcp://127.0.0.1:5000"


def test_job_dicts_are_validated_with_the_field_named():
    s = source_from_job(
        {
            "stream_id": "cam-7",
            "uri": "tcp://127.0.0.1:9000",
            "options": {
                "reconnect": {"initial": 0.1, "max_tries": 3},
                "ffmpeg": {"rtsp_transport": "tcp"},
                "timeout": 2,
            },
        }
    )
    assert s == Source("cam-7", "tcp://127.0.0.1:9000", live=True)
    assert s.options["reconnect"]["max_tries"] == 3
    assert source_from_job({"uri": "https://h/v.mp4", "live": True}).live
    bad = [
        ({"stream_id": "x"}, "uri"),
        ({"uri": ""}, "uri"),
        ({"uri": "a.mp4", "stream_id": 5}, "stream_id"),
        ({"uri": "a.mp4", "live": "yes"}, "live"),
        ({"uri": "a.mp4", "options": []}, "options"),
        ({"uri": "a.mp4", "options": {"ffmpeg": "fast"}}, "ffmpeg"),
        ({"uri": "a.mp4", "options": {"reconnect": {"initial": -1}}}, "reconnect.initial"),
        ({"uri": "a.mp4", "options": {"reconnect": {"initial": 5, "max_delay": 1}}}, "max_delay"),
        ({"uri": "a.mp4", "options": {"timeout": 0}}, "timeout"),
        ({"uri": "a.mp4", "priority": 3}, "unknown field"),
        ("a.mp4", "must be a dict"),
    ]
    for job, words in bad:
        with pytest.raises(SourceSpecError, match=words):
            source_from_job(job)
    with pytest.raises(SourceSpecError):
        resolve_sources([{"uri": 3}])


def test_source_rejects_bad_ids():
    with pytest.raises(ValueError):
        Source("", "a.mp4")
    with pytest.raises(ValueError):
        Source("a\nb", "a.mp4")
