"""Where each stage reads and writes, relative to the project root (dvc.yaml says the same)."""

from __future__ import annotations

from pathlib import Path

DOWNLOADS = Path("data/downloads")  # archives and resumable .part files; outside DVC outs on purpose
AUGMENTATION = Path("reports/augmentation")  # the augment stage's preview grids, <policy>.png
# What varies from run to run (timings, MLflow run ids) is logged here and in MLflow, never into
# DVC-hashed outputs, so that a rerun with the same inputs reproduces the same hashes.
LOGS = Path("logs")


# Per-epoch checkpoints of train and pretrain (<stage>/<key>/), removed when the stage succeeds: never a DVC output
# (gitignored, dvcignored), so a killed stage resumes without touching what DVC hashes.
CHECKPOINTS = Path("checkpoints")


def checkpoints(stage: str) -> Path:
    return CHECKPOINTS / stage


def train_log(variant: str) -> Path:
    return LOGS / "train" / f"{variant}.json"


def pretrain_log(source: str) -> Path:
    return LOGS / "pretrain" / f"{source}.json"


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


def history(variant: str) -> Path:
    return Path("reports/train") / f"{variant}.csv"


METRICS = Path("reports/metrics")  # <variant>.json, written by evaluate
METRICS_SUMMARY = Path("reports/metrics.json")
SUMMARY = Path("reports/summary.md")


def metrics(variant: str) -> Path:
    return METRICS / f"{variant}.json"


REGISTER = Path("reports/register")  # <dataset>.json: the register stage's champion decision


def register(dataset: str) -> Path:
    return REGISTER / f"{dataset}.json"


PLOTS = Path("reports/plots")  # <kind>/<variant>.csv for DVC's templates, images/<variant>/*.png


def plot_data(kind: str, variant: str) -> Path:
    return PLOTS / kind / f"{variant}.csv"


def plot_images(variant: str) -> Path:
    return PLOTS / "images" / variant


# --- transfer learning: each pretrain@<source> stage's backbone (<source>/backbone.keras, summary.json)
PRETRAIN = Path("models/pretrain")


def pretrain(source: str) -> Path:
    """The ``pretrain@<source>`` stage's output folder."""
    return PRETRAIN / source
