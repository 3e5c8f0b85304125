"""The encrypted blob format on its own: segments, sizes, range reads, and every way a
stored object can be damaged or opened with the wrong key."""

from __future__ import annotations

import io
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nimbus.errors import CorruptBlob, EncryptionKeyMismatch
from nimbus.storage.encryption import (
    HEADER,
    SEGMENT,
    TAG,
    DecryptingReader,
    Header,
    decrypt_bytes,
    encrypt_bytes,
    encrypted_size,
    plaintext_size,
    read_range,
    segments_for,
)

KEY_ID = bytes.fromhex("0011223344556677")
KEY = bytes(range(32))
S = 4096  # a small segment keeps the edge cases cheap; SEGMENT itself is tested too
EDGES = [0, 1, S - 1, S, S + 1, 2 * S - 1, 2 * S, 2 * S + 1, 3 * S + 17]


def lookup(key_id: bytes) -> bytes:
    if key_id != KEY_ID:
        raise EncryptionKeyMismatch(f"data key {key_id.hex()} is unknown")
    return KEY


def sealed(data: bytes, segment: int = S) -> bytes:
    return encrypt_bytes(data, KEY_ID, KEY, segment)


@pytest.mark.parametrize("size", EDGES)
def test_round_trip_and_sizes(size: int) -> None:
    data = os.urandom(size)
    blob = sealed(data)
    assert len(blob) == encrypted_size(size, S) == HEADER + size + TAG * segments_for(size, S)
    assert plaintext_size(len(blob), segment=S) == size
    assert decrypt_bytes(blob, lookup, segment=S) == data
    assert size < 16 or data[:16] not in blob


def test_default_segment_round_trip_streams_in_pieces() -> None:
    data = os.urandom(2 * SEGMENT + 5)
    blob = encrypt_bytes(data, KEY_ID, KEY)
    assert len(blob) == HEADER + len(data) + 3 * TAG
    reader = io.BufferedReader(DecryptingReader(io.BytesIO(blob), lookup, "b"))
    pieces = []
    while piece := reader.read(100_000):
        pieces.append(piece)
    assert b"".join(pieces) == data


def test_the_same_plaintext_seals_differently_each_time() -> None:
    data = b"marker " * 100
    assert sealed(data) != sealed(data)  # a fresh salt and nonce prefix per object


def test_header_fields_are_where_the_format_says() -> None:
    blob = sealed(b"abc")
    assert blob[:4] == b"NMBE" and blob[4] == 1
    header = Header.parse(blob, "b")
    assert header.key_id == KEY_ID
    assert len(header.salt) == 32 and len(header.nonce_prefix) == 7
    assert header.nonce(3, True) == header.nonce_prefix + struct.pack(">IB", 3, 1)


def _segments(blob: bytes) -> list[bytes]:
    body = blob[HEADER:]
    return [body[i : i + S + TAG] for i in range(0, len(body), S + TAG)]


@pytest.mark.parametrize("cut", [1, TAG, S + TAG, S + TAG + 1])
def test_truncation_is_detected(cut: int) -> None:
    blob = sealed(os.urandom(3 * S))
    with pytest.raises(CorruptBlob):
        decrypt_bytes(blob[:-cut], lookup, segment=S)


def test_truncation_at_a_segment_boundary_is_detected() -> None:
    """Dropping whole final segments leaves a well-formed size: only the last flag tells."""
    blob = sealed(os.urandom(3 * S))
    shorter = blob[: HEADER + 2 * (S + TAG)]
    assert plaintext_size(len(shorter), segment=S) == 2 * S
    with pytest.raises(CorruptBlob, match="segment 1 failed authentication"):
        decrypt_bytes(shorter, lookup, segment=S)


def test_an_appended_segment_is_detected() -> None:
    blob = sealed(os.urandom(2 * S))
    parts = _segments(blob)
    with pytest.raises(CorruptBlob):
        decrypt_bytes(blob + parts[0], lookup, segment=S)


def test_reordered_segments_are_detected() -> None:
    blob = sealed(os.urandom(3 * S))
    a, b, c = _segments(blob)
    with pytest.raises(CorruptBlob, match="segment 0"):
        decrypt_bytes(blob[:HEADER] + b + a + c, lookup, segment=S)


def test_a_segment_from_another_object_is_detected() -> None:
    data = os.urandom(2 * S)
    one, two = sealed(data), sealed(data)
    with pytest.raises(CorruptBlob):
        decrypt_bytes(one[:HEADER] + _segments(two)[0] + _segments(one)[1], lookup, segment=S)


