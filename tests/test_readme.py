"""The README's commands run as written. Every shell command in its ```bash blocks is
parsed by the real parser it goes to (a `vmstream` command by the CLI's, a
`-m vmstream.training` one by the training entry point's), scripts and benchmarks it
names exist, and the cheap ones run: the first run (with a local checkpoint of random
weights in place of the hub download) and the search commands against its store."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomllib
from starlette.routing import Match

ROOT = Path(__file__).resolve().parents[1]
VMSTREAM = ".venv/bin/vmstream"


def readme_commands() -> list[list[str]]:
    """Each command of the README's bash blocks as argv: continuation lines joined,
    comments dropped, `a && b` split."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1 :]
    return commands


COMMANDS = readme_commands()


def _id(argv: list[str]) -> str:
    return " ".join(argv)[:70]


def test_the_readme_has_commands_written_one_way():
    assert len(COMMANDS) > 20
    bare = [c for c in COMMANDS if c[0] in ("vmstream", "torchrun", "python", "pip", "hf", "pytest")]
    assert not bare, f"commands that need an activated virtualenv: {bare}"


def _serve_routes():
    from vmstream.serve import api, media_routes, system_routes

    return [r for m in (api, media_routes, system_routes) for r in m.router.routes]


@pytest.mark.parametrize("argv", COMMANDS, ids=_id)
def test_each_readme_command_parses(argv):
    prog, args = argv[0], argv[1:]
    if prog == VMSTREAM and args[:1] == ["kafka-topics"]:
        from vmstream.cli.kafka_topics import build_parser as topics_parser

        topics_parser().parse_args(args[1:])
    elif prog == VMSTREAM:
        from vmstream.cli import build_parser

        ns = build_parser().parse_args(args)
        assert ns.command, argv
    elif prog == ".venv/bin/torchrun":
        assert args[args.index("-m") + 1] == "vmstream.training", argv
        from vmstream.training.__main__ import build_parser as training_parser

        training_parser().parse_args(args[args.index("-m") + 2 :])
    elif prog.startswith("scripts/"):
        assert os.access(ROOT / prog, os.X_OK), f"{prog} is not an executable script"
    elif prog == ".venv/bin/python" and args[:2] == ["-m", "pytest"]:
        pass
    elif prog == ".venv/bin/python" and args[:1] == ["-c"]:
        compile(args[1], "README", "exec")
    elif prog == ".venv/bin/python":
        assert (ROOT / args[0]).is_file(), f"{args[0]} does not exist"
    elif prog == "curl":
        path = urlsplit(next(a for a in args if a.startswith("http://"))).path
        assert any(
            r.matches({"type": "http", "path": path, "method": "POST" if "-F" in args else "GET"})[0] == Match.FULL
            for r in _serve_routes()
        ), f"{argv}: vmstream serve has no such endpoint"
    elif prog == ".venv/bin/pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        wanted = re.fullmatch(r"\.\[(.*)\]", args[-1])
        assert args[:2] == ["install", "-e"] and wanted, argv
        assert set(wanted.group(1).split(",")) <= set(extras), f"{argv}: no such extra"
    else:
        pytest.fail(f"a README command of a kind this test does not know: {argv}")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The README's first command, run in a fresh directory as written, except the model:
    a local checkpoint of random weights instead of the hub download."""
    if not shutil.which("ffmpeg"):
        pytest.skip("needs the ffmpeg CLI")
    import torch

    from tests.fixtures.media import make_video
    from vmstream.models import VideoMamba

    cwd = tmp_path_factory.mktemp("readme")
    make_video(str(cwd / "my_video.mp4"), fps=10, seconds=70, size=(160, 120), gop=20, crf=35)
    shutil.copy(cwd / "my_video.mp4", cwd / "query.mp4")
    torch.manual_seed(0)
    torch.save(
        {
            "model": VideoMamba(
                patch_size=16, num_classes=10, img_size=64, depth=2, embed_dim=64, num_frames=4
            ).state_dict()
        },
        cwd / "tiny.pth",
    )
    first = next(c for c in COMMANDS if c[:2] == [VMSTREAM, "run"])
    at = first.index("--model")
    argv = first[:at] + ["--checkpoint", "tiny.pth"] + first[at + 2 :]
    r = _vmstream(argv, cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd


def _vmstream(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert argv[0] == VMSTREAM
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "vmstream.cli", *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_first_run_writes_what_the_readme_says(first_run):
    out = first_run / "runs" / "demo"
    for part in ("segments", "events", "summaries", "index", "state", "run.json"):
        assert (out / part).exists(), part
    assert list(out.glob("plots/timeline*.png"))


@pytest.mark.parametrize(
    "argv", [c for c in COMMANDS if c[:4] == [VMSTREAM, "search", "--index", "runs/demo"]], ids=_id
)
def test_the_readme_search_commands_run_on_the_first_runs_store(first_run, argv):
    import pandas as pd

    if "--id" in argv:  # the README's id is an example: take one of this store's
        uid = str(pd.read_parquet(first_run / "runs" / "demo" / "segments").uid.iloc[3])
        argv = [uid if a == "123456789" else a for a in argv]
    r = _vmstream(argv, first_run)
    assert r.returncode == 0, r.stderr[-3000:]
    hits = [ln for ln in r.stdout.splitlines() if re.match(r"\s*\d+\. ", ln)]
    assert hits and "my_video.mp4" in hits[0], r.stdout
