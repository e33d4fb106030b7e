"""The text tokenizer of the video-text models: bert-base-uncased WordPiece.

The official code tokenizes with Hugging Face's `BertTokenizer("bert-base-uncased")`:
BERT's basic normalisation (clean, CJK split, lowercase, strip accents), BERT's
pre-tokenizer, WordPiece over the 30522-entry `vocab.txt` (`[UNK]` for the rest),
`[CLS] text [SEP]`, padding with `[PAD]` = 0, truncated to the dataset's maximum length
(`MAX_TEXT_LEN`). We build the same pipeline from the `tokenizers` library's parts, with
no `transformers` dependency.

The vocabulary: `vocab=` (a file), else `$VMSTREAM_BERT_VOCAB`, else `vocab.txt` of the
hub repo `bert-base-uncased`, fetched into the Hugging Face cache on first use; offline
without it, the error says what to download and where to put it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from vmstream.text_lengths import DEFAULT_MAX_TEXT_LEN, MAX_TEXT_LEN

from .hub import hub_unreachable

log = logging.getLogger(__name__)

__all__ = [
    "BertTokenizer",
    "TokenBatch",
    "VocabularyNotFound",
    "resolve_vocab",
    "MAX_TEXT_LEN",
    "VOCAB_ENV",
    "BERT_REPO",
    "DEFAULT_MAX_TEXT_LEN",
]

VOCAB_ENV = "VMSTREAM_BERT_VOCAB"
BERT_REPO = "bert-base-uncased"
VOCAB_FILE = "vocab.txt"


class VocabularyNotFound(FileNotFoundError):
    """The WordPiece vocabulary is neither given, nor cached, nor downloadable; the message
    says what to download and where to put it."""


@dataclass
class TokenBatch:
    input_ids: Tensor  # [B, L] long
    attention_mask: Tensor  # [B, L] long, 1 = token, 0 = padding
    truncated: list[bool]  # per text: did it lose tokens to max_length?
    lengths: list[int]  # per text: its token count before truncation, with [CLS] and [SEP]


def _where_to_put(cache: str) -> str:
    return (
        f"download https://huggingface.co/{BERT_REPO}/resolve/main/{VOCAB_FILE} and set {VOCAB_ENV} to "
        f"its path (or pass --vocab FILE), or fetch it into the hub cache ({cache}) with: "
        f"hf download {BERT_REPO} {VOCAB_FILE}"
    )


def resolve_vocab(
    vocab: Optional[Union[str, os.PathLike]] = None, *, cache_dir=None, local_files_only: Optional[bool] = None
) -> Path:
    """The local vocab.txt to use (see the module docstring), downloading it if needed."""
    for given, source in ((vocab, "vocab"), (os.environ.get(VOCAB_ENV), VOCAB_ENV)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise VocabularyNotFound(
                    f"the text vocabulary {path} (from {source}) is not a file; it should be {BERT_REPO}'s {VOCAB_FILE}"
                )
            return path
    hf_home = os.environ.get("HF_HOME")
    cache = str(
        cache_dir
        or os.environ.get("HF_HUB_CACHE")
        or (os.path.join(hf_home, "hub") if hf_home else "~/.cache/huggingface/hub")
    )
    offline = (
        os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        if local_files_only is None
        else local_files_only
    )
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:
        raise VocabularyNotFound(
            f"the text vocabulary ({BERT_REPO} {VOCAB_FILE}) is not available and "
            f"huggingface_hub is not installed to fetch it; {_where_to_put(cache)}"
        ) from None
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    unreachable = None if offline else hub_unreachable(endpoint)
    try:
        return Path(
            hf_hub_download(
                BERT_REPO,
                VOCAB_FILE,
                cache_dir=cache_dir,
                endpoint=endpoint,
                local_files_only=offline or unreachable is not None,
            )
        )
    except Exception as e:
        reason = (
            "offline mode"
            if offline
            else f"the hub is unreachable: {unreachable}"
            if unreachable
            else f"{type(e).__name__}: {e}".splitlines()[0]
        )
        raise VocabularyNotFound(
            f"the text vocabulary ({BERT_REPO} {VOCAB_FILE}) is not in the Hugging Face "
            f"cache and could not be downloaded ({reason}); {_where_to_put(cache)}"
        ) from None


@lru_cache(maxsize=8)
def _wordpiece(vocab_path: str, lowercase: bool):
    try:
        from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece
    except ImportError:
        raise ImportError("the video-text models need the `tokenizers` package: pip install tokenizers") from None
    try:
        vocab = WordPiece.read_file(vocab_path)
    except Exception as e:  # tokenizers raises a bare Exception (e.g. for bytes that are not UTF-8)
        raise ValueError(
            f"{vocab_path} is not a BERT WordPiece vocabulary (a UTF-8 text file, one token a "
            f"line): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
        if special not in vocab:
            raise ValueError(f"{vocab_path} is not a BERT WordPiece vocabulary: it lacks {special}")
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    # Hugging Face's BertTokenizer (Python and fast alike, and so the official code) keeps a
    # special token written in the text ("a [MASK] b") as that one id, matched before
    # normalisation and case-sensitively; without this it became "[", "mask", "]".
    tok.add_special_tokens([t for t in ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]") if t in vocab])
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, vocab["[PAD]"]


class BertTokenizer:
    """bert-base-uncased WordPiece: `tok(["a dog", ...])` -> TokenBatch."""

    def __init__(
        self,
        vocab: Optional[Union[str, os.PathLike]] = None,
        *,
        max_length: int = DEFAULT_MAX_TEXT_LEN,
        lowercase: bool = True,
        cache_dir=None,
        local_files_only: Optional[bool] = None,
    ):
        if max_length < 3:
            raise ValueError(f"max_length {max_length}: a text needs at least [CLS], one token and [SEP]")
        self.vocab_path = resolve_vocab(vocab, cache_dir=cache_dir, local_files_only=local_files_only)
        self.max_length = max_length
        self._tok, self.pad_id = _wordpiece(str(self.vocab_path), lowercase)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def token_id(self, token: str) -> int:
        """The id of `token` (e.g. "[MASK]"); an error if the vocabulary lacks it."""
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"the text vocabulary {self.vocab_path} has no {token} token")
        return i

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def __call__(
        self,
        texts: Union[str, Sequence[str]],
        *,
        max_length: Optional[int] = None,
        padding: str = "longest",
        warn: bool = True,
    ) -> TokenBatch:
        """Token ids and mask for `texts`, each cut to `max_length` (default: this tokenizer's)
        keeping [SEP] last, as the official truncation does. `padding="max_length"` pads
        every row to max_length (the official eval; the [CLS] state is the same either way)."""
        if isinstance(texts, str):
            texts = [texts]
        max_length = max_length or self.max_length
        rows, truncated, lengths = [], [], []
        for enc in self._tok.encode_batch(list(texts)):
            ids = enc.ids
            lengths.append(len(ids))
            truncated.append(len(ids) > max_length)
            if len(ids) > max_length:
                ids = ids[: max_length - 1] + ids[-1:]
            rows.append(ids)
        for text, cut, n in zip(texts, truncated, lengths):
            if cut and warn:  # warn=False: the caller reports truncation (e.g. a count)
                log.warning(
                    "text truncated to %d of its %d tokens (the model's maximum text length): %.60r",
                    max_length,
                    n,
                    text,
                )
        width = max_length if padding == "max_length" else max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return TokenBatch(input_ids=ids, attention_mask=mask, truncated=truncated, lengths=lengths)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)
