"""The command line shared by the per-dataset stages."""

from __future__ import annotations

import argparse

from pipeline.config import DATASETS


def dataset_arg(stage: str, doc: str | None, argv: list[str] | None) -> str:
    """Parse ``python -m pipeline <stage> <dataset>``; a bad name exits 2 with the choices."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {stage}", description=doc)
    parser.add_argument("dataset", choices=DATASETS)
    return parser.parse_args(argv).dataset
