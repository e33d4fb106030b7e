"""What the commands share: common options, logging, and turning options into a config."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from vmstream.errors import UserError

SET_HELP = (
    "override any config key, e.g. --set decode.fps=2 (repeatable; the value is YAML: "
    "2, true, [1, 2]; an empty value, key=, sets null)"
)


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")


def add_common(p: argparse.ArgumentParser) -> None:
    add_verbose(p)
    add_set(p)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--model",
        help="registry name of an official checkpoint, e.g. videomamba_t16_k400_f16_res224 "
        "(downloaded from the Hugging Face hub into its cache)",
    )
    g.add_argument("--checkpoint", help="a local checkpoint file (.pth); the architecture is read from it")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)")


def setup_logging(verbosity: int, command: str | None = None) -> None:
    """By default a person reads our notices as plain lines (no timestamps or module
    names), warnings and errors marked as such, and no library chatter: kafka-python logs
    every failed connection attempt, and our own line says what is wrong. `-v` shows
    everything with timestamps, as does the worker, a service whose logs are kept."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    plain = verbosity <= 0 and command != "worker"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _PlainFormatter() if plain else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])
    # Our own one-line notices (backend choice, resampling) are worth seeing by default,
    # except above search results, where they are noise.
    notices = logging.INFO if command != "search" else logging.WARNING
    logging.getLogger("vmstream").setLevel(min(level, notices))
    if plain:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


# Command-line options and the config keys they set (a checkpoint wins over a name).
_OPTION_KEYS = {
    "checkpoint": "model.checkpoint",
    "model": "model.name",
    "device": "model.device",
    "precision": "model.precision",
    "out": "output.dir",
    "kafka": "kafka.bootstrap",
    "fps": "decode.fps",
    "sampling": "decode.sampling",
    "decoder": "decode.backend",
    "audio": "decode.audio",
    "segment_frames": "segment.frames",
    "summary": "model.summary",
    "top_k": "model.top_k",
    "max_streams": "runner.max_streams",
    "plot": "output.plot",
    "labels": "model.labels",
    "label_template": "model.label_template",
    "vocab": "model.vocab",
}


def config_from_args(args):
    """The validated pipeline config: --config, then the options, then --set."""
    from vmstream.pipeline.config import ConfigError, load_config

    over: dict[str, Any] = {}
    for option, key in _OPTION_KEYS.items():
        value = getattr(args, option, None)
        if value is not None:
            _put(over, key, value)
    if getattr(args, "no_progress", False):
        _put(over, "runner.progress", False)
    try:
        return load_config(getattr(args, "config", None), overrides=over, sets=getattr(args, "sets", []))
    except ConfigError as e:
        raise UserError(str(e)) from None


def _put(tree: dict, path: str, value) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def make_output_dirs(cfg) -> None:
    """Create the run's output and snapshot directories up front, so a path that cannot
    be one (a file, /dev/null, a read-only or virtual file system) is one line naming
    its key, before the model loads, not a traceback from a sink."""
    import os

    dirs = [("output.dir", cfg.output.dir)]
    dirs.append(
        ("runner.state_dir", cfg.runner.state_dir)
        if cfg.runner.state_dir
        else ("output.dir", os.path.join(cfg.output.dir, "state"))
    )
    for key, path in dirs:
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{key}: {path!r} exists and is not a directory")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UserError(f"{key}: cannot create the directory {path!r}: {e.strerror or e}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{key}: the directory {path!r} is not writable")
