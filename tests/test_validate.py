"""Tests for pipeline.stages.validate: manifests, the HousesInfo table, the report and the GX suites' failures."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline import config
from pipeline.config import HOUSE_ROOMS, DemoConfig
from pipeline.data import demo, validation
from pipeline.data import manifest as manifests
from pipeline.data.images import ImageLimits
from pipeline.errors import PipelineError
from pipeline.stages import validate
from tests.pipeline_project import copy_project, demo_project, edit_params, raw_digest_after_download, tree_digest

LIMITS = ImageLimits(min_side=16, max_side=8000, max_pixels=40_000_000)
SMALL = DemoConfig(seed=3, pets={"Cat": 12, "Dog": 10}, houses=40)
MANIFEST_COLUMNS = ["path", "status", "reason", "warning", "format", "mode", "width", "height", "bytes", "sha256"]


def jpeg(colour: tuple[int, int, int] = (90, 120, 30), size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


# --------------------------------------------------------------------------- small trees (unit tests)


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo pets (12 cats, 10 dogs, the planted defects) plus a stray file, an exact duplicate and a tiny photo."""
    root = tmp_path_factory.mktemp("pets")
    demo.write_pets(root, SMALL)
    pets = root / demo.PETS_ROOT
    (pets / "stray.jpg").write_bytes(jpeg())
    shutil.copy(pets / "Cat/3.jpg", pets / "Cat/copy-of-3.jpg")
    (pets / "Dog/tiny.jpg").write_bytes(jpeg(size=(8, 8)))
    return root


@pytest.fixture(scope="module")
def pets_manifest(pets_root: Path) -> pd.DataFrame:
    return manifests.pets_manifest(pets_root, LIMITS, workers=1)


@pytest.fixture(scope="module")
def houses_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("houses")
    demo.write_houses(root, SMALL, photo_size=24)
    return root


def by_path(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.set_index("path")


def test_pets_manifest_rows(pets_root: Path, pets_manifest: pd.DataFrame) -> None:
    files = sorted(p.relative_to(pets_root).as_posix() for p in pets_root.rglob("*") if p.is_file())
    assert pets_manifest.path.tolist() == files
    assert pets_manifest.columns.tolist() == ["path", "label", *MANIFEST_COLUMNS[1:]]
    rows = by_path(pets_manifest)
    good = rows.loc["PetImages/Cat/0.jpg"]
    assert (good["label"], good["status"], good["format"], good["mode"]) == ("Cat", "accepted", "JPEG", "RGB")
    assert pd.isna(good.reason) and pd.isna(good.warning)
    assert rows.loc["PetImages/Dog/9.jpg", "label"] == "Dog"
    assert str(pets_manifest.width.dtype) == "Int64" and str(pets_manifest.bytes.dtype) == "int64"


def test_pets_manifest_reasons(pets_manifest: pd.DataFrame) -> None:
    rejected = by_path(pets_manifest[pets_manifest.status == "rejected"]).reason.to_dict()
    expected = {
        "PetImages/Cat/666.jpg": "empty file (0 bytes)",
        "PetImages/Dog/11702.jpg": "empty file (0 bytes)",
        "PetImages/Cat/Thumbs.db": "not an image: an OLE2 compound file",
        "PetImages/Dog/Thumbs.db": "not an image: an OLE2 compound file",
        "PetImages/Dog/20004.jpg": "corrupt or truncated image data",
        "PetImages/Cat/20009.jpg": "not an image: an HTML/XML page",
        "PetImages/stray.jpg": "not inside a class folder of PetImages/",
        "PetImages/Dog/tiny.jpg": "too small: 8x8",
    }
    assert rejected.keys() == expected.keys()
    for path, reason in expected.items():
        assert rejected[path].startswith(reason), (path, rejected[path])
    assert pd.isna(by_path(pets_manifest).loc["PetImages/stray.jpg", "label"])


def test_pets_manifest_warnings(pets_manifest: pd.DataFrame) -> None:
    warned = pets_manifest[pets_manifest.warning.notna()]
    assert (warned.status == "accepted").all()
    assert by_path(warned).warning.to_dict() == {
        "PetImages/Cat/20001.jpg": "PNG data behind a .jpg name",
        "PetImages/Cat/20007.jpg": "CMYK (mode CMYK), converted to RGB; no JFIF header (marker ffee first)",
        "PetImages/Dog/20006.jpg": "grayscale (mode L), converted to RGB",
    }


def test_pets_manifest_without_petimages(tmp_path: Path) -> None:
    (tmp_path / "Cat").mkdir()
    with pytest.raises(PipelineError, match="no PetImages/ folder"):
        manifests.pets_manifest(tmp_path, LIMITS, workers=1)


def test_duplicates_in_the_pets_tree(pets_manifest: pd.DataFrame) -> None:
    assert manifests.duplicates(pets_manifest) == [["PetImages/Cat/3.jpg", "PetImages/Cat/copy-of-3.jpg"]]


def test_find_houses_folder(houses_root: Path, tmp_path: Path) -> None:
    assert manifests.find_houses_folder(houses_root) == houses_root / demo.HOUSES_ROOT
    with pytest.raises(PipelineError, match="expected exactly one HousesInfo.txt, found 0"):
        manifests.find_houses_folder(tmp_path)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "HousesInfo.txt").write_text("1 1 800 92276 100000\n")
    with pytest.raises(PipelineError, match="found 2"):
        manifests.find_houses_folder(tmp_path)


