from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nimbus.errors import InvalidInput
from nimbus.modelformat.text import TextEncoder, build_encoder, tokenize


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
