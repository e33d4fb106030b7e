"""The inference stage's guard on the model's outputs: a non-finite embedding or logits
is an error event for that stream, never a result, and the stream has failed."""

import json

import numpy as np
import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from vmstream.records import Segment, SegmentResult, StreamEvent
from vmstream.stages.inference import InferenceStage

T, S = 4, 32


def _seg(sid: str, index: int, scale: float = 1.0) -> Segment:
    g = torch.Generator().manual_seed(index)
    pixels = torch.randn(3, T, S, S, generator=g) * scale
    return Segment(stream_id=sid, index=index, t_start=float(index), t_end=index + 0.9, pixels=pixels, uri=sid)


def test_a_non_finite_output_fails_that_stream_only():
    stage = InferenceStage(make_tiny_model(seed=3), top_k=3)
    # Finite pixels so large that the patch embedding overflows float32 (Inf, then NaN).
    out = stage.process([_seg("good", 0), _seg("bad", 0, scale=3e38)])
    assert isinstance(out[0], SegmentResult) and np.isfinite(out[0].embedding).all()
    ev = out[1]
    assert isinstance(ev, StreamEvent) and ev.kind == "error" and ev.stream_id == "bad"
    assert ev.details["reason"] == "non_finite" and ev.details["segment_index"] == 0
    assert "segment 0 (0.00-0.90 s)" in ev.message and "not finite" in ev.message
    assert stage.failure("bad") == ev.message and stage.failure("good") is None
    json.dumps(ev.to_row())  # a storable event row

    # Its later segments are not run (the carried state is poisoned), even finite ones;
    # the other stream goes on in the same batch.
    out = stage.process([_seg("bad", 1), _seg("good", 1)])
    assert isinstance(out[0], StreamEvent) and out[0].details == {
        "reason": "non_finite",
        "segment_index": 1,
        "skipped": True,
    }
    assert "segment 1 not analysed: the stream failed at an earlier segment" in out[0].message
    assert isinstance(out[1], SegmentResult) and out[1].segment_index == 1

    # A failed stream's snapshot resumes failed.
    other = InferenceStage(make_tiny_model(seed=3))
    other.restore(stage.snapshot("bad"))
    assert other.failure("bad") == stage.failure("bad")
    assert isinstance(other.process([_seg("bad", 2)])[0], StreamEvent)

    # Its summary says it failed, with no labels from non-finite logits; the good
    # stream gets its own.
    bad = stage.end_stream(StreamEvent(stream_id="bad", kind="end"))
    assert bad.status == "error" and bad.labels == [] and bad.scores == [] and bad.segment_count == 0
    summary = stage.end_stream(StreamEvent(stream_id="good", kind="end"))
    assert summary is not None and summary.segment_count == 2 and np.isfinite(summary.scores).all()
    assert stage.failure("bad") is not None  # kept for the caller's final status


@pytest.mark.parametrize("key", ["head.weight", "norm_f.weight"])
def test_finite_weights_that_overflow_give_no_row(key):
    model = make_tiny_model(seed=3)
    with torch.no_grad():
        model.state_dict()[key].fill_(3e38)
    stage = InferenceStage(model)
    out = stage.process([_seg("s", 0)])
    assert isinstance(out[0], StreamEvent) and out[0].details["reason"] == "non_finite"
    want = "logits" if key == "head.weight" else "embedding and logits"
    assert f"the model's output is not finite (NaN or Inf in its {want})" in out[0].message
