"""The pieces that keep a hostile job record from hurting the worker: the bounds read
before parsing, and the redaction of URL passwords."""

from __future__ import annotations

import logging
import time

import pytest

from vmstream.pipeline.worker.jobs import MAX_JOB_BYTES, json_depth, parse_job
from vmstream.pipeline.worker.log_filter import RedactFilter
from vmstream.redaction import redact_text, redact_uri


def test_depth_counts_brackets_outside_strings_only():
    assert json_depth(b'{"uri": "a.mp4"}') == 1
    assert json_depth(b'{"a": [1, {"b": []}]}') == 4
    assert json_depth(b'{"uri": "[[[[{{{{"}') == 1  # brackets in a string
    assert json_depth(b'{"uri": "x\\"[[[[", "o": {}}') == 2  # an escaped quote does not end it
    assert json_depth(b'["\\\\", [[]]]') == 3  # an escaped backslash does not escape the quote
    assert json_depth(b"[" * 100_000) == 100_000


def test_deep_or_huge_records_are_refused_before_parsing():
    with pytest.raises(ValueError, match="nests 30000 levels"):
        parse_job(b"[" * 30_000 + b"]" * 30_000)
    with pytest.raises(ValueError, match=f"at most {MAX_JOB_BYTES}"):
        parse_job(b'{"uri": "' + b"x" * MAX_JOB_BYTES + b'"}')
    # One linear scan, however hostile: a megabyte of escapes and quotes is quick.
    t0 = time.perf_counter()
    json_depth(b'"\\"' * 400_000)
    assert time.perf_counter() - t0 < 5.0
    assert parse_job(b'{"uri": "/data/a.mp4", "options": {"reconnect": {"initial": 1}}}')["uri"] == "/data/a.mp4"


def test_passwords_are_taken_out_of_urls_and_text():
    assert redact_uri("rtsp://admin:pw@10.0.0.7:554/s?x=a@b") == "rtsp://10.0.0.7:554/s?x=a@b"
    assert redact_uri("http://u:p@ss@host/v.mp4") == "http://host/v.mp4"  # a raw "@" in the password
    assert redact_uri("/data/me@home.mp4") == "/data/me@home.mp4"
    assert (
        redact_text("open 'http://a:b@h/x' failed; retry http://c:d@h/y")
        == "open 'http://h/x' failed; retry http://h/y"
    )


def test_the_worker_log_filter_redacts_messages_and_tracebacks():
    f = RedactFilter()
    rec = logging.LogRecord("w", logging.INFO, __file__, 1, "job %s: stream (%s)", ("j", "http://u:pw@h/v.mp4"), None)
    assert f.filter(rec) and rec.getMessage() == "job j: stream (http://h/v.mp4)"
    try:
        raise OSError("cannot open http://u:pw@h/v.mp4")
    except OSError:
        import sys

        rec = logging.LogRecord("w", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    f.filter(rec)
    assert "pw@" not in logging.Formatter().format(rec) and "http://h/v.mp4" in logging.Formatter().format(rec)
