"""The plan the config builds holds the collaborators its fields name, and a stream's
items, audio included, come out of them (each decoder backend, sampling kind and the
audio stage have their own tests)."""

from __future__ import annotations

import typing

from tests.fixtures.videomamba import make_tiny_model
from vmstream.pipeline.assembly import build_plan
from vmstream.pipeline.config import load_config
from vmstream.pipeline.plan import StreamPlan
from vmstream.records import Segment, StreamEvent
from vmstream.stages import audio, media, sampling, segmenter
from vmstream.stages.decode import base as decode_base
from vmstream.stages.sources import resolve_sources


def _field_types() -> dict:
    # The plan names its collaborators' types only for type checkers (the stages import
    # torch): resolve them here against the modules that define them.
    names = {**vars(typing), **vars(media), **vars(decode_base), **vars(sampling), **vars(segmenter), **vars(audio)}
    return typing.get_type_hints(StreamPlan, localns=names)


def test_the_configured_plan_holds_what_its_fields_name(h264_mp4):
    cfg = load_config(overrides={"decode": {"fps": 4.0, "img_size": 32, "audio": True}})
    plan = build_plan(cfg, make_tiny_model())
    (src,) = resolve_sources([h264_mp4])
    types = _field_types()
    for name in ("decoder", "policy", "size"):
        assert isinstance(getattr(plan, name), types[name]), name
    ((made_from,), makes) = typing.get_args(types["segmenter_factory"])
    assert made_from is media.Source and isinstance(plan.segmenter_factory(src), makes)
    ((made_from,), makes) = typing.get_args(typing.get_args(types["audio_factory"])[0])
    assert made_from is media.Source and isinstance(plan.audio_factory(src), makes)

    items = list(plan.items(src, plan.probe(src)))
    segments = [s for s in items if isinstance(s, Segment)]
    assert [s.index for s in segments] == [0, 1, 2, 3]  # 4 s at 4 fps, 4 frames each
    assert all(s.audio is not None for s in segments)  # the clip's AAC track, through the audio stage
    assert isinstance(items[-1], StreamEvent) and items[-1].kind == "end"
