"""Safe reading of uploaded archives: zip, tar and tar.gz.

Two layers. Pure checks (:func:`safe_member_path`, :func:`is_junk`, :class:`ArchiveGuard`,
:func:`check_members`) decide from member metadata alone whether an archive may be read.
:func:`iter_files` then reads an archive member by member through those checks and hands out
readers that count every byte they produce, because declared sizes can lie and a tar.gz
declares nothing about how far its gzip stream inflates.

Nothing here writes a member under its own name: callers choose the paths they write to, so
a check missed here still cannot place a file outside the work directory.
"""

from __future__ import annotations

import gzip
import io
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, BinaryIO, cast

from nimbus.datasets.domain import IngestLimits
from nimbus.errors import InvalidDataset

RATIO_FLOOR = 1 << 20  # members inflating to less than this cannot be meaningful bombs
COPY_CHUNK = 1 << 20
TAR_PADDING_ALLOWANCE = 64 * 1024
MAX_TAR_HEADER_BYTES = 1 << 20  # pax and GNU long-name headers are read whole into memory
_TAR_META_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
_BLOCK = tarfile.BLOCKSIZE
_READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError, RuntimeError)
_JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini"})


class ArchiveKind(StrEnum):
    ZIP = "zip"
    TAR = "tar"
    TAR_GZ = "tar.gz"


class MemberKind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    SPECIAL = "special"  # devices, fifos, sparse or unknown tar types


@dataclass(frozen=True)
class MemberInfo:
    """What an archive declares about one member, before a byte of it is read."""

    name: str
    size: int
    kind: MemberKind = MemberKind.FILE
    compressed_size: int | None = None  # zip only
    encrypted: bool = False


