"""Checkpoint download without a network: the hub is found unreachable once, within a
couple of seconds, and the user gets one message saying which file to fetch and where to
put it, without huggingface_hub's retry warnings (six, each printed twice, over ~23 s)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vmstream.models import hub
from vmstream.models.hub import CHECKPOINT_DIR_ENV, CheckpointNotFound, resolve_checkpoint

NAME = "videomamba_t16_k400_f16_res224"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: nothing listens there


@pytest.fixture
def no_checkpoint_env(monkeypatch):
    for var in (
        CHECKPOINT_DIR_ENV,
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)


def _fake_hf_cache(root: Path, filename: str) -> Path:
    """The layout huggingface_hub reads offline: refs/main names a snapshot holding the file."""
    repo = root / "models--OpenGVLab--VideoMamba"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    path = repo / "snapshots" / commit / filename
    path.write_bytes(b"weights")
    return path


def _resolve_in_a_fresh_process(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """The loader as `vmstream run --model NAME` calls it: logging configured like the CLI,
    a fresh HF cache (HF_HOME is read when huggingface_hub is imported)."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')\n"
        "logging.getLogger('vmstream').setLevel(logging.INFO)\n"
        "from vmstream.models.hub import resolve_checkpoint\n"
        "try:\n"
        f"    resolve_checkpoint({NAME!r})\n"
        "except Exception as e:\n"
        "    print(f'FAILED: {e}', file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in (CHECKPOINT_DIR_ENV, "HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env = {**clean, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO), **env}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return r, time.monotonic() - t0


def _one_clear_message(stderr: str) -> None:
    assert stderr.count("could not be downloaded") == 1, stderr
    assert "Retry" not in stderr and "thrown while requesting" not in stderr, stderr
    assert "WARNING" not in stderr, stderr
    assert f"--checkpoint /path/to/{NAME}.pth" in stderr and CHECKPOINT_DIR_ENV in stderr, stderr


def test_no_route_to_the_hub_fails_fast_with_one_message(tmp_path):
    if hub.hub_unreachable("https://huggingface.co") is None:
        pytest.skip("this machine reaches huggingface.co: the download would really start")
    r, _ = _resolve_in_a_fresh_process(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    _one_clear_message(r.stderr)
    assert "https://huggingface.co is unreachable" in r.stderr, r.stderr
    assert str(tmp_path / "hf" / "hub") in r.stderr, r.stderr  # the cache it looked in


def test_a_closed_endpoint_fails_fast_in_a_fresh_process(tmp_path, closed_port):
    r, _ = _resolve_in_a_fresh_process(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port}")
    assert r.returncode == 1, r.stdout + r.stderr
    _one_clear_message(r.stderr)
    assert f"127.0.0.1:{closed_port}" in r.stderr and "Connection refused" in r.stderr, r.stderr


def test_a_closed_endpoint_fails_fast_without_retry_warnings(
    tmp_path, monkeypatch, capfd, caplog, closed_port, no_checkpoint_env
):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    downloads = _count_downloads(monkeypatch)
    with caplog.at_level(logging.DEBUG), pytest.raises(CheckpointNotFound) as err:
        resolve_checkpoint(NAME, cache_dir=tmp_path / "hub")
    assert downloads == [], "an unreachable hub is noticed once, by the probe: no download is tried"
    msg = str(err.value)
    assert f"the hub at http://127.0.0.1:{closed_port} is unreachable" in msg, msg
    assert f"--checkpoint /path/to/{NAME}.pth" in msg and CHECKPOINT_DIR_ENV in msg
    noisy = [
        r
        for r in caplog.records
        if r.name.startswith(("huggingface_hub", "urllib3", "httpx")) and r.levelno >= logging.WARNING
    ]
    assert not noisy, [r.getMessage() for r in noisy]
    assert "Retry" not in capfd.readouterr().err


def test_an_unreachable_hub_still_serves_the_cache(tmp_path, monkeypatch, closed_port, no_checkpoint_env):
    cached = _fake_hf_cache(tmp_path / "hub", f"{NAME}.pth")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    downloads = _count_downloads(monkeypatch)
    assert resolve_checkpoint(NAME, cache_dir=tmp_path / "hub") == cached
    assert downloads == []


def test_offline_mode_skips_the_probe(tmp_path, monkeypatch, closed_port, no_checkpoint_env):
    probes = []
    real = hub.hub_unreachable
    monkeypatch.setattr(hub, "hub_unreachable", lambda *a, **k: probes.append(a) or real(*a, **k))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFound, match="offline mode, and it is not in the Hugging Face cache"):
        resolve_checkpoint(NAME, cache_dir=tmp_path / "hub")
    cached = _fake_hf_cache(tmp_path / "hub", f"{NAME}.pth")
    assert resolve_checkpoint(NAME, cache_dir=tmp_path / "hub") == cached
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_checkpoint(NAME, cache_dir=tmp_path / "hub", local_files_only=True) == cached
    assert probes == []


def _count_downloads(monkeypatch) -> list:
    """The hf_hub_download calls that may go to the network, made from here on (they
    still run; a cache lookup, local_files_only=True, is not counted)."""
    import huggingface_hub

    calls: list = []
    real = huggingface_hub.hf_hub_download

    def counted(*a, **k):
        if not k.get("local_files_only"):
            calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counted)
    return calls


class _NotFound(BaseHTTPRequestHandler):
    requests: list = []  # (method, path) of every request the test hub answered

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        _NotFound.requests.append((self.command, self.path))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_without_the_file():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_reachable_hub_is_asked_and_its_answer_reported_once(
    tmp_path, monkeypatch, caplog, hub_without_the_file, no_checkpoint_env
):
    assert hub.hub_unreachable(hub_without_the_file) is None
    monkeypatch.setenv("HF_ENDPOINT", hub_without_the_file)
    _NotFound.requests.clear()
    with caplog.at_level(logging.DEBUG), pytest.raises(CheckpointNotFound) as err:
        resolve_checkpoint(NAME, cache_dir=tmp_path / "hub")
    assert 1 <= len(_NotFound.requests) <= 2, _NotFound.requests  # a 404 is an answer, not a retry
    msg = str(err.value)
    assert "unreachable" not in msg and "could not be downloaded" in msg
    assert "404 Not Found" in msg.splitlines()[0] and "check your connection" not in msg, msg
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub") and r.levelno >= logging.WARNING]


def test_the_probe_goes_through_the_proxy_the_environment_names(
    monkeypatch, closed_port, hub_without_the_file, no_checkpoint_env
):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("no_proxy", raising=False)
    reason = hub.hub_unreachable("http://hub.invalid")
    assert reason is not None and f"127.0.0.1:{closed_port}" in reason and "refused" in reason
    monkeypatch.setenv("HTTP_PROXY", hub_without_the_file)
    assert hub.hub_unreachable("http://hub.invalid") is None  # the proxy answers for it
    assert "not a URL" in hub.hub_unreachable("huggingface.co")