def test_houses_manifest(houses_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(houses_root, root)
    folder = root / demo.HOUSES_ROOT
    (folder / "notes.jpg").write_bytes(jpeg())
    (folder / "3_garage.jpg").write_bytes(jpeg())
    (folder / "5_kitchen.jpg").write_bytes(b"")
    manifest = manifests.houses_manifest(root, folder, LIMITS, workers=1)
    assert len(manifest) == 4 * SMALL.houses + 2  # HousesInfo.txt is not a photo
    assert manifest.columns.tolist() == ["path", "label", "house_id", *MANIFEST_COLUMNS[1:]]
    assert str(manifest.house_id.dtype) == "Int64"
    rows = by_path(manifest)
    kitchen = rows.loc[f"{demo.HOUSES_ROOT}/7_kitchen.jpg"]
    assert (kitchen.house_id, kitchen.label, kitchen.status) == (7, "kitchen", "accepted")
    for name in ("notes.jpg", "3_garage.jpg"):
        row = rows.loc[f"{demo.HOUSES_ROOT}/{name}"]
        assert row.status == "rejected"
        assert row.reason == "unexpected file name (expected N_<bathroom|bedroom|frontal|kitchen>.jpg)"
        assert pd.isna(row.house_id)
    assert rows.loc[f"{demo.HOUSES_ROOT}/5_kitchen.jpg", "reason"] == "empty file (0 bytes)"
    assert (manifest.status == "accepted").sum() == 4 * SMALL.houses - 1


def test_houses_table_parses_the_demo_file(houses_root: Path) -> None:
    folder = houses_root / demo.HOUSES_ROOT
    manifest = manifests.houses_manifest(houses_root, folder, LIMITS, workers=1)
    table = manifests.houses_table(folder / "HousesInfo.txt", manifest)
    lines = (folder / "HousesInfo.txt").read_text().split("\n")
    assert table.columns.tolist() == ["house_id", "bedrooms", "bathrooms", "area", "zipcode", "price", "photos"]
    assert table.house_id.tolist() == list(range(1, SMALL.houses + 1))
    assert [str(table[c].dtype) for c in ("house_id", "bedrooms", "bathrooms", "area", "price", "photos")] == [
        "int64",
        "int64",
        "float64",
        "float64",
        "float64",
        "int64",
    ]
    assert table.zipcode.map(type).eq(str).all()
    first = lines[0].split()
    row = table.iloc[0]
    assert (row.bedrooms, row.bathrooms, row.area, row.zipcode, row.price) == (
        int(first[0]),
        float(first[1]),
        float(first[2]),
        first[3],
        float(first[4]),
    )
    assert (table.photos == 4).all()


def hand_manifest(rows: list[tuple[int, str, str]]) -> pd.DataFrame:
    """(house_id, room, status) -> a minimal houses manifest."""
    return pd.DataFrame(
        {
            "path": [f"H/{h}_{room}.jpg" for h, room, _ in rows],
            "house_id": pd.array([h for h, _, _ in rows], dtype="Int64"),
            "label": [room for _, room, _ in rows],
            "status": [s for _, _, s in rows],
            "sha256": [f"{h}{room}" for h, room, _ in rows],
        }
    )


def test_houses_table_counts_accepted_photos_and_keeps_line_numbers(tmp_path: Path) -> None:
    info = tmp_path / "HousesInfo.txt"
    info.write_text("1 1 800 92276 100000\n\n3 2.5 1900 85255 420000\n")
    manifest = hand_manifest(
        [(1, r, "accepted") for r in HOUSE_ROOMS]
        + [(3, "bedroom", "accepted"), (3, "kitchen", "rejected"), (3, "frontal", "accepted")]
    )
    table = manifests.houses_table(info, manifest)
    assert table.house_id.tolist() == [1, 3]  # line N is house N, blank lines included
    assert table.photos.tolist() == [4, 2]
    assert table.loc[1, "bathrooms"] == 2.5 and table.loc[1, "zipcode"] == "85255"


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("1 1 800 92276 100000\n2 1 900 92276\n", ":2:", "expected 5 fields"),
        ("1 1 800 92276 100000\n2 1 900 92276 100000 7\n", ":2:", "got 6"),
        (
            "1 1 800 92276 100000\n\nthree 1 900 92276 100000\n",
            ":3:",
            "must be numbers (could not convert string to float: 'three')",
        ),
        ("1 one 800 92276 100000\n", ":1:", "must be numbers (could not convert string to float: 'one')"),
        ("2.5 1 800 92276 100000\n", ":1:", "bedrooms must be a whole number"),
    ],
)
def test_houses_table_malformed_line(tmp_path: Path, text: str, where: str, fragment: str) -> None:
    info = tmp_path / "HousesInfo.txt"
    info.write_text(text)
    with pytest.raises(PipelineError) as exc:
        manifests.houses_table(info, hand_manifest([]))
    message = str(exc.value)
    assert message.startswith(f"{info}{where}")
    assert fragment in message


