"""Writing outputs so that a failure never leaves a half-written file or folder."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def remove_leftovers(target: Path) -> list[Path]:
    """Remove the temporary folders a killed :func:`atomic_dir` of ``target`` left beside it; return them.

    ``.<name>.tmp*`` (a write in progress) and ``.<name>.old-*`` (the previous
    version, moved aside). A kill (SIGKILL, power loss) skips every cleanup, so
    the next write of the same target clears them; .dvcignore hides them
    from DVC meanwhile. One writer per target at a time, as DVC runs stages.
    """
    if not target.parent.is_dir():
        return []
    found = [*target.parent.glob(f".{target.name}.tmp*"), *target.parent.glob(f".{target.name}.old-*")]
    for path in found:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return found


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; it replaces ``target`` only on success (leftovers of a killed one go)."""
    remove_leftovers(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        yield tmp
        swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename.

    The temporary file's name is unique, so concurrent writers of one path
    never share it: each rename is whole, and the last one wins. ``mode``
    applies from the first byte (0o600 keeps a secret private throughout).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(name, mode)  # mkstemp creates 0600
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def swap_into_place(tmp: Path, target: Path) -> None:
    """Replace the folder ``target`` by ``tmp``; the old target is moved aside first, then removed."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def save_keras(model: Any, path: Path) -> None:
    """``model.save(path)``, rewritten so that the same weights always give the same bytes.

    A ``.keras`` file is a zip whose ``metadata.json`` holds the save date,
    whose entries carry the save time, and whose ``config.json`` numbers the
    objects layers share (a dtype policy) by their memory address; without
    the three, two runs of a deterministic training stage give equal output
    hashes (DVC) and equal ``model.md5`` tags (MLflow).
    """
    model.save(path)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = _renumber_shared_objects(data.decode()).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            dst.writestr(fixed, data)


def _renumber_shared_objects(config: str) -> str:
    """Keras' ``"shared_object_id": <id()>`` numbered 0, 1, ... in order of appearance (only equality matters to Keras)."""
    numbers: dict[str, int] = {}
    return re.sub(
        r'"shared_object_id": (\d+)', lambda m: f'"shared_object_id": {numbers.setdefault(m.group(1), len(numbers))}', config
    )
