"""What a person sees of the logs: vmstream's notices as plain lines, library chatter
(kafka-python logs every failed connection attempt) only with -v."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_LOGS = """
import logging, sys
from vmstream.cli.common import setup_logging
setup_logging(int(sys.argv[1]), sys.argv[2])
logging.getLogger("kafka.conn").error("Connect attempt to <BrokerConnection host=127.0.0.1:1> returned error 111")
logging.getLogger("vmstream.models.ops").info("scan backend: cpu")
logging.getLogger("vmstream.pipeline").warning("something to look at")
"""


@pytest.mark.parametrize("verbose,command", [(0, "run"), (1, "run"), (0, "search")])
def test_what_a_person_sees_of_the_logs(verbose, command):
    """By default: our notices as plain lines, warnings marked, no kafka-python chatter;
    -v: every line with its time and logger; above search results: warnings only."""
    r = subprocess.run(
        [sys.executable, "-c", _LOGS, str(verbose), command], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    lines = r.stderr.strip().splitlines()
    if verbose:
        assert len(lines) == 3 and all(" kafka.conn: " in ln or " vmstream." in ln for ln in lines), lines
    elif command == "run":
        assert lines == ["scan backend: cpu", "warning: something to look at"]
    else:
        assert lines == ["warning: something to look at"]
