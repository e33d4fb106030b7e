"""Two-stage text search: re-score a query's top hits with the video-text model's ITM head.

The store answers with the ITC similarity; the official retrieval then re-ranks the best
`k` candidates by `itm_head` logit 1, with the candidate's final-normed patch tokens as
the cross-attention memory. The store keeps no tokens, so each candidate segment is
decoded again from its source with the run's own plan (decoding, sampling, segmenting)
and encoded as a clip on its own (the official ITM sees a clip, not a stream's carried
state). A source that can no longer be read keeps its hits' ITC scores and is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vmstream.errors import UserError
from vmstream.pipeline.assembly import build_plan
from vmstream.pipeline.config import PipelineConfig


@dataclass
class RankedHit:
    hit: object  # the store's SearchHit (its score: the ITC similarity)
    itm: Optional[float]  # the ITM logit, None where the segment could not be re-decoded


def segment_clips(cfg: PipelineConfig, model, uri: str, indices: set[int]) -> dict[int, torch.Tensor]:
    """The pixels [C, T, H, W] of the segments `indices` of the stream at `uri`, made the
    way the run made them. Raises ValueError / UserError when the source cannot be read."""
    from vmstream.records import Segment
    from vmstream.stages.sources import resolve_sources

    (src,) = resolve_sources([uri])
    plan = build_plan(cfg, model)
    out: dict[int, torch.Tensor] = {}
    for item in plan.items(src, plan.probe(src)):
        if isinstance(item, Segment) and item.index in indices:
            out[item.index] = torch.as_tensor(item.pixels)
            if len(out) == len(indices):
                break
    return out


@torch.inference_mode()
def rerank(cfg: PipelineConfig, model, tokenizer, query: str, hits: list, k: int) -> tuple[list[RankedHit], list[str]]:
    """The first `k` hits re-ranked by ITM (descending), then those that could not be
    re-decoded, then the rest in ITC order; and one note per unreadable source."""
    top, rest = hits[:k], hits[k:]
    by_uri: dict[str, list] = {}
    for h in top:
        by_uri.setdefault(h.uri or h.stream_id, []).append(h)
    device = next(model.parameters()).device
    batch = tokenizer([query], max_length=min(tokenizer.max_length, model.max_text_len))
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    text = model.encode_text(ids, mask)
    scored, unreadable, notes = [], [], []
    for uri, group in by_uri.items():
        try:
            clips = segment_clips(cfg, model, uri, {h.segment_index for h in group})
        except (UserError, ValueError, OSError) as e:
            clips = {}
            notes.append(f"{uri}: can no longer be read ({str(e).splitlines()[0]}); its hits keep their ITC score")
        for h in group:
            clip = clips.get(h.segment_index)
            if clip is None:
                if clips:
                    notes.append(f"{uri}: segment {h.segment_index} is no longer in the source; it keeps its ITC score")
                unreadable.append(RankedHit(h, None))
                continue
            tokens = model.encode_video(clip[None].to(device)).tokens
            itm = model.itm_scores(tokens, ids, mask, text_tokens=text.tokens)[0, 0]
            scored.append(RankedHit(h, float(itm)))
    scored.sort(key=lambda r: -r.itm)
    return scored + unreadable + [RankedHit(h, None) for h in rest], notes