def test_missing_photos() -> None:
    manifest = hand_manifest(
        [(1, r, "accepted") for r in HOUSE_ROOMS]
        + [(2, r, "accepted") for r in ("bathroom", "bedroom", "frontal")]
        + [(2, "kitchen", "rejected")]
    )
    table = pd.DataFrame({"house_id": [1, 2, 3], "photos": [4, 3, 0]})
    assert manifests.missing_photos(table, manifest) == {2: ["kitchen"], 3: list(HOUSE_ROOMS)}
    assert manifests.missing_photos(table[table.house_id == 1], manifest) == {}


def test_duplicates_only_among_accepted() -> None:
    manifest = pd.DataFrame(
        {
            "path": ["b.jpg", "a.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"],
            "status": ["accepted", "accepted", "accepted", "rejected", "accepted", "accepted"],
            "sha256": ["x", "x", "y", "y", "z", "x"],
        }
    )
    assert manifests.duplicates(manifest) == [["a.jpg", "b.jpg", "f.jpg"]]
    assert manifests.duplicates(manifest[manifest.path != "b.jpg"].iloc[2:5]) == []


def test_build_report(pets_manifest: pd.DataFrame) -> None:
    suites = [{"suite": "s1", "success": True, "results": []}, {"suite": "s2", "success": True, "results": []}]
    report = validation.build_report("pets", pets_manifest, suites, {"extra": 1})
    accepted = pets_manifest[pets_manifest.status == "accepted"]
    assert report["dataset"] == "pets" and report["success"] is True
    assert report["files"] == len(pets_manifest)
    assert report["accepted"] == len(accepted) == len(pets_manifest) - 8
    assert report["rejected_count"] == 8
    assert report["warnings_count"] == 3
    assert report["per_label"] == {"Cat": 12 + 1 + 2, "Dog": 10 + 1}  # + the copy; + PNG and CMYK; + grayscale
    assert {"path": "PetImages/Cat/666.jpg", "reason": "empty file (0 bytes)"} in report["rejected"]
    assert all(set(item) == {"path", "reason"} for item in report["rejected"] + report["warnings"])
    warned = {item["path"] for item in report["warnings"]}
    assert warned == {"PetImages/Cat/20001.jpg", "PetImages/Cat/20007.jpg", "PetImages/Dog/20006.jpg"}
    assert report["duplicates"] == [["PetImages/Cat/3.jpg", "PetImages/Cat/copy-of-3.jpg"]]
    assert report["extra"] == 1 and report["suites"] == suites
    json.dumps(report)  # JSON-able
    failed = validation.build_report("pets", pets_manifest, [*suites, {"suite": "s3", "success": False, "results": []}], {})
    assert failed["success"] is False


