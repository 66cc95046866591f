"""Transfer learning: the pretrain@houses_rooms stage, the frozen / fine-tuned transfer variants, kNN on deep features, backbones.

One small run on a copy of the shared demo project: pretrain@houses_rooms (2
epochs, narrow), then train + evaluate ``transfer_features`` and
``transfer_finetune`` on its backbone (``transfer.source: houses_rooms``); the
tests read what it wrote. The ``pets_unlabeled`` source: tests/test_pretrain.py. The ``imagenet``/``file`` backbones are tested on
their error paths and with a local weights file (never a download).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import config, tracking
from pipeline.config import ConfigError, TransferConfig
from pipeline.errors import PipelineError
from tests.pipeline_project import trained_project

keras = pytest.importorskip("keras")

from pipeline.data import images, splits  # noqa: E402
from pipeline.data import manifest as manifests  # noqa: E402
from pipeline.models import backbones, registry, transfer  # noqa: E402
from pipeline.models.registry import ModelSpec  # noqa: E402
from pipeline.training import loop  # noqa: E402

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

ROOMS = {  # pretrain.houses_rooms
    "seed": 3,
    "epochs": 2,
    "batch_size": 32,
    "learning_rate": 0.003,
    "width": 0.25,
    "val_fraction": 0.15,
}
# the whole pretrain section (trained_project replaces top-level sections); pets_unlabeled as in the repository
PRETRAIN = {**yaml.safe_load(REPO_PARAMS.read_text())["pretrain"], "image_size": 0, "houses_rooms": ROOMS}
TRANSFER = {"backbone": "pretrain", "source": "houses_rooms", "application": "MobileNetV2", "weights": None}
BACKBONE = Path("models/pretrain/houses_rooms/backbone.keras")
SUMMARY = Path("models/pretrain/houses_rooms/summary.json")
VARIANTS = {
    "features": {
        "dataset": "pets",
        "model": "transfer_features",
        "augment": "none",
        "dropout": 0.2,
        "width": 0.25,
        "train": {"epochs": 2},
        "extra": {"knn": 3},
    },
    "finetune": {
        "dataset": "pets",
        "model": "transfer_finetune",
        "augment": "none",
        "width": 0.25,
        "train": {"epochs": 1},
        "extra": {"finetune_epochs": 2, "finetune_learning_rate": 0.01, "unfreeze": "top"},
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parts = ("data/raw/houses", "data/validated/houses", "data/prepared/houses", "data/prepared/pets", "data/stats")
    steps = [("pretrain", ["houses_rooms"]), *(("train", [name]) for name in VARIANTS), ("evaluate", [])]
    sections = {"pretrain": PRETRAIN, "transfer": TRANSFER, "variants": VARIANTS}
    return trained_project(tmp_path_factory, "transfer", parts, sections, steps)


def choice(backbone: str, weights: str | None = None, source: str = "houses_rooms") -> TransferConfig:
    """params' ``transfer`` section (``source`` matters to ``backbone: pretrain`` only)."""
    return TransferConfig(backbone=backbone, source=source, application="MobileNetV2", weights=weights)


def _rooms_photos(root: Path) -> pd.DataFrame:
    """The photos pretrain@houses_rooms trains and validates on: every room photo but those equal to a val/test photo."""
    manifest = pd.read_parquet(root / "data/validated/houses/manifest.parquet")
    index = pd.read_parquet(root / "data/prepared/houses/index.parquet")
    photos = manifests.room_photos(manifest)
    kept = manifests.without_held_out(photos, manifest, index, "houses_rooms")
    return photos[photos.path.isin(kept.path)].reset_index(drop=True)


def _client(root: Path):  # noqa: ANN202
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.MlflowClient()


