"""Safe extraction of a zip or tar archive.

Every member is checked before anything is written: no absolute paths, drive
letters or ``..`` components, no links or special files, and limits on the
number of files, the declared uncompressed size and (zip) the compression
ratio. The bytes actually written are counted as well, since declared sizes
can lie. Extraction goes into a temporary folder beside the target, which then
replaces the target; on failure the target is left untouched.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from pipeline.config import ExtractLimits as Limits
from pipeline.errors import PipelineError
from pipeline.files import swap_into_place

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Members smaller than this are not checked for their compression ratio.
RATIO_MIN_BYTES = 1 << 20
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SEP_RE = re.compile(r"[\\/]")
# Errors a corrupt, truncated or unsupported archive may raise while reading.
_READ_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
)

_Ref = zipfile.ZipInfo | tarfile.TarInfo
_Opener = Callable[[_Ref], IO[bytes]]


@dataclass(frozen=True)
class Member:
    """One archive entry, independent of the archive format.

    ``kind`` is one of "file", "dir", "symlink", "hardlink", "special";
    ``packed`` is the compressed size (zip only, else None).
    """

    name: str
    kind: str
    size: int
    packed: int | None
    ref: _Ref


def extract(archive: Path, target: Path, *, max_bytes: int, max_files: int, max_ratio: float) -> int:
    """Extract ``archive`` (zip or tar, detected by content) into ``target``.

    Returns the number of files extracted. All members are checked before any
    is written; ``target`` is replaced only after a complete extraction, and is
    left untouched on any failure. Raises :class:`PipelineError` naming the
    archive and the offending member.
    """
    archive, target = Path(archive), Path(target)
    limits = Limits(max_bytes=max_bytes, max_files=max_files, max_ratio=max_ratio)
    with _open_archive(archive) as (members, opener):
        check_members(archive, members, limits)
        tmp = _make_temp_folder(archive, target)
        try:
            count = _write_members(archive, members, opener, tmp, limits)
            swap_into_place(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PipelineError(f"cannot extract {archive} to {target}: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("extracted %d files from %s to %s", count, archive, target)
    return count


def _make_temp_folder(archive: Path, target: Path) -> Path:
    """A fresh, empty folder beside ``target`` (same file system, so os.replace works)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    except OSError as exc:
        raise PipelineError(f"cannot extract {archive}: cannot create a folder beside {target}: {exc}") from exc


def _refuse(archive: Path, problem: str) -> PipelineError:
    return PipelineError(f"refusing to extract {archive}: {problem}")


@contextlib.contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[list[Member], _Opener]]:
    """Yield the members of ``archive`` and a function opening one for reading."""
    if not archive.is_file():
        raise PipelineError(f"cannot extract {archive}: no such file")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                yield [_zip_member(info) for info in zf.infolist()], zf.open
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                yield [_tar_member(info) for info in tf.getmembers()], tf.extractfile
        else:
            raise PipelineError(f"cannot extract {archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise PipelineError(f"cannot extract {archive}: corrupt archive: {exc}") from exc


def _zip_member(info: zipfile.ZipInfo) -> Member:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        kind = "symlink"
    elif info.is_dir() or stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_IFMT(mode) in (0, stat.S_IFREG):
        kind = "file"
    else:
        kind = "special"
    return Member(info.filename, kind, info.file_size, info.compress_size, info)


def _tar_member(info: tarfile.TarInfo) -> Member:
    if info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    elif info.isdir():
        kind = "dir"
    elif info.isreg():
        kind = "file"
    else:
        kind = "special"
    return Member(info.name, kind, info.size, None, info)


def check_members(archive: Path, members: list[Member], limits: Limits) -> None:
    """Raise :class:`PipelineError` unless every member is safe and within ``limits``."""
    for member in members:
        _check_path(archive, member.name)
        _check_kind(archive, member)
        _check_ratio(archive, member, limits.max_ratio)
    files = [m for m in members if m.kind == "file"]
    if len(files) > limits.max_files:
        raise _refuse(archive, f"{len(files)} files exceed data.extract.max_files={limits.max_files}")
    declared = sum(m.size for m in files)
    if declared > limits.max_bytes:
        raise _refuse(
            archive,
            f"{_human(declared)} uncompressed exceeds data.extract.max_bytes={limits.max_bytes}",
        )


def _check_path(archive: Path, name: str) -> None:
    if not name.strip("/\\"):
        raise _refuse(archive, f"member {name!r} has an empty path")
    if name.startswith(("/", "\\")):
        raise _refuse(archive, f"member {name!r} has an absolute path")
    if _DRIVE_RE.match(name):
        raise _refuse(archive, f"member {name!r} has a drive letter")
    if ".." in _SEP_RE.split(name):
        raise _refuse(archive, f"member {name!r} escapes the target folder")


def _check_kind(archive: Path, member: Member) -> None:
    problems = {
        "symlink": "is a symbolic link",
        "hardlink": "is a hard link",
        "special": "is not a regular file or folder (device, fifo or other special file)",
    }
    if member.kind in problems:
        raise _refuse(archive, f"member {member.name!r} {problems[member.kind]}")


def _check_ratio(archive: Path, member: Member, max_ratio: float) -> None:
    if member.packed is None or member.kind != "file" or member.size < RATIO_MIN_BYTES:
        return
    ratio = member.size / member.packed if member.packed else float("inf")
    if ratio > max_ratio:
        raise _refuse(
            archive,
            f"member {member.name!r} has compression ratio {ratio:.0f} > data.extract.max_ratio={max_ratio:g}",
        )


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1000
    raise AssertionError("unreachable")


def _relative(name: str) -> Path:
    """The member's path below the extraction folder (already checked as safe)."""
    return Path(*[p for p in _SEP_RE.split(name) if p not in ("", ".")])


def _write_members(archive: Path, members: list[Member], opener: _Opener, root: Path, limits: Limits) -> int:
    """Write every member below ``root``; return the number of files written."""
    written = 0
    files = 0
    for member in tqdm(members, desc=f"extract {archive.name}", unit="member", file=sys.stderr):
        path = root / _relative(member.name)
        try:
            if member.kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            written = _copy_member(archive, member, opener, path, written, limits.max_bytes)
        except PipelineError:
            raise
        except _READ_ERRORS as exc:
            raise PipelineError(f"cannot extract {archive}: member {member.name!r}: {exc}") from exc
        files += 1
    return files


def _copy_member(archive: Path, member: Member, opener: _Opener, path: Path, written: int, max_bytes: int) -> int:
    """Copy one file member to ``path``; return the running total of bytes written."""
    src = opener(member.ref)
    if src is None:
        raise _refuse(archive, f"member {member.name!r} has no data")
    with src, open(path, "wb") as out:
        while chunk := src.read(CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                raise _refuse(
                    archive,
                    f"member {member.name!r} takes the bytes written past "
                    f"data.extract.max_bytes={max_bytes} (the declared sizes are wrong)",
                )
            out.write(chunk)
    return written