def test_render_html_escapes() -> None:
    report = {
        "dataset": "pets",
        "success": False,
        "files": 2,
        "accepted": 1,
        "rejected_count": 1,
        "warnings_count": 0,
        "per_label": {"Cat": 1},
        "rejected": [{"path": "PetImages/Cat/<b>.jpg", "reason": "not an image: an HTML/XML page"}],
        "warnings": [],
        "suites": [],
    }
    page = validation.render_html(report)
    assert "Validation of pets: FAILED" in page
    assert "PetImages/Cat/&lt;b&gt;.jpg" in page and "<b>.jpg" not in page


# --------------------------------------------------------------------------- main() on the demo project


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_project(tmp_path_factory)


def test_main_pets_outputs(built: Path) -> None:
    params = config.load(built / "params.yaml")
    report = json.loads((built / "reports/validation/pets.json").read_text())
    raw = built / "data/raw/pets"
    n_files = sum(1 for p in raw.rglob("*") if p.is_file())
    cats, dogs = params.data.demo.pets["Cat"], params.data.demo.pets["Dog"]
    assert report["success"] is True
    assert report["files"] == n_files == cats + dogs + 9
    assert report["rejected_count"] == 6 and report["accepted"] == n_files - 6
    assert report["per_label"] == {"Cat": cats + 2, "Dog": dogs + 1}
    assert {r["path"] for r in report["rejected"]} == {
        "PetImages/Cat/666.jpg",
        "PetImages/Dog/11702.jpg",
        "PetImages/Cat/Thumbs.db",
        "PetImages/Dog/Thumbs.db",
        "PetImages/Dog/20004.jpg",
        "PetImages/Cat/20009.jpg",
    }
    assert len(report["warnings"]) == report["warnings_count"] == 3
    assert [s["suite"] for s in report["suites"]] == ["pets.files", "pets.images"]
    assert all(r["success"] for s in report["suites"] for r in s["results"])
    assert "Validation of pets: passed" in (built / "reports/validation/pets.html").read_text()
    manifest = pd.read_parquet(built / "data/validated/pets/manifest.parquet")
    assert len(manifest) == n_files and (manifest.status == "accepted").sum() == report["accepted"]


def test_main_houses_outputs(built: Path) -> None:
    houses = config.load(built / "params.yaml").data.demo.houses
    report = json.loads((built / "reports/validation/houses.json").read_text())
    assert report["success"] is True
    assert report["houses"] == houses and report["houses_missing_photos"] == {}
    assert report["files"] == report["accepted"] == 4 * houses
    assert report["per_label"] == {room: houses for room in HOUSE_ROOMS}
    assert [s["suite"] for s in report["suites"]] == ["houses.files", "houses.images", "houses.table"]
    assert "Validation of houses: passed" in (built / "reports/validation/houses.html").read_text()
    out = built / "data/validated/houses"
    assert len(pd.read_parquet(out / "manifest.parquet")) == 4 * houses
    table = pd.read_parquet(out / "houses.parquet")
    assert table.house_id.tolist() == list(range(1, houses + 1)) and (table.photos == 4).all()


def test_main_leaves_raw_files_untouched(built: Path) -> None:
    assert tree_digest(built / "data/raw") == raw_digest_after_download()


