"""Tests for pipeline.config: params.yaml parsing and the messages of its errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import config
from pipeline.config import ConfigError, PetsSplit, Split
from pipeline.models import registry

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
RAW = yaml.safe_load(REPO_PARAMS.read_text())
_DELETE = object()


def with_change(dotted: str, value: Any) -> dict:
    """A deep copy of the repository's params with ``dotted`` set to ``value`` (or removed)."""
    raw = copy.deepcopy(RAW)
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


def error_of(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(raw)
    return str(info.value)


# --------------------------------------------------------------------------- the real file


def test_repository_params_parse() -> None:
    params = config.parse(copy.deepcopy(RAW))
    assert params.data.profile in config.PROFILES
    assert params.data.demo.pets == RAW["data"]["demo"]["pets"]
    assert params.data.extract.max_bytes == RAW["data"]["extract"]["max_bytes"]
    assert set(params.datasets) == set(config.DATASETS)
    assert params.datasets["pets"].mirror_file == RAW["datasets"]["pets"]["mirror"]["file"]
    assert params.validate.pets.classes == tuple(RAW["validate"]["pets"]["classes"])
    assert params.validate.houses.price == tuple(float(v) for v in RAW["validate"]["houses"]["price"])
    assert params.prepare.seed == RAW["prepare"]["seed"]
    assert params.prepare.pets.resize in config.RESIZE_MODES
    split = params.prepare.pets.split
    assert split.per_class is False
    assert 0 < split.train + split.val + split.test <= 1  # the rest: the unlabeled photos of pretrain.pets_unlabeled
    houses = params.prepare.houses.split
    assert houses.per_class is False and houses.train + houses.val + houses.test == pytest.approx(1.0)
    assert params.prepare.houses.group_duplicates is RAW["prepare"]["houses"]["group_duplicates"]


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(REPO_PARAMS.read_text())
    assert config.load(path) == config.parse(copy.deepcopy(RAW))


def test_sha256_is_lowercased() -> None:
    digest = "AB" * 32
    params = config.parse(with_change("datasets.houses.sha256", digest))
    assert params.datasets["houses"].sha256 == digest.lower()


def test_per_class_counts_parse_as_counts() -> None:
    params = config.parse(with_change("prepare.pets.split", {"train": 1000, "val": 500, "test": 500}))
    assert params.prepare.pets.split == PetsSplit(train=1000.0, val=500.0, test=500.0, per_class=True)


def test_zero_val_fraction_is_allowed() -> None:
    params = config.parse(with_change("prepare.houses.split", {"train": 0.75, "val": 0, "test": 0.25}))
    assert params.prepare.houses.split == Split(train=0.75, val=0.0, test=0.25, per_class=False)


# --------------------------------------------------------------------------- bad values

BAD = [
    # (dotted key to change, new value, key the message must name, further fragments it must contain)
    ("data.extract.max_bytez", 5, "data.extract.max_bytez", ["unknown key", "max_bytes, max_files, max_ratio"]),
    ("validate.pets.colour", "red", "validate.pets.colour", ["unknown key", "classes", "max_duplicate_rate"]),
    ("datasets.cats", {"url": "x"}, "datasets.cats", ["unknown key", "houses, pets"]),
    ("data.profile", "fake", "data.profile", ["'fake'", "demo, real"]),
    ("prepare.pets.resize", "stretch", "prepare.pets.resize", ["'stretch'", "squash, crop, pad"]),
    ("data.retries", "three", "data.retries", ["expected an integer"]),
    ("data.demo.seed", 1.5, "data.demo.seed", ["expected an integer"]),
    ("data.timeout_s", True, "data.timeout_s", ["expected a number"]),
    ("data.extract.max_ratio", float("nan"), "data.extract.max_ratio", ["expected a number"]),
    ("validate.houses.price", 1000, "validate.houses.price", ["expected [min, max]"]),
    ("validate.houses.area", [100, "big"], "validate.houses.area[1]", ["expected a number"]),
    ("validate.houses.area", [500, 100], "validate.houses.area", ["min 500", "max 100"]),
    ("validate.pets.classes", "Cat", "validate.pets.classes", ["at least 2 distinct"]),
    ("validate.pets.classes", ["Cat", "Dog/x"], "validate.pets.classes[1]", ["'Dog/x'"]),
    ("data.retries", -1, "data.retries", ["-1", "outside"]),
    ("prepare.shard_size", 0, "prepare.shard_size", ["outside"]),
    ("validate.pets.max_reject_rate", -0.1, "validate.pets.max_reject_rate", ["outside"]),
    ("validate.pets.max_side", 8, "validate.pets.max_side", ["outside"]),
    ("data.demo.pets", {"Cat": 240}, "data.demo.pets.Dog", ["missing key"]),
    ("validate.houses.price", _DELETE, "validate.houses.price", ["missing key"]),
    ("datasets.pets.sha256", "abc123", "datasets.pets.sha256", ["64 hex digits", "'abc123'"]),
    ("datasets.houses.mirror.sha256", "z" * 64, "datasets.houses.mirror.sha256", ["64 hex digits"]),
    ("data.mirror", "", "data.mirror", ["non-empty string"]),
    ("prepare.pets.split", {"train": 0.7, "val": 0.2, "test": 0.2}, "prepare.pets.split", ["sum to at most 1"]),
    ("prepare.houses.split", {"train": 0.6, "val": 0.15, "test": 0.15}, "prepare.houses.split", ["and sum to 1,"]),
    ("prepare.houses.split", {"train": 0.8, "val": 0.2, "test": 0.0}, "prepare.houses.split", ["> 0 for train and test"]),
    ("prepare.pets.split", {"train": 0.7, "val": 100, "test": 0.15}, "prepare.pets.split", ["not a mix", "whole numbers"]),
    ("prepare.pets.split", {"train": 0, "val": 5, "test": 5}, "prepare.pets.split.train", ["at least 1 image"]),
    ("prepare.pets.split", {"train": 0.7, "val": 0.3}, "prepare.pets.split.test", ["missing key"]),
    ("prepare.houses.split", {"train": 100, "val": 20, "test": 40}, "prepare.houses.split", ["fractions (0.7)"]),
    ("prepare.houses.group_duplicates", "yes", "prepare.houses.group_duplicates", ["expected true or false", "'yes'"]),
    ("variants.resnet.tta", "rotate", "variants.resnet.tta", ["'rotate'", "none, flip"]),
    ("variants.resnet.image_size", 96.5, "variants.resnet.image_size", ["expected an integer"]),
]


@pytest.mark.parametrize(("key", "value", "named", "fragments"), BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_bad_value_names_the_key(key: str, value: Any, named: str, fragments: list[str]) -> None:
    message = error_of(with_change(key, value))
    assert message.startswith(named + ":") or message.startswith(named + " "), message
    for fragment in fragments:
        assert fragment in message


def test_counts_for_houses_are_not_taken_as_counts() -> None:
    # the same sizes that parse as per-class counts for pets are refused for houses
    sizes = {"train": 100, "val": 20, "test": 40}
    assert config.parse(with_change("prepare.pets.split", sizes)).prepare.pets.split.per_class
    assert "prepare.houses.split" in error_of(with_change("prepare.houses.split", sizes))


def test_unknown_top_level_section_names_it_and_the_sections() -> None:
    raw = copy.deepcopy(RAW)
    raw["trian"] = {"epochs": 3}
    message = error_of(raw)
    assert "trian: unknown key" in message
    assert "augment, data, datasets, prepare, pretrain, review, train, transfer, validate, variants" in message


def test_not_a_mapping() -> None:
    assert "expected a mapping" in error_of(["data"])
    assert error_of(with_change("data.extract", 5)).startswith("data.extract: expected a mapping")


# --------------------------------------------------------------------------- load


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ConfigError, match="file not found") as info:
        config.load(path)
    assert str(path) in str(info.value)


def test_load_invalid_yaml_names_it(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  profile: [demo\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}:")


def test_load_prefixes_the_file_to_the_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(with_change("prepare.pets.resize", "stretch")))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}: prepare.pets.resize: 'stretch' is not one of squash, crop, pad")


