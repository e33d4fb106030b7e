"""Pipeline config: presets, overrides, and errors that name the key."""

import pytest

from vmstream.pipeline.config import ConfigError, load_config, parse_override


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.decode.fps == 1.0 and cfg.output.faiss and cfg.kafka.bootstrap is None
    assert cfg.model.precision == "fp32"  # exact to the official outputs unless asked


def test_yaml_then_flags_then_sets(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("decode:\n  fps: 2\n  audio: true\nrunner:\n  queue_size: 3\n")
    cfg = load_config(
        p, overrides={"decode": {"fps": 4}}, sets=["runner.queue_size=5", "kafka.client.security_protocol=SSL"]
    )
    assert cfg.decode.fps == 4 and cfg.decode.audio is True
    assert cfg.runner.queue_size == 5
    assert cfg.kafka.client == {"security_protocol": "SSL"}


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"decode": {"fps": 0}}, "decode.fps"),
        ({"decode": {"fps": -1.5}}, "decode.fps"),
        ({"decode": {"img_size": 100}}, "multiple of the patch size"),
        ({"segment": {"frames": 0}}, "segment.frames"),
        ({"modle": {"name": "x"}}, "modle: unknown key"),
        ({"decode": {"fsp": 1}}, "decode.fsp: unknown key"),
        ({"live": {"backoff_initial": 5, "backoff_max": 1}}, "backoff_max"),
        ({"output": {"faiss_kind": "annoy"}}, "output.faiss_kind"),
        ({"model": {"precision": "fp16"}}, "model.precision"),
    ],
)
def test_bad_values_name_the_key(bad, needle):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=bad)
    assert needle in str(e.value)


def test_the_removed_mamba_ssm_backend_says_where_it_went(tmp_path):
    """An old config's `scan_backend: cuda` (the mamba-ssm backend, removed): one line
    naming the setting, what happened and what to use instead."""
    p = tmp_path / "old.yaml"
    p.write_text("model:\n  scan_backend: cuda\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert "model.scan_backend" in msg and "mamba-ssm" in msg and "removed" in msg and "'triton'" in msg, msg
    assert load_config(overrides={"model": {"scan_backend": "triton"}}).model.scan_backend == "triton"


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    p.write_text("decode: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_parse_override():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=[1, 2]") == {"a": [1, 2]}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_run_precision_flag_sets_the_config():
    from vmstream.cli import build_parser
    from vmstream.cli.common import config_from_args

    args = build_parser().parse_args(["run", "x.mp4", "--precision", "bf16"])
    assert config_from_args(args).model.precision == "bf16"
    args = build_parser().parse_args(["run", "x.mp4"])
    assert config_from_args(args).model.precision == "fp32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "x.mp4", "--precision", "fp16"])
