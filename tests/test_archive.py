"""Tests for pipeline.data.archive: safe extraction of zip and tar archives built in tmp_path."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.data import archive as archive_mod
from pipeline.data.archive import extract
from pipeline.errors import PipelineError

MB = 1 << 20
LIMITS = {"max_bytes": 50 * MB, "max_files": 100, "max_ratio": 200.0}
FILES = {
    "data/a.txt": b"alpha\n",
    "data/sub/b.bin": bytes(range(256)) * 10,
    "top.csv": b"x,y\n1,2\n",
}


def make_zip(path: Path, files: dict[str, bytes], *, dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in dirs:
            zf.writestr(zipfile.ZipInfo(name), b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def add_tar_member(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tf:
        tf.addfile(info, io.BytesIO(data) if data else None)
    return path


def assert_tree(root: Path, files: dict[str, bytes]) -> None:
    found = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert found == files


def refused(archive: Path, target: Path, **limits: float) -> str:
    """Extract expecting a refusal; check nothing was left behind; return the message."""
    with pytest.raises(PipelineError) as err:
        extract(archive, target, **{**LIMITS, **limits})
    message = str(err.value)
    assert str(archive) in message
    assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    return message


# --- successful extraction ------------------------------------------------------------


def test_zip_extracts_files_and_dirs(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "x.zip", FILES, dirs=("empty/",))
    target = tmp_path / "out"
    assert extract(archive, target, **LIMITS) == 3
    assert_tree(target, FILES)
    assert (target / "empty").is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_tar_extracts(tmp_path: Path, suffix: str, mode: str) -> None:
    archive = make_tar(tmp_path / f"x{suffix}", FILES, mode)
    target = tmp_path / "out"
    assert extract(archive, target, **LIMITS) == 3
    assert_tree(target, FILES)


def test_format_is_detected_by_content_not_name(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "download.bin", FILES)
    assert extract(archive, tmp_path / "out", **LIMITS) == 3


def test_existing_target_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    extract(make_zip(tmp_path / "x.zip", FILES), target, **LIMITS)
    assert_tree(target, FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x.zip"]


def test_dot_slash_prefix_is_fine(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "x.tar.gz", {"./data/a.txt": b"a"})
    extract(archive, tmp_path / "out", **LIMITS)
    assert (tmp_path / "out" / "data" / "a.txt").read_bytes() == b"a"


def test_small_highly_compressible_member_skips_ratio_check(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "x.zip", {"zeros.bin": bytes(MB - 1)})
    assert extract(archive, tmp_path / "out", **LIMITS) == 1


# --- refusals: paths and member types -------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.txt", "data/../../evil.txt", "data\\..\\..\\evil.txt"])
def test_zip_dotdot_member_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "x.zip", {"ok.txt": b"ok", name: b"evil"})
    message = refused(archive, tmp_path / "out")
    assert f"member {name!r} escapes the target folder" in message
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out").exists()


def test_tar_dotdot_member_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "x.tar.gz", {"ok.txt": b"ok", "../evil.txt": b"evil"})
    assert "member '../evil.txt' escapes the target folder" in refused(archive, tmp_path / "out")


def test_absolute_path_member_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "x.tar", {"/tmp/abs.txt": b"abs"}, mode="w")
    assert "member '/tmp/abs.txt' has an absolute path" in refused(archive, tmp_path / "out")


def test_zip_absolute_path_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("ok.txt")
        zf.writestr(info, b"abs")
        info.filename = "/etc/abs.txt"  # ZipInfo() strips a leading slash; write one anyway
        zf.writestr(info, b"abs")
    assert "member '/etc/abs.txt' has an absolute path" in refused(archive, tmp_path / "out")


def test_drive_letter_member_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "x.tar", {"C:/Windows/evil.dll": b"x"}, mode="w")
    assert "member 'C:/Windows/evil.dll' has a drive letter" in refused(archive, tmp_path / "out")


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"/etc/passwd")
    assert "member 'link' is a symbolic link" in refused(archive, tmp_path / "out")


def test_tar_symlink_member_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    archive = add_tar_member(tmp_path / "x.tar", info)
    assert "member 'link' is a symbolic link" in refused(archive, tmp_path / "out")


def test_tar_hardlink_member_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("hard")
    info.type = tarfile.LNKTYPE
    info.linkname = "/etc/passwd"
    archive = add_tar_member(tmp_path / "x.tar", info)
    assert "member 'hard' is a hard link" in refused(archive, tmp_path / "out")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_device_and_fifo_members_are_refused(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("dev")
    info.type = kind
    archive = add_tar_member(tmp_path / "x.tar", info)
    assert "member 'dev' is not a regular file" in refused(archive, tmp_path / "out")


# --- refusals: limits ------------------------------------------------------------------


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "x.zip", {f"f{i}.txt": b"" for i in range(12)})
    message = refused(archive, tmp_path / "out", max_files=10)
    assert "12 files exceed data.extract.max_files=10" in message


def test_declared_size_over_max_bytes_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "x.tar.gz", {"a.bin": bytes(3000), "b.bin": bytes(3000)})
    message = refused(archive, tmp_path / "out", max_bytes=5000)
    assert "6.0 kB uncompressed exceeds data.extract.max_bytes=5000" in message


def test_zip_bomb_member_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "x.zip", {"ok.txt": b"ok", "bomb.bin": bytes(4 * MB)})
    message = refused(archive, tmp_path / "out")
    assert "member 'bomb.bin' has compression ratio" in message
    assert "> data.extract.max_ratio=200" in message


def test_real_bytes_are_counted_even_if_declared_sizes_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate lying headers: skip the declared-size check, keep the byte counter.
    monkeypatch.setattr(archive_mod, "check_members", lambda *args: None)
    archive = make_zip(tmp_path / "x.zip", {"a.bin": bytes(3000), "b.bin": bytes(3000)})
    message = refused(archive, tmp_path / "out", max_bytes=5000)
    assert "member 'b.bin'" in message and "data.extract.max_bytes=5000" in message
    assert not (tmp_path / "out").exists()


# --- failure leaves the target alone ------------------------------------------------------


def test_failure_leaves_existing_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    archive = make_zip(tmp_path / "x.zip", {"new.txt": b"new", "../evil.txt": b"evil"})
    assert "'../evil.txt'" in refused(archive, target)
    assert_tree(target, {"keep.txt": b"keep"})


def test_failure_while_writing_cleans_temp_and_keeps_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    monkeypatch.setattr(archive_mod, "check_members", lambda *args: None)
    archive = make_zip(tmp_path / "x.zip", {"a.txt": b"a", "b.txt": b"b" * 10})
    message = refused(archive, target, max_bytes=5)
    assert "member 'b.txt'" in message
    assert_tree(target, {"keep.txt": b"keep"})


def test_corrupt_member_names_member(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "x.zip", {"a.txt": b"hello world " * 100})
    raw = bytearray(archive.read_bytes())
    offset = raw.index(b"a.txt") + len(b"a.txt") + 10  # inside the compressed data
    raw[offset] ^= 0xFF
    archive.write_bytes(bytes(raw))
    assert "member 'a.txt'" in refused(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    archive.write_bytes(b"<html>not found</html>")
    with pytest.raises(PipelineError, match="not a zip or tar archive") as err:
        extract(archive, tmp_path / "out", **LIMITS)
    assert str(archive) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zip"]


def test_missing_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no such file"):
        extract(tmp_path / "nope.zip", tmp_path / "out", **LIMITS)
