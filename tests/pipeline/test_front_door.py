"""The front door's small promises: the progress bar never fails a run, the stream names
a person reads, search's friction points, --version, one override spelling."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from vmstream.cli import build_parser, main
from vmstream.pipeline.assembly import build_runner
from vmstream.pipeline.config import load_config
from vmstream.pipeline.progress import Progress
from vmstream.records import SegmentResult, StreamEvent, stream_status
from vmstream.stages.media import StreamInfo
from vmstream.stages.sinks.console import ConsoleSink, short_name
from vmstream.stages.sources import resolve_sources


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": make_tiny_model(seed=5).state_dict()}, path)
    return str(path)


def _cfg(out, ckpt):
    return load_config(
        overrides={
            "model": {"checkpoint": ckpt, "name": None},
            "decode": {"fps": 4.0, "img_size": 32},
            "output": {"dir": str(out), "console": False},
            "runner": {"progress": False},
        }
    )


def test_a_progress_callback_that_raises_fails_no_stream(tmp_path, tiny_ckpt, h264_mp4, caplog):
    calls = []

    def broken(item):
        calls.append(item)
        raise TypeError("unsupported format string passed to NoneType.__format__")

    runner = build_runner(_cfg(tmp_path / "out", tiny_ckpt), progress=broken)
    with caplog.at_level(logging.WARNING):
        report = runner.run(resolve_sources([h264_mp4]))
    assert report.streams_failed == 0 and report.segments == 4
    assert report.statuses == {resolve_sources([h264_mp4])[0].stream_id: "ok"}
    assert len(calls) == 1, "switched off after its first error"
    assert sum("progress reporting switched off" in r.message for r in caplog.records) == 1


def _info(duration):
    return StreamInfo(
        uri="x",
        width=320,
        height=240,
        fps=25.0,
        duration=duration,
        frame_count=None,
        start_time=0.0,
        live=duration is None,
        codec="h264",
    )


def test_the_bar_draws_with_an_unknown_total_then_a_known_one():
    out = io.StringIO()
    p = Progress(enabled="force", file=out)
    p(("stream", "live", _info(None)))  # a live stream first: no total yet
    p(("stream", "a", _info(10.0)))
    p(
        SegmentResult(
            stream_id="a", segment_index=0, t_start=0.0, t_end=4.0, labels=[], scores=[], label_ids=[], embedding=None
        )
    )
    p(("done", "a", "ok"))
    p.close()
    assert p.enabled and p.failed is None
    text = out.getvalue()
    assert "video: 0 s" in text and "10/10 s" in text and "100%" in text


def test_the_bar_counts_the_seconds_of_live_streams():
    out = io.StringIO()
    p = Progress(enabled="force", file=out)
    p(("stream", "cam", _info(None)))
    t0 = 1_700_000_000.0  # live streams carry wall-clock times
    for i in range(3):
        p(
            SegmentResult(
                stream_id="cam",
                segment_index=i,
                t_start=t0 + 4 * i,
                t_end=t0 + 4 * i + 4,
                labels=[],
                scores=[],
                label_ids=[],
                embedding=None,
            )
        )
    p.close()
    assert "video: 12 s" in out.getvalue()


def test_a_bar_that_breaks_is_switched_off_with_one_warning(caplog):
    class Broken(io.StringIO):
        def write(self, s):
            raise OSError("terminal went away")

    p = Progress(enabled="force", file=Broken())
    with caplog.at_level(logging.WARNING):
        p(("stream", "a", _info(10.0)))
        p(("stream", "b", _info(10.0)))
    assert not p.enabled and "terminal went away" in p.failed
    assert sum("progress bar switched off" in r.message for r in caplog.records) == 1


def test_stream_names_keep_the_file_name():
    a = "/home/me/videos/cameras/entrance/2026-12-01.mp4"
    b = "/home/me/videos/cameras/entrance/2026-12-02.mp4"
    assert short_name(a, 24) != short_name(b, 24)
    assert short_name(a, 24).endswith("/2026-12-01.mp4") and len(short_name(a, 24)) == 24
    assert short_name("cam0", 24) == "cam0"
    long_name = "rtsp://10.0.0.7:554/a-very-long-stream-name-without-slashes-at-the-end"
    s = short_name(long_name, 20)
    assert len(s) == 20 and "…" in s and s.endswith(long_name[-5:])


def test_every_report_of_a_stopped_stream_says_stopped():
    lines = []
    sink = ConsoleSink(writer=lines.append, color=False)
    sink.write(
        SegmentResult(
            stream_id="s",
            segment_index=0,
            t_start=0.0,
            t_end=4.0,
            labels=["a"],
            scores=[0.9],
            label_ids=[0],
            embedding=None,
        )
    )
    sink.write(StreamEvent(stream_id="s", kind="end", message="stopped by the caller", details={"reason": "stopped"}))
    sink.close()
    row = [ln for ln in lines if ln.startswith("s ")][-1]
    assert row.split()[1] == "stopped" == stream_status("stopped")
    assert "00:00:04" in row  # the duration done so far, not "-"
    assert "1 stopped (resumable)" in lines[-1]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("vmstream ")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "Find the stored segments" in sub.choices["search"].description
    assert "--set KEY=VALUE" in sub.choices["train"].format_help()
    args = parser.parse_args(["train", "--config", "r.yaml", "--set", "epochs=2", "lr=0.1"])
    assert args.sets == ["epochs=2"] and args.overrides == ["lr=0.1"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, tiny_ckpt, h264_mp4):
    out = tmp_path_factory.mktemp("store") / "out"
    assert (
        main(
            [
                "run",
                h264_mp4,
                "--checkpoint",
                tiny_ckpt,
                "--out",
                str(out),
                "--fps",
                "4",
                "--set",
                "decode.img_size=32",
                "--no-progress",
                "--set",
                "output.console=false",
            ]
        )
        == 0
    )
    return out


def test_search_takes_the_stream_as_given_to_run(small_store, h264_mp4, capsys, monkeypatch, tmp_path):
    import os

    monkeypatch.chdir(os.path.dirname(h264_mp4))
    capsys.readouterr()
    assert main(["search", "--index", str(small_store), "--stream", os.path.basename(h264_mp4), "--at", "1"]) == 0
    out = capsys.readouterr().out
    assert "[00:00:" in out, "times as the run's console prints them"


def test_search_says_what_the_store_holds(small_store, h264_mp4, capsys):
    assert main(["search", "--index", str(small_store), "--stream", "nope.mp4", "--at", "1"]) == 2
    err = capsys.readouterr().err
    assert "not in the store" in err and h264_mp4 in err and err.count("\n") == 1
    assert main(["search", "--index", str(small_store), "--stream", h264_mp4, "--at", "400"]) == 2
    err = capsys.readouterr().err
    assert "--at 400" in err and "00:00:00" in err


@pytest.mark.parametrize("bad", [["-k", "0"], ["-k", "-1"], ["--at", "nan"], ["--at", "inf"]])
def test_search_refuses_bad_numbers_in_one_line(small_store, h264_mp4, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(["search", "--index", str(small_store), "--stream", h264_mp4, "--at", "1", *bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_search_refuses_an_id_past_64_bits(small_store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--index", str(small_store), "--id", str(2**64)])
    assert e.value.code == 2 and "64-bit" in capsys.readouterr().err
