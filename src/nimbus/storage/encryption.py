"""The encrypted blob format: a streaming AEAD of fixed-size segments (AES-256-GCM).

The composition is Tink's AES-GCM-HKDF streaming AEAD (and age's STREAM), nothing new:

- a 52-byte **header**: magic ``NMBE``, version ``1``, the 8-byte id of the data key that
  sealed the object, a random 32-byte salt and a random 7-byte nonce prefix;
- an **object key** ``HKDF-SHA256(data key, salt, info = magic | version | key id)``, so no two
  objects share a key and the header's fields are bound to every segment;
- the plaintext cut into **segments** of ``SEGMENT`` bytes (the last one shorter, possibly
  empty), each sealed with AES-256-GCM under the nonce ``prefix(7) | counter(4, big-endian) |
  last(1)``, where ``last`` is 1 for the final segment only. Each sealed segment is its
  plaintext plus a 16-byte tag.

A segment moved, dropped, duplicated or cut off fails authentication (its counter or its
``last`` flag no longer match), and so does any flipped bit: the reader raises
:class:`CorruptBlob` before handing out a single byte of that segment. Sizes map without
reading: a plaintext of ``n`` bytes takes ``max(1, ceil(n / SEGMENT))`` segments, so the
object is ``HEADER + n + 16 * segments`` bytes, and plaintext offset ``o`` lies in segment
``o // SEGMENT`` at object offset ``HEADER + (o // SEGMENT) * (SEGMENT + 16)``.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nimbus.errors import CorruptBlob

MAGIC = b"NMBE"
VERSION = 1
KEY_ID_BYTES = 8
SALT_BYTES = 32
PREFIX_BYTES = 7
HEADER = len(MAGIC) + 1 + KEY_ID_BYTES + SALT_BYTES + PREFIX_BYTES  # 52
TAG = 16
SEGMENT = 1024 * 1024  # plaintext bytes per segment
MAX_SEGMENTS = 2**32

# A data key's secret, found by the key id a header names (raises when it cannot be had).
KeyLookup = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Header:
    key_id: bytes
    salt: bytes
    nonce_prefix: bytes

    @classmethod
    def new(cls, key_id: bytes) -> Header:
        if len(key_id) != KEY_ID_BYTES:
            raise ValueError(f"a key id is {KEY_ID_BYTES} bytes")
        return cls(key_id, os.urandom(SALT_BYTES), os.urandom(PREFIX_BYTES))

    def to_bytes(self) -> bytes:
        return MAGIC + bytes([VERSION]) + self.key_id + self.salt + self.nonce_prefix

    @classmethod
    def parse(cls, data: bytes, name: str) -> Header:
        if len(data) < HEADER or data[:4] != MAGIC:
            raise CorruptBlob(f"blob {name} is not an encrypted object (no Nimbus header)")
        if data[4] != VERSION:
            raise CorruptBlob(f"blob {name} has encryption format version {data[4]}, not 1")
        at = len(MAGIC) + 1
        key_id = data[at : at + KEY_ID_BYTES]
        salt = data[at + KEY_ID_BYTES : at + KEY_ID_BYTES + SALT_BYTES]
        return cls(key_id, salt, data[HEADER - PREFIX_BYTES : HEADER])

    def cipher(self, data_key: bytes) -> AESGCM:
        """AES-256-GCM under this object's own key, derived from the data key."""
        info = MAGIC + bytes([VERSION]) + self.key_id
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=self.salt, info=info)
        return AESGCM(hkdf.derive(data_key))

    def nonce(self, counter: int, last: bool) -> bytes:
        if counter >= MAX_SEGMENTS:
            raise ValueError("object too large for the segment counter")
        return self.nonce_prefix + struct.pack(">IB", counter, 1 if last else 0)


