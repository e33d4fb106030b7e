"""The run control alone: the streams in flight, stopping, the fatal error, progress."""

from __future__ import annotations

import threading

import pytest

from vmstream.pipeline.report import RunReport
from vmstream.pipeline.run_control import RunControl
from vmstream.records import StreamDone
from vmstream.stages.media import Source


def test_a_stream_id_runs_once_at_a_time_and_stop_reaches_every_stream():
    control = RunControl(RunReport())
    a, b = control.add(Source("a", "a.mp4")), control.add(Source("b", "b.mp4"))
    with pytest.raises(ValueError, match="stream 'a' is already running"):
        control.add(Source("a", "other.mp4"))
    b.stop.set()  # one stream cancelled
    assert [control.stopping(s) for s in ("a", "b", "unknown")] == [False, True, False]
    assert not control.stopped
    control.stop()
    assert control.stopped and a.stop.is_set() and control.stopping("a")
    assert control.running() == ["a", "b"]  # stopping is not done: their ends are still to come
    control.stream_done(StreamDone("a", "stopped"))
    assert control.running() == ["b"] and control.job("a") is None
    control.add(Source("a", "a.mp4"))  # done, its id is free again


def test_waiting_ends_when_every_stream_is_done_or_the_run_failed():
    control = RunControl(RunReport())
    assert control.wait_idle(timeout=0)  # nothing added
    control.add(Source("a", "a.mp4"))
    assert not control.wait_idle(timeout=0.05)
    threading.Timer(0.05, control.stream_done, [StreamDone("a", "ok")]).start()
    assert control.wait_idle(timeout=30)

    control.add(Source("b", "b.mp4"))
    first, second = RuntimeError("first"), RuntimeError("second")
    threading.Timer(0.05, control.fail, [first]).start()
    assert control.wait_idle(timeout=30)
    control.fail(second)
    assert control.fatal is first and control.stopped


def test_a_failing_progress_display_is_switched_off_and_the_run_goes_on(caplog):
    seen = []

    def progress(item):
        seen.append(item)
        raise OSError("the terminal went away")

    control = RunControl(RunReport(), progress)
    control.notify(("stream", "a", None))
    control.notify(("done", "a", "ok"))
    assert seen == [("stream", "a", None)]
    assert control.fatal is None
    assert "progress reporting switched off after an error: OSError: the terminal went away" in caplog.text
