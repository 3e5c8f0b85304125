"""Archive safety: the pure checks and the byte-counting reader."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nimbus.datasets.archive import (
    ArchiveKind,
    MemberInfo,
    MemberKind,
    check_members,
    copy_member,
    is_junk,
    iter_files,
    safe_member_path,
    sniff_archive,
    zip_entry_count,
)
from nimbus.datasets.domain import IngestLimits
from nimbus.errors import InvalidDataset

if TYPE_CHECKING:
    from tests.datasets.conftest import Build

LIMITS = IngestLimits()


def read_all(path: Path, limits: IngestLimits = LIMITS) -> dict[str, bytes]:
    return {f.path: f.stream.read() for f in iter_files(path, limits, path.name)}


# --- pure checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a/b.png", "a/b.png"), ("./a//b.png", "a/b.png"), ("a\\b.png", "a/b.png"), ("a/", "a")],
)
def test_safe_member_path_normalizes(name: str, expected: str) -> None:
    assert safe_member_path(name, "x.zip") == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.png", "'..'"),
        ("a/../../evil.png", "'..'"),
        ("a\\..\\..\\evil.png", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:\\Windows\\x.png", "absolute"),
        ("a\x00b.png", "NUL"),
    ],
)
def test_safe_member_path_refuses_escapes(name: str, reason: str) -> None:
    with pytest.raises(InvalidDataset, match=reason) as err:
        safe_member_path(name, "up.zip")
    assert repr(name) in err.value.message
    assert "'up.zip'" in err.value.message


@pytest.mark.parametrize(
    ("path", "junk"),
    [
        ("__MACOSX/cats/._1.png", True),
        ("cats/.DS_Store", True),
        ("cats/.hidden.png", True),
        (".git/config", True),
        ("cats/Thumbs.db", True),
        ("cats/1.png", False),
    ],
)
def test_is_junk(path: str, junk: bool) -> None:
    assert is_junk(path) is junk


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (MemberKind.SYMLINK, "symbolic link"),
        (MemberKind.HARDLINK, "hard link"),
        (MemberKind.SPECIAL, "device"),
    ],
)
def test_check_members_refuses_links_and_devices(kind: MemberKind, reason: str) -> None:
    infos = [MemberInfo("a/ok.png", 10), MemberInfo("a/bad", 0, kind)]
    with pytest.raises(InvalidDataset, match=reason) as err:
        check_members(infos, LIMITS, "up.tar")
    assert "'a/bad'" in err.value.message


def test_check_members_counts_members() -> None:
    infos = [MemberInfo(f"a/{i}.png", 1) for i in range(4)]
    assert len(check_members(infos, IngestLimits(max_members=4), "up.zip")) == 4
    with pytest.raises(InvalidDataset, match="more than 3 members") as err:
        check_members(infos, IngestLimits(max_members=3), "up.zip")
    assert "'a/3.png'" in err.value.message


def test_check_members_limits_declared_total() -> None:
    infos = [MemberInfo("a/1.bin", 600), MemberInfo("a/2.bin", 600)]
    with pytest.raises(InvalidDataset, match="limit of 1000 bytes") as err:
        check_members(infos, IngestLimits(max_unpacked_bytes=1000), "up.zip")
    assert "'a/2.bin'" in err.value.message


def test_check_members_limits_compression_ratio() -> None:
    big = 10 * 1024 * 1024
    fine = MemberInfo("a/ok.bin", big, compressed_size=big // 100)
    bomb = MemberInfo("a/bomb.bin", big, compressed_size=big // 1000)
    tiny = MemberInfo("a/tiny.bin", 1000, compressed_size=1)  # too small to matter
    assert check_members([fine, tiny], LIMITS, "up.zip") == ["a/ok.bin", "a/tiny.bin"]
    with pytest.raises(InvalidDataset, match="compression ratio of 1000") as err:
        check_members([bomb], LIMITS, "up.zip")
    assert "'a/bomb.bin'" in err.value.message


def test_check_members_refuses_encrypted() -> None:
    with pytest.raises(InvalidDataset, match="encrypted"):
        check_members([MemberInfo("a/x.png", 3, encrypted=True)], LIMITS, "up.zip")


# --- reading real archives -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
def test_iter_files_reads_members_and_skips_junk(build: Build, kind: str) -> None:
    members = {"a/1.txt": b"one", "a/2.txt": b"two" * 100, "__MACOSX/a/._1.txt": b"x"}
    members["a/.DS_Store"] = b"junk"
    if kind == "zip":
        path = build.zip("up.zip", members)
    else:
        path = build.tar(f"up.{kind}", members, gz=kind == "tgz")
    expected = {"zip": ArchiveKind.ZIP, "tar": ArchiveKind.TAR, "tgz": ArchiveKind.TAR_GZ}
    assert sniff_archive(path) is expected[kind]
    assert read_all(path) == {"a/1.txt": b"one", "a/2.txt": b"two" * 100}


def test_zip_slip_is_refused(build: Build) -> None:
    path = build.zip("slip.zip", {"ok/1.txt": b"1", "../evil.txt": b"x"})
    with pytest.raises(InvalidDataset, match=r"'\.\./evil\.txt' has a '\.\.'"):
        read_all(path)


def test_tar_absolute_path_is_refused(build: Build) -> None:
    path = build.tar("abs.tar", {"/abs/evil.txt": b"x"})
    with pytest.raises(InvalidDataset, match=r"'/abs/evil\.txt' has an absolute path"):
        read_all(path)


def test_tar_symlink_is_refused(build: Build) -> None:
    link = tarfile.TarInfo("a/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    path = build.tar("link.tar", {"a/1.png": b"x"}, extra=[link])
    with pytest.raises(InvalidDataset, match=r"'a/link\.png' is a symbolic link"):
        read_all(path)


def test_tar_hardlink_and_device_are_refused(build: Build) -> None:
    hard = tarfile.TarInfo("a/hard.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "a/1.png"
    device = tarfile.TarInfo("a/dev")
    device.type = tarfile.CHRTYPE
    with pytest.raises(InvalidDataset, match=r"'a/hard\.png' is a hard link"):
        read_all(build.tar("hard.tar", {"a/1.png": b"x"}, extra=[hard]))
    with pytest.raises(InvalidDataset, match=r"'a/dev' is a device"):
        read_all(build.tar("dev.tar", {}, extra=[device]))


def test_zip_unix_symlink_is_refused(build: Build) -> None:
    info = zipfile.ZipInfo("a/link.png")
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    path = build.zip("link.zip", {"a/1.png": b"x"}, extra=[(info, b"/etc/passwd")])
    with pytest.raises(InvalidDataset, match=r"'a/link\.png' is a symbolic link"):
        read_all(path)


def test_zip_bomb_by_ratio_is_refused(build: Build) -> None:
    path = build.zip("bomb.zip", {"a/zeros.bin": bytes(8 * 1024 * 1024)})
    with pytest.raises(InvalidDataset, match="compression ratio") as err:
        read_all(path)
    assert "'a/zeros.bin'" in err.value.message


def test_total_size_limit_is_refused(build: Build) -> None:
    path = build.tar("big.tar", {"a/1.bin": bytes(3000), "a/2.bin": bytes(3000)})
    with pytest.raises(InvalidDataset, match="limit of 5000 bytes") as err:
        read_all(path, IngestLimits(max_unpacked_bytes=5000))
    assert "'a/2.bin'" in err.value.message


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_too_many_members_is_refused(build: Build, kind: str) -> None:
    members = {f"a/{i}.txt": b"x" for i in range(5)}
    if kind == "zip":
        path = build.zip("many.zip", members)
        assert zip_entry_count(path) == 5  # read before zipfile loads a member
    else:
        path = build.tar("many.tgz", members, gz=True)
    with pytest.raises(InvalidDataset, match="more than 4 members"):
        read_all(path, IngestLimits(max_members=4))


def test_zip_entry_count_reads_zip64_records(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)  # write zip64 end records
    path = build.zip("z64.zip", {f"a/{i}.txt": b"x" for i in range(5)})
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"PK\x05\x06")
    raw[at + 8 : at + 12] = b"\xff\xff\xff\xff"  # the 16-bit counts defer to zip64
    path.write_bytes(bytes(raw))
    assert zip_entry_count(path) == 5


def test_oversized_tar_extended_header_is_refused(build: Build) -> None:
    path = build.root / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("a/1.txt")
        info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidDataset, match="extended header"):
        read_all(path)


def test_gzip_bomb_inside_tar_hits_the_byte_limit_while_extracting(
    build: Build, tmp_path: Path
) -> None:
    bomb = build.gz(bytes(4 * 1024 * 1024))  # declares ~4 KiB, inflates to 4 MiB
    path = build.tar("gzbomb.tar", {"a/data.gz": bomb})
    limits = IngestLimits(max_unpacked_bytes=1024 * 1024)
    with pytest.raises(InvalidDataset, match="unpacks past the limit") as err:
        for member in iter_files(path, limits, "gzbomb.tar"):
            copy_member(member, tmp_path / "out.bin", gunzip=True)
    assert "'a/data.gz'" in err.value.message


def test_zip_member_lying_about_its_size_is_refused(build: Build) -> None:
    data = bytes(range(256)) * 40
    path = build.zip("liar.zip", {"a/x.bin": data}, compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    true_size = len(data).to_bytes(4, "little")
    lie = (1000).to_bytes(4, "little")
    # Shrink the declared size in both the local header and the central directory.
    patched = bytes(raw).replace(true_size + true_size, lie + lie)
    assert patched != bytes(raw)
    path.write_bytes(patched)
    with pytest.raises(InvalidDataset, match=r"'a/x\.bin'"):
        read_all(path)


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_truncated_archive_is_refused(build: Build, kind: str) -> None:
    members = {f"a/{i}.bin": bytes(range(256)) * (20 + i) for i in range(6)}
    if kind == "zip":
        path = build.zip("cut.zip", members)
    else:
        path = build.tar("cut.tgz", members, gz=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidDataset, match="truncated") as err:
        read_all(path)
    assert "'cut." in err.value.message


def test_tar_cut_at_a_member_boundary_is_refused(build: Build) -> None:
    path = build.tar("cut.tar", {"a/1.bin": bytes(512), "a/2.bin": bytes(512)})
    path.write_bytes(path.read_bytes()[: 3 * 512])  # header, data, header: no end blocks
    with pytest.raises(InvalidDataset, match="truncated"):
        read_all(path)


def test_corrupt_gzip_stream_is_refused(build: Build) -> None:
    path = build.tar("bad.tgz", {"a/1.bin": bytes(range(256)) * 400}, gz=True)
    raw = bytearray(path.read_bytes())
    for i in range(40, 80):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidDataset, match=r"'bad\.tgz'"):
        read_all(path)


def test_not_an_archive(build: Build) -> None:
    path = build.file("notes.txt", "hello")
    assert sniff_archive(path) is None
    with pytest.raises(InvalidDataset, match=r"not a zip, tar or tar\.gz"):
        read_all(path)


def test_member_stream_counts_bytes(build: Build) -> None:
    path = build.tar("ok.tar", {"a/1.bin": b"x" * 1000})
    limits = IngestLimits(max_unpacked_bytes=5000)
    for member in iter_files(path, limits, "ok.tar"):
        assert member.stream.read(10) == b"x" * 10
        assert member.stream.guard.produced == 10
        assert io.BytesIO(member.stream.read()).getbuffer().nbytes == 990
