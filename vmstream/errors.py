"""Errors that reach the user as one line, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for (bad input, config, missing checkpoint):
    printed as one clear message, no traceback, exit code 2."""