def test_variant_overrides_and_class_weights() -> None:
    raw = with_change("train.class_weight", {"Cat": 1, "Dog": 3})
    raw["variants"]["lenet5"]["train"] = {"epochs": 9, "class_weight": "none"}
    params = config.parse(raw)
    assert params.variants["lenet5"].train.epochs == 9 and params.variants["lenet5"].train.class_weight == "none"
    assert params.variants["alexnet"].train.class_weight == {"Cat": 1.0, "Dog": 3.0}
    assert params.variants["alexnet"].train.epochs == params.train.epochs


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("train.class_weight", "auto", "train.class_weight: 'auto' is not one of balanced, inverse, none"),
        ("train.class_weight", {"Cat": -1}, "train.class_weight.Cat: -1 is outside"),
        ("variants.lenet5.train", {"epoch": 3}, "variants.lenet5.train.epoch: unknown key"),
        ("variants.lenet5.dataset", "cats", "variants.lenet5.dataset: 'cats' is not one of pets, houses"),
        (
            "augment.policies.standard.fill_mode",
            "mirror",
            "augment.policies.standard.fill_mode: 'mirror' is not one of nearest, reflect, constant, wrap",
        ),
        ("variants.lenet5.augment", "strong", "variants.lenet5.augment: 'strong' is not one of none, standard"),
        ("variants.lenet5.augment", _DELETE, "variants.lenet5.augment: missing key (required: dataset, model, augment)"),
        ("augment.policies.none", _DELETE, "augment.policies: expected a mapping of policy name -> ops with `none: {}`"),
        ("augment.policies.standard.seed", _DELETE, "augment.policies.standard.seed: missing key"),
        ("train.optimizer", "adagrad", "train.optimizer: 'adagrad' is not one of adam, adamw, sgd, rmsprop"),
        ("train.warmup", 4, "train.warmup: 4 epochs of warmup leave none of the 4 epochs to train at the learning rate"),
        (
            "variants.lenet5.train",
            {"warmup": 1, "schedule": "step"},
            "variants.lenet5.train.warmup: a warmup ramps into schedule constant or cosine, not 'step'",
        ),
    ],
)
def test_training_keys_name_the_culprit(key: str, value: Any, fragment: str) -> None:
    assert fragment in error_of(with_change(key, value))


