"""Atomic writes: concurrent writers of one output file each rename a whole file of their own."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

from pipeline import files


def test_concurrent_writers_of_one_file_never_collide(tmp_path: Path) -> None:
    target, errors = tmp_path / "out" / "metrics.json", []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                files.write_json(target, {"writer": n, "i": i, "pad": "x" * 2000})
        except Exception as exc:  # noqa: BLE001 - what the test counts
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []  # with one fixed temporary name, writers renamed each other's file away (FileNotFoundError)
    assert json.loads(target.read_text())["i"] == 49  # whole, from one writer's last write
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temporary file left
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    files.write_json(target, {"old": 1})
    try:
        files.write_text(target, 123)  # type: ignore[arg-type] - fails inside the write, after the temporary exists
    except TypeError:
        pass
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