def _backbone_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Weights of every backbone layer by layer name (moving statistics included)."""
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in transfer.leaves(model) if layer.weights}


def _pretrained(root: Path) -> dict[str, list[np.ndarray]]:
    return _backbone_weights(keras.models.load_model(root / BACKBONE, safe_mode=True))


def _trained_backbone(root: Path, variant: str) -> dict[str, list[np.ndarray]]:
    model = keras.models.load_model(root / "models" / variant / "model.keras", safe_mode=True)
    return _backbone_weights(transfer.backbone_of(model))


# --- the pretrain@houses_rooms stage -----------------------------------------------------------------


def test_pretrain_writes_a_safe_backbone_and_its_summary(project: Path) -> None:
    size = yaml.safe_load((project / "params.yaml").read_text())["prepare"]["pets"]["image_size"]
    backbone = keras.models.load_model(project / BACKBONE, safe_mode=True)
    assert backbone.name == "backbone" and tuple(backbone.inputs[0].shape) == (None, size, size, 3)
    summary = json.loads((project / SUMMARY).read_text())
    assert summary["classes"] == list(config.HOUSE_ROOMS) and summary["epochs"] == ROOMS["epochs"]
    assert 0 <= summary["val_accuracy"] <= 1 and "seconds" not in summary  # timings: in the MLflow run
    assert tuple(backbone.outputs[0].shape) == (None, summary["feature_dim"])
    # every demo house photo (4 per house, 640) but those of the prepared split's val and test houses
    index = pd.read_parquet(project / "data/prepared/houses/index.parquet")
    held_out = 4 * int(index.split.isin(["val", "test"]).sum())
    assert summary["train_photos"] + summary["val_photos"] == len(_rooms_photos(project)) <= 640 - held_out
    assert sorted(p.name for p in (project / "models/pretrain").iterdir()) == ["houses_rooms"]
    features = backbone.predict(np.full((2, size, size, 3), 128, np.float32), verbose=0)
    assert features.shape == (2, summary["feature_dim"]) and np.isfinite(features).all()


def test_backbone_normalizes_with_the_train_photos_statistics(project: Path) -> None:
    """The Normalization holds the mean/variance of the pretraining train photos, as constants."""
    backbone = keras.models.load_model(project / BACKBONE, safe_mode=True)
    cfg = backbone.get_layer("normalize").get_config()
    photos = _rooms_photos(project)
    is_val = splits.split_by_house(photos, ROOMS["val_fraction"], ROOMS["seed"])
    pixels = images.load_many(project / "data/raw/houses", photos.path[~is_val].tolist(), tuple(backbone.inputs[0].shape)[1])
    mean, variance = loop.channel_stats(pixels)
    np.testing.assert_allclose(np.ravel(cfg["mean"]), mean, rtol=1e-5)
    np.testing.assert_allclose(np.ravel(cfg["variance"]), variance, rtol=1e-5)
    assert not backbone.get_layer("normalize").weights  # constants in the config, nothing adapted


def test_pretrain_run_in_mlflow(project: Path) -> None:
    client = _client(project)
    md5 = tracking.file_md5(project / BACKBONE)
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id], f"tags.`model.md5` = '{md5}'")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == "pretrain"
    assert run.data.tags["pretrain.source"] == "houses_rooms" and run.data.tags["dvc.stage"] == "pretrain@houses_rooms"
    assert run.data.metrics["val_accuracy"] == pytest.approx(json.loads((project / SUMMARY).read_text())["val_accuracy"])
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == list(range(ROOMS["epochs"]))
    assert run.data.metrics["seconds"] > 0 and run.data.metrics["decode_seconds"] > 0
    assert run.data.params["epochs"] == str(ROOMS["epochs"])


def test_split_by_house_holds_out_whole_houses_and_keeps_shared_photos_together() -> None:
    rows = [(f"{h}_{room}.jpg", h, room, f"sha-{h}-{room}") for h in range(1, 41) for room in config.HOUSE_ROOMS]
    photos = pd.DataFrame(rows, columns=["path", "house_id", "label", "sha256"])
    photos.loc[photos.house_id == 7, "sha256"] = photos.loc[photos.house_id == 8, "sha256"].to_numpy()  # house 7 = house 8
    for seed in range(10):
        is_val = splits.split_by_house(photos, 0.15, seed)
        assert set(photos.house_id[is_val]).isdisjoint(photos.house_id[~is_val])
        assert is_val[photos.house_id == 7].all() == is_val[photos.house_id == 8].all() == is_val[photos.house_id == 7].any()
        assert 6 <= photos.house_id[is_val].nunique() <= 7
    np.testing.assert_array_equal(splits.split_by_house(photos, 0.15, 1), splits.split_by_house(photos, 0.15, 1))
    assert not np.array_equal(splits.split_by_house(photos, 0.15, 1), splits.split_by_house(photos, 0.15, 2))


# --- the transfer variants ------------------------------------------------------------------------


def test_transfer_features_leaves_the_backbone_unchanged(project: Path) -> None:
    before, after = _pretrained(project), _trained_backbone(project, "features")
    assert before.keys() == after.keys() and any("block4" in name for name in before)
    for name, weights in before.items():
        for w0, w1 in zip(weights, after[name], strict=True):
            np.testing.assert_array_equal(w0, w1, err_msg=name)


def test_transfer_finetune_trains_only_the_top_block_and_keeps_batchnorm_frozen(project: Path) -> None:
    before, after = _pretrained(project), _trained_backbone(project, "finetune")
    model = keras.models.load_model(project / "models/finetune/model.keras", safe_mode=True)
    kinds = {layer.name: type(layer) for layer in transfer.leaves(transfer.backbone_of(model))}
    top = {layer.name for layer in transfer.top_block(transfer.backbone_of(model))}
    changed = {
        name
        for name, weights in before.items()
        if any(not np.array_equal(w0, w1) for w0, w1 in zip(weights, after[name], strict=True))
    }
    assert changed == {"block4_conv"}  # the top block's convolution; its BatchNormalization and every earlier layer as they were
    assert "block4_bn" in top and kinds["block4_bn"] is keras.layers.BatchNormalization
    assert all(name.startswith("block") or name == "normalize" for name in before)


def test_transfer_scratch_is_the_same_architecture_with_fresh_weights_all_trained() -> None:
    backbone = transfer.conv_backbone(32, (120.0,) * 3, (3600.0,) * 3, width=0.25)
    scratch, pretrained = (
        transfer.transfer_scratch(ModelSpec(image_size=32, backbone=backbone)),
        transfer.transfer_finetune(ModelSpec(image_size=32, backbone=backbone)),
    )
    assert [w.shape for w in scratch.weights] == [w.shape for w in pretrained.weights]
    fresh = transfer.backbone_of(scratch).get_layer("block1_conv").get_weights()[0]
    assert not np.array_equal(fresh, backbone.get_layer("block1_conv").get_weights()[0])  # not the pretrained weights
    assert {id(w) for w in scratch.trainable_weights} >= {
        id(w) for w in transfer.backbone_of(scratch).get_layer("block4_conv").weights
    }
    assert all(layer.trainable for layer in transfer.leaves(transfer.backbone_of(scratch)))


def test_unfreeze_marks_the_top_block_trainable_except_batchnorm() -> None:
    spec = ModelSpec(image_size=32, backbone=transfer.conv_backbone(32, (120.0,) * 3, (3600.0,) * 3, width=0.25))
    model = transfer.transfer_finetune(spec)
    head = {id(w) for w in model.trainable_weights}
    assert head == {id(w) for name in ("fc1", "prediction") for w in model.get_layer(name).weights}  # the backbone frozen
    assert transfer.unfreeze_top(model) == ["block4_conv"]
    added = {id(w) for w in model.trainable_weights} - head
    assert added == {id(w) for w in transfer.backbone_of(model).get_layer("block4_conv").weights}
    assert not transfer.backbone_of(model).get_layer("block4_bn").trainable
    assert spec.backbone.trainable and all(layer.trainable for layer in spec.backbone.layers)  # the spec's model is untouched
    everything = transfer.unfreeze(model, "all")
    assert {"block1_conv", "block4_conv"} <= set(everything) and not any("bn" in name for name in everything)


def test_batchnorm_stays_frozen_in_fit_until_all_batchnorm_unfreezes_it() -> None:
    spec = ModelSpec(image_size=32, backbone=transfer.conv_backbone(32, (120.0,) * 3, (3600.0,) * 3, width=0.25))
    model = transfer.transfer_finetune(spec)
    bn = transfer.backbone_of(model).get_layer("block1_bn")
    x, y = {"image": np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")}, np.ones((8, 1), "float32")

    def fit_once() -> np.ndarray:
        before = keras.ops.convert_to_numpy(bn.moving_mean).copy()
        model.compile(optimizer="sgd", loss="binary_crossentropy")
        model.fit(x, y, epochs=1, verbose=0)
        return before

    before = fit_once()
    np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(bn.moving_mean))  # frozen: moving statistics kept
    for which in ("top", "all"):
        transfer.unfreeze(model, which)
        np.testing.assert_array_equal(fit_once(), keras.ops.convert_to_numpy(bn.moving_mean))
    trained = transfer.unfreeze(model, "all_batchnorm")
    assert {"block1_conv", "block1_bn", "block4_bn"} <= set(trained)
    assert not np.allclose(fit_once(), keras.ops.convert_to_numpy(bn.moving_mean))  # re-estimated on the new photos


def test_history_epochs_continue_across_the_two_phases(project: Path) -> None:
    history = pd.read_csv(project / "reports/train/finetune.csv")
    epochs = VARIANTS["finetune"]["train"]["epochs"] + VARIANTS["finetune"]["extra"]["finetune_epochs"]
    assert history.epoch.tolist() == list(range(epochs))
    assert {"loss", "val_loss", "accuracy", "val_auc"} <= set(history.columns) and history.notna().all().all()
    client = _client(project)
    run_id = json.loads((project / "logs/train/finetune.json").read_text())["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == list(range(epochs))
    assert json.loads((project / "logs/train/finetune.json").read_text())["epochs"] == epochs
    assert client.get_run(run_id).data.params["transfer.backbone"] == "pretrain"
    assert client.get_run(run_id).data.params["transfer.source"] == "houses_rooms"


def test_knn_accuracy_on_deep_features_in_metrics_and_mlflow(project: Path) -> None:
    metrics = json.loads((project / "reports/metrics/features.json").read_text())
    assert 0 <= metrics["knn_accuracy"] <= 1 and metrics["knn_k"] == VARIANTS["features"]["extra"]["knn"]
    assert {"accuracy", "roc_auc", "f1"} <= set(metrics)  # the network head's metrics alongside
    run_id = json.loads((project / "logs/train/features.json").read_text())["run_id"]
    assert _client(project).get_run(run_id).data.metrics["test_knn_accuracy"] == pytest.approx(metrics["knn_accuracy"])


def test_knn_accuracy_is_the_seed_knn_on_backbone_features() -> None:
    model = transfer.transfer_features(
        ModelSpec(image_size=16, backbone=transfer.conv_backbone(16, (128.0,) * 3, (4000.0,) * 3, width=0.25))
    )
    rng = np.random.default_rng(0)

    def photos() -> np.ndarray:
        return np.concatenate([rng.uniform(0, 40, (10, 16, 16, 3)), rng.uniform(215, 255, (10, 16, 16, 3))])

    y = np.repeat([0.0, 1.0], 10)
    assert transfer.knn_accuracy(model, 3, (photos(), y), (photos(), y)) == 1.0  # dark vs bright: apart in any feature space


# --- choosing a backbone ----------------------------------------------------------------------------


def test_imagenet_with_a_missing_weights_file_names_the_key(tmp_path: Path) -> None:
    for backbone in ("imagenet", "file"):
        cfg = choice(backbone, str(tmp_path / "no-such-weights.h5"))
        with pytest.raises(PipelineError, match=r"^transfer\.weights: .*no-such-weights\.h5 not found"):
            backbones.load_backbone(cfg, 32)


def test_imagenet_weights_that_cannot_be_had_fail_without_a_random_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from keras.src.utils import file_utils

    calls = []

    def offline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - stands in for the download: no network in tests
        calls.append(kwargs.get("origin", args[1] if len(args) > 1 else None))
        raise Exception("URL fetch failure: no network")  # noqa: TRY002 - what keras raises offline

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(
        PipelineError, match=r"^transfer\.backbone: keras\.applications\.MobileNetV2 could not load the ImageNet weights"
    ) as error:
        backbones.load_backbone(choice("imagenet"), 96)
    assert calls and "transfer.weights" in str(error.value) and "pretrain" in str(error.value)


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")  # keras, on its way to the error
def test_a_weights_file_of_another_architecture_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "other.weights.h5"
    transfer.conv_backbone(32, (1.0,) * 3, (1.0,) * 3, width=0.25).save_weights(path)
    with pytest.raises(
        PipelineError, match=r"^transfer\.weights: keras\.applications\.MobileNetV2 could not load the weights file"
    ):
        backbones.load_backbone(choice("file", str(path)), 32)


def test_file_backbone_loads_a_local_weights_file_into_the_application(tmp_path: Path) -> None:
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "mobilenet_v2.weights.h5"
    source.save_weights(path)
    backbone = backbones.load_backbone(choice("file", str(path)), 32)
    assert backbone.name == "backbone" and backbone.get_layer("preprocess").get_config()["scale"] == pytest.approx(1 / 127.5)
    for w0, w1 in zip(source.get_weights(), backbone.layers[-1].get_weights(), strict=True):  # the nested application
        np.testing.assert_array_equal(w0, w1)
    model = transfer.transfer_finetune(ModelSpec(image_size=32, backbone=backbone))
    assert transfer.block_id(transfer.unfreeze_top(model)[0]) == "block_16"  # MobileNetV2's last block, then Conv_1
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(
        again.predict({"image": x}, verbose=0), model.predict({"image": x}, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_file_backbone_takes_a_saved_keras_backbone(project: Path) -> None:
    path = project / BACKBONE
    backbone = backbones.load_backbone(choice("file", str(path)), 96)
    assert backbone.name == "backbone" and backbone.get_layer("block4_conv")
    with pytest.raises(PipelineError, match=r"^transfer\.weights: .* is not a backbone for 64 px"):
        backbones.load_backbone(choice("file", str(path)), 64)


def test_pretrain_backbone_missing_or_of_another_size(project: Path, tmp_path: Path) -> None:
    cfg = choice("pretrain")
    assert backbones.load_backbone(cfg, 96, folder=project / "models/pretrain").name == "backbone"  # <folder>/<source>/
    with pytest.raises(
        PipelineError, match=r"houses_rooms/backbone\.keras: not found; run the pretrain@houses_rooms stage first"
    ):
        backbones.load_backbone(cfg, 96, folder=tmp_path)
    with pytest.raises(PipelineError, match=r"pets_unlabeled/backbone\.keras: not found; run the pretrain@pets_unlabeled stage"):
        backbones.load_backbone(choice("pretrain", source="pets_unlabeled"), 96, folder=project / "models/pretrain")
    with pytest.raises(
        PipelineError,
        match=r"^transfer\.backbone: .* pretrained on 96 px images, the model works at 64 px; set pretrain.image_size",
    ):
        backbones.load_backbone(cfg, 64, folder=project / "models/pretrain")


# --- params ---------------------------------------------------------------------------------------


def _params_with(section: str, **changes: object) -> dict:
    """The repository's params with ``changes`` merged into ``section`` (dotted: ``pretrain.houses_rooms``)."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    *parents, last = section.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = {**node[last], **changes}
    return raw


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("transfer", {"backbone": "scratch"}, "transfer.backbone: 'scratch' is not one of pretrain, imagenet, file"),
        ("transfer", {"backbone": "file", "weights": None}, "transfer.weights: required when transfer.backbone is file"),
        ("transfer", {"application": "ResNet9"}, "transfer.application: 'ResNet9' is not one of MobileNet, MobileNetV2"),
        ("transfer", {"weights": ""}, "transfer.weights: expected a non-empty string"),
        ("transfer", {"url": "x"}, "transfer.url: unknown key"),
        ("transfer", {"source": "rooms"}, "transfer.source: 'rooms' is not one of houses_rooms, pets_unlabeled"),
        ("pretrain.houses_rooms", {"epochs": 0}, "pretrain.houses_rooms.epochs: 0 is outside [1, 10000]"),
        ("pretrain.houses_rooms", {"val_fraction": 0.9}, "pretrain.houses_rooms.val_fraction: 0.9 is outside"),
        ("pretrain.pets_unlabeled", {"epochs": 0}, "pretrain.pets_unlabeled.epochs: 0 is outside [1, 10000]"),
        ("pretrain", {"image_size": -1}, "pretrain.image_size: -1 is outside [0, 4096]"),
        ("pretrain", {"size": 64}, "pretrain.size: unknown key"),
    ],
)
def test_bad_transfer_params_name_the_key(section: str, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.parse(_params_with(section, **changes))
    assert message in str(error.value)


def test_variant_named_pretrain_is_refused() -> None:
    raw = _params_with("transfer")
    raw["variants"]["pretrain"] = {"dataset": "pets", "model": "cnn_functional"}
    with pytest.raises(ConfigError, match=r"variants\.pretrain: the name is reserved"):
        config.parse(raw)


def test_repository_params_have_the_transfer_variants_and_known_applications() -> None:
    params = config.parse(_params_with("transfer"))
    assert {params.variants[n].model for n in ("transfer_features", "transfer_finetune")} == {
        "transfer_features",
        "transfer_finetune",
    }
    assert params.transfer.backbone == "pretrain" and params.transfer.source in config.PRETRAIN_SOURCES
    sources = {
        n: v.transfer.source
        for n, v in params.variants.items()
        if v.model.startswith("transfer_") and v.model != "transfer_scratch"
    }
    assert set(sources.values()) == set(config.PRETRAIN_SOURCES)  # a frozen and a fine-tuned variant on each source
    assert set(backbones.PREPROCESSING) == set(config.APPLICATIONS)
    import keras

    assert all(hasattr(keras.applications, name) for name in config.APPLICATIONS)


def test_finetune_plan_and_knn_read_the_knobs_with_their_defaults() -> None:
    assert transfer.finetune_plan("transfer_finetune", {}, 0.001) == (2, pytest.approx(0.0001), "top")
    assert transfer.finetune_plan("transfer_features", {}, 0.001) is None
    assert transfer.finetune_plan("transfer_features", {"finetune_epochs": 3, "unfreeze": "all"}, 0.01)[::2] == (3, "all")
    assert transfer.finetune_plan("resnet", {}, 0.01) is None  # no second phase outside transfer learning
    assert [transfer.knn_k(name, {}) for name in ("transfer_features", "transfer_finetune", "transfer_scratch")] == [5, 5, 0]
    assert transfer.knn_k("transfer_scratch", {"knn": 3}) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"unfreeze": "bottom"}, "variants.transfer_finetune.extra.unfreeze: 'bottom' is not one of top, all, all_batchnorm"),
        ({"finetune_epochs": "2"}, "variants.transfer_finetune.extra.finetune_epochs: expected an integer, got '2'"),
        ({"finetune_learning_rate": 0}, "variants.transfer_finetune.extra.finetune_learning_rate: 0 is outside [1e-08, 10]"),
        ({"knn": -1}, "variants.transfer_finetune.extra.knn: -1 is outside [0, None]"),
        (
            {"knm": 3},
            "variants.transfer_finetune.extra.knm: unknown key; allowed keys of transfer_finetune's extra: dense_units,",
        ),
    ],
)
def test_bad_transfer_knobs_fail_in_config_naming_the_key(extra: dict, message: str) -> None:
    raw = _params_with("transfer")
    raw["variants"]["transfer_finetune"]["extra"] = extra
    with pytest.raises(ConfigError) as error:
        config.parse(raw)
    assert message in str(error.value)


