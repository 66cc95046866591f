"""Tests for pipeline.stages.prepare: stratified seeded splits, the seed's houses split, shards and the stage's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from pipeline import config
from pipeline.config import HOUSE_ROOMS, SPLITS, PetsSplit, Split
from pipeline.data import shards, splits
from pipeline.data.images import load, montage
from pipeline.errors import PipelineError
from pipeline.stages import prepare
from tests.pipeline_project import chdir, copy_project, demo_project, edit_params, tree_digest

FRACTIONS = Split(train=0.7, val=0.15, test=0.15, per_class=False)


def pets_frame(counts: dict[str, int], dup_groups: int = 0) -> pd.DataFrame:
    """``counts`` distinct photos per label, plus ``dup_groups`` triples of identical bytes in the first label."""
    rows = [(f"{label}/{i}.jpg", label, f"{label}-{i:04d}") for label, n in counts.items() for i in range(n)]
    first = next(iter(counts))
    rows += [(f"{first}/dup{g}-{k}.jpg", first, f"dup-{g:03d}") for g in range(dup_groups) for k in range(3)]
    return pd.DataFrame(rows, columns=["path", "label", "sha256"])


def per_label_counts(frame: pd.DataFrame, assignment: pd.Series) -> dict[str, dict[str, int]]:
    table = pd.crosstab(frame.label, assignment)
    return {label: {s: int(table.loc[label].get(s, 0)) for s in table.columns} for label in table.index}


# --------------------------------------------------------------------------- split_classes


def test_split_classes_is_stratified() -> None:
    frame = pets_frame({"A": 60, "B": 40})
    assignment = splits.split_classes(frame, FRACTIONS, seed=1)
    assert per_label_counts(frame, assignment) == {
        "A": {"test": 9, "train": 42, "val": 9},
        "B": {"test": 6, "train": 28, "val": 6},
    }
    assert assignment.index.equals(frame.index)


def test_split_classes_is_seeded() -> None:
    frame = pets_frame({"A": 60, "B": 40})
    first = splits.split_classes(frame, FRACTIONS, seed=1)
    assert first.equals(splits.split_classes(frame, FRACTIONS, seed=1))
    other = splits.split_classes(frame, FRACTIONS, seed=2)
    assert not first.equals(other)
    assert per_label_counts(frame, first) == per_label_counts(frame, other)


def test_split_classes_ignores_row_order() -> None:
    frame = pets_frame({"A": 60, "B": 40}, dup_groups=5)
    expected = dict(zip(frame.path, splits.split_classes(frame, FRACTIONS, seed=7)))
    shuffled = frame.sample(frac=1, random_state=3).reset_index(drop=True)
    assert not shuffled.path.equals(frame.path)
    assert dict(zip(shuffled.path, splits.split_classes(shuffled, FRACTIONS, seed=7))) == expected


def test_split_classes_keeps_identical_bytes_together() -> None:
    frame = pets_frame({"A": 40, "B": 40}, dup_groups=20)
    frame["split"] = splits.split_classes(frame, FRACTIONS, seed=0)
    assert frame.groupby("sha256").split.nunique().max() == 1
    dups = frame[frame.sha256.str.startswith("dup")]
    assert dups.split.nunique() > 1  # the groups themselves are spread over the splits
    counts = frame[frame.label == "A"].split.value_counts()
    assert abs(counts["train"] - 0.7 * 100) <= 3  # sizes count rows, not groups


def test_split_classes_per_class_counts() -> None:
    frame = pets_frame({"A": 60, "B": 40})
    assignment = splits.split_classes(frame, Split(train=5.0, val=3.0, test=2.0, per_class=True), seed=0)
    assert per_label_counts(frame, assignment) == {
        "A": {"": 50, "test": 2, "train": 5, "val": 3},
        "B": {"": 30, "test": 2, "train": 5, "val": 3},
    }


def test_split_classes_fractions_summing_below_one_leave_the_rest_undrawn() -> None:
    frame = pets_frame({"A": 60, "B": 40})
    partial = PetsSplit(train=0.6, val=0.15, test=0.15, per_class=False)
    assignment = splits.split_classes(frame, partial, seed=1)
    assert per_label_counts(frame, assignment) == {
        "A": {"": 6, "test": 9, "train": 36, "val": 9},
        "B": {"": 4, "test": 6, "train": 24, "val": 6},
    }
    whole = splits.split_classes(frame, FRACTIONS, seed=1)  # summing to 1: every row drawn, test takes the rounding rest
    assert (whole != "").all()
    assert splits._targets(PetsSplit(train=0.5, val=0.25, test=0.25, per_class=False), 7, "A") == (4, 2, 1)
    assert splits._targets(partial, 7, "A") == (4, 1, 1)


def test_split_classes_too_few_images_names_the_class() -> None:
    frame = pets_frame({"A": 60, "B": 40})
    with pytest.raises(PipelineError, match=r"class 'B' has 40 usable images, fewer than train\+val\+test = 50"):
        splits.split_classes(frame, Split(train=30.0, val=10.0, test=10.0, per_class=True), seed=0)


# --------------------------------------------------------------------------- houses


def houses_table(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "house_id": np.arange(1, n + 1),
            "bedrooms": rng.integers(1, 6, n),
            "area": rng.integers(800, 4000, n).astype(float),
            "zipcode": rng.choice(["92276", "93446", "85255", "11111"], n, p=[0.4, 0.3, 0.28, 0.02]),
            "price": rng.integers(100, 900, n) * 1000.0,
        }
    )
    return table


def photo_sha(table: pd.DataFrame) -> pd.DataFrame:
    rows = [(h, room, f"{h}-{room}") for h in table.house_id for room in HOUSE_ROOMS]
    return pd.DataFrame(rows, columns=["house_id", "label", "sha256"])


def test_filter_zipcodes() -> None:
    table = pd.DataFrame({"house_id": range(1, 10), "zipcode": ["a"] * 5 + ["b"] * 3 + ["c"]})
    kept = splits.filter_zipcodes(table, 3)
    assert kept.house_id.tolist() == list(range(1, 9))
    assert kept.index.tolist() == list(range(8))
    assert splits.filter_zipcodes(table, 1).equals(table)


def test_filter_zipcodes_keeping_nothing_fails() -> None:
    table = pd.DataFrame({"house_id": range(1, 10), "zipcode": ["a"] * 5 + ["b"] * 3 + ["c"]})
    with pytest.raises(PipelineError, match=r"min_houses_per_zip=6 leaves no house \(largest zip code has 5 houses\)"):
        splits.filter_zipcodes(table, 6)


@pytest.fixture
def kept() -> pd.DataFrame:
    """A filtered table: its index has gaps, as after filter_zipcodes."""
    return splits.filter_zipcodes(houses_table(), 10)


def test_split_houses_is_the_seeds_train_test_split(kept: pd.DataFrame) -> None:
    assert len(kept) < 120 and not kept.index.equals(pd.RangeIndex(len(kept)))
    seed_train, seed_test = train_test_split(kept, test_size=0.25, random_state=42)
    got = splits.split_houses(
        kept, photo_sha(kept), Split(train=0.75, val=0.0, test=0.25, per_class=False), 42, group_duplicates=True
    )
    assert got.index.equals(kept.index)
    assert set(got[got == "test"].index) == set(seed_test.index)
    assert set(got[got == "train"].index) == set(seed_train.index)
    assert set(got) == {"train", "test"}


def test_split_houses_carves_val_from_train(kept: pd.DataFrame) -> None:
    seed_train, seed_test = train_test_split(kept, test_size=0.25, random_state=42)
    _, seed_val = train_test_split(seed_train, test_size=0.15 / 0.75, random_state=42)
    got = splits.split_houses(
        kept, photo_sha(kept), Split(train=0.6, val=0.15, test=0.25, per_class=False), 42, group_duplicates=True
    )
    assert set(got[got == "test"].index) == set(seed_test.index)
    assert set(got[got == "val"].index) == set(seed_val.index)
    other = splits.split_houses(
        kept, photo_sha(kept), Split(train=0.6, val=0.15, test=0.25, per_class=False), 43, group_duplicates=True
    )
    assert not other.equals(got)


def test_split_houses_sharing_a_photo_end_in_one_split(kept: pd.DataFrame) -> None:
    split = Split(train=0.6, val=0.15, test=0.25, per_class=False)
    plain = splits.split_houses(kept, photo_sha(kept), split, 42, group_duplicates=True)
    house = dict(zip(kept.house_id, plain))
    train_h = next(h for h, s in house.items() if s == "train")
    val_h = next(h for h, s in house.items() if s == "val")
    test_a, test_b = [h for h, s in house.items() if s == "test"][:2]
    photos = photo_sha(kept)
    photos.loc[(photos.house_id == test_a) & (photos.label == "kitchen"), "sha256"] = f"{train_h}-bedroom"
    photos.loc[(photos.house_id == test_b) & (photos.label == "frontal"), "sha256"] = f"{val_h}-frontal"
    grouped = dict(zip(kept.house_id, splits.split_houses(kept, photos, split, 42, group_duplicates=True)))
    assert grouped[test_a] == grouped[train_h] == "train"  # the earliest split wins
    assert grouped[test_b] == grouped[val_h] == "val"
    others = set(house) - {test_a, test_b}
    assert {h: grouped[h] for h in others} == {h: house[h] for h in others}
    # group_duplicates: false reproduces the seed's split, leaks included
    leaky = dict(zip(kept.house_id, splits.split_houses(kept, photos, split, 42, group_duplicates=False)))
    assert leaky == house


# --------------------------------------------------------------------------- shards


def test_write_shards_round_trip(tmp_path: Path) -> None:
    splits = ["train", "val", "train", "test", "train", "val", "train"]
    index = pd.DataFrame({"id": range(len(splits)), "split": splits}, index=range(100, 100 + len(splits)))
    arrays = [np.full((2, 3, 3), 10 * i, np.uint8) for i in range(len(splits))]
    out = shards.write_shards(tmp_path, index, arrays, shard_size=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-000.npy", "train-000.npy", "train-001.npy", "val-000.npy"]
    assert out.id.tolist() == list(range(len(splits)))
    assert out.shard.str.removesuffix(".npy").tolist() == [
        "train-000",
        "val-000",
        "train-000",
        "test-000",
        "train-000",
        "val-000",
        "train-001",
    ]
    assert out.offset.tolist() == [0, 0, 1, 0, 2, 1, 0]
    for row in out.itertuples():
        np.testing.assert_array_equal(np.load(tmp_path / row.shard)[row.offset], arrays[row.id])
    assert np.load(tmp_path / "train-000.npy").shape == (3, 2, 3, 3)
    assert "shard" not in index.columns  # the caller's frame is left alone


# --------------------------------------------------------------------------- main() on the demo project


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_project(tmp_path_factory)


@pytest.fixture(scope="module")
def params(built: Path) -> config.Params:
    return config.load(built / "params.yaml")


def outputs(root: Path, dataset: str) -> tuple[pd.DataFrame, dict]:
    folder = root / "data/prepared" / dataset
    return pd.read_parquet(folder / "index.parquet"), json.loads((folder / "meta.json").read_text())


def check_shards(folder: Path, index: pd.DataFrame, meta: dict, shard_size: int) -> None:
    size = meta["image_size"]
    shards = sorted(p.name for p in folder.glob("*.npy"))
    assert shards == sorted(index.shard.unique())
    for shard in shards:
        arr = np.load(folder / shard)
        rows = index[index.shard == shard]
        assert arr.dtype == np.uint8 and arr.shape == (len(rows), size, size, 3)
        assert len(rows) <= shard_size
        assert sorted(rows.offset) == list(range(len(rows)))
        assert rows.split.nunique() == 1 and shard.startswith(rows.split.iloc[0] + "-")
    assert meta["counts"] == {s: int((index.split == s).sum()) for s in SPLITS}


@pytest.mark.parametrize("dataset", ["pets", "houses"])
def test_main_writes_the_prepared_folder(built: Path, params: config.Params, dataset: str) -> None:
    folder = built / "data/prepared" / dataset
    assert (folder / "index.parquet").is_file() and (folder / "meta.json").is_file()
    index, meta = outputs(built, dataset)
    assert meta["dataset"] == dataset and meta["seed"] == params.prepare.seed
    assert set(index.split) == set(SPLITS)
    check_shards(folder, index, meta, params.prepare.shard_size)


def test_main_pets(built: Path, params: config.Params) -> None:
    index, meta = outputs(built, "pets")
    manifest = pd.read_parquet(built / "data/validated/pets/manifest.parquet")
    accepted = manifest[manifest.status == "accepted"]
    assert meta["image_size"] == params.prepare.pets.image_size and meta["classes"] == ["Cat", "Dog"]
    s = params.prepare.pets.split
    assert s.train + s.val + s.test < 1  # the demo leaves photos out of every split (pretrain.pets_unlabeled's)
    assert index.path.is_unique and set(index.path) < set(accepted.path)  # each drawn once, some not at all
    assert index.groupby("sha256").split.nunique().max() == 1  # no identical bytes across splits
    assert (index.label_index == index.label.map({"Cat": 0, "Dog": 1})).all()
    for label, rows in accepted.groupby("label"):
        n, counts = len(rows), index[index.label == label].split.value_counts()
        assert (counts["train"], counts["val"], counts["test"]) == (round(s.train * n), round(s.val * n), round(s.test * n))
    folder = built / "data/prepared/pets"
    for row in index.iloc[[0, len(index) // 2, -1]].itertuples():
        expected = load(built / "data/raw/pets" / row.path, meta["image_size"], meta["resize"])
        np.testing.assert_array_equal(np.load(folder / row.shard)[row.offset], expected)


def test_main_houses(built: Path, params: config.Params) -> None:
    index, meta = outputs(built, "houses")
    table = pd.read_parquet(built / "data/validated/houses/houses.parquet")
    cfg = params.prepare.houses
    assert meta["image_size"] == 2 * cfg.photo_size
    assert meta["houses_before_filter"] == len(table) == params.data.demo.houses
    assert index.house_id.is_unique
    per_zip = table.zipcode.value_counts()
    assert set(index.zipcode) == set(per_zip[per_zip >= cfg.min_houses_per_zip].index)
    kept = table[table.zipcode.map(per_zip) >= cfg.min_houses_per_zip]
    assert sorted(index.house_id) == sorted(kept.house_id)
    _, seed_test = train_test_split(kept, test_size=cfg.split.test, random_state=params.prepare.seed)
    assert set(index[index.split == "test"].house_id) == set(seed_test.house_id)
    row = index.iloc[-1]
    photos = row.photos.split(";")
    assert [p.rsplit("/", 1)[-1] for p in photos] == [f"{row.house_id}_{room}.jpg" for room in HOUSE_ROOMS]
    expected = montage([load(built / "data/raw/houses" / p, cfg.photo_size) for p in photos])
    np.testing.assert_array_equal(np.load(built / "data/prepared/houses" / row.shard)[row.offset], expected)


def test_main_is_reproducible_and_the_seed_matters(tmp_path: Path, built: Path) -> None:
    copy_project(built, tmp_path, "data/raw/pets", "data/validated/pets")
    with chdir(tmp_path):
        prepare.main(["pets"])
        assert tree_digest(tmp_path / "data/prepared/pets") == tree_digest(built / "data/prepared/pets")
        edit_params(tmp_path, "prepare.seed", 7)
        prepare.main(["pets"])
    before, meta_before = outputs(built, "pets")
    after, meta_after = outputs(tmp_path, "pets")
    assert meta_after["seed"] == 7 and meta_after["counts"] == meta_before["counts"]
    split_before = dict(zip(before.path, before.split))
    split_after = dict(zip(after.path, after.split))
    assert len(split_before) == len(split_after)  # the same sizes; a split leaving photos out draws other ones
    changed = sum(split_before.get(p) != split_after.get(p) for p in split_before.keys() | split_after.keys())
    assert changed > len(split_before) // 10


def test_main_houses_seed_moves_the_houses_split_alone(tmp_path: Path, built: Path, params: config.Params) -> None:
    copy_project(built, tmp_path, "data/raw/houses", "data/validated/houses")
    with chdir(tmp_path):
        edit_params(tmp_path, "prepare.houses.seed", 7)
        assert config.load().prepare.split_seed("pets") == params.prepare.seed
        prepare.main(["houses"])
    index, meta = outputs(tmp_path, "houses")
    assert meta["seed"] == 7
    table = pd.read_parquet(built / "data/validated/houses/houses.parquet")
    kept = table[table.house_id.isin(index.house_id)]
    _, seed_test = train_test_split(kept, test_size=params.prepare.houses.split.test, random_state=7)
    assert set(index[index.split == "test"].house_id) == set(seed_test.house_id)
    assert set(index[index.split == "test"].house_id) != set(outputs(built, "houses")[0].query("split == 'test'").house_id)


def test_main_before_validate(project: Path) -> None:
    with pytest.raises(PipelineError, match=r"data/validated/houses/manifest.parquet: not found; run the validate stage first"):
        prepare.main(["houses"])
