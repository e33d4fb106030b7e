"""The README is the user's manual: every option of every command's parser is in it, and
the config keys that name a choice accept what the code behind them does."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

from vmstream.cli import build_parser
from vmstream.pipeline.config import OutputConfig
from vmstream.store.index import KINDS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_cli_option_is_in_the_readme():
    commands = _commands()
    assert {"run", "search", "store", "eval-retrieval", "info", "worker", "kafka-topics", "train", "eval"} <= set(
        commands
    )
    missing = {}
    for name, parser in commands.items():
        assert re.search(rf"vmstream {re.escape(name)}\b", README), f"command {name!r} is not in the README"
        for action in parser._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help" and not re.search(re.escape(opt) + r"(?![\w-])", README):
                    missing.setdefault(name, []).append(opt)
    assert not missing, f"options not in the README: {missing}"


def test_run_choices_are_spelled_in_the_readme():
    run = _commands()["run"]
    for action in run._actions:
        if action.choices and action.option_strings:
            for choice in action.choices:
                assert f"`{choice}`" in README or f"|{choice}" in README or f"{choice}|" in README, (
                    action.option_strings,
                    choice,
                )


def test_faiss_kind_names_every_index_kind_the_store_builds():
    kinds = typing.get_args(OutputConfig.model_fields["faiss_kind"].annotation)
    assert set(kinds) == {"auto", *KINDS}
    for kind in kinds:
        assert f"`{kind}`" in README, kind
