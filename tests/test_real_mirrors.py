"""The real profile end to end on the offline mirrors of both datasets.

``../shared/datasets`` is served over loopback HTTP, so the real download code
(Range resume, sha256, extraction guards) runs: download -> validate ->
prepare -> stats for pets and houses. Skipped, with the reason, where the
mirrors are absent.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.stages import download, prepare, stats, validate
from tests.conftest import REPO
from tests.httpserver import serve

pytestmark = pytest.mark.slow

# The 13 planted defects of the PetImages mirror (../shared/datasets/petimages-defects.tsv).
REJECTED = {
    "PetImages/Cat/666.jpg",
    "PetImages/Dog/11702.jpg",
    "PetImages/Cat/Thumbs.db",
    "PetImages/Dog/Thumbs.db",
    "PetImages/Dog/20004.jpg",
    "PetImages/Cat/20009.jpg",
}
WARNED = {
    f"PetImages/{c}/2000{i}.jpg" for c, i in [("Cat", 1), ("Dog", 2), ("Cat", 3), ("Cat", 5), ("Dog", 6), ("Cat", 7), ("Dog", 8)]
}


def _real_params(root: Path, mirror: str) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(profile="real", mirror=str(mirror))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def real_run(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Run every stage of the real profile for both datasets once; yield (project root, server URL)."""
    root = tmp_path_factory.mktemp("real")
    with serve(shared_datasets) as url, pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        _real_params(root, url)
        for stage in (download, validate, prepare, stats):
            for dataset in ("pets", "houses"):
                stage.main([dataset])
        yield root, url


def test_downloads_are_verified_archives(real_run: tuple[Path, str], shared_datasets: Path) -> None:
    root, url = real_run
    sums = dict(line.split()[::-1] for line in (shared_datasets / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((root / "data/downloads" / name).read_bytes()).hexdigest() == digest
    assert not list((root / "data/downloads").glob("*.part"))
    assert {"/kagglecatsanddogs-180px.zip", "/Houses-dataset-master.zip"} <= set(url.paths)


def test_petimages_defects_are_exactly_the_expected_ones(real_run: tuple[Path, str]) -> None:
    root, _ = real_run
    report = json.loads((root / "reports/validation/pets.json").read_text())
    assert {r["path"] for r in report["rejected"]} == REJECTED
    assert {w["path"] for w in report["warnings"]} == WARNED
    assert report["accepted"] == 10_000 + len(WARNED)  # every photo + the 7 decodable planted files
    assert report["per_label"] == {"Cat": 5004, "Dog": 5003}
    assert report["success"] is True
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons["PetImages/Cat/666.jpg"].startswith("empty file")
    assert "HTML" in reasons["PetImages/Cat/20009.jpg"]
    assert "truncated" in reasons["PetImages/Dog/20004.jpg"]
    # rejected files are listed, never deleted
    for rel in REJECTED:
        assert (root / "data/raw/pets" / rel).exists()


def test_real_prepare_and_stats(real_run: tuple[Path, str]) -> None:
    root, _ = real_run
    index = pd.read_parquet(root / "data/prepared/pets/index.parquet")
    # params.yaml's split leaves some photos in no split: the unlabeled ones of pretrain.pets_unlabeled
    split = yaml.safe_load((root / "params.yaml").read_text())["prepare"]["pets"]["split"]
    assert sum(split.values()) < 1
    assert abs(len(index) - sum(split.values()) * 10_007) <= len(split)  # each split's count is rounded
    assert index.groupby("sha256").split.nunique().max() == 1  # duplicates never straddle splits
    shard = np.load(root / "data/prepared/pets" / index.shard.iloc[0], mmap_mode="r")
    assert shard.shape[1:] == (96, 96, 3) and shard.dtype == np.uint8
    houses = pd.read_parquet(root / "data/prepared/houses/index.parquet")
    assert len(houses) == 362  # the seed's zip-code filter (>= 25 houses)
    assert (houses.split == "test").sum() == 91  # test_size=0.25
    s = json.loads((root / "data/stats/pets.json").read_text())
    assert s["examples"] == (index.split == "train").sum()
    assert sum(s["class_weights"]["counts"].values()) == s["examples"]


def test_validate_leaves_raw_untouched(real_run: tuple[Path, str]) -> None:
    root, _ = real_run
    before = _tree_digest(root / "data/raw/houses")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        validate.main(["houses"])
    assert _tree_digest(root / "data/raw/houses") == before


def test_resume_after_dropped_connection(shared_datasets: Path, project: Path) -> None:
    """The houses archive (32 MB) is cut twice mid-file; the stage resumes with Range and succeeds."""
    with serve(shared_datasets, drop_after=5_000_000, drop_times=2) as url:
        _real_params(project, url)
        download.main(["houses"])
    assert url.ranges[0] is None
    assert url.ranges[1] == "bytes=5000000-" and url.ranges[2] == "bytes=10000000-"
    assert (project / "data/raw/houses/Houses-dataset-master/Houses Dataset/HousesInfo.txt").is_file()


def test_wrong_checksum_leaves_nothing(shared_datasets: Path, project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"]["houses"]["mirror"]["sha256"] = "0" * 64
    with serve(shared_datasets) as url:
        params["data"].update(profile="real", mirror=str(url))
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        with pytest.raises(PipelineError, match=r"Houses-dataset-master\.zip failed: sha256 mismatch"):
            download.main(["houses"])
    assert not (project / "data/raw/houses").exists()
    assert not any((project / "data/downloads").iterdir())


def test_folder_mirror(shared_datasets: Path, project: Path) -> None:
    """``data.mirror`` may be a plain folder; the houses archive is copied through the same checks."""
    mirror = project / "mirror"
    mirror.mkdir()
    shutil.copy(shared_datasets / "Houses-dataset-master.zip", mirror)
    _real_params(project, str(mirror))
    download.main(["houses"])
    assert len(list((project / "data/raw/houses").rglob("*.jpg"))) == 535 * 4
