"""Text preprocessing for the built-in text model: tokenizer, vocabulary, encoding.

Pure and deterministic: the vocabulary is built from the train split only, ordered by
falling frequency then by token, and the whole encoder round-trips through the JSON
``preprocessing`` block of ``spec.json`` so serving tokenises exactly like training.

Two token patterns are known (a spec names one; no other regex is ever compiled from a
spec): the seed's ``\\w+`` and :data:`WORD_PATTERN`, which keeps apostrophes inside words
and makes every other punctuation mark a token of its own. With ``ngrams`` > 1 the
vocabulary also holds word n-grams (words joined by one space, which no token contains)
and each text becomes its tokens interleaved with the n-grams ending at them, so
truncating to ``max_len`` keeps a prefix of the text with all its features.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from nimbus.errors import InvalidInput

if TYPE_CHECKING:  # numpy is imported by encode alone: the SDK names these patterns
    import numpy as np

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
TOKEN_PATTERN = r"\w+"  # the seed's: runs of letters, digits and underscores
# letters/digits with inner apostrophes ("don't"), or one punctuation mark
WORD_PATTERN = r"[^\W_]+(?:['\u2019][^\W_]+)*|[^\w\s]"
_PATTERNS = {p: re.compile(p) for p in (TOKEN_PATTERN, WORD_PATTERN)}
MAX_NGRAMS = 3


def tokenize(text: str, lowercase: bool = True, pattern: str = TOKEN_PATTERN) -> list[str]:
    """Split ``text`` into tokens by one of the known patterns.

    With the seed's pattern (the default) the text is only lowercased; with
    :data:`WORD_PATTERN` it is first NFKC-normalised (full-width forms, ligatures) and
    case-folded, so "Straße" and "STRASSE" meet.
    """
    regex = _PATTERNS.get(pattern)
    if regex is None:
        raise InvalidInput(f"unsupported token pattern {pattern!r}")
    if pattern == TOKEN_PATTERN:
        return regex.findall(text.lower() if lowercase else text)
    text = unicodedata.normalize("NFKC", text)
    return regex.findall(text.casefold() if lowercase else text)


def features(tokens: list[str], ngrams: int) -> list[str]:
    """Each token followed by the n-grams (2..``ngrams`` words) that end at it."""
    if ngrams <= 1:
        return tokens
    out: list[str] = []
    for i, token in enumerate(tokens):
        out.append(token)
        for n in range(2, min(ngrams, i + 1) + 1):
            out.append(" ".join(tokens[i - n + 1 : i + 1]))
    return out


@dataclass(frozen=True)
class TextEncoder:
    """A vocabulary plus the rules that turn a string into ``max_len`` token ids."""

    vocab: tuple[str, ...]
    max_len: int
    lowercase: bool = True
    token_pattern: str = TOKEN_PATTERN
    ngrams: int = 1

    def __post_init__(self) -> None:
        if self.vocab[:2] != (PAD, UNK):
            raise InvalidInput(f"a vocabulary starts with {PAD!r} and {UNK!r}")
        if self.max_len < 1:
            raise InvalidInput("max_len must be at least 1")
        if self.token_pattern not in _PATTERNS:
            raise InvalidInput(f"unsupported token pattern {self.token_pattern!r}")
        if not 1 <= self.ngrams <= MAX_NGRAMS:
            raise InvalidInput(f"ngrams must be between 1 and {MAX_NGRAMS}")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        """Token ids, int64 ``[N, max_len]``: truncated, padded with 0, unknown words 1,
        n-grams outside the vocabulary left out."""
        import numpy as np

        rows = [[i for i, _ in self._slots(self.words(str(text)))] for text in texts]
        out = np.zeros((len(rows), self.max_len), dtype=np.int64)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = ids
        return out

    def words(self, text: str) -> list[str]:
        """``text``'s words as this encoder tokenizes them (normalised, lowercased)."""
        return tokenize(text, self.lowercase, self.token_pattern)

    def trace(self, words: list[str]) -> list[tuple[int, ...]]:
        """Which of ``words`` each filled slot of :meth:`encode`'s row stands for: one
        word, or the n words of an n-gram (slots past the returned ones are padding)."""
        return [span for _, span in self._slots(words)]

    def _slots(self, words: list[str]) -> Iterator[tuple[int, tuple[int, ...]]]:
        """The row's token ids in order, each with the words it covers: truncated at
        ``max_len``, unknown words ``UNK_ID``, n-grams outside the vocabulary left out."""
        index, filled = self._index, 0
        for end, word in enumerate(words):
            for n in range(1, min(self.ngrams, end + 1) + 1):
                feature = word if n == 1 else " ".join(words[end - n + 1 : end + 1])
                found = index.get(feature)
                if found is None and n > 1:
                    continue
                yield (UNK_ID if found is None else found), tuple(range(end - n + 1, end + 1))
                filled += 1
                if filled == self.max_len:
                    return

    @cached_property
    def _index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.vocab)}

    def preprocessing(self) -> dict[str, Any]:
        """The JSON ``preprocessing`` block of spec.json."""
        return {
            "kind": "text",
            "lowercase": self.lowercase,
            "token_pattern": self.token_pattern,
            "ngrams": self.ngrams,
            "max_len": self.max_len,
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_preprocessing(cls, block: dict[str, Any]) -> TextEncoder:
        """Rebuild the encoder from a spec's ``preprocessing`` block."""
        if block.get("kind") != "text":
            raise InvalidInput("not a text preprocessing block")
        try:
            return cls(
                vocab=tuple(str(t) for t in block["vocab"]),
                max_len=int(block["max_len"]),
                lowercase=bool(block.get("lowercase", True)),
                token_pattern=str(block.get("token_pattern", TOKEN_PATTERN)),
                ngrams=int(block.get("ngrams", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed text preprocessing block: {exc}") from exc


def build_encoder(
    texts: Iterable[str],
    max_len: int,
    min_freq: int = 1,
    max_vocab: int = 20_000,
    lowercase: bool = True,
    *,
    token_pattern: str = TOKEN_PATTERN,
    ngrams: int = 1,
) -> TextEncoder:
    """Build the vocabulary from (train) ``texts``.

    Keeps features (tokens, and n-grams up to ``ngrams`` words) seen at least ``min_freq``
    times, the most frequent first (ties broken alphabetically, so the result never
    depends on iteration order), and at most ``max_vocab`` entries in all, the two
    specials ``<pad>`` (0) and ``<unk>`` (1) included. The defaults are the seed's.
    """
    if max_vocab < 3:
        raise InvalidInput("max_vocab must be at least 3")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(features(tokenize(str(text), lowercase, token_pattern), ngrams))
    ranked = sorted(
        (tok for tok, n in counts.items() if n >= min_freq and tok not in (PAD, UNK)),
        key=lambda tok: (-counts[tok], tok),
    )
    return TextEncoder(
        vocab=(PAD, UNK, *ranked[: max_vocab - 2]),
        max_len=max_len,
        lowercase=lowercase,
        token_pattern=token_pattern,
        ngrams=ngrams,
    )
