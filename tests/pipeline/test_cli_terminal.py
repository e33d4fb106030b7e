"""The CLI's main journeys as a person runs them: in a pseudo-terminal with a real size
(120x40 and 80x24), the progress bar on. A run in a terminal once crashed on its own
progress bar and hung on a directory; none of the in-process tests could see it, since
the bar only draws when stderr is a terminal with a size."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.fixtures.media import make_video
from tests.fixtures.terminal import run_in_terminal
from vmstream.models import VideoMamba

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs the ffmpeg CLI")

VMSTREAM = [sys.executable, "-m", "vmstream.cli"]
SIZES = [(120, 40), (80, 24)]


def _checkpoint(tmp_path_factory, name: str, **arch) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("term-ckpt") / name
    torch.save({"model": VideoMamba(patch_size=16, num_classes=10, **arch).state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory, "tiny.pth", img_size=64, depth=2, embed_dim=64, num_frames=4)


@pytest.fixture(scope="module")
def slow_ckpt(tmp_path_factory):
    """A model slower than decoding, so decoded segments queue up ahead of it."""
    return _checkpoint(tmp_path_factory, "slow.pth", img_size=224, depth=6, embed_dim=192, num_frames=8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("term-videos")
    one = make_video(str(d / "clip.mp4"), fps=10, seconds=6, size=(160, 120), gop=10)
    folder = d / "folder"
    folder.mkdir()
    shutil.copy(one, folder / "first.mp4")
    make_video(str(folder / "second.mp4"), fps=10, seconds=4, size=(160, 120), gop=10)
    (folder / "broken.mp4").write_bytes(open(one, "rb").read()[:3000])
    long = make_video(str(d / "long.mp4"), fps=10, seconds=90, size=(160, 120), gop=20, crf=35)
    return {"one": one, "folder": str(folder), "long": long}


def _timeline(text: str, name: str) -> list[str]:
    return [ln for ln in text.splitlines() if name in ln and re.search(r"\d\d:\d\d:\d\d-\d\d:\d\d:\d\d", ln)]


def _shows_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    assert "NoneType.__format__" not in text


@pytest.mark.parametrize("cols,rows", SIZES)
def test_run_a_file_in_a_terminal(tmp_path, ckpt, videos, cols, rows):
    out = tmp_path / "out"
    r = run_in_terminal(
        [*VMSTREAM, "run", videos["one"], "--checkpoint", ckpt, "--out", str(out), "--fps", "2", "--plot"],
        cols=cols,
        rows=rows,
        timeout=180,
    )
    _shows_no_traceback(r.text)
    assert r.rc == 0, r.text[-3000:]
    assert "video:" in r.raw and "100%" in r.text, "the progress bar was drawn and reached the end"
    assert len(_timeline(r.text, "clip.mp4")) == 3  # 6 s at 2 fps, 4 frames a segment
    seg = pd.read_parquet(out / "segments")
    assert sorted(seg.segment_index) == [0, 1, 2]
    assert list(out.glob("plots/timeline*.png"))


def test_run_a_folder_with_a_broken_file_in_a_terminal(tmp_path, ckpt, videos):
    out = tmp_path / "out"
    r = run_in_terminal(
        [*VMSTREAM, "run", videos["folder"], "--checkpoint", ckpt, "--out", str(out), "--fps", "2"],
        cols=120,
        rows=40,
        timeout=180,
    )
    _shows_no_traceback(r.text)
    assert r.rc == 1, r.text[-3000:]  # one input failed, the others went on
    rows = {
        ln.split()[0].rsplit("/", 1)[-1]: ln.split()[1]
        for ln in r.text.splitlines()
        if ln.split()
        and ln.split()[0].endswith(".mp4")
        and len(ln.split()) > 2
        and ln.split()[1] in ("ok", "error", "stopped", "truncated")
    }
    assert rows == {"broken.mp4": "error", "first.mp4": "ok", "second.mp4": "ok"}, r.text[-3000:]
    # The two good files can be told apart on the timeline at this width.
    assert _timeline(r.text, "first.mp4") and _timeline(r.text, "second.mp4")
    assert set(pd.read_parquet(out / "segments").stream_id.map(os.path.basename)) == {"first.mp4", "second.mp4"}


@pytest.mark.parametrize("cols,rows", SIZES)
def test_every_line_fits_the_terminal_and_the_bar_ends_above_the_table(tmp_path, ckpt, videos, cols, rows):
    """Long paths and long labels: the timeline, the summary table and the run's notices
    fit 80 and 120 columns (a line that wraps makes the table unreadable), and the bar's
    final state is drawn once, above the table."""
    folder = tmp_path / "a_folder_with_quite_a_long_name_for_its_videos"
    folder.mkdir()
    for name in ("the_first_recording_of_the_afternoon.mp4", "the_second_recording_of_the_afternoon.mp4"):
        shutil.copy(videos["one"], folder / name)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"riding or walking with a horse, take {i}\n" for i in range(10)))
    r = run_in_terminal(
        [
            *VMSTREAM,
            "run",
            str(folder),
            "--checkpoint",
            ckpt,
            "--out",
            str(tmp_path / "out"),
            "--fps",
            "2",
            "--labels",
            str(labels),
        ],
        cols=cols,
        rows=rows,
        timeout=180,
    )
    _shows_no_traceback(r.text)
    assert r.rc == 0, r.text[-3000:]
    lines = r.text.splitlines()
    too_long = [ln for ln in lines if len(ln) > cols]
    assert not too_long, "\n".join(too_long)
    assert len(_timeline(r.text, "ernoon.mp4")) == 6
    # The two names, cut to fit, still tell the streams apart.
    assert len({ln.split()[0] for ln in _timeline(r.text, "ernoon.mp4")}) == 2
    header = max(i for i, ln in enumerate(lines) if ln.startswith("stream ") and "status" in ln)
    assert not any("100%" in ln for ln in lines[header:]), "the bar was drawn again after the table"
    assert any("100%" in ln for ln in lines[:header]), "the bar reached the end above the table"


def test_ctrl_c_stops_within_a_segment_and_the_rerun_resumes(tmp_path, slow_ckpt, videos):
    out = tmp_path / "out"
    cmd = [*VMSTREAM, "run", videos["long"], "--checkpoint", slow_ckpt, "--out", str(out), "--fps", "4"]
    r = run_in_terminal(
        cmd, cols=120, rows=40, timeout=300, interrupt_when=lambda text: len(_timeline(text, "long.mp4")) >= 2
    )
    _shows_no_traceback(r.text)
    assert r.interrupted_at is not None, "no segment appeared before the run ended"
    assert r.rc == 130, r.text[-3000:]
    after = r.after_interrupt()
    assert "stopping" in after
    # The model is slower than decoding, so segments were queued when Ctrl-C came; only
    # the one in the model (and one the sinks held) may still print.
    later = _timeline(after.split("stopping", 1)[1], "long.mp4")
    assert len(later) <= 2, later
    table = [
        ln
        for ln in after.splitlines()
        if ln.startswith(("long.mp4", videos["long"][:20])) or ("long.mp4" in ln and " stopped " in ln)
    ]
    assert any(" stopped " in ln for ln in table), after[-2000:]
    state_dir = out / "state"
    assert "run the same command again" in after and str(state_dir) in after
    assert any(state_dir.iterdir()), "a snapshot to resume from"
    done_before = set(pd.read_parquet(out / "segments").segment_index)
    # The same command again finishes the video: every segment exactly once.
    r2 = run_in_terminal(cmd, cols=120, rows=40, timeout=600)
    _shows_no_traceback(r2.text)
    assert r2.rc == 0, r2.text[-3000:]
    seg = pd.read_parquet(out / "segments").sort_values("segment_index")
    n = 90 * 4 // 8
    assert list(seg.segment_index) == list(range(n)), (sorted(done_before), list(seg.segment_index))
    assert seg.t_start.is_monotonic_increasing


def test_a_closed_pipe_loses_no_work(tmp_path, ckpt, videos):
    """`vmstream run ... | head -2`: the timeline's reader goes away; the run finishes."""
    out = tmp_path / "out"
    cmd = " ".join(
        [*VMSTREAM, "run", videos["one"], "--checkpoint", ckpt, "--out", str(out), "--fps", "4", "--no-progress"]
    )
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -1"], capture_output=True, text=True, timeout=180)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "broken pipe" in p.stderr
    seg = pd.read_parquet(out / "segments")
    assert sorted(seg.segment_index) == list(range(6)), "every segment written despite the closed stdout"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_live_stream_in_a_terminal_until_ctrl_c(tmp_path, ckpt):
    port = _free_port()
    # A camera-like feed: ffmpeg serves one client per listen, so it is restarted in a loop
    # (the run probes the feed, then opens it to decode).
    serve = (
        "ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc2=size=160x96:rate=25 -c:v libx264 "
        "-preset ultrafast -tune zerolatency -g 25 -f mpegts "
        f"'tcp://127.0.0.1:{port}?listen=1'"
    )
    server = subprocess.Popen(
        ["bash", "-c", f"for i in $(seq 20); do {serve}; done"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out = tmp_path / "out"
        url = f"tcp://127.0.0.1:{port}"
        r = run_in_terminal(
            [*VMSTREAM, "run", url, "--checkpoint", ckpt, "--out", str(out), "--fps", "4"],
            cols=80,
            rows=24,
            timeout=180,
            interrupt_when=lambda text: len(_timeline(text, "127.0.0.1")) >= 2,
        )
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    _shows_no_traceback(r.text)
    assert r.interrupted_at is not None, r.text[-3000:]
    assert r.rc == 130, r.text[-3000:]
    assert " stopped " in r.after_interrupt()
    assert len(pd.read_parquet(out / "segments")) >= 2
