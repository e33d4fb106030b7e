"""The one config mechanism: YAML layers, deep merge, KEY=VALUE overrides, validation;
and that the pipeline's presets and the training recipes read overrides alike."""
from typing import Optional

import pytest
from pydantic import BaseModel, ConfigDict, Field

from vmstream.config_loader import (ConfigError, deep_merge, parse_override, parse_overrides, read_layered,
                                    read_yaml, validate)


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


@pytest.mark.parametrize("text, needle", [
    ("novalue", "expected KEY=VALUE"),
    ("=3", "empty part"),
    ("a..b=3", "empty part"),
    ("a.=3", "empty part"),
])
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
    from vmstream.pipeline.config import load_config
    from vmstream.training.recipes import RecipeError, load_recipe

    assert load_config(sets=["model.labels=x.txt", "model.labels="]).model.labels is None
    assert load_config(sets=["segment.frames="]).segment.frames is None
    # null in a text field whose "not set" is "": that default
    assert load_recipe(None, ["finetune=ckpt.pth", "finetune="]).finetune == ""
    assert load_recipe(None, ['prefix=""']).prefix == ""
    with pytest.raises(ConfigError, match=r"decode.fps: "):
        load_config(sets=["decode.fps="])  # null where a number is needed names the key
    with pytest.raises(RecipeError, match=r"lr: "):
        load_recipe(None, ["lr="])
    for bad in (lambda: load_config(sets=["decode.fps=[1"]), lambda: load_recipe(None, ["opt_betas=[1"])):
        with pytest.raises(ConfigError, match="is not valid YAML"):
            bad()
