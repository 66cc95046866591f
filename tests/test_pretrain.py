"""The pretrain@pets_unlabeled source and the leakage guard of both pretraining sources.

* the manifest helpers that pick the photos a backbone may see
  (:func:`unlabeled_photos`, :func:`held_out_photos`, :func:`without_held_out`),
  on tiny in-memory frames;
* the stage's failure paths (no photo left out of the split, missing inputs);
* one ``main()`` run of ``pretrain pets_unlabeled`` (2 epochs, narrow) on a copy
  of the shared demo project, then a transfer variant trained on its backbone;
* the guard on the real PetImages mirror at the seed's protocol (skipped where
  ``../shared/datasets`` is absent).

The houses_rooms source's own run: tests/test_transfer.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import config, paths, tracking
from pipeline.data import splits
from pipeline.data.manifest import held_out_photos, unlabeled_photos, without_held_out
from pipeline.errors import PipelineError
from pipeline.stages import prepare, pretrain
from tests.conftest import REPO, SHARED_DATASETS
from tests.pipeline_project import chdir, copy_project, demo_project, edit_params, trained_project

RAW = yaml.safe_load((REPO / "params.yaml").read_text())
UNLABELED = {  # pretrain.pets_unlabeled: small and fast
    **RAW["pretrain"]["pets_unlabeled"],
    "seed": 5,
    "epochs": 2,
    "warmup": 1,
    "batch_size": 16,
    "width": 0.25,
    "train_size": 32,
    "projection_dim": 16,
    "knn": 5,
}
VARIANTS = {  # a frozen transfer variant on the pets_unlabeled backbone (the repository's transfer.source)
    "features_unlabeled": {
        "dataset": "pets",
        "model": "transfer_features",
        "augment": "none",
        "width": 0.25,
        "train": {"epochs": 1},
        "extra": {"knn": 3},
        "transfer": {"source": "pets_unlabeled"},
    }
}
PETS = ("data/raw/pets", "data/validated/pets", "data/prepared/pets")
OUT = Path("models/pretrain/pets_unlabeled")


# --- which photos a backbone may see ------------------------------------------------------------------


def pets_manifest() -> pd.DataFrame:
    rows = [
        ("PetImages/Cat/1.jpg", "Cat", "accepted", "a1"),
        ("PetImages/Cat/2.jpg", "Cat", "accepted", "a2"),
        ("PetImages/Cat/3.jpg", "Cat", "accepted", "a3"),  # in no split
        ("PetImages/Cat/4.jpg", "Cat", "accepted", "a1"),  # a copy of a train photo under another name
        ("PetImages/Cat/5.jpg", "Cat", "rejected", "a5"),  # in no split, but rejected
        ("PetImages/Dog/1.jpg", "Dog", "accepted", "b1"),
        ("PetImages/Dog/2.jpg", "Dog", "accepted", "b2"),
        ("PetImages/Dog/3.jpg", "Dog", "accepted", "b2"),  # a copy of a test photo
        ("PetImages/Dog/4.jpg", "Dog", "accepted", "b4"),  # in no split
        ("PetImages/Dog/0.jpg", "Dog", "accepted", "b0"),  # in no split
    ]
    return pd.DataFrame(rows, columns=["path", "label", "status", "sha256"])


def pets_index() -> pd.DataFrame:
    rows = [
        ("PetImages/Cat/1.jpg", "a1", "train"),
        ("PetImages/Cat/2.jpg", "a2", "val"),
        ("PetImages/Dog/1.jpg", "b1", "train"),
        ("PetImages/Dog/2.jpg", "b2", "test"),
    ]
    return pd.DataFrame(rows, columns=["path", "sha256", "split"])


def test_unlabeled_photos_are_the_accepted_ones_in_no_split_by_path_and_by_content() -> None:
    free = unlabeled_photos(pets_manifest(), pets_index())
    assert free.path.tolist() == ["PetImages/Cat/3.jpg", "PetImages/Dog/0.jpg", "PetImages/Dog/4.jpg"]  # sorted by path
    assert list(free.columns) == ["path", "sha256"]  # no label: self-supervision never reads it
    assert free.index.tolist() == [0, 1, 2]
    # a split photo's path with other bytes (e.g. re-encoded) stays out too
    index = pets_index()
    index.loc[0, "sha256"] = "other"
    assert "PetImages/Cat/1.jpg" not in set(unlabeled_photos(pets_manifest(), index).path)
    everything = pets_manifest().assign(split="train")
    assert unlabeled_photos(pets_manifest(), everything).empty


def test_held_out_photos_of_a_pets_index_and_of_a_houses_index() -> None:
    assert held_out_photos(pets_index()) == {"PetImages/Cat/2.jpg", "PetImages/Dog/2.jpg"}
    houses = pd.DataFrame(
        {
            "house_id": [1, 2, 3],
            "photos": [";".join(f"H/{h}_{room}.jpg" for room in config.HOUSE_ROOMS) for h in (1, 2, 3)],
            "split": ["train", "val", "test"],
        }
    )
    assert held_out_photos(houses) == {f"H/{h}_{room}.jpg" for h in (2, 3) for room in config.HOUSE_ROOMS}
    assert held_out_photos(houses.assign(split="train")) == set()


def test_without_held_out_drops_every_photo_equal_to_a_val_or_test_photo() -> None:
    manifest, index = pets_manifest(), pets_index()
    photos = manifest[manifest.status == "accepted"][["path", "sha256"]]
    kept = without_held_out(photos, manifest, index, "test")
    # a2 (val) and b2 (test, and its copy Dog/3) go; train photos and their copies stay (only val/test are held out)
    assert set(kept.path) == set(photos.path) - {"PetImages/Cat/2.jpg", "PetImages/Dog/2.jpg", "PetImages/Dog/3.jpg"}
    assert kept.index.tolist() == list(range(len(kept)))
    # houses: the photos of the val / test houses, and any photo with the same bytes elsewhere
    rooms = [(f"H/{h}_{room}.jpg", h, room, f"{h}-{room}") for h in (1, 2, 3) for room in config.HOUSE_ROOMS]
    manifest = pd.DataFrame(rooms, columns=["path", "house_id", "label", "sha256"]).assign(status="accepted")
    manifest.loc[manifest.path == "H/1_frontal.jpg", "sha256"] = "3-frontal"  # house 1's frontal photo = house 3's
    index = pd.DataFrame(
        {
            "photos": [";".join(p for p, h, _, _ in rooms if h == house) for house in (1, 2, 3)],
            "split": ["train", "train", "test"],
        }
    )
    kept = without_held_out(manifest[["path", "house_id", "label", "sha256"]], manifest, index, "houses_rooms")
    assert set(kept.path) == {f"H/{h}_{room}.jpg" for h in (1, 2) for room in config.HOUSE_ROOMS} - {"H/1_frontal.jpg"}


# --- the stage's failure paths ---------------------------------------------------------------------------


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


@pytest.mark.parametrize(
    ("source", "copied", "missing", "stage"),
    [
        ("pets_unlabeled", (), "data/validated/pets/manifest.parquet", "validate stage for pets"),
        ("pets_unlabeled", ("data/validated/pets",), "data/prepared/pets/index.parquet", "prepare stage for pets"),
        ("houses_rooms", (), "data/validated/houses/manifest.parquet", "validate stage for houses"),
        ("houses_rooms", ("data/validated/houses",), "data/prepared/houses/index.parquet", "prepare stage for houses"),
    ],
)
def test_missing_inputs_name_the_file_and_the_stage_to_run(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: None,
    source: str,
    copied: tuple[str, ...],
    missing: str,
    stage: str,
) -> None:
    copy_project(demo_project(tmp_path_factory), tmp_path, *copied)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as error:
        pretrain.main([source])
    assert str(error.value) == f"{missing}: not found; run the {stage} first"
    assert not (tmp_path / "models").exists()


def test_a_split_that_leaves_no_pet_photo_out_fails_naming_both_keys(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: None
) -> None:
    copy_project(demo_project(tmp_path_factory), tmp_path, "data/raw/pets", "data/validated/pets")
    edit_params(tmp_path, "prepare.pets.split", {"train": 0.7, "val": 0.15, "test": 0.15})  # every photo in a split
    with chdir(tmp_path):
        prepare.main(["pets"])
        with pytest.raises(PipelineError) as error:
            pretrain.main(["pets_unlabeled"])
    message = str(error.value)
    assert message.startswith("pretrain.pets_unlabeled: 0 accepted pet photos are in no split; prepare.pets.split"), message
    assert "must leave some out" in message
    assert not (tmp_path / "models").exists() and not (tmp_path / paths.checkpoints("pretrain@pets_unlabeled")).exists()


def test_an_unknown_source_is_refused_by_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        pretrain.main(["imagenet"])
    assert code.value.code == 2
    assert "invalid choice: 'imagenet' (choose from 'houses_rooms', 'pets_unlabeled')" in capsys.readouterr().err


def test_dvc_yaml_has_one_pretrain_stage_per_source_reading_its_dataset() -> None:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["pretrain"]
    assert tuple(stage["foreach"]) == config.PRETRAIN_SOURCES
    assert {key: item["dataset"] for key, item in stage["foreach"].items()} == pretrain.DATASET
    body = stage["do"]
    assert body["cmd"] == "python -m pipeline pretrain ${key}"
    assert {"data/raw/${item.dataset}", "data/validated/${item.dataset}", "data/prepared/${item.dataset}"} <= set(body["deps"])
    assert {"pretrain.image_size", "pretrain.${key}", "prepare.pets.image_size"} <= set(body["params"])
    assert body["outs"] == ["models/pretrain/${key}"] and str(paths.pretrain("x")) == "models/pretrain/x"


# --- one run of pretrain@pets_unlabeled on the demo project ---------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sections = {"pretrain": {**RAW["pretrain"], "pets_unlabeled": UNLABELED}, "variants": VARIANTS}
    steps = [("pretrain", ["pets_unlabeled"]), ("train", ["features_unlabeled"])]
    return trained_project(tmp_path_factory, "pets-unlabeled", (*PETS, "data/stats"), sections, steps)


def _client(root: Path):  # noqa: ANN202
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")


def _pretraining_photos(root: Path) -> pd.DataFrame:
    manifest = pd.read_parquet(root / "data/validated/pets/manifest.parquet")
    index = pd.read_parquet(root / "data/prepared/pets/index.parquet")
    return unlabeled_photos(manifest, index)  # as the stage takes them


def test_pets_unlabeled_writes_a_safe_backbone_and_its_summary(project: Path) -> None:
    keras = pytest.importorskip("keras")
    size = RAW["prepare"]["pets"]["image_size"]
    backbone = keras.models.load_model(project / OUT / "backbone.keras", safe_mode=True)
    assert backbone.name == "backbone" and tuple(backbone.inputs[0].shape) == (None, size, size, 3)
    summary = json.loads((project / OUT / "summary.json").read_text())
    index = pd.read_parquet(project / "data/prepared/pets/index.parquet")
    photos = _pretraining_photos(project)
    assert 0 <= summary["knn_accuracy"] <= 1 and 0 <= summary["linear_probe_accuracy"] <= 1
    assert 0.5 <= summary["chance_accuracy"] <= 1 and np.isfinite(summary["pretext_loss"])
    assert summary["task"] == "simclr" and summary["epochs"] == UNLABELED["epochs"] and summary["knn_k"] == UNLABELED["knn"]
    assert summary["unlabeled_photos"] == len(photos) >= 2
    assert summary["probe_train_photos"] == int((index.split == "train").sum())
    assert summary["probe_val_photos"] == int((index.split == "val").sum())
    assert summary["train_size"] == UNLABELED["train_size"] and summary["image_size"] == size
    assert tuple(backbone.outputs[0].shape) == (None, summary["feature_dim"]) and "seconds" not in summary
    history = pd.read_csv(project / OUT / "history.csv")
    assert history.epoch.tolist() == list(range(UNLABELED["epochs"])) and history.loss.tolist()[-1] == pytest.approx(
        summary["pretext_loss"]
    )
    assert sorted(p.name for p in (project / "models/pretrain").iterdir()) == ["pets_unlabeled"]
    assert not (project / paths.checkpoints("pretrain@pets_unlabeled")).exists() or not any(
        (project / paths.checkpoints("pretrain@pets_unlabeled")).iterdir()
    )


def test_pets_unlabeled_normalizes_with_the_unlabeled_photos_only(project: Path) -> None:
    """The backbone's Normalization holds the statistics of the photos in no split: it never saw a labeled one."""
    keras = pytest.importorskip("keras")
    from pipeline.data import images
    from pipeline.training import loop

    backbone = keras.models.load_model(project / OUT / "backbone.keras", safe_mode=True)
    photos = _pretraining_photos(project)
    index = pd.read_parquet(project / "data/prepared/pets/index.parquet")
    assert set(photos.path).isdisjoint(index.path) and set(photos.sha256).isdisjoint(index.sha256)
    pixels = images.load_many(project / "data/raw/pets", photos.path.tolist(), tuple(backbone.inputs[0].shape)[1])
    mean, variance = loop.channel_stats(pixels)
    cfg = backbone.get_layer("normalize").get_config()
    np.testing.assert_allclose(np.ravel(cfg["mean"]), mean, rtol=1e-5)
    np.testing.assert_allclose(np.ravel(cfg["variance"]), variance, rtol=1e-5)


