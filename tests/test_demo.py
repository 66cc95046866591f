"""Tests for pipeline.data.demo: the offline stand-ins' layout, determinism, planted defects and learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import HOUSE_ROOMS, DemoConfig
from pipeline.data import demo
from tests.pipeline_project import tree_digest

CFG = DemoConfig(seed=0, pets={"Cat": 12, "Dog": 10}, houses=40)
OTHER_SEED = DemoConfig(seed=1, pets=CFG.pets, houses=CFG.houses)
CAT_DEFECTS = {"666.jpg", "Thumbs.db", "20009.jpg", "20001.jpg", "20007.jpg"}
DOG_DEFECTS = {"11702.jpg", "Thumbs.db", "20004.jpg", "20006.jpg"}


def generate(root: Path, cfg: DemoConfig) -> tuple[Path, int, int]:
    root.mkdir()
    return root, demo.write_pets(root, cfg), demo.write_houses(root, cfg)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, int]]:
    base = tmp_path_factory.mktemp("demo")
    return {
        "a": generate(base / "a", CFG),
        "same": generate(base / "same", CFG),
        "other": generate(base / "other", OTHER_SEED),
    }


@pytest.fixture(scope="module")
def root(trees: dict) -> Path:
    return trees["a"][0]


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def info_rows(root: Path) -> list[list[str]]:
    return [line.split() for line in (root / demo.HOUSES_ROOT / "HousesInfo.txt").read_text().splitlines()]


# --------------------------------------------------------------------------- layout


def test_pets_layout(root: Path, trees: dict) -> None:
    pets = root / demo.PETS_ROOT
    assert names(pets) == {"Cat", "Dog"}
    assert names(pets / "Cat") == {f"{i}.jpg" for i in range(12)} | CAT_DEFECTS
    assert names(pets / "Dog") == {f"{i}.jpg" for i in range(10)} | DOG_DEFECTS
    assert trees["a"][1] == sum(1 for p in pets.rglob("*") if p.is_file()) == 22 + 9


def test_pets_good_photos_are_rgb_jpegs(root: Path) -> None:
    for label, n in CFG.pets.items():
        for i in range(n):
            with Image.open(root / demo.PETS_ROOT / label / f"{i}.jpg") as im:
                im.load()
                assert (im.format, im.mode) == ("JPEG", "RGB")
                assert all(72 <= side <= 128 for side in im.size)


def test_houses_layout(root: Path, trees: dict) -> None:
    folder = root / demo.HOUSES_ROOT
    assert folder == root / "Houses-dataset-master" / "Houses Dataset"
    photos = {f"{n}_{room}.jpg" for n in range(1, CFG.houses + 1) for room in HOUSE_ROOMS}
    assert names(folder) == photos | {"HousesInfo.txt"}
    assert trees["a"][2] == sum(1 for p in (root / "Houses-dataset-master").rglob("*") if p.is_file()) == 4 * 40 + 2
    with Image.open(folder / "1_frontal.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))


def test_houses_photo_size(tmp_path: Path) -> None:
    demo.write_houses(tmp_path, DemoConfig.model_construct(seed=0, pets={}, houses=2), photo_size=20)
    with Image.open(tmp_path / demo.HOUSES_ROOT / "2_kitchen.jpg") as im:
        assert im.size == (20, 20)


def test_houses_info_lines(root: Path) -> None:
    rows = info_rows(root)
    assert len(rows) == CFG.houses
    for fields in rows:
        assert len(fields) == 5
        bedrooms, bathrooms, area, zipcode, price = fields
        assert 1 <= int(bedrooms) <= 6
        assert float(bathrooms) in {1, 1.5, 2, 2.5, 3, 3.5, 4}
        assert 500 <= int(area) <= 6000
        assert len(zipcode) == 5 and zipcode.isdigit()
        assert int(price) > 0 and int(price) % 100 == 0


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(trees: dict) -> None:
    assert tree_digest(trees["a"][0]) == tree_digest(trees["same"][0])


def test_other_seed_other_bytes(trees: dict) -> None:
    a, other = tree_digest(trees["a"][0]), tree_digest(trees["other"][0])
    assert a.keys() == other.keys()
    changed = {k for k in a if a[k] != other[k]}
    # everything but the fixed-content defects (empty files, the HTML page) and the README differs
    unchanged = set(a) - changed
    assert unchanged == {
        "PetImages/Cat/666.jpg",
        "PetImages/Dog/11702.jpg",
        "PetImages/Cat/20009.jpg",
        "Houses-dataset-master/README.md",
    }


# --------------------------------------------------------------------------- defects


def test_planted_defects(root: Path) -> None:
    pets = root / demo.PETS_ROOT
    assert (pets / "Cat/666.jpg").stat().st_size == 0
    assert (pets / "Dog/11702.jpg").stat().st_size == 0
    for label in ("Cat", "Dog"):
        assert (pets / label / "Thumbs.db").read_bytes().startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    assert (pets / "Cat/20009.jpg").read_bytes().lstrip().lower().startswith(b"<html")
    with Image.open(pets / "Dog/20004.jpg") as im, pytest.raises(OSError, match="truncated"):
        im.load()
    for rel, fmt, mode in (("Cat/20001.jpg", "PNG", "RGB"), ("Dog/20006.jpg", "JPEG", "L"), ("Cat/20007.jpg", "JPEG", "CMYK")):
        with Image.open(pets / rel) as im:
            im.load()
            assert (im.format, im.mode) == (fmt, mode), rel


# --------------------------------------------------------------------------- learnable


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def test_price_follows_area(tmp_path: Path) -> None:
    """On the shipped demo size (160 houses, seed 0) the price rises with the area: Spearman > 0.5."""
    demo.write_houses(tmp_path, DemoConfig.model_construct(seed=0, pets={}, houses=160), photo_size=8)
    rows = np.array(info_rows(tmp_path), dtype=float)
    area, price = rows[:, 2], rows[:, 4]
    spearman = np.corrcoef(ranks(area), ranks(price))[0, 1]
    assert spearman > 0.5
    # and the zip code matters: the priciest zip code's median price per square foot is well above the cheapest's
    per_sqft = {z: np.median(price[rows[:, 3] == z] / area[rows[:, 3] == z]) for z in (92276, 85255)}
    assert per_sqft[85255] > 2 * per_sqft[92276]


def test_photos_show_the_hidden_quality(root: Path) -> None:
    """Brighter photos go with higher prices per square foot within a zip code (the photos carry signal)."""
    rows = np.array(info_rows(root), dtype=float)
    folder = root / demo.HOUSES_ROOT
    brightness = np.array([np.asarray(Image.open(folder / f"{n}_kitchen.jpg")).mean() for n in range(1, len(rows) + 1)])
    per_sqft = rows[:, 4] / rows[:, 2]
    zipcode = rows[:, 3]
    big = max(set(zipcode), key=lambda z: (zipcode == z).sum())
    sel = zipcode == big
    assert sel.sum() >= 8
    assert np.corrcoef(ranks(brightness[sel]), ranks(per_sqft[sel]))[0, 1] > 0.5
