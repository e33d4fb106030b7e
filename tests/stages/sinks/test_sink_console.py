"""Console timeline: per-segment lines for a few streams, collapsed runs for many,
gaps and errors always shown, the summary table at the end."""

from __future__ import annotations

import io
import os
import re
import time

import pytest

from tests.fixtures.sinks import make_event, make_result, make_summary
from vmstream.records import StreamEvent, StreamSummary
from vmstream.stages.sinks.console import ConsoleSink, fmt_time, format_summary_table


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_per_segment_lines_show_stream_time_label_and_score():
    out = io.StringIO()
    sink = ConsoleSink(out, color=False)
    results = [make_result("cam0", i) for i in range(6)]
    for r in results:
        sink.write(r)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    for line, r in zip(lines, results):
        assert line.startswith("cam0")
        assert f"{fmt_time(r.t_start)}-{fmt_time(r.t_end)}" in line
        assert re.search(rf"{r.labels[0]}\s+{r.scores[0]:.2f}", line)
        assert f"{r.labels[1]} {r.scores[1]:.2f}" in line  # the runner-up, smaller
    assert "00:00:40-00:00:48" in lines[5]


def test_gaps_and_errors_are_always_shown():
    out = io.StringIO()
    clock = FakeClock()
    sink = ConsoleSink(out, color=False, per_segment_streams=1, max_lines_per_s=1, clock=clock)
    r = make_result("cam0", 3)
    r.gaps = [(20.0, 23.5)]
    sink.write(r)
    sink.write(make_event("cam0", "gap", 30.0, 42.0, "reconnected"))
    sink.write(StreamEvent("bad.mp4", "error", t_start=12.0, message="invalid data found", uri="file:///in/bad.mp4"))
    text = out.getvalue()
    assert "GAP 00:00:20-00:00:23 (3.5 s)" in text
    assert "GAP 00:00:30-00:00:42 (12.0 s)  reconnected" in text
    assert re.search(r"bad\.mp4\s+ERROR at 00:00:12\s+invalid data found\s+\(file:///in/bad\.mp4\)", text)


def test_many_streams_collapse_to_label_runs_and_stay_readable():
    out = io.StringIO()
    sink = ConsoleSink(out, color=False, per_segment_streams=4, max_lines_per_s=1000)
    n_streams, n_seg = 12, 30  # labels change every 5 segments
    for i in range(n_seg):
        for s in range(n_streams):
            sink.write(make_result(f"cam{s:02d}", i, label_shift=s))
    for s in range(n_streams):
        sink.write(make_summary(f"cam{s:02d}", n_seg))
    sink.close()
    text = out.getvalue()
    timeline = [l for l in text.splitlines() if l.startswith("cam") and " x" in l]
    assert len(timeline) < n_streams * n_seg / 3  # far fewer lines than segments
    # The runs of a stream tile its segments exactly (those before collapsing aside).
    for s in range(n_streams):
        counts = [int(m.group(1)) for l in timeline if l.startswith(f"cam{s:02d}") for m in [re.search(r" x(\d+)", l)]]
        per_segment = [l for l in text.splitlines() if l.startswith(f"cam{s:02d}") and " x" not in l and "-00:" in l]
        assert sum(counts) + len(per_segment) == n_seg
    assert re.search(r"^cam05  00:00:40-00:01:20  reading\s+x5\s+mean 0\.\d\d$", text, re.M)
    assert "12 streams, 360 segments" in text


def test_rate_limit_holds_back_lines_and_says_so():
    out = io.StringIO()
    clock = FakeClock()
    sink = ConsoleSink(out, color=False, per_segment_streams=0, max_lines_per_s=5, clock=clock)
    for i in range(20):
        for s in range(50):
            sink.write(make_result(f"s{s}", i, label_shift=i))  # label changes every segment
    clock.t = 1.5
    sink.write(make_result("s0", 99))
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 + 1 + 1  # one window's worth, the note, the next window
    assert re.match(r"… \d+ timeline lines held back", lines[5])
    sink.write(make_event("s1", "error", message="decoder died"))  # errors bypass the limit
    assert "decoder died" in out.getvalue()


def test_summary_table_and_writer_callback():
    got: list[str] = []
    sink = ConsoleSink(writer=got.append, color=False)
    sink.write(make_result("a", 0))
    sink.write(make_summary("a", 1))
    sink.write(make_summary("a", 75, seconds=8.0))  # a resumed run's summary replaces it
    sink.write(StreamEvent("b", "error", message="no video stream"))
    sink.close()
    table = "\n".join(got[got.index("") + 1 :])
    assert table.splitlines()[0].split() == [
        "stream",
        "status",
        "duration",
        "segments",
        "answer",
        "(last)",
        "top-3",
        "gaps",
        "errors",
    ]
    assert re.search(r"^a\s+ok\s+00:10:00\s+75\s+cooking 0\.70\s+cooking 0\.70, walking 0\.20", table, re.M)
    assert re.search(r"^b\s+error\s+-\s+0\s", table, re.M)
    assert table.splitlines()[-1] == "2 streams, 75 segments, 1 failed"
    assert format_summary_table([]).splitlines()[-1] == "0 streams, 0 segments"


def test_live_wall_clock_times_print_as_clock_time():
    t = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    old = os.environ.get("TZ")
    try:  # the local clock, in two zones, against values worked out by hand
        # POSIX zone strings: no tz database needed. IST-5:30 is UTC+05:30.
        for tz, want in (("UTC0", "22:13:20"), ("IST-5:30", "03:43:20")):
            os.environ["TZ"] = tz
            time.tzset()
            assert fmt_time(t) == want, tz
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()
    assert fmt_time(3 * 3600 + 62.9) == "03:01:02"
    assert fmt_time(float("nan")) == "--:--:--"


@pytest.mark.parametrize("width", [120, 80, 60])
def test_summary_table_fits_a_width_keeping_names_apart_and_scores_whole(width):
    a = "/home/me/videos/archive/2024/the_first_recording_of_the_afternoon.mp4"
    b = "/home/me/videos/archive/2024/the_second_recording_of_the_afternoon.mp4"
    sums = [
        StreamSummary(
            sid,
            ["riding or walking with a horse", "riding a mechanical bull", "x"],
            [0.71, 0.2, 0.05],
            [1, 2, 3],
            "last",
            600.0,
            75,
        )
        for sid in (a, b)
    ]
    table = format_summary_table(sums, width=width)
    lines = table.splitlines()
    assert max(len(ln) for ln in lines) <= width, table
    rows = lines[2:4]
    assert rows[0].split()[0] != rows[1].split()[0]  # the two streams can be told apart
    assert all(" 0.71" in r for r in rows)  # a shortened label keeps its score
    assert format_summary_table([], width=30).splitlines()[-1] == "0 streams, 0 segments"