# --------------------------------------------------------------------------- numbers written by `dvc exp run -S`


def test_a_numeric_string_is_a_number() -> None:
    # `dvc exp run -S '++variants.lenet5.train.learning_rate=1e-5'` writes 1e-05, which YAML 1.1 reads as a string
    raw = yaml.safe_load("variants:\n  lenet5:\n    train: {learning_rate: 1e-05}\n")
    assert raw["variants"]["lenet5"]["train"]["learning_rate"] == "1e-05"
    params = config.parse(with_change("variants.lenet5.train", raw["variants"]["lenet5"]["train"]))
    assert params.variants["lenet5"].train.learning_rate == 1e-05
    assert params.variants["lenet5"].model_dump()["train"]["learning_rate"] == 1e-05  # MLflow and config.json get the number


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.learning_rate", "2%", "train.learning_rate: expected a number, got '2%'"),
        ("train.learning_rate", "nan", "train.learning_rate: expected a number, got 'nan'"),
        ("train.learning_rate", "1e-09", "train.learning_rate: 1e-09 is outside [1e-08, 10]"),
        ("train.epochs", "4", "train.epochs: expected an integer, got '4'"),
        ("train.epochs", 4.0, "train.epochs: expected an integer, got 4.0"),
        ("variants.resnet.batchnorm", "true", "variants.resnet.batchnorm: expected true or false, got 'true'"),
        ("variants.resnet.batchnorm", 1, "variants.resnet.batchnorm: expected true or false, got 1"),
        ("train.optimizer", 1, "train.optimizer: 1 is not one of adam, adamw, sgd, rmsprop"),
    ],
)
def test_integers_booleans_and_choices_stay_strict(key: str, value: Any, message: str) -> None:
    assert error_of(with_change(key, value)) == message


# --------------------------------------------------------------------------- models and their extra knobs


def test_an_unknown_model_names_the_key_and_the_registered_models() -> None:
    message = error_of(with_change("variants.lenet5.model", "lenet6"))
    assert message.startswith("variants.lenet5.model: 'lenet6' is not one of cnn_sequential, cnn_functional,")
    assert all(name in message for name in registry.KNOBS)


