"""The one config mechanism: YAML layers, deep merge, KEY=VALUE overrides, validation;
and that the pipeline's presets and the training recipes read overrides alike."""

from typing import Optional

import pytest
from pydantic import BaseModel, ConfigDict, Field

from vmstream.config_loader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    ConfigError,
    deep_merge,
    parse_override,
    parse_overrides,
    read_layered,
    read_yaml,
    validate,
)


def test_parse_override_values():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    assert parse_override("lr=2.5e-4") == {"lr": 2.5e-4}
    assert parse_override("flag=true") == {"flag": True}
    assert parse_override("name=videomamba_t16") == {"name": "videomamba_t16"}
    assert parse_override("betas=[0.9, 0.95]") == {"betas": [0.9, 0.95]}
    assert parse_override("client={security_protocol: SSL}") == {"client": {"security_protocol": "SSL"}}
    assert parse_override("path=/a/b=c") == {"path": "/a/b=c"}  # only the first = splits
    assert parse_override(" a.b =1") == {"a": {"b": 1}}


def test_an_empty_value_is_null_and_quotes_give_the_empty_string():
    assert parse_override("model.labels=") == {"model": {"labels": None}}
    assert parse_override("finetune=  ") == {"finetune": None}
    assert parse_override('finetune=""') == {"finetune": ""}
    assert parse_override("finetune=''") == {"finetune": ""}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("novalue", "expected KEY=VALUE"),
        ("=3", "empty part"),
        ("a..b=3", "empty part"),
        ("a.=3", "empty part"),
    ],
)
def test_bad_override_keys(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_override(text)


def test_an_unclosed_bracket_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as e:
        parse_override("opt_betas=[0.9, 0.95")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("override opt_betas: value '[0.9, 0.95' is not valid YAML")
    assert "opt_betas='[0.9, 0.95'" in msg  # how to mean the text


def test_parse_overrides_merges_in_order():
    assert parse_overrides(["a.b=1", "a.c=2", "a.b=3", "d=[1]"]) == {"a": {"b": 3, "c": 2}, "d": [1]}
    assert parse_overrides(["a=1", "a.b=2"]) == {"a": {"b": 2}}
    assert parse_overrides("x=1") == {"x": 1}  # one string is one override
    assert parse_overrides(None) == {} and parse_overrides(()) == {}


def test_deep_merge():
    base = {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2], "k": 0}
    over = {"a": {"c": {"e": 3}}, "l": [9], "k": {"new": 1}}
    merged = deep_merge(base, over)
    assert merged == {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "l": [9], "k": {"new": 1}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2], "k": 0}  # inputs untouched
    assert over == {"a": {"c": {"e": 3}}, "l": [9], "k": {"new": 1}}
    assert deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": None}


def test_read_yaml_and_base_chains(tmp_path):
    (tmp_path / "root.yaml").write_text("lr: 1.0\nnested: {a: 1, b: 2}\nname: root\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nnested: {b: 3}\nname: mid\n")
    (tmp_path / "leaf.yaml").write_text("base: sub/mid.yaml\nname: leaf\n")
    assert read_layered(tmp_path / "leaf.yaml") == {"lr": 1.0, "nested": {"a": 1, "b": 3}, "name": "leaf"}
    assert read_yaml(tmp_path / "leaf.yaml") == {"base": "sub/mid.yaml", "name": "leaf"}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="chain loops back"):
        read_layered(tmp_path / "loop.yaml", "recipe")
    with pytest.raises(ConfigError, match="recipe '.*missing.yaml' does not exist"):
        read_layered(tmp_path / "missing.yaml", "recipe")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: .* at line \d+, column \d+$"):
        read_yaml(tmp_path / "bad.yaml")


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = Field(1.0, gt=0)


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: _Inner = Field(default_factory=_Inner)
    labels: Optional[str] = None


def test_validate_names_every_bad_key_on_one_line():
    assert validate(_Cfg, {"inner": {"rate": 2}}, "x").inner.rate == 2.0
    with pytest.raises(ConfigError) as e:
        validate(_Cfg, {"inner": {"rate": 0, "rte": 1}, "lables": "f"}, "my.yaml + --set")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("invalid configuration (my.yaml + --set): ")
    assert "inner.rate: Input should be greater than 0" in msg
    assert "inner.rte: unknown key" in msg and "lables: unknown key" in msg


