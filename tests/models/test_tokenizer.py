"""The video-text tokenizer: bert-base-uncased WordPiece semantics on a small local
vocabulary (no hub here), truncation that says so, and the offline error."""

import logging

import pytest

from vmstream.models.tokenizer import MAX_TEXT_LEN, VOCAB_ENV, BertTokenizer, VocabularyNotFound, resolve_vocab

VOCAB = [
    "[PAD]",
    "[unused0]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "dog",
    "catch",
    "##es",
    "frisbee",
    ".",
    "the",
    "cafe",
    ",",
    "!",
]


@pytest.fixture
def vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def _ids(*tokens):
    return [VOCAB.index(t) for t in tokens]


def test_wordpiece_lowercases_strips_accents_splits_punctuation_and_adds_cls_sep(vocab):
    tok = BertTokenizer(vocab)
    batch = tok(["A Dog catches the FRISBEE.", "Café, zebra!"])
    assert batch.input_ids[0].tolist() == _ids("[CLS]", "a", "dog", "catch", "##es", "the", "frisbee", ".", "[SEP]")
    # unknown words are [UNK]; the shorter row is padded with [PAD] = 0 and masked
    assert batch.input_ids[1].tolist() == _ids("[CLS]", "cafe", ",", "[UNK]", "!", "[SEP]") + [0, 0, 0]
    assert batch.attention_mask.tolist() == [[1] * 9, [1] * 6 + [0] * 3]
    assert batch.truncated == [False, False] and batch.lengths == [9, 6]
    assert tok.tokenize("dog catches") == ["dog", "catch", "##es"]


def test_truncation_keeps_sep_last_and_tells_the_user(vocab, caplog):
    tok = BertTokenizer(vocab, max_length=5)
    with caplog.at_level(logging.WARNING, logger="vmstream.models.tokenizer"):
        batch = tok(["a dog catches the frisbee", "a dog"], padding="max_length")
    assert batch.input_ids.tolist() == [
        _ids("[CLS]", "a", "dog", "catch", "[SEP]"),
        _ids("[CLS]", "a", "dog", "[SEP]") + [0],
    ]
    assert batch.truncated == [True, False] and batch.lengths == [8, 4]
    assert "truncated to 5 of its 8 tokens" in caplog.text


def test_official_maximum_lengths():
    assert MAX_TEXT_LEN == {"msrvtt": 32, "didemo": 64, "msvd": 64, "lsmdc": 96, "anet": 150, "activitynet": 150}


def test_vocabulary_from_the_environment_variable(vocab, monkeypatch):
    monkeypatch.setenv(VOCAB_ENV, str(vocab))
    assert resolve_vocab() == vocab
    monkeypatch.setenv(VOCAB_ENV, str(vocab.parent / "nope.txt"))
    with pytest.raises(VocabularyNotFound, match=f"nope.txt \\(from {VOCAB_ENV}\\) is not a file"):
        BertTokenizer()


def test_offline_without_a_vocabulary_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.delenv(VOCAB_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VocabularyNotFound) as e:
        BertTokenizer(cache_dir=tmp_path / "hub")
    msg = str(e.value)
    assert "\n" not in msg
    assert "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt" in msg
    assert VOCAB_ENV in msg and str(tmp_path / "hub") in msg and "offline" in msg


def test_a_file_that_is_not_a_bert_vocabulary_is_refused(tmp_path):
    bad = tmp_path / "v.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ValueError, match="lacks \\[CLS\\]"):
        BertTokenizer(bad)
