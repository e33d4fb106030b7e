"""Weights and inputs that are not what they claim, end to end through `vmstream run`:
a model whose output overflows leaves no rows, a frame size over the bound and a file
with no decodable frame are failed streams with a message that says why."""

import json

import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from tests.stages.test_decode_bounds import _no_frame_webm, write_y4m_header
from vmstream.cli import main
from vmstream.pipeline.assembly import build_runner
from vmstream.pipeline.config import load_config
from vmstream.stages.sources import resolve_sources
from vmstream.store.results import read_table


@pytest.fixture(scope="module")
def overflow_ckpt(tmp_path_factory):
    """Finite weights (they pass the load check) whose logits overflow float32."""
    sd = make_tiny_model(seed=3).state_dict()
    sd["head.weight"].fill_(3e38)
    path = tmp_path_factory.mktemp("ckpt") / "overflow.pth"
    torch.save({"model": sd}, path)
    return str(path)


def _run(sources, ckpt, out, *extra):
    return main(
        [
            "run",
            *sources,
            "--checkpoint",
            ckpt,
            "--out",
            str(out),
            "--fps",
            "4",
            "--no-progress",
            "--set",
            "decode.img_size=32",
            *extra,
        ]
    )


def test_non_finite_model_output_is_an_error_event_never_a_row(tmp_path, overflow_ckpt, h264_mp4, capsys):
    out = tmp_path / "out"
    assert _run([h264_mp4], overflow_ckpt, out) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and f"FAILED {h264_mp4}: segment 0 (" in err
    assert len(read_table(out, "segments")) == 0
    summaries = read_table(out, "summaries").to_pylist()
    assert [(s["status"], s["labels"], s["segment_count"]) for s in summaries] == [("error", [], 0)]
    shown = captured.out + captured.err
    table = shown[shown.index("stream  ") :]  # the console's end-of-run table
    assert "error" in table.splitlines()[2] and "1 failed" in table
    events = read_table(out, "events").to_pandas()
    errors = events[events.kind == "error"]
    reasons = [json.loads(d)["reason"] for d in errors.details]
    assert len(errors) == 4 and set(reasons) == {"non_finite"}  # 4 s at 4 fps: 4 segments
    assert "NaN or Inf in its logits" in errors.message.iloc[0]


def test_a_stream_failed_in_the_model_is_reported_failed_by_the_runner(tmp_path, overflow_ckpt, h264_mp4):
    cfg = load_config(
        overrides={
            "model": {"checkpoint": overflow_ckpt, "name": None},
            "decode": {"fps": 4.0, "img_size": 32},
            "output": {"dir": str(tmp_path / "out"), "console": False},
            "runner": {"progress": False},
        }
    )
    report = build_runner(cfg).run(resolve_sources([h264_mp4]))
    assert report.streams_failed == 1 and report.statuses[h264_mp4] == "error"


def test_a_huge_declared_frame_size_says_so(tmp_path, tiny_ckpt, h264_mp4, capsys):
    big = write_y4m_header(tmp_path / "huge.y4m", 60000, 60000)
    out = tmp_path / "out"
    assert _run([big, h264_mp4], tiny_ckpt, out) == 1  # the good file is done
    err = capsys.readouterr().err
    assert "Traceback" not in err and "resource busy" not in err
    assert "declares frames of 60000x60000 (3600.0 Mpixels), over the bound of 67108864 pixels" in err
    assert len(read_table(out, "segments")) == 4
    # The bound is a setting.
    ok = write_y4m_header(tmp_path / "small.y4m", 64, 48, payload=64 * 48 * 3 // 2 + 6)
    assert _run([ok], tiny_ckpt, tmp_path / "out2", "--set", "decode.max_frame_pixels=3000") == 1
    assert "64x48 (0.0 Mpixels), over the bound of 3000 pixels" in capsys.readouterr().err


def test_a_file_with_no_decodable_frame_fails(tmp_path, tiny_ckpt, capsys):
    path = _no_frame_webm(tmp_path)
    out = tmp_path / "out"
    assert _run([path], tiny_ckpt, out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no frame could be decoded" in err
    events = read_table(out, "events").to_pandas()
    end = events[events.kind == "end"]
    assert len(end) == 1 and json.loads(end.details.iloc[0])["reason"] == "error"
