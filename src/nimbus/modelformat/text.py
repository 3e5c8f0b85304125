"""Text preprocessing for the built-in text model: tokenizer, vocabulary, encoding.

Pure and deterministic: the vocabulary is built from the train split only, ordered by
falling frequency then by token, and the whole encoder round-trips through the JSON
``preprocessing`` block of ``spec.json`` so serving tokenises exactly like training.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nimbus.errors import InvalidInput

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
TOKEN_PATTERN = r"\w+"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Split ``text`` into word tokens (runs of letters, digits and underscores)."""
    return _TOKEN_RE.findall(text.lower() if lowercase else text)


@dataclass(frozen=True)
class TextEncoder:
    """A vocabulary plus the rules that turn a string into ``max_len`` token ids."""

    vocab: tuple[str, ...]
    max_len: int
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.vocab[:2] != (PAD, UNK):
            raise InvalidInput(f"a vocabulary starts with {PAD!r} and {UNK!r}")
        if self.max_len < 1:
            raise InvalidInput("max_len must be at least 1")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        """Token ids, int64 ``[N, max_len]``: truncated, padded with 0, unknown words 1."""
        index = {token: i for i, token in enumerate(self.vocab)}
        rows = [
            [index.get(tok, UNK_ID) for tok in tokenize(str(text), self.lowercase)][: self.max_len]
            for text in texts
        ]
        out = np.zeros((len(rows), self.max_len), dtype=np.int64)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = ids
        return out

    def preprocessing(self) -> dict[str, Any]:
        """The JSON ``preprocessing`` block of spec.json."""
        return {
            "kind": "text",
            "lowercase": self.lowercase,
            "token_pattern": TOKEN_PATTERN,
            "max_len": self.max_len,
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_preprocessing(cls, block: dict[str, Any]) -> TextEncoder:
        """Rebuild the encoder from a spec's ``preprocessing`` block."""
        if block.get("kind") != "text":
            raise InvalidInput("not a text preprocessing block")
        pattern = block.get("token_pattern", TOKEN_PATTERN)
        if pattern != TOKEN_PATTERN:
            raise InvalidInput(f"unsupported token pattern {pattern!r}")
        try:
            return cls(
                vocab=tuple(str(t) for t in block["vocab"]),
                max_len=int(block["max_len"]),
                lowercase=bool(block.get("lowercase", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed text preprocessing block: {exc}") from exc


def build_encoder(
    texts: Iterable[str],
    max_len: int,
    min_freq: int = 1,
    max_vocab: int = 20_000,
    lowercase: bool = True,
) -> TextEncoder:
    """Build the vocabulary from (train) ``texts``.

    Keeps tokens seen at least ``min_freq`` times, the most frequent first (ties broken
    alphabetically, so the result never depends on iteration order), and at most
    ``max_vocab`` entries in all, the two specials ``<pad>`` (0) and ``<unk>`` (1) included.
    """
    if max_vocab < 3:
        raise InvalidInput("max_vocab must be at least 3")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(str(text), lowercase))
    ranked = sorted(
        (tok for tok, n in counts.items() if n >= min_freq and tok not in (PAD, UNK)),
        key=lambda tok: (-counts[tok], tok),
    )
    return TextEncoder(
        vocab=(PAD, UNK, *ranked[: max_vocab - 2]), max_len=max_len, lowercase=lowercase
    )
