"""Timeline plots: PNG (matplotlib, lazily imported) and self-contained HTML."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.sinks import make_result, make_summary
from vmstream.records import SegmentResult, StreamEvent
from vmstream.stages.sinks.parquet import ParquetSink
from vmstream.stages.sinks.plot import PlotSink, _Seg, choose_tracks, plot_timeline

REPO = Path(__file__).resolve().parents[3]
LABELS = [f"action {i}" for i in range(16)]


def an_hour(stream="cam0", n=450, seconds=8.0, seed=0) -> list:
    """An hour of 8 s segments whose labels drift through scenes."""
    rng = np.random.default_rng(seed)
    scene, out = 0, []
    for i in range(n):
        if rng.random() < 0.05:
            scene = int(rng.integers(0, len(LABELS)))
        logits = rng.normal(0, 1, len(LABELS))
        logits[scene] += 3
        p = np.exp(logits) / np.exp(logits).sum()
        top = np.argsort(-p)[:3]
        r = SegmentResult(
            stream,
            i,
            i * seconds,
            (i + 1) * seconds,
            [LABELS[j] for j in top],
            [float(p[j]) for j in top],
            [int(j) for j in top],
            np.zeros(4, np.float32),
        )
        if i == 100:
            r.gaps = [(i * seconds - 30.0, i * seconds)]
        out.append(r)
    out.append(StreamEvent(stream, "error", t_start=2000.0, message="corrupt packet"))
    return out


def test_tracks_are_labels_by_score_mass():
    segs = [_Seg(0, 1, ("a", "b", "c"), (0.5, 0.3, 0.2)), _Seg(1, 2, ("b", "d", "a"), (0.9, 0.05, 0.05))]
    assert choose_tracks(segs, top_k=3, max_tracks=10) == ["b", "a", "c", "d"]
    assert choose_tracks(segs, top_k=1, max_tracks=10) == ["b", "a"]
    assert choose_tracks(segs, top_k=3, max_tracks=2) == ["b", "a"]


def test_png_of_an_hour(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    results = an_hour() + [make_summary("cam0", 450)]
    (path,) = plot_timeline(results, tmp_path / "timeline.png", max_tracks=10)
    img = imread(path)
    assert img.shape[1] == 1540 and 400 < img.shape[0] < 900  # 14 in at 110 dpi
    # Label colours actually drawn, at score opacity over white: the heaviest track's
    # tab10 blue (many bars), the error line's red.
    rgb = (img[..., :3] * 255).reshape(-1, 3)

    def tinted(color) -> int:
        d, target = 255 - rgb, 255 - np.asarray(color, float)
        cos = d @ target / (np.linalg.norm(d, axis=1) * np.linalg.norm(target) + 1e-9)
        return int(((cos > 0.995) & (np.linalg.norm(d, axis=1) > 0.2 * np.linalg.norm(target))).sum())

    assert tinted([31, 119, 180]) > 5000
    assert tinted([214, 39, 40]) > 300
    assert tinted([255, 0, 255]) < 50  # magenta is in no palette entry


def test_html_is_self_contained_with_a_bar_per_label_and_tooltips(tmp_path):
    results = an_hour(n=120)
    (path,) = plot_timeline(results, tmp_path / "t.html", top_k=3, max_tracks=40)
    doc = path.read_text()
    assert (
        doc.startswith("<!doctype html>")
        and "<script" not in doc
        and "http" not in doc.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    bars = re.findall(
        r'<rect x="[\d.]+" y="\d+" width="[\d.]+" height="\d+" fill="#[0-9a-f]{6}" fill-opacity="([\d.]+)"><title>', doc
    )
    assert len(bars) == 120 * (1 + 3)  # the top strip + each of the top-3 labels
    assert all(0.1 <= float(a) <= 1.0 for a in bars)
    assert "00:02:00–00:02:08" in doc and "gap 00:12:50–00:13:20" in doc and "corrupt packet" in doc


def test_one_file_per_stream_and_from_parquet_output(tmp_path):
    with ParquetSink(tmp_path / "out") as sink:
        for s in ("cam/0", "cam 1"):
            for i in range(30):
                sink.write(make_result(s, i))
        sink.write(StreamEvent("broken", "error", message="no video"))  # no segments: no plot
    paths = plot_timeline(tmp_path / "out", tmp_path / "plots" / "timeline.html")
    assert sorted(p.name for p in paths) == ["timeline-cam_0.html", "timeline-cam_1.html"]
    (one,) = plot_timeline(tmp_path / "out", tmp_path / "one.html", stream_id="cam 1")
    assert "cam 1" in one.read_text()
    with pytest.raises(KeyError, match="no results for stream 'nope'"):
        plot_timeline(tmp_path / "out", tmp_path / "x.html", stream_id="nope")
    with pytest.raises(ValueError, match=r"must end in \.png or \.html"):
        plot_timeline(tmp_path / "out", tmp_path / "x.jpg")


def test_plot_sink_draws_on_close(tmp_path):
    sink = PlotSink(tmp_path / "live.html")
    for r in an_hour(n=40):
        sink.write(r)
    assert not (tmp_path / "live.html").exists()
    sink.close()
    assert sink.paths == [tmp_path / "live.html"] and "<svg" in sink.paths[0].read_text()


def test_matplotlib_is_imported_only_for_png():
    code = "import sys, vmstream.stages.sinks.plot, vmstream.stages.sinks.console;print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bars_reach_the_next_segment_across_one_sampling_step():
    """T=4 frames at 2 fps: a segment spans 1.5 s and the next starts 0.5 s (one step)
    after its last frame; that is video the segment covers, not an outage. A real gap
    (here 5 s) stays."""
    from vmstream.stages.sinks.plot import _close_sampling_gaps

    segs = [_Seg(0.0, 1.48, ("a",), (0.9,), 4), _Seg(2.0, 3.48, ("a",), (0.9,), 4), _Seg(8.5, 9.98, ("a",), (0.9,), 4)]
    closed = _close_sampling_gaps(segs)
    assert closed[0].t_end == 2.0 and closed[1].t_end == 3.48


def test_streams_without_labels_are_not_drawn_as_empty_charts(tmp_path):
    """A video-text run without --labels has embeddings only: no empty chart, a reason."""
    import dataclasses

    with ParquetSink(tmp_path / "out") as sink:
        for i in range(10):
            sink.write(dataclasses.replace(make_result("vt", i), labels=[], scores=[], label_ids=[]))
    with pytest.raises(ValueError, match="the segments have no labels .* --labels"):
        plot_timeline(tmp_path / "out", tmp_path / "plots" / "timeline.png")
    assert not (tmp_path / "plots").exists()
