"""Stage ``download``: put one dataset's raw files under ``data/raw/<dataset>/``.

``data.profile: demo`` generates deterministic stand-ins (offline, seconds);
``real`` downloads the archive (resumable, sha256-checked) into
``data/downloads/`` and extracts it with zip-bomb and path-traversal guards.
The target folder is replaced only once everything succeeded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline import cli, config, files, paths
from pipeline.config import DataConfig, Source
from pipeline.data import demo
from pipeline.data.archive import extract
from pipeline.data.fetch import fetch, resolve_source

log = logging.getLogger(__name__)


def generate(dataset: str, cfg: DataConfig, target: Path) -> int:
    """Write the demo stand-in of ``dataset`` into ``target`` (replaced atomically); return the file count."""
    write = demo.write_pets if dataset == "pets" else demo.write_houses
    with files.atomic_dir(target) as tmp:
        count = write(tmp, cfg.demo)
    log.info("%s: generated %d demo files in %s", dataset, count, target)
    return count


def download(dataset: str, cfg: DataConfig, source: Source, target: Path, downloads: Path) -> int:
    """Fetch (from ``data.mirror`` when set) and extract the real archive of ``dataset``; return the file count."""
    url = resolve_source(source.url, cfg.mirror, source.mirror_file)
    sha256 = source.mirror_sha256 if cfg.mirror else source.sha256
    archive = downloads / (Path(unquote(urlparse(url).path)).name or f"{dataset}.archive")
    downloads.mkdir(parents=True, exist_ok=True)
    fetch(url, archive, sha256, timeout_s=cfg.timeout_s, retries=cfg.retries)
    count = extract(
        archive, target, max_bytes=cfg.extract.max_bytes, max_files=cfg.extract.max_files, max_ratio=cfg.extract.max_ratio
    )
    log.info("%s: extracted %d files from %s into %s", dataset, count, archive, target)
    return count


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline download <dataset>``."""
    dataset = cli.dataset_arg("download", __doc__, argv)
    params = config.load()
    target = paths.raw(dataset)
    if params.data.profile == "demo":
        generate(dataset, params.data, target)
    else:
        download(dataset, params.data, params.datasets[dataset], target, paths.DOWNLOADS)
