"""Searching a video-text store by sentences.

The store of a video-text model holds each segment's joint-space embedding (mean of its
per-frame unit features) unnormalised, scored by inner product ("ip"); a query's unit
text feature against it gives the official retrieval similarity.
"""

from __future__ import annotations

from typing import Sequence

from vmstream.models.text_query import encode_queries


def search_text(store, texts: Sequence[str] | str, model, k: int = 10, *, tokenizer=None, **params):
    """One hit list per text (a single str: one list)."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if store.metric != "ip":
        raise ValueError(
            f"video store {store.path} was not built by a video-text model (its vectors are "
            f"{store.metric}-normalised video features); text search needs one"
        )
    have = store.meta.get("checkpoint_digest") or ""
    ours = model.card.checkpoint_digest
    if have and ours and have != ours:
        raise ValueError(
            f"video store {store.path} was built with checkpoint {have[:12]}…, the text model is "
            f"{ours[:12]}…; their embeddings are not comparable"
        )
    feats = encode_queries(model, texts, tokenizer=tokenizer).cpu().numpy()
    hits = [store.search(f, k, **params) for f in feats]
    return hits[0] if single else hits
