"""Serve fixtures: a video-text store built by `vmstream run` from real encoded videos
(an H.264 MP4, which clips stream-copy, and a VP9 WebM, which clips transcode), and
`vmstream serve` started as a person starts it, on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.fixtures.media import make_video
from tests.fixtures.videotext import TINY_VOCAB, make_tiny_videotext
from vmstream.cli import main

REPO = Path(__file__).resolve().parents[2]
VOCAB = [*TINY_VOCAB, "bike", "riding"]
LABELS = "a dog,cooking,a person,riding a bike"


def run_store(files: Path, out: Path, *sources: str, sets: tuple = ()) -> None:
    code = main(
        [
            "run",
            *sources,
            "--checkpoint",
            str(files / "vt.pth"),
            "--out",
            str(out),
            "--fps",
            "4",
            "--set",
            "decode.img_size=32",
            "--no-progress",
            "--set",
            "output.console=false",
            "--vocab",
            str(files / "vocab.txt"),
            "--labels",
            LABELS,
            *(a for s in sets for a in ("--set", s)),
        ]
    )
    assert code == 0


@pytest.fixture(scope="session")
def serve_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    torch.save({"model": make_tiny_videotext(seed=3).state_dict()}, d / "vt.pth")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    make_video(str(d / "park.mp4"), seconds=8, size=(320, 240), gop=25)
    make_video(str(d / "kitchen.webm"), codec="vp9", seconds=6, size=(320, 240))
    make_video(str(d / "later.mp4"), seconds=4, size=(160, 120), gop=25, noise=20)
    make_video(str(d / "query.mp4"), seconds=2, size=(160, 120))
    return d


@pytest.fixture(scope="session")
def serve_store(serve_files):
    out = serve_files / "out"
    run_store(serve_files, out, str(serve_files / "park.mp4"), str(serve_files / "kitchen.webm"))
    return out


@pytest.fixture(scope="session")
def gone_store(serve_files, tmp_path_factory):
    """A store whose source is gone after the run (as a live feed's: nothing to cut)."""
    d = tmp_path_factory.mktemp("gone")
    src = d / "feed.mp4"
    shutil.copy(serve_files / "later.mp4", src)
    run_store(serve_files, d / "out", str(src))
    src.unlink()
    return d / "out"


def copy_store(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.lock", "LOCK"))
    return dest


class Server:
    """`vmstream serve` in a subprocess; `url` once it printed where it listens."""

    def __init__(self, index: Path, *args: str, files: Path, timeout: float = 90):
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        if "--cache-dir" not in args:  # clips under the test's tmp dir, not the system's
            args = (*args, "--cache-dir", str(files / f"clips-{time.monotonic_ns()}"))
        self.log = open(files / f"serve-{os.getpid()}-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmstream.cli",
                "serve",
                "--index",
                str(index),
                "--port",
                "0",
                "--vocab",
                str(files / "vocab.txt"),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=str(files),
        )
        deadline = time.monotonic() + timeout
        self.url = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.log.flush()
            self.log.seek(0)
            said = self.log.read()[-3000:]
            self.stop()
            raise RuntimeError(f"vmstream serve did not start: {said}")
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def get(self, path: str, **kw):
        return self.client.get(path, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "client", None):
            self.client.close()
        self.log.close()


@pytest.fixture(scope="session")
def server(serve_store, serve_files):
    s = Server(serve_store, "--max-upload-mb", "1", "--cache-dir", str(serve_files / "clips"), files=serve_files)
    yield s
    s.stop()


def wait_for(fn, timeout: float = 60, every: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s (last: {last!r})")
