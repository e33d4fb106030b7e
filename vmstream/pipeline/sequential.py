"""A stream run start to end in the calling thread, from the same plan as the threaded
runner (the same decoding, segmenting and carried state). `search --video` embeds its
query this way; tests and evaluation use it as the runner's reference."""

from __future__ import annotations

from typing import Iterator

from vmstream.errors import UserError
from vmstream.pipeline.assembly import build_plan, make_inference
from vmstream.pipeline.config import PipelineConfig


def run_stream(cfg: PipelineConfig, model, uri: str) -> Iterator:
    """Results, events and the summary of the one stream at `uri`, in order."""
    from vmstream.stages.sources import resolve_sources

    (src,) = resolve_sources([uri])
    plan = build_plan(cfg, model)
    try:
        info = plan.probe(src)
    except ValueError as e:  # VideoInputError included: the message names the input
        raise UserError(str(e)) from None
    yield from make_inference(cfg, model).run(plan.items(src, info))


def embed_video(cfg: PipelineConfig, model, uri: str):
    """Segment embeddings [n, D] and their (t_start, t_end) of one video, as a run
    would compute them."""
    import numpy as np

    from vmstream.records import SegmentResult

    embs, spans = [], []
    for r in run_stream(cfg, model, uri):
        if isinstance(r, SegmentResult):
            embs.append(r.embedding)
            spans.append((r.t_start, r.t_end))
    if not embs:
        raise UserError(f"{uri}: no segment could be made from this video")
    return np.stack(embs), spans
