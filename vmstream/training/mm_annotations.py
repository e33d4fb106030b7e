"""The official pretraining annotations for image-text and video-text corpora.

A corpus is named as the official ``available_corpus`` entries of
``videomamba/video_mm/configs/data.py``: ``[anno.json, media_root]`` for images,
``[anno.json, media_root, "video"]`` for videos (a recipe may also write
``{anno: ..., root: ..., media: image|video}``). The JSON file (the VINDLU files the
official code reads) is a list of entries:

    image corpora:  {"image": "relative/path.jpg", "caption": "a dog on a beach"}
    video corpora:  {"video": "relative/path.mp4", "caption": "a man is cooking"}

The media path is joined to the root (``load_anno``). A caption is a string or a
non-empty list of strings; with a list, training draws one per visit (the official
pretraining sets have one string per entry; COCO-style lists are accepted here).
Captions are cleaned as the official ``pre_text`` does: lower case, the punctuation
``,.'!?"()*#:;~`` removed, ``-`` and ``/`` as spaces, ``<person>`` -> person, runs of
spaces collapsed.

Every entry is checked when the file is read; a bad one is a one-line error naming the
file and the entry's position.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence, Union

from vmstream.config_loader import ConfigError

__all__ = ["Corpus", "MediaText", "parse_corpora", "load_anno", "pre_text", "MEDIA_TYPES"]

MEDIA_TYPES = ("image", "video")


@dataclass(frozen=True)
class Corpus:
    anno: str
    root: str
    media: str  # "image" or "video"


@dataclass(frozen=True)
class MediaText:
    path: str
    captions: tuple[str, ...]


def _corpus(item: Any, where: str) -> Corpus:
    if isinstance(item, dict):
        unknown = set(item) - {"anno", "root", "media"}
        if unknown or "anno" not in item:
            raise ConfigError(f"{where}: a corpus is {{anno, root, media}}; got keys {sorted(item)}")
        anno, root, media = item["anno"], item.get("root", ""), item.get("media", "image")
    elif isinstance(item, (list, tuple)) and len(item) in (2, 3) and all(isinstance(v, str) for v in item):
        anno, root = item[0], item[1]
        media = "video" if len(item) == 3 and item[2] == "video" else "image"
        if len(item) == 3 and item[2] not in MEDIA_TYPES:
            raise ConfigError(f"{where}: the third field of {list(item)} must be 'video' (or 'image')")
    else:
        raise ConfigError(
            f"{where}: a corpus is [anno.json, media_root] or [anno.json, media_root, 'video']; got {item!r}"
        )
    if media not in MEDIA_TYPES:
        raise ConfigError(f"{where}: media {media!r} is not one of {MEDIA_TYPES}")
    return Corpus(anno=str(anno), root=str(root or ""), media=media)


def parse_corpora(train_file: Union[Sequence, dict]) -> list[Corpus]:
    """The recipe's ``train_file``: one corpus or a list of them (the official forms)."""
    if not train_file:
        raise ConfigError("multimodal.train_file names no corpus")
    items = train_file
    if isinstance(train_file, dict) or (isinstance(train_file, (list, tuple)) and isinstance(train_file[0], str)):
        items = [train_file]
    return [_corpus(item, f"multimodal.train_file[{i}]") for i, item in enumerate(items)]


def _captions(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        caps = (value,)
    elif isinstance(value, list) and value and all(isinstance(c, str) for c in value):
        caps = tuple(value)
    else:
        raise ValueError(f"{where}: 'caption' must be a string or a non-empty list of strings, got {value!r:.80}")
    if not any(pre_text(c) for c in caps):
        raise ValueError(f"{where}: the caption is empty after cleaning ({value!r:.80})")
    return caps


def load_anno(corpus: Corpus) -> list[MediaText]:
    """The corpus's entries, media paths joined to its root; a bad file or entry is a
    ValueError naming the file and the entry."""
    try:
        with open(corpus.anno, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{corpus.anno}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{corpus.anno}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{corpus.anno}: expected a JSON list of entries, got {type(data).__name__}")
    key = corpus.media
    out = []
    for i, entry in enumerate(data):
        where = f"{corpus.anno}: entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with {key!r} and 'caption', got {entry!r:.80}")
        if key not in entry:
            other = "video" if key == "image" else "image"
            hint = f" (it has {other!r}: is the corpus's media type right?)" if other in entry else ""
            raise ValueError(f"{where}: no {key!r} field{hint}")
        if "caption" not in entry:
            raise ValueError(f"{where}: no 'caption' field")
        path = entry[key]
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: {key!r} must be a non-empty path string, got {path!r:.80}")
        out.append(MediaText(path=os.path.join(corpus.root, path), captions=_captions(entry["caption"], where)))
    if not out:
        raise ValueError(f"{corpus.anno}: the annotation list is empty")
    return out


def pre_text(text: str, max_words: int = 0) -> str:
    """The official caption cleaning (``dataset/utils.py`` ``pre_text``)."""
    text = re.sub(r"([,.'!?\"()*#:;~])", "", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    if max_words:
        words = text.split(" ")
        text = " ".join(words[:max_words])
    return text
