"""One way to read a configuration, for pipeline presets and training recipes alike.

A configuration is built in layers, each a nested dict, later layers winning key by key
(`deep_merge`): a YAML file (`read_yaml`; `read_layered` also follows a `base:` chain),
then whatever the caller adds, then `KEY=VALUE` overrides (`parse_overrides`). The
result is validated by a pydantic model (`validate`), so an unknown key or a bad value
is one `ConfigError` line that names the key path and what is wrong.

Override syntax, the same for `vmstream run --set` and `vmstream train`:

    a.b.c=VALUE   VALUE is read as one YAML value: 3, 0.5, true, [0.9, 0.95], {k: v}, text
    a.b.c=        empty: null, as `c:` with nothing after it is in a YAML file (the
                  field's "not set"; a field that cannot be unset says so)
    a.b.c=""      the empty string

A VALUE that is not valid YAML (an unclosed bracket, a leading `@`) is an error naming
the key, never silently kept as text: quote it (a.b.c='[x') to mean the text.

YAML is read with bounds, since a config may come from someone else (a worker's job
template, a shared preset): aliases (`*name`) are refused, because a few lines of
nested aliases expand to gigabytes ("billion laughs") and no config here needs them;
nesting is at most MAX_DEPTH levels (deeper would exhaust the parser's recursion);
a key given twice in one mapping is an error (YAML's "last wins" hides typos); and a
file is at most MAX_FILE_BYTES.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "ConfigError",
    "OVERRIDE_HELP",
    "read_yaml",
    "read_layered",
    "deep_merge",
    "parse_override",
    "parse_overrides",
    "validate",
    "load_yaml_text",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
]

M = TypeVar("M", bound=BaseModel)

# Far above any real config (the deepest key path here is 3 levels; a recipe's lists 2 more).
MAX_DEPTH = 64
# Presets and recipes are a few KiB.
MAX_FILE_BYTES = 1 << 20
PathLike = Union[str, os.PathLike]

# For the CLIs' help text, so both say the same.
OVERRIDE_HELP = (
    "KEY=VALUE overrides a config key (dots for nested keys: a.b=3); the value is read as YAML "
    '(lists as [1, 2]); KEY= sets it to null, KEY="" to the empty string'
)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file or key and the problem."""


def read_yaml(path: PathLike, what: str = "config file") -> dict:
    """The mapping at the top of a YAML file (empty file: {})."""
    p = Path(path)
    if not p.is_file():
        # A device or FIFO (/dev/zero, a pipe) would be read without end.
        raise ConfigError(f"{what} {str(p)!r} " + ("is not a regular file" if p.exists() else "does not exist"))
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {str(p)!r} is {size} bytes; a config may be at most {MAX_FILE_BYTES} bytes")
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read(MAX_FILE_BYTES + 1)  # a file that grew since stat() is still bounded
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {e}") from None
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {str(p)!r}: a config may be at most {MAX_FILE_BYTES} bytes")
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {_one_line(e)}") from None
    except _Refused as e:
        raise ConfigError(f"{what} {str(p)!r}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(p)!r}: top level must be a mapping, got {type(data).__name__}")
    return data


def read_layered(path: PathLike, what: str = "config file", base_key: str = "base") -> dict:
    """`read_yaml`, with a `base:` file (relative to this one) read first and overridden
    by this file's keys, recursively; a chain that loops is an error."""
    chain: list[str] = []
    data: dict = {}
    p = os.path.abspath(path)
    while True:
        if p in chain:
            raise ConfigError(f"{what} {chain[0]!r}: its {base_key!r} chain loops back to {p!r}")
        chain.append(p)
        layer = read_yaml(p, what)
        base = layer.pop(base_key, None)
        data = deep_merge(layer, data)
        if not base:
            return data
        if not isinstance(base, str):
            raise ConfigError(f"{what} {p!r}: {base_key} must be a file name, got {base!r}")
        p = os.path.abspath(os.path.join(os.path.dirname(p), base))


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """`base` with `over`'s keys on top: mappings merge key by key, anything else
    (lists included) replaces. Neither input is modified."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict:
    """`a.b.c=VALUE` -> {"a": {"b": {"c": VALUE}}} (see the module doc for VALUE)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE (e.g. a.b=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or not all(p.strip() for p in parts):
        raise ConfigError(f"override {text!r}: the key {key!r} has an empty part")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"override {key[:60]}...: {len(parts)} levels of keys, at most {MAX_DEPTH}")
    if raw.strip() == "":
        value: Any = None
    else:
        try:
            value = load_yaml_text(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {key}: value {raw!r} is not valid YAML ({_one_line(e)}); "
                f"quote it to mean the text: {key}='{raw}'"
            ) from None
        except _Refused as e:
            raise ConfigError(f"override {key}: {e}") from None
    for p in reversed(parts):
        value = {p.strip(): value}
    return value


def parse_overrides(items: Optional[Iterable[str]]) -> dict:
    """Several `KEY=VALUE` strings as one nested dict; a later one wins over an earlier."""
    if isinstance(items, str):  # one string is not a list of one-character overrides
        items = [items]
    out: dict = {}
    for item in items or ():
        out = deep_merge(out, parse_override(item))
    return out


def validate(model: type[M], data: Mapping, origin: str, what: str = "configuration") -> M:
    """`model` validated from `data`; a failure is one ConfigError line listing each bad
    key path (`decode.fps: Input should be greater than 0`, `lrr: unknown key`)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid {what} ({origin}): " + "; ".join(_errors(e))) from None


class _Refused(ConfigError):
    """YAML that parses but is refused (an alias, too deep, a repeated key)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader without aliases, with bounded nesting and no repeated keys."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                f"YAML aliases (*{event.anchor}) are not allowed in a config{_at(event.start_mark)}; "
                "write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep{_at(self.peek_event().start_mark)}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` (explicit keys override it)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not key_node.start_mark:
                raise _Refused(
                    f"key {key!r} is given twice in one mapping{_at(key_node.start_mark)} (first{_at(first)})"
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """One YAML document read with `_BoundedLoader`'s limits."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _at(mark) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _errors(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}")
    return out


def _one_line(err: yaml.YAMLError) -> str:
    """A YAML error's problem and position, without the multi-line snippet."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem:
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{problem}{where}"
    return " ".join(str(err).split())