@pytest.mark.parametrize(
    ("variant", "extra", "message"),
    [
        ("lenet5", {"filtres": 99}, "variants.lenet5.extra.filtres: unknown key; allowed keys of lenet5's extra: activation"),
        ("nin", {"stages": 2}, "variants.nin.extra.stages: unknown key; allowed keys of nin's extra: (none)"),
        ("resnet", {"stem": "tall"}, "variants.resnet.extra.stem: 'tall' is not one of single, deep"),
        ("resnet", {"filters": [8, 16]}, "variants.resnet.extra: filters [8, 16] and blocks [2, 2, 2, 2] differ in length"),
        ("inception", {"stages": 4}, "variants.inception.extra.stages: 4 is outside [1, 3]"),
        ("cnn_sequential", {"padding": "full"}, "variants.cnn_sequential.extra.padding: 'full' is not one of same, valid"),
        (
            "mlp_tabular",
            {"photo_pool": 2},
            "variants.mlp_tabular.extra.photo_pool: unknown key; allowed keys of mlp_tabular's extra:"
            " hidden, log_tabular, target",
        ),
        ("mlp_tabular", {"target": "sqrt"}, "variants.mlp_tabular.extra.target: 'sqrt' is not one of scaled, log"),
        ("mlp_tabular", {"hidden": [8, 0]}, "variants.mlp_tabular.extra.hidden[1]: 0 is outside [1, None]"),
        ("mlp_tabular", {"log_tabular": "yes"}, "variants.mlp_tabular.extra.log_tabular: expected true or false, got 'yes'"),
        ("cnn_montage", {"photo_head": "max"}, "variants.cnn_montage.extra.photo_head: 'max' is not one of flatten, average"),
        ("mixed_inputs", {"combined": -1}, "variants.mixed_inputs.extra.combined: -1 is outside [0, None]"),
    ],
)
def test_a_bad_extra_knob_names_the_key_and_the_choices(variant: str, extra: dict, message: str) -> None:
    assert error_of(with_change(f"variants.{variant}.extra", extra)) == message


def test_extra_keeps_what_the_variant_wrote() -> None:
    # builders and the saved config.json see the user's knobs only; the schema's defaults are filled in by the builder
    params = config.parse(with_change("variants.resnet.extra", {"stem": "deep"}))
    assert params.variants["resnet"].extra == {"stem": "deep"}
    assert registry.knobs("resnet", params.variants["resnet"].extra).min_map == 4


def test_augment_policy_ranges_are_the_ops_own() -> None:
    # the fill modes and ranges are pipeline.training.augment_ops.Policy's: zoom 1 would scale by zero
    assert error_of(with_change("augment.policies.standard.zoom", 1.0)).startswith(
        "augment.policies.standard.zoom: 1.0 must be < 1"
    )
    crop = config.parse(with_change("augment.policies.standard.crop", 1.0)).augment.policies["standard"].crop
    assert crop == 0.0  # keeping the whole side is no crop


def test_loading_params_imports_neither_tensorflow_nor_keras() -> None:
    code = (
        "import sys; from pipeline import config; config.load(); "
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_PARAMS.parent, check=True)


# --------------------------------------------------------------------------- pretrain sources and transfer.source


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pretrain.pets_unlabeled.encoder", "vit", "pretrain.pets_unlabeled.encoder: 'vit' is not one of conv, resnet"),
        ("pretrain.pets_unlabeled.warmup", 4, "pretrain.pets_unlabeled.warmup: 4 epochs of warmup leave none of the 4 epochs"),
        ("pretrain.pets_unlabeled.warmup", 9, "pretrain.pets_unlabeled.warmup: 9 epochs of warmup leave none of the 4 epochs"),
        ("pretrain.pets_unlabeled.extra", {"stem": "deep"}, "pretrain.pets_unlabeled.extra: only the resnet encoder has extra"),
        ("pretrain.pets_unlabeled.batch_size", 1, "pretrain.pets_unlabeled.batch_size: 1 is outside [2, 65536]"),
        ("pretrain.pets_unlabeled.temperature", 0, "pretrain.pets_unlabeled.temperature: 0 is outside"),
        ("pretrain.pets_unlabeled.min_scale", 1.5, "pretrain.pets_unlabeled.min_scale: 1.5 is outside"),
        ("pretrain.pets_unlabeled.knn", 0, "pretrain.pets_unlabeled.knn: 0 is outside [1, 1000]"),
        ("pretrain.pets_unlabeled.loss", "infonce", "pretrain.pets_unlabeled.loss: 'infonce' is not one of nt_xent, dcl"),
        (
            "pretrain.pets_unlabeled.small_min_scale",
            0.2,
            "pretrain.pets_unlabeled.small_min_scale: 0.2 leaves the small crops no area below min_scale 0.2",
        ),
        ("pretrain.pets_unlabeled.projection", 64, "pretrain.pets_unlabeled.projection: unknown key"),
        ("pretrain.pets_unlabeled.seed", _DELETE, "pretrain.pets_unlabeled.seed: missing key"),
        ("pretrain.houses_rooms.val_fraction", 0.9, "pretrain.houses_rooms.val_fraction: 0.9 is outside"),
        ("pretrain.houses_rooms.temperature", 0.2, "pretrain.houses_rooms.temperature: unknown key"),
        (
            "pretrain.imagenet",
            {"seed": 1},
            "pretrain.imagenet: unknown key; allowed keys of pretrain: houses_rooms, image_size, pets_unlabeled",
        ),
        ("pretrain.epochs", 2, "pretrain.epochs: unknown key"),  # the old flat layout
        ("transfer.source", "imagenet", "transfer.source: 'imagenet' is not one of houses_rooms, pets_unlabeled"),
        (
            "variants.transfer_features.transfer",
            {"source": "rooms"},
            "variants.transfer_features.transfer.source: 'rooms' is not one of houses_rooms, pets_unlabeled",
        ),
        ("variants.transfer_features.transfer", {"sorce": "x"}, "variants.transfer_features.transfer.sorce: unknown key"),
    ],
)
def test_bad_pretrain_and_transfer_source_keys_name_the_key(key: str, value: Any, message: str) -> None:
    assert message in error_of(with_change(key, value))