def segments_for(plaintext_size: int, segment: int = SEGMENT) -> int:
    return max(1, -(-plaintext_size // segment))


def encrypted_size(plaintext_size: int, segment: int = SEGMENT) -> int:
    return HEADER + plaintext_size + TAG * segments_for(plaintext_size, segment)


def plaintext_size(object_size: int, name: str = "", segment: int = SEGMENT) -> int:
    """The plaintext size of an encrypted object of ``object_size`` bytes; CorruptBlob when
    no plaintext encrypts to that size (the object was cut or padded)."""
    body = object_size - HEADER
    count = -(-body // (segment + TAG)) if body > 0 else 0
    size = body - TAG * count
    if count < 1 or size < 0 or encrypted_size(size, segment) != object_size:
        raise CorruptBlob(f"blob {name} is corrupt: {object_size} bytes is no encrypted size")
    return size


def encrypt_stream(
    source: BinaryIO, out: BinaryIO, key_id: bytes, data_key: bytes, segment: int = SEGMENT
) -> int:
    """Encrypt everything ``source`` holds into ``out``; returns the plaintext size.
    Memory: two segments, whatever the size."""
    header = Header.new(key_id)
    aead = header.cipher(data_key)
    out.write(header.to_bytes())
    counter = total = 0
    chunk = _read_full(source, segment)
    while True:
        following = _read_full(source, segment) if len(chunk) == segment else b""
        last = not following
        out.write(aead.encrypt(header.nonce(counter, last), chunk, None))
        total += len(chunk)
        if last:
            return total
        chunk, counter = following, counter + 1


def encrypt_bytes(data: bytes, key_id: bytes, data_key: bytes, segment: int = SEGMENT) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key_id, data_key, segment)
    return out.getvalue()


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Exactly ``size`` bytes, fewer only at the end of the stream."""
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        chunk = stream.read(wanted)
        if not chunk:
            break
        parts.append(chunk)
        wanted -= len(chunk)
    return b"".join(parts)


class DecryptingReader(io.RawIOBase):
    """The plaintext of an encrypted object, one authenticated segment at a time.

    ``source`` is read sequentially (an S3 stream works); a segment's bytes are handed out
    only after its tag checked. With ``start`` the reading begins at that plaintext offset
    (``source`` must then be seekable), which is how range reads find their segment.
    """

    def __init__(
        self,
        source: BinaryIO,
        lookup: KeyLookup,
        name: str,
        *,
        start: int = 0,
        segment: int = SEGMENT,
    ) -> None:
        self._source = source
        self._name = name
        self._segment = segment
        self._header = Header.parse(_read_full(source, HEADER), name)
        self._aead = self._header.cipher(lookup(self._header.key_id))
        # A range that starts on a segment boundary begins with the segment before it: that
        # one says (its last flag) whether the object really ends there.
        # A range past the end begins with the last segment, which proves where the end is.
        self._counter = (start - 1) // segment if start > 0 else 0
        if self._counter:
            total = plaintext_size(source.seek(0, io.SEEK_END), name, segment)
            self._counter = min(self._counter, segments_for(total, segment) - 1)
            source.seek(HEADER + self._counter * (segment + TAG))
        self._ahead = _read_full(source, segment + TAG)
        self._buffer = memoryview(b"")
        self._skip = start - self._counter * segment
        self._done = False

    @property
    def key_id(self) -> bytes:
        return self._header.key_id

    def readable(self) -> bool:
        return True

    def _next_segment(self) -> bytes:
        sealed = self._ahead
        self._ahead = _read_full(self._source, self._segment + TAG) if sealed else b""
        last = not self._ahead
        if len(sealed) < TAG or (not last and len(sealed) != self._segment + TAG):
            raise CorruptBlob(f"blob {self._name} is corrupt: it was cut off")
        try:
            plain = self._aead.decrypt(self._header.nonce(self._counter, last), sealed, None)
        except InvalidTag:
            raise CorruptBlob(
                f"blob {self._name} is corrupt: segment {self._counter} failed authentication "
                "(changed, reordered or cut off)"
            ) from None
        self._counter += 1
        self._done = last
        return plain

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._buffer:
            if self._done:
                return 0
            plain = self._next_segment()
            skip, self._skip = self._skip, 0
            self._buffer = memoryview(plain)[skip:]
        n = min(len(view), len(self._buffer))
        view[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


def decrypt_bytes(data: bytes, lookup: KeyLookup, name: str = "", segment: int = SEGMENT) -> bytes:
    with DecryptingReader(io.BytesIO(data), lookup, name, segment=segment) as reader:
        return reader.read()


def read_range(
    source: BinaryIO,
    lookup: KeyLookup,
    offset: int,
    length: int,
    name: str = "",
    segment: int = SEGMENT,
) -> bytes:
    """``length`` plaintext bytes from ``offset`` of a seekable encrypted object, reading
    (and authenticating) only the segments they lie in."""
    reader = DecryptingReader(source, lookup, name, start=offset, segment=segment)
    return _read_full(reader, length)  # type: ignore[arg-type]
