"""The log filters `vmstream worker` installs: kafka-python repeats each outage line many
times a second; a job's URL may carry a password."""

from __future__ import annotations

import logging
import time

from vmstream.redaction import redact_text


class RepeatFilter(logging.Filter):
    """Lets one record of each kind (logger, level, message template) from kafka-python
    through per `every_s` seconds. kafka-python logs every failed connection attempt
    at ERROR, so a broker outage would bury the worker's own log lines under hundreds
    of lines a second; our producer reports the outage itself (every 10 s)."""

    def __init__(self, every_s: float = 30.0, prefix: str = "kafka"):
        super().__init__()
        self.every_s = every_s
        self.prefix = prefix
        self._last: dict = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self.suppressed += 1
            return False
        self._last[key] = now
        return True


class RedactFilter(logging.Filter):
    """Takes user:password out of every URL in a log line (a job's, FFmpeg's error
    messages quoting it, a traceback's): the log is read by more people than the jobs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True