def test_main_before_download(project: Path) -> None:
    with pytest.raises(PipelineError, match=r"data/raw/pets: not found; run the download stage first"):
        validate.main(["pets"])


# --------------------------------------------------------------------------- failing suites


def fails(dataset: str) -> tuple[str, dict]:
    """Run the validate stage in the cwd; it must fail, write its report and no validated output."""
    with pytest.raises(PipelineError) as exc:
        validate.main([dataset])
    report = json.loads(Path(f"reports/validation/{dataset}.json").read_text())
    assert report["success"] is False
    assert f"Validation of {dataset}: FAILED" in Path(f"reports/validation/{dataset}.html").read_text()
    assert not Path(f"data/validated/{dataset}").exists()
    message = str(exc.value)
    assert message.startswith(f"validation of {dataset} failed") and f"reports/validation/{dataset}.json" in message
    return message, report


def failed_expectations(report: dict) -> list[tuple[str, str, str]]:
    return [
        (s["suite"], r["expectation"], str(r["kwargs"].get("column")))
        for s in report["suites"]
        for r in s["results"]
        if not r["success"]
    ]


def test_missing_class_folder(project: Path, built: Path) -> None:
    copy_project(built, project, "data/raw/pets")
    shutil.rmtree(project / "data/raw/pets/PetImages/Dog")
    message, report = fails("pets")
    assert failed_expectations(report) == [("pets.images", "expect_column_distinct_values_to_contain_set", "label")]
    assert "pets.images: expect_column_distinct_values_to_contain_set(label, {'value_set': ['Cat', 'Dog']" in message
    assert "failed: missing ['Dog']" in message


def test_reject_rate_over_threshold(project: Path, built: Path) -> None:
    copy_project(built, project, "data/raw/pets")
    edit_params(project, "validate.pets.max_reject_rate", 0.0)
    message, report = fails("pets")
    assert failed_expectations(report) == [("pets.files", "expect_column_values_to_be_in_set", "status")]
    assert "pets.files: expect_column_values_to_be_in_set(status" in message
    assert "6 unexpected" in message and "'rejected'" in message
    assert len(report["rejected"]) == 6  # the listing is there to read


def test_house_without_its_kitchen(project: Path, built: Path) -> None:
    copy_project(built, project, "data/raw/houses")
    (project / "data/raw/houses" / demo.HOUSES_ROOT / "7_kitchen.jpg").unlink()
    message, report = fails("houses")
    assert report["houses_missing_photos"] == {"7": ["kitchen"]}
    assert failed_expectations(report) == [("houses.table", "expect_column_values_to_be_in_set", "photos")]
    assert "house 7 (no kitchen)" in message
    assert "houses.table: expect_column_values_to_be_in_set(photos" in message


def test_price_out_of_range(project: Path, built: Path) -> None:
    copy_project(built, project, "data/raw/houses")
    info = project / "data/raw/houses" / demo.HOUSES_ROOT / "HousesInfo.txt"
    lines = info.read_text().splitlines()
    fields = lines[4].split()
    lines[4] = " ".join([*fields[:4], "5"])
    info.write_text("\n".join(lines) + "\n")
    message, report = fails("houses")
    assert failed_expectations(report) == [("houses.table", "expect_column_values_to_be_between", "price")]
    assert "houses.table: expect_column_values_to_be_between(price" in message
    assert "1 unexpected" in message and "[5.0]" in message


def test_photo_of_an_unknown_house_is_rejected(project: Path, built: Path) -> None:
    copy_project(built, project, "data/raw/houses")
    folder = project / "data/raw/houses" / demo.HOUSES_ROOT
    shutil.copy(folder / "1_kitchen.jpg", folder / "999_kitchen.jpg")
    validate.main(["houses"])  # one reject is under validate.houses.max_reject_rate
    report = json.loads(Path("reports/validation/houses.json").read_text())
    assert report["rejected"] == [
        {"path": f"{demo.HOUSES_ROOT}/999_kitchen.jpg", "reason": "no house with this number in HousesInfo.txt"}
    ]
    assert (folder / "999_kitchen.jpg").exists()