@pytest.mark.parametrize("offset", [5, 4 + 1 + 8, 4 + 1 + 8 + 32, HEADER, HEADER + S + TAG - 1])
def test_a_flipped_bit_anywhere_is_detected(offset: int) -> None:
    blob = bytearray(sealed(os.urandom(2 * S)))
    blob[offset] ^= 0x01
    with pytest.raises((CorruptBlob, EncryptionKeyMismatch)):
        decrypt_bytes(bytes(blob), lookup, segment=S)


def test_no_byte_of_a_bad_segment_is_handed_out() -> None:
    data = os.urandom(2 * S)
    blob = bytearray(sealed(data))
    blob[HEADER + S + TAG + 3] ^= 0x01  # inside the second segment
    reader = DecryptingReader(io.BytesIO(bytes(blob)), lookup, "b", segment=S)
    assert reader.read(S) == data[:S]  # the first segment is whole and authentic
    with pytest.raises(CorruptBlob):
        reader.read(1)


def test_the_wrong_data_key_fails_authentication() -> None:
    blob = sealed(b"secret" * 1000)
    with pytest.raises(CorruptBlob, match="failed authentication"):
        decrypt_bytes(blob, lambda key_id: bytes(32), segment=S)


def test_an_unknown_key_id_fails_closed_with_the_key_ids_error() -> None:
    blob = encrypt_bytes(b"secret", bytes(8), KEY, S)
    with pytest.raises(EncryptionKeyMismatch, match="0000000000000000"):
        decrypt_bytes(blob, lookup, segment=S)


def test_plaintext_and_foreign_objects_are_refused() -> None:
    with pytest.raises(CorruptBlob, match="no Nimbus header"):
        decrypt_bytes(b"just some plaintext that is long enough" * 3, lookup)
    blob = bytearray(sealed(b"x"))
    blob[4] = 2
    with pytest.raises(CorruptBlob, match="version 2"):
        decrypt_bytes(bytes(blob), lookup, segment=S)


@pytest.mark.parametrize("size", [0, 1, HEADER, HEADER + TAG - 1, HEADER + S + TAG + 5])
def test_sizes_no_plaintext_encrypts_to_are_corrupt(size: int) -> None:
    with pytest.raises(CorruptBlob):
        plaintext_size(size, segment=S)


RANGES = [
    (0, 0),
    (0, 1),
    (0, S),
    (S - 1, 2),
    (S, 1),
    (S, S),
    (S + 1, S),
    (2 * S - 1, 1),
    (2 * S, 17),
    (3 * S, 17),
    (3 * S + 16, 10),
    (3 * S + 17, 5),
    (5 * S, 3),
]


@pytest.mark.parametrize(("offset", "length"), RANGES)
def test_range_reads_at_segment_edges(offset: int, length: int) -> None:
    data = os.urandom(3 * S + 17)
    blob = sealed(data)
    got = read_range(io.BytesIO(blob), lookup, offset, length, segment=S)
    assert got == data[offset : offset + length]


class _Counting(io.BytesIO):
    """Counts the bytes read from it."""

    read_bytes = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def test_range_reads_read_only_their_segments() -> None:
    data = os.urandom(8 * S)
    source = _Counting(sealed(data))
    assert read_range(source, lookup, 5 * S + 3, 10, segment=S) == data[5 * S + 3 : 5 * S + 13]
    # the header, segment 5, and segment 6 read ahead to learn whether 5 is the last
    assert source.read_bytes == HEADER + 2 * (S + TAG)


def test_a_range_read_past_a_cut_off_end_is_detected() -> None:
    blob = sealed(os.urandom(3 * S))
    shorter = blob[: HEADER + 2 * (S + TAG)]
    with pytest.raises(CorruptBlob):
        read_range(io.BytesIO(shorter), lookup, 2 * S, 5, segment=S)


def test_format_is_plain_aes_gcm_per_segment() -> None:
    """An independent check of the composition: the HKDF-derived key and the documented
    nonce open a segment with the cryptography package's AES-GCM directly."""
    data = os.urandom(S + 3)
    blob = sealed(data)
    header = Header.parse(blob, "b")
    first = blob[HEADER : HEADER + S + TAG]
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=header.salt, info=b"NMBE\x01" + KEY_ID
    ).derive(KEY)
    nonce = header.nonce_prefix + struct.pack(">IB", 0, 0)
    assert AESGCM(key).decrypt(nonce, first, None) == data[:S]