def test_resnet_encoder_takes_the_resnet_knobs_and_checks_them() -> None:
    raw = with_change("pretrain.pets_unlabeled.encoder", "resnet")
    raw["pretrain"]["pets_unlabeled"]["extra"] = {"filters": [8, 16], "blocks": [1, 1]}
    assert config.parse(raw).pretrain.pets_unlabeled.extra == {"filters": [8, 16], "blocks": [1, 1]}
    raw["pretrain"]["pets_unlabeled"]["extra"] = {"filtres": [8]}
    message = error_of(raw)
    assert message.startswith("pretrain.pets_unlabeled.extra.filtres: unknown key; allowed keys of the resnet encoder's extra")


def test_pretrain_sources_are_the_sections_after_image_size() -> None:
    assert config.PRETRAIN_SOURCES == ("houses_rooms", "pets_unlabeled")
    params = config.parse(copy.deepcopy(RAW))
    assert params.pretrain.houses_rooms.val_fraction == RAW["pretrain"]["houses_rooms"]["val_fraction"]
    assert params.pretrain.pets_unlabeled.encoder in config.ENCODERS
    assert params.transfer.source in config.PRETRAIN_SOURCES


def test_a_variant_transfer_override_resolves_while_the_others_keep_the_default() -> None:
    raw = with_change("transfer.source", "pets_unlabeled")
    raw["variants"]["transfer_features"]["transfer"] = {"source": "houses_rooms"}
    params = config.parse(raw)
    own = params.variants["transfer_features"].transfer
    assert own.source == "houses_rooms" and own.backbone == params.transfer.backbone  # the rest from the top level
    assert own.application == params.transfer.application and own.weights == params.transfer.weights
    assert params.variants["transfer_finetune"].transfer == params.transfer  # no override: the top-level section
    assert params.variants["transfer_finetune"].transfer.source == "pets_unlabeled"
    assert params.variants["lenet5"].transfer == params.transfer  # every variant has one; the non-transfer ones ignore it
    assert params.variants["transfer_features"].model_dump()["transfer"]["source"] == "houses_rooms"


def test_pets_split_may_leave_photos_out_but_houses_split_may_not() -> None:
    sizes = {"train": 0.6, "val": 0.15, "test": 0.15}
    split = config.parse(with_change("prepare.pets.split", sizes)).prepare.pets.split
    assert split == PetsSplit(train=0.6, val=0.15, test=0.15, per_class=False)
    assert split.train + split.val + split.test == pytest.approx(0.9)
    message = error_of(with_change("prepare.houses.split", sizes))
    assert message.startswith("prepare.houses.split: fractions must be > 0 for train and test and sum to 1,"), message
    assert config.parse(with_change("prepare.pets.split", {"train": 0.7, "val": 0.15, "test": 0.15})).prepare.pets.split
    assert "sum to at most 1" in error_of(with_change("prepare.pets.split", {"train": 0.8, "val": 0.15, "test": 0.15}))
