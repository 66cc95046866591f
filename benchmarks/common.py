"""Helpers shared by the benchmark scripts: paths, environment, machine description, output, test photos."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from benchmarks.data_stages import machine

REPO = Path(__file__).resolve().parents[1]
PETS_ZIP = REPO.parent / "shared" / "datasets" / "kagglecatsanddogs-180px.zip"
OUT = REPO / "reports" / "benchmarks"


__all__ = ["OUT", "PETS_ZIP", "REPO", "extract_pets", "machine", "quiet_env", "write_figures"]


def quiet_env() -> None:
    """No telemetry, no TensorFlow start-up chatter, the venv's tools first on PATH."""
    os.environ.update(GX_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def write_figures(name: str, figures: dict[str, Any], details: dict[str, Any] | None = None) -> Path:
    """Print ``figures`` (one per line); write them, ``details`` and the machine to ``reports/benchmarks/<name>.json``."""
    out = OUT / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **figures, "details": details or {}}, indent=2) + "\n")
    for key, value in figures.items():
        print(f"{key:44s} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    print(f"written to {out.relative_to(REPO)}")
    return out


def _decodable(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "skip this file"
        return False


def extract_pets(dest: Path, per_class: int) -> dict[str, list[Path]]:
    """The first ``per_class`` photos of each class that Pillow decodes, written to ``dest/<Cat|Dog>/``."""
    if not PETS_ZIP.is_file():
        sys.exit(f"needs {PETS_ZIP}")
    found: dict[str, list[Path]] = {"Cat": [], "Dog": []}
    with zipfile.ZipFile(PETS_ZIP) as archive:
        for name in sorted(archive.namelist(), key=lambda n: (n.count("/"), n)):
            parts = name.split("/")
            if (
                len(parts) != 3
                or parts[1] not in found
                or len(found[parts[1]]) >= per_class
                or not parts[2].lower().endswith(".jpg")
            ):
                continue
            data = archive.read(name)
            if _decodable(data):
                path = dest / parts[1] / parts[2]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                found[parts[1]].append(path)
    return found
