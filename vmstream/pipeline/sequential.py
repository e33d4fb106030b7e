"""A stream run start to end in the calling thread: the same decoding, segmenting and
carried state as the threaded runner, built from the same assembly. `search --video`
embeds its query this way; tests and evaluation use it as the runner's reference."""
from __future__ import annotations

from typing import Iterator

from vmstream.errors import UserError
from vmstream.pipeline.assembly import make_decoder, make_policy, make_segmenter_factory, make_size, resolve_device
from vmstream.pipeline.config import PipelineConfig


def run_stream(cfg: PipelineConfig, model, uri: str) -> Iterator:
    """Results, events and the summary of the one stream at `uri`, in order."""
    from vmstream.stages.decode.base import probe_for_policy
    from vmstream.stages.inference import InferenceStage
    from vmstream.stages.sources import resolve_sources

    (src,) = resolve_sources([uri])
    decoder, policy = make_decoder(cfg), make_policy(cfg)
    try:
        info = probe_for_policy(decoder, src.uri, src.options, policy)
    except ValueError as e:  # VideoInputError included: the message names the input
        raise UserError(str(e)) from None
    stage = InferenceStage(model, device=resolve_device(cfg.model.device), top_k=cfg.model.top_k,
                           summary=cfg.model.summary)
    seg = make_segmenter_factory(cfg, model)(src)
    items = seg.segments(decoder.frames(src, policy, make_size(cfg, model), info=info), uri=src.uri)
    yield from stage.run(items)


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
