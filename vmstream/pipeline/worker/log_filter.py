"""The log filter `vmstream worker` installs: kafka-python repeats each outage line many times a second."""
from __future__ import annotations

import logging
import time


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
