"""Bad configuration and bad arguments end in one line naming the key or option and
what is wrong, exit code 2, never a traceback (through `vmstream.cli.main`)."""

import pytest

from vmstream.cli import main


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.mark.parametrize(
    "setting, needles",
    [
        ("decode.fps=[unclosed", ["decode.fps", "is not valid YAML"]),
        ("output.dir=/dev/null", ["output.dir", "'/dev/null' exists and is not a directory"]),
        ("runner.state_dir=/proc/x", ["runner.state_dir", "cannot create the directory '/proc/x'"]),
        (
            "kafka.client.secuirty_protocol=SSL",
            ["kafka.client", "'secuirty_protocol'", "did you mean security_protocol"],
        ),
        ("kafka.client.acks=1", ["kafka.client", "'acks' is an option of the Kafka producer only"]),
        ("kafka.consumer.sesion_timeout_ms=1000", ["kafka.consumer", "did you mean session_timeout_ms"]),
    ],
)
def test_run_with_a_bad_setting(tmp_path, tiny_ckpt, h264_mp4, capsys, setting, needles):
    code = main(
        ["run", h264_mp4, "--checkpoint", tiny_ckpt, "--out", str(tmp_path / "out"), "--no-progress", "--set", setting]
    )
    _one_line_error(capsys, code, "vmstream run:", *needles)


@pytest.mark.parametrize(
    "text, needles",
    [
        (
            "kafka:\n  client:\n    a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n    d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
            ["aliases (*a) are not allowed", "line 4"],
        ),
        ("decode:\n  fps: 1\n  fps: 2\n", ["key 'fps' is given twice", "line 3"]),
        ("kafka:\n  client: " + "[" * 5000 + "]" * 5000 + "\n", ["nested more than"]),
    ],
)
def test_run_with_a_hostile_config_file(tmp_path, tiny_ckpt, h264_mp4, capsys, text, needles):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code = main(
        [
            "run",
            h264_mp4,
            "--checkpoint",
            tiny_ckpt,
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--config",
            str(cfg),
        ]
    )
    _one_line_error(capsys, code, str(cfg), *needles)
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "args, needles",
    [
        (["-k", "0"], ["-k", "ask for at least 1"]),
        (["-k", "-1"], ["-k", "ask for at least 1"]),
        (["-k", "many"], ["-k", "not a whole number"]),
        (["--stream", "s", "--at", "nan"], ["--at", "finite number of seconds"]),
        (["--stream", "s", "--at", "inf"], ["--at", "finite number of seconds"]),
        (["--stream", "s", "--at", "-1"], ["--at", "finite number of seconds"]),
        (["--id", str(2**64)], ["--id", "signed 64-bit"]),
        (["--id", str(2**63)], ["--id", "signed 64-bit"]),
        (["--id", "12x"], ["--id", "not a segment id"]),
    ],
)
def test_search_arguments(tmp_path, capsys, args, needles):
    argv = ["search", "--index", str(tmp_path)] + (
        args if "--id" in args or "--stream" in args else ["--id", "1"] + args
    )
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # argparse: the usage line, then the one error line
    assert last.startswith("vmstream search: error: argument")
    for needle in needles:
        assert needle in last, err