def test_pets_unlabeled_run_in_mlflow(project: Path) -> None:
    client = _client(project)
    md5 = tracking.file_md5(project / OUT / "backbone.keras")
    experiment = client.get_experiment_by_name(tracking.PRETRAIN_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`model.md5` = '{md5}'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["pretrain.source"] == "pets_unlabeled" and run.data.tags["dvc.stage"] == "pretrain@pets_unlabeled"
    assert run.data.tags["dataset"] == "pets"
    summary = json.loads((project / OUT / "summary.json").read_text())
    for key in ("knn_accuracy", "linear_probe_accuracy", "chance_accuracy", "pretext_loss"):
        assert run.data.metrics[key] == pytest.approx(summary[key]), key
    assert run.data.metrics["seconds"] > 0 and run.data.metrics["probe_seconds"] > 0
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(UNLABELED["epochs"]))
    assert run.data.params["unlabeled_photos"] == str(summary["unlabeled_photos"])
    assert run.data.params["encoder"] == UNLABELED["encoder"] and run.data.params["epochs"] == str(UNLABELED["epochs"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary", "history", "model"} <= artifacts
    logged = json.loads((project / paths.pretrain_log("pets_unlabeled")).read_text())  # timings beside, not in, the outputs
    assert logged["run_id"] == run.info.run_id and logged["seconds"] == pytest.approx(run.data.metrics["seconds"])


def test_a_transfer_variant_trains_on_the_pets_unlabeled_backbone(project: Path) -> None:
    keras = pytest.importorskip("keras")
    from pipeline.models import transfer

    pretrained = keras.models.load_model(project / OUT / "backbone.keras", safe_mode=True)
    model = keras.models.load_model(project / "models/features_unlabeled/model.keras", safe_mode=True)
    for w0, w1 in zip(pretrained.get_weights(), transfer.backbone_of(model).get_weights(), strict=True):
        np.testing.assert_array_equal(w0, w1)  # transfer_features: frozen, as pretrained
    run_id = json.loads((project / "logs/train/features_unlabeled.json").read_text())["run_id"]
    params = _client(project).get_run(run_id).data.params
    assert params["transfer.backbone"] == "pretrain" and params["transfer.source"] == "pets_unlabeled"


# --- the leakage guard on the real PetImages mirror ----------------------------------------------------------------

MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP


def test_real_pets_pretraining_set_shares_no_photo_with_any_split() -> None:
    """At results.yaml's protocol (1000 / 500 / 500 per class, prepare.seed 42), on the real photos' bytes.

    The manifest is built from the zip's members (label: the class folder,
    accepted: an image's magic bytes), not by the validate stage, to stay fast.
    """
    archive = SHARED_DATASETS / "kagglecatsanddogs-180px.zip"
    if not archive.is_file():
        pytest.skip(f"needs the real PetImages mirror {archive} (absent on this machine)")
    rows = []
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) != 3:
                continue
            data = z.read(info)
            accepted = data.startswith(MAGIC)
            rows.append((info.filename, parts[1], "accepted" if accepted else "rejected", hashlib.sha256(data).hexdigest()))
    manifest = pd.DataFrame(rows, columns=["path", "label", "status", "sha256"])
    assert len(manifest) > 10000 and set(manifest.label) == {"Cat", "Dog"}

    protocol = yaml.safe_load((REPO / "results.yaml").read_text())["params"]["prepare"]
    raw = copy.deepcopy(RAW)
    raw["prepare"]["seed"] = protocol["seed"]
    raw["prepare"]["pets"]["split"] = protocol["pets"]["split"]
    params = config.parse(raw)
    split = params.prepare.pets.split
    assert isinstance(split, config.PetsSplit) and split.per_class and (split.train, split.val, split.test) == (1000, 500, 500)
    assert params.prepare.seed == 42

    ok = manifest[manifest.status == "accepted"].copy()
    ok["split"] = splits.split_classes(ok, split, params.prepare.seed)
    index = ok[ok.split != ""]
    assert index.split.value_counts().to_dict() == {"train": 2000, "val": 1000, "test": 1000}
    photos = unlabeled_photos(manifest, index)  # as the stage takes them

    for name in ("val", "test", "train"):
        part = index[index.split == name]
        assert set(photos.sha256).isdisjoint(part.sha256), name
        assert set(photos.path).isdisjoint(part.path), name
    assert photos.sha256.isin(manifest.sha256[manifest.status == "accepted"]).all()
    print(f"\nreal pets_unlabeled pretraining set: {len(photos)} photos ({len(ok)} accepted, {len(index)} in a split)")
    assert 5900 <= len(photos) <= 6010  # ~6,000: the 10,000 photos less the 4,000 of the splits