def test_pipeline_and_training_read_an_empty_value_alike():
    from vmstream.config_loader import ConfigError
    from vmstream.pipeline.config import load_config
    from vmstream.training.recipes import load_recipe

    assert load_config(sets=["model.labels=x.txt", "model.labels="]).model.labels is None
    assert load_config(sets=["segment.frames="]).segment.frames is None
    # null in a text field whose "not set" is "": that default
    assert load_recipe(None, ["finetune=ckpt.pth", "finetune="]).finetune == ""
    assert load_recipe(None, ['prefix=""']).prefix == ""
    with pytest.raises(ConfigError, match=r"decode.fps: "):
        load_config(sets=["decode.fps="])  # null where a number is needed names the key
    with pytest.raises(ConfigError, match=r"lr: "):
        load_recipe(None, ["lr="])
    for bad in (lambda: load_config(sets=["decode.fps=[1"]), lambda: load_recipe(None, ["opt_betas=[1"])):
        with pytest.raises(ConfigError, match="is not valid YAML"):
            bad()


# ------------------------------------------------------------ bounded YAML reading


def _laughs(levels: int = 6, width: int = 10) -> str:
    """A "billion laughs": each level an alias list of the one before (width**levels leaves)."""
    lines = ["kafka:", "  client:", f"    l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_aliases_are_refused_before_anything_expands(tmp_path):
    import time

    p = tmp_path / "laughs.yaml"
    p.write_text(_laughs(levels=9))  # 10**9 leaves if expanded
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "laughs.yaml" in msg and "aliases (*l0) are not allowed" in msg and "line 4" in msg
    with pytest.raises(ConfigError, match=r"override a: YAML aliases \(\*x\) are not allowed"):
        parse_override("a=[&x 1, *x]")


def test_deep_nesting_is_a_clear_error_not_a_recursion_error(tmp_path):
    flow = tmp_path / "flow.yaml"
    flow.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    block = tmp_path / "block.yaml"
    # Indented, 5000 levels would pass the size bound; 1000 exhaust the recursion as well.
    block.write_text("".join(" " * i + "k:\n" for i in range(1000)) + " " * 1000 + "k: 1\n")
    for p in (flow, block):
        with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels deep at line"):
            read_yaml(p)
    with pytest.raises(ConfigError, match="nested more than"):
        parse_override("a=" + "{b: " * 5000 + "1" + "}" * 5000)
    with pytest.raises(ConfigError, match="levels of keys"):
        parse_override(".".join(["k"] * 5000) + "=1")
    # Real configs are far from the bound.
    assert read_yaml(_write(tmp_path / "ok.yaml", "a: " + "[" * 30 + "1" + "]" * 30)) == {"a": _nest(30)}


def _write(p, text):
    p.write_text(text)
    return p


def _nest(n):
    v = 1
    for _ in range(n):
        v = [v]
    return v


def test_a_key_given_twice_is_an_error_naming_it(tmp_path):
    p = _write(tmp_path / "dup.yaml", "decode:\n  fps: 1\n  sampling: fps\n  fps: 4\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    msg = str(e.value)
    assert "key 'fps' is given twice in one mapping at line 4" in msg and "first at line 2" in msg
    with pytest.raises(ConfigError, match="key 'k' is given twice"):
        parse_override("a={k: 1, k: 2}")
    # A merge key is no repetition (no alias needed for it); the explicit key wins.
    assert parse_override("a={<<: {k: 1, j: 2}, k: 3}") == {"a": {"k": 3, "j": 2}}
    # The same key in different mappings is fine.
    assert read_yaml(_write(tmp_path / "ok.yaml", "a: {k: 1}\nb: {k: 2}\n")) == {"a": {"k": 1}, "b": {"k": 2}}


def test_a_config_file_is_size_bounded(tmp_path):
    with pytest.raises(ConfigError, match="'/dev/zero' is not a regular file"):
        read_yaml("/dev/zero")
    p = tmp_path / "big.yaml"
    p.write_text("a: 1\n" + "# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=f"at most {MAX_FILE_BYTES} bytes"):
        read_yaml(p)
