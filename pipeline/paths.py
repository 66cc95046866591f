"""Where each stage reads and writes, relative to the project root (dvc.yaml says the same)."""

from __future__ import annotations

from pathlib import Path

DOWNLOADS = Path("data/downloads")  # archives and resumable .part files; outside DVC outs on purpose
AUGMENTATION = Path("reports/augmentation")  # policy.json (read by train) and the preview grids
POLICY = AUGMENTATION / "policy.json"


def raw(dataset: str) -> Path:
    return Path("data/raw") / dataset


def validated(dataset: str) -> Path:
    return Path("data/validated") / dataset


def validation_report(dataset: str) -> Path:
    return Path("reports/validation") / f"{dataset}.json"


def prepared(dataset: str) -> Path:
    return Path("data/prepared") / dataset


def stats(dataset: str) -> Path:
    return Path("data/stats") / f"{dataset}.json"


def model(variant: str) -> Path:
    return Path("models") / variant


def train_report(variant: str) -> Path:
    return Path("reports/train") / variant


def metrics(variant: str) -> Path:
    return Path("reports/metrics") / f"{variant}.json"


def plots(variant: str) -> Path:
    return Path("reports/plots") / variant

