"""Text queries and label prompts for a video-text model: checked, tokenized, encoded.

`encode_queries` turns sentences into unit joint-space features [K, E]; an empty query,
or one longer than the maximum text length, is a ValueError that names it (a search
query that is cut would silently search for something else). `parse_labels` reads
open-vocabulary labels from a comma list or a file (one prompt a line) and applies a
template such as "a video of {}".
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from .tokenizer import DEFAULT_MAX_TEXT_LEN, BertTokenizer

__all__ = ["encode_queries", "parse_labels", "is_videotext", "require_videotext", "check_vocabulary"]


def is_videotext(model) -> bool:
    return getattr(model, "embedding_space", "") == "video-text"


def require_videotext(model, what: str) -> None:
    """A ValueError naming the model when it is not a video-text model."""
    if not is_videotext(model):
        name = getattr(getattr(model, "card", None), "name", "") or type(model).__name__
        raise ValueError(
            f"{what} needs a video-text model (e.g. videomamba_m16_25M_f8_res224); "
            f"model {name!r} is a video classifier with no text encoder"
        )


def check_vocabulary(model, tokenizer: BertTokenizer) -> None:
    """A ValueError naming the vocabulary file when it has more tokens than the model's
    text encoder has embeddings: its ids past the table would end in an IndexError deep in
    the text encoder (only for the queries that happen to use them)."""
    table = getattr(getattr(getattr(model, "text_encoder", None), "embeddings", None), "word_embeddings", None)
    known = getattr(table, "num_embeddings", None)
    if known is not None and tokenizer.vocab_size > known:
        raise ValueError(
            f"the text vocabulary {tokenizer.vocab_path} has {tokenizer.vocab_size} tokens, the "
            f"model's text encoder knows {known}: use the vocabulary its checkpoint was trained with"
        )


@torch.inference_mode()
def encode_queries(
    model,
    texts: Sequence[str],
    *,
    tokenizer: Optional[BertTokenizer] = None,
    max_length: Optional[int] = None,
    batch_size: int = 256,
) -> Tensor:
    """Unit text features [len(texts), E] on the model's device."""
    require_videotext(model, "a text query")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text query {i + 1} is empty")
        _check_utf8(t, f"text query {i + 1}")
    if tokenizer is None:
        tokenizer = BertTokenizer()
    check_vocabulary(model, tokenizer)
    max_length = min(max_length or tokenizer.max_length or DEFAULT_MAX_TEXT_LEN, model.max_text_len)
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(texts), batch_size):
        chunk = texts[s : s + batch_size]
        batch = tokenizer(chunk, max_length=max_length)
        for t, cut, n in zip(chunk, batch.truncated, batch.lengths):
            if cut:
                raise ValueError(f"text query {t[:60]!r} has {n} tokens; the maximum is {max_length} (shorten it)")
        feats = model.encode_text(batch.input_ids.to(device), batch.attention_mask.to(device)).features
        out.append(feats.float())
    return torch.cat(out) if out else torch.empty(0, model.embed_dim)


def _check_utf8(text: str, what: str) -> None:
    """A ValueError when `text` holds bytes that are not UTF-8 (a command-line argument
    keeps them as surrogate escapes, which the tokenizer cannot take)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "surrogateescape")
        raise ValueError(
            f"{what} {text[:60]!r} is not valid UTF-8 (byte 0x{bad.hex()} at character {e.start + 1})"
        ) from None


def parse_labels(spec: str, template: Optional[str] = None) -> tuple[list[str], list[str]]:
    """(label names, prompts) from "a,b,c" or a file with one label a line; `template`
    ("a video of {}") turns each label into its prompt."""
    path = Path(spec)
    if path.exists() and not path.is_file():  # a directory, FIFO or device: never read as a list
        raise ValueError(f"labels file {path} is not a regular file")
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"labels file {path} is not a text file (not valid UTF-8: byte "
                f"0x{e.object[e.start]:02x} at offset {e.start})"
            ) from None
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
        where = str(path)
    else:
        _check_utf8(spec, "labels")
        names = [part.strip() for part in spec.split(",") if part.strip()]
        where = repr(spec)
    if not names:
        raise ValueError(f"labels {where}: no labels (give a comma list or a file with one label a line)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"labels {where}: {dup!r} is given twice")
    if template is not None and "{}" not in template:
        raise ValueError(f"label template {template!r} has no {{}} for the label")
    prompts = [template.replace("{}", n) if template else n for n in names]
    return names, prompts