def test_block_ids_follow_the_keras_applications_names() -> None:
    names = {
        "block4_conv": "block4",
        "block_16_expand_BN": "block_16",
        "block7a_project_bn": "block7a",
        "conv5_block3_out": "conv5_block3",
        "block10_pool": "block10",
        "Conv_1": None,
        "features": None,
    }
    assert {n: transfer.block_id(n) for n in names} == names


def test_transfer_builder_without_a_backbone_says_what_it_needs() -> None:
    with pytest.raises(ValueError, match="needs ModelSpec.backbone"):
        transfer.transfer_features(ModelSpec(image_size=32))
    spec = ModelSpec(image_size=32, backbone=transfer.conv_backbone(16, (1.0,) * 3, (1.0,) * 3))
    with pytest.raises(ValueError, match=r"backbone takes \(16, 16, 3\) images"):
        transfer.transfer_features(spec)
    assert dataclasses.replace(spec, image_size=16).backbone is spec.backbone


def test_knn_of_a_model_working_below_the_prepared_size_sees_resized_images() -> None:
    spec = ModelSpec(image_size=32, input_size=48, backbone=transfer.conv_backbone(32, (120.0,) * 3, (3600.0,) * 3, width=0.25))
    model = registry.build("transfer_features", spec)
    images = np.random.default_rng(0).uniform(0, 255, (300, 48, 48, 3)).astype("float32")  # two resize chunks
    seen = keras.ops.convert_to_numpy(model.get_layer("resize")(images))
    assert seen.shape == (300, 32, 32, 3)
    got = transfer.features(model, images)
    np.testing.assert_allclose(got, transfer.backbone_of(model).predict(seen, verbose=0), rtol=1e-5, atol=1e-5)
    labels = np.array([0, 1] * 150)
    assert transfer.knn_accuracy(model, 1, (images, labels), (images, labels)) == 1.0  # its own neighbour
    plain = transfer.transfer_features(
        ModelSpec(image_size=32, backbone=spec.backbone)
    )  # no resize layer: the images as they are
    np.testing.assert_allclose(
        transfer.features(plain, seen), transfer.backbone_of(plain).predict(seen, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_resize_images_resizes_as_the_models_resize_layer_does() -> None:
    from pipeline.models.wrap import resize_images

    spec = ModelSpec(image_size=32, input_size=48, backbone=transfer.conv_backbone(32, (120.0,) * 3, (3600.0,) * 3, width=0.25))
    model = registry.build("transfer_features", spec)
    images = np.random.default_rng(1).uniform(0, 255, (300, 48, 48, 3)).astype("uint8")  # two chunks of 256
    got = resize_images(images, 32)
    assert got.shape == (300, 32, 32, 3) and got.dtype == np.float32
    expected = keras.ops.convert_to_numpy(model.get_layer("resize")(images.astype("float32")))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert resize_images(images[:0], 32).shape == (0, 32, 32, 3)
