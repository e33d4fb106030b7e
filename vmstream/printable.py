"""Text that came from a user or a file, made safe to echo on a terminal: control
characters (an ANSI escape sequence in a query or a file name would recolour, move or
clear the user's terminal) are shown as `\\xNN` escapes instead of being sent raw."""

from __future__ import annotations

import re

__all__ = ["printable"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every C0/C1 control character (and DEL) as a visible `\\xNN` escape;
    `keep_newlines` leaves line breaks a message means to have."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