def safe_member_path(name: str, archive: str) -> str:
    """The member's path normalized to ``a/b/c`` ('' for the root); refuses escapes."""
    if "\x00" in name:
        raise InvalidDataset(f"archive {archive!r}: member {name!r} has a NUL in its name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise InvalidDataset(f"archive {archive!r}: member {name!r} has an absolute path")
    parts = [part for part in unified.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidDataset(f"archive {archive!r}: member {name!r} has a '..' path component")
    return "/".join(parts)


def is_junk(path: str) -> bool:
    """True for OS droppings (__MACOSX/, .DS_Store, hidden files) that formats ignore."""
    parts = path.split("/")
    hidden = any(part.startswith(".") for part in parts)
    return hidden or parts[0] == "__MACOSX" or parts[-1] in _JUNK_NAMES


class ArchiveGuard:
    """Running totals for one archive: members seen, bytes declared and bytes produced."""

    def __init__(self, limits: IngestLimits, archive: str) -> None:
        self.limits = limits
        self.archive = archive
        self.members = 0
        self.declared = 0
        self.produced = 0

    def admit(self, info: MemberInfo) -> str:
        """Check one member's metadata; return its normalized path or raise InvalidDataset."""
        where = f"archive {self.archive!r}: member {info.name!r}"
        self.members += 1
        if self.members > self.limits.max_members:
            raise InvalidDataset(
                f"archive {self.archive!r} has more than {self.limits.max_members} members "
                f"(refused at {info.name!r})"
            )
        path = safe_member_path(info.name, self.archive)
        if info.kind is MemberKind.SYMLINK:
            raise InvalidDataset(f"{where} is a symbolic link; links are refused")
        if info.kind is MemberKind.HARDLINK:
            raise InvalidDataset(f"{where} is a hard link; links are refused")
        if info.kind is MemberKind.SPECIAL:
            raise InvalidDataset(f"{where} is a device or other special file; refused")
        if info.encrypted:
            raise InvalidDataset(f"{where} is encrypted; encrypted archives are refused")
        if info.kind is MemberKind.DIR:
            return path
        if not path:
            raise InvalidDataset(f"{where} has an empty name")
        if info.size < 0:
            raise InvalidDataset(f"{where} declares a negative size")
        self.declared += info.size
        if self.declared > self.limits.max_unpacked_bytes:
            raise InvalidDataset(
                f"archive {self.archive!r} unpacks to more than the limit of "
                f"{self.limits.max_unpacked_bytes} bytes (refused at member {info.name!r})"
            )
        if info.compressed_size is not None and info.size > RATIO_FLOOR:
            ratio = info.size / max(info.compressed_size, 1)
            if ratio > self.limits.max_compression_ratio:
                raise InvalidDataset(
                    f"{where} has a compression ratio of {ratio:.0f}, over the limit of "
                    f"{self.limits.max_compression_ratio:.0f} (a zip bomb?)"
                )
        return path

    def charge(self, nbytes: int, member: str) -> None:
        """Count bytes actually produced; refuse once the archive passes its byte limit."""
        self.produced += nbytes
        if self.produced > self.limits.max_unpacked_bytes:
            raise InvalidDataset(
                f"archive {self.archive!r}: member {member!r} unpacks past the limit of "
                f"{self.limits.max_unpacked_bytes} bytes"
            )


def check_members(infos: Iterable[MemberInfo], limits: IngestLimits, archive: str) -> list[str]:
    """Check a whole member list (pure); return the normalized paths, in order."""
    guard = ArchiveGuard(limits, archive)
    return [guard.admit(info) for info in infos]


class GuardedReader:
    """A member's byte stream that charges its archive's budget and turns errors into 400s."""

    def __init__(self, inner: IO[bytes], guard: ArchiveGuard, member: str, declared: int) -> None:
        self.inner = inner
        self.guard = guard
        self.member = member
        self.declared = declared
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self.inner.read(size)
        except _READ_ERRORS as exc:
            raise self.corrupt(exc) from exc
        self.count += len(data)
        if self.count > self.declared:
            raise InvalidDataset(f"{self.where()} holds more bytes than it declares")
        if not data and size != 0 and self.count < self.declared:
            raise InvalidDataset(f"{self.where()} is truncated")
        self.guard.charge(len(data), self.member)
        return data

    def where(self) -> str:
        return f"archive {self.guard.archive!r}: member {self.member!r}"

    def corrupt(self, exc: BaseException) -> InvalidDataset:
        return InvalidDataset(f"{self.where()} is corrupt or truncated ({exc})")


@dataclass
class ArchiveFile:
    """One regular member being read; ``stream`` is valid until the next member is asked for.

    ``data_offset`` is where the member's bytes lie, whole and uncompressed, in the archive
    file itself (members of a plain tar), so a reader may use them in place; else None.
    """

    path: str
    size: int
    stream: GuardedReader
    data_offset: int | None = None

    def read_all(self, max_bytes: int) -> bytes:
        """The member's bytes, refusing members larger than ``max_bytes``."""
        if self.size > max_bytes:
            raise InvalidDataset(f"{self.stream.where()} is too large ({self.size} bytes)")
        return self.stream.read()


def sniff_archive(path: Path) -> ArchiveKind | None:
    """The archive kind from magic bytes, or None when the file is no archive we read."""
    with path.open("rb") as f:
        head = f.read(_BLOCK)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ArchiveKind.ZIP
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(_BLOCK)
        except _READ_ERRORS:
            return None
        return ArchiveKind.TAR_GZ if _is_tar_block(inner) else None
    return ArchiveKind.TAR if _is_tar_block(head) else None


def _is_tar_block(block: bytes) -> bool:
    if len(block) < _BLOCK:
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def iter_files(
    path: Path, limits: IngestLimits, archive: str
) -> Generator[ArchiveFile, None, None]:
    """Yield the regular, non-junk members of a zip, tar or tar.gz, checked and byte-counted.

    Every member (junk included) passes :class:`ArchiveGuard`; a zip is checked whole before
    a byte is inflated, a tar member by member as its header is read.
    """
    kind = sniff_archive(path)
    if kind is None:
        raise InvalidDataset(f"{archive!r} is not a zip, tar or tar.gz archive")
    if kind is ArchiveKind.ZIP:
        yield from _iter_zip(path, limits, archive)
    else:
        yield from _iter_tar(path, kind, limits, archive)


def copy_member(file: ArchiveFile, dest: Path, *, gunzip: bool = False) -> int:
    """Write the member's bytes (gunzipped when asked) to ``dest``; return the bytes written."""
    source: gzip.GzipFile | GuardedReader = file.stream
    if gunzip:
        source = gzip.GzipFile(fileobj=cast(BinaryIO, file.stream), mode="rb")
    written = 0
    with dest.open("wb") as out:
        while True:
            try:
                chunk = source.read(COPY_CHUNK)
            except _READ_ERRORS as exc:
                where = file.stream.where()
                raise InvalidDataset(f"{where} is not valid gzip data ({exc})") from exc
            if not chunk:
                return written
            if gunzip:
                file.stream.guard.charge(len(chunk), file.path)
            out.write(chunk)
            written += len(chunk)


def _zip_info(info: zipfile.ZipInfo) -> MemberInfo:
    mode = info.external_attr >> 16
    kind = MemberKind.DIR if info.is_dir() else MemberKind.FILE
    if stat.S_ISLNK(mode):
        kind = MemberKind.SYMLINK
    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = MemberKind.SPECIAL
    return MemberInfo(
        info.filename, info.file_size, kind, info.compress_size, bool(info.flag_bits & 0x1)
    )


def zip_entry_count(path: Path) -> int | None:
    """The member count a zip's end record declares, or None if it has none we can read.

    Read before :mod:`zipfile` builds an object per member, so that a zip declaring
    millions of members is refused without the memory that would take.
    """
    with path.open("rb") as f:
        size = f.seek(0, 2)
        tail_len = min(size, 0xFFFF + 22 + 20)
        f.seek(size - tail_len)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        count = int.from_bytes(tail[at + 10 : at + 12], "little")
        locator = tail[at - 20 : at] if at >= 20 else b""
        if count != 0xFFFF or not locator.startswith(b"PK\x06\x07"):
            return count
        f.seek(int.from_bytes(locator[8:16], "little"))
        record = f.read(40)
    if not record.startswith(b"PK\x06\x06") or len(record) < 40:
        return None
    return int.from_bytes(record[32:40], "little")


def _iter_zip(path: Path, limits: IngestLimits, archive: str) -> Iterator[ArchiveFile]:
    declared = zip_entry_count(path)
    if declared is not None and declared > limits.max_members:
        raise InvalidDataset(
            f"archive {archive!r} has more than {limits.max_members} members ({declared})"
        )
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        raise InvalidDataset(
            f"archive {archive!r} is truncated or not a valid zip ({exc})"
        ) from exc
    with zf:
        infos = zf.infolist()
        guard = ArchiveGuard(limits, archive)
        paths = [guard.admit(_zip_info(info)) for info in infos]  # whole archive first
        for info, member in zip(infos, paths, strict=True):
            if info.is_dir() or is_junk(member):
                continue
            try:
                raw = zf.open(info)
            except (*_READ_ERRORS, NotImplementedError) as exc:
                raise InvalidDataset(
                    f"archive {archive!r}: member {member!r} cannot be read ({exc})"
                ) from exc
            with raw:
                yield ArchiveFile(
                    member, info.file_size, GuardedReader(raw, guard, member, info.file_size)
                )


def _tar_info(info: tarfile.TarInfo) -> MemberInfo:
    kind = MemberKind.SPECIAL
    if info.issym():
        kind = MemberKind.SYMLINK
    elif info.islnk():
        kind = MemberKind.HARDLINK
    elif info.isdir():
        kind = MemberKind.DIR
    elif info.isreg() and not info.issparse():
        kind = MemberKind.FILE
    return MemberInfo(info.name, info.size, kind)


class _OversizedHeader(Exception):
    pass


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses pax / long-name headers too large to read into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _TAR_META_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise _OversizedHeader(f"a {self.size}-byte extended header after {self.name!r}")
        # _proc_member is tarfile's private per-header hook; typeshed does not declare it.
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return member


def _iter_tar(
    path: Path, kind: ArchiveKind, limits: IngestLimits, archive: str
) -> Iterator[ArchiveFile]:
    # Random-access mode over a real (or gzip) file object: tarfile then notices data that
    # ends inside a member it skips, which its stream mode silently takes for the end.
    guard = ArchiveGuard(limits, archive)
    last = "(start)"
    with _open_raw(path, kind) as fileobj:
        try:
            tf = tarfile.open(fileobj=fileobj, mode="r:", tarinfo=_BoundedTarInfo)  # noqa: SIM115
        except (*_READ_ERRORS, _OversizedHeader) as exc:
            raise InvalidDataset(f"archive {archive!r} is truncated or corrupt ({exc})") from exc
        with tf:
            while True:
                try:
                    info = tf.next()
                except (*_READ_ERRORS, _OversizedHeader) as exc:
                    raise InvalidDataset(
                        f"archive {archive!r} is truncated or corrupt after member {last!r} ({exc})"
                    ) from exc
                tf.members = []  # type: ignore[attr-defined]  # else it keeps every header
                if info is None:
                    break
                member = guard.admit(_tar_info(info))
                last = info.name
                if info.isdir() or is_junk(member):
                    continue
                raw = tf.extractfile(info)
                if raw is None:  # pragma: no cover - regular files always have data
                    continue
                reader = GuardedReader(raw, guard, member, info.size)
                in_place = info.offset_data if kind is ArchiveKind.TAR else None
                yield ArchiveFile(member, info.size, reader, in_place)
            _check_tar_end(fileobj, kind, tf.offset, guard, last)


def _open_raw(path: Path, kind: ArchiveKind) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if kind is ArchiveKind.TAR_GZ else path.open("rb")


def _check_tar_end(
    fileobj: gzip.GzipFile | io.BufferedReader,
    kind: ArchiveKind,
    offset: int,
    guard: ArchiveGuard,
    last: str,
) -> None:
    """A whole tar ends with a zero block; tarfile takes a cut at a header for the end."""
    try:
        if kind is ArchiveKind.TAR:
            fileobj.seek(offset)
            whole = fileobj.read(_BLOCK) == bytes(_BLOCK)
        else:
            # tarfile has just read the block at `offset` and found it all zeros, unless it
            # came up short; seeking back in a gzip stream would inflate it all over again.
            whole = fileobj.tell() == offset + _BLOCK
            # Drain, so gzip checks its length and CRC. Tar pads to 10 KiB records; anything
            # past a generous allowance inflates on the archive's byte budget.
            drained = 0
            while chunk := fileobj.read(COPY_CHUNK):
                drained += len(chunk)
                if drained > TAR_PADDING_ALLOWANCE:
                    guard.charge(len(chunk), "(after the end of the tar)")
    except _READ_ERRORS as exc:
        raise InvalidDataset(
            f"archive {guard.archive!r} is truncated or corrupt after member {last!r} ({exc})"
        ) from exc
    if not whole:
        raise InvalidDataset(
            f"archive {guard.archive!r} is truncated or corrupt after member {last!r}"
        )
