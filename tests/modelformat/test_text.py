from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nimbus.errors import InvalidInput
from nimbus.modelformat.text import (
    TOKEN_PATTERN,
    WORD_PATTERN,
    TextEncoder,
    build_encoder,
    features,
    tokenize,
)


def test_tokenize_lowercases_and_splits_on_words() -> None:
    assert tokenize("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]
    assert tokenize("Hello", lowercase=False) == ["Hello"]


def test_vocabulary_order_min_freq_and_cap() -> None:
    texts = ["b a a", "c b a", "d"]
    enc = build_encoder(texts, max_len=4)
    assert enc.vocab == ("<pad>", "<unk>", "a", "b", "c", "d")  # by count, then alphabet
    assert build_encoder(texts, max_len=4, min_freq=2).vocab == ("<pad>", "<unk>", "a", "b")
    assert build_encoder(texts, max_len=4, max_vocab=3).vocab == ("<pad>", "<unk>", "a")
    assert build_encoder(reversed(texts), max_len=4).vocab == enc.vocab


def test_encode_pads_truncates_and_marks_unknown() -> None:
    enc = build_encoder(["the cat sat", "the dog"], max_len=3)
    ids = enc.encode(["The cat", "a dog sat on the mat", ""])
    assert ids.dtype == np.int64 and ids.shape == (3, 3)
    the, cat, dog, sat = (enc.vocab.index(w) for w in ("the", "cat", "dog", "sat"))
    assert ids.tolist() == [[the, cat, 0], [1, dog, sat], [0, 0, 0]]


def test_preprocessing_round_trips_through_json() -> None:
    enc = build_encoder(["one two", "two three"], max_len=5)
    block = json.loads(json.dumps(enc.preprocessing()))
    assert block["kind"] == "text" and block["vocab"][:2] == ["<pad>", "<unk>"]
    again = TextEncoder.from_preprocessing(block)
    assert again == enc
    assert np.array_equal(again.encode(["two one four"]), enc.encode(["two one four"]))


@pytest.mark.parametrize(
    "block",
    [
        {"kind": "image"},
        {"kind": "text", "max_len": 4},
        {"kind": "text", "max_len": 4, "vocab": ["a", "b"]},
        {"kind": "text", "max_len": 0, "vocab": ["<pad>", "<unk>"]},
        {"kind": "text", "max_len": 4, "vocab": ["<pad>", "<unk>"], "token_pattern": "."},
    ],
)
def test_malformed_blocks_are_refused(block: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        TextEncoder.from_preprocessing(block)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(max_size=40), max_size=6), max_len=st.integers(1, 6))
def test_encode_is_total_and_in_range(texts: list[str], max_len: int) -> None:
    enc = build_encoder(["alpha beta", "beta gamma ünïcode"], max_len=max_len)
    ids = enc.encode(texts)
    assert ids.shape == (len(texts), max_len) and ids.dtype == np.int64
    assert ids.min(initial=0) >= 0 and ids.max(initial=0) < enc.vocab_size
    assert np.array_equal(ids, enc.encode(texts))


def test_word_tokenizer_folds_case_and_splits_punctuation() -> None:
    text = "Don't PANIC: ﬁle-size is 2MB, Straße!"
    assert tokenize(text, pattern=WORD_PATTERN) == [
        "don't", "panic", ":", "file", "-", "size", "is", "2mb", ",", "strasse", "!",
    ]  # fmt: skip
    assert tokenize("snake_case", pattern=WORD_PATTERN) == ["snake", "case"]
    with pytest.raises(InvalidInput):
        tokenize("x", pattern=".")


def test_features_interleave_ngrams_ending_at_each_token() -> None:
    assert features(["a", "b", "c"], 1) == ["a", "b", "c"]
    assert features(["a", "b", "c"], 2) == ["a", "b", "a b", "c", "b c"]
    assert features(["a", "b", "c"], 3) == ["a", "b", "a b", "c", "b c", "a b c"]


def test_bigram_vocabulary_and_encoding() -> None:
    enc = build_encoder(
        ["new york is big", "new york city", "york new"], max_len=6, ngrams=2,
        token_pattern=WORD_PATTERN,
    )  # fmt: skip
    assert enc.vocab[2:5] == ("new", "york", "new york")  # counted like words: 3, 3, 2
    ids = enc.encode(["New York, new dog"])
    new, york, new_york = (enc.vocab.index(f) for f in ("new", "york", "new york"))
    # "york ," and "new dog" were never seen: left out; "," and "dog" are unknown words
    assert ids.tolist() == [[new, york, new_york, 1, new, 1]]
    assert enc.encode(["new york city"]).tolist()[0][:3] == [new, york, new_york]


def test_ngram_block_round_trips_and_a_seed_block_still_reads() -> None:
    enc = build_encoder(["A b, c", "b c d"], max_len=7, ngrams=2, token_pattern=WORD_PATTERN)
    block = json.loads(json.dumps(enc.preprocessing()))
    assert (block["ngrams"], block["token_pattern"]) == (2, WORD_PATTERN)
    again = TextEncoder.from_preprocessing(block)
    assert again == enc and np.array_equal(again.encode(["b c!"]), enc.encode(["b c!"]))
    seed = TextEncoder.from_preprocessing(
        {"kind": "text", "lowercase": True, "max_len": 3, "vocab": ["<pad>", "<unk>", "it", "s"]}
    )  # written before n-grams existed
    assert (seed.ngrams, seed.token_pattern) == (1, TOKEN_PATTERN)
    assert seed.encode(["It's x"]).tolist() == [[2, 3, 1]]
    with pytest.raises(InvalidInput):
        TextEncoder.from_preprocessing({**block, "ngrams": 9})
