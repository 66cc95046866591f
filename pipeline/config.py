"""Load ``params.yaml`` once into typed, validated objects.

Stages receive these objects (or plain values taken from them); no other
module reads ``params.yaml``. Every check names the offending key with its
full dotted path and, for choices, the allowed values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError
from pipeline.models.backbones import PREPROCESSING

DATASETS: tuple[str, ...] = ("pets", "houses")
PROFILES: tuple[str, ...] = ("demo", "real")
RESIZE_MODES: tuple[str, ...] = ("squash", "crop", "pad")
SPLITS: tuple[str, ...] = ("train", "val", "test")
HOUSE_ROOMS: tuple[str, ...] = ("bathroom", "bedroom", "frontal", "kitchen")
# HousesInfo.txt's continuous columns: the models' ``tabular`` input, in this order
HOUSE_CONTINUOUS: tuple[str, ...] = ("bedrooms", "bathrooms", "area")


MISSING = object()


class ConfigError(PipelineError):
    """A params key is unknown, missing or has a bad value."""


# --------------------------------------------------------------------------- helpers


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {dotted key: leaf}, ``prefix`` before every key; lists and (nested) empty mappings are leaves.

    Leaves stay as they are (the review compares lists and empty sections as values);
    :mod:`pipeline.tracking` turns them into MLflow's string params.
    """
    if isinstance(value, Mapping) and (value or not prefix):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _section(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping:
    """Check that ``value`` is a mapping with exactly the allowed keys; ``where`` is its dotted path ("" at the top)."""
    allowed = ", ".join(sorted(required + optional))
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where or 'params'}: expected a mapping with keys {allowed}, got {value!r}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{key}: unknown key; allowed keys{' of ' + where if where else ''}: {allowed}")
    missing = [k for k in required if k not in value]
    if missing:
        key = f"{where}.{missing[0]}" if where else missing[0]
        raise ConfigError(f"{key}: missing key (required: {', '.join(required)})")
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _number(value: Any, where: str, lo: float | None = None, hi: float | None = None, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where}: {value!r} is outside [{lo}, {hi}]")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _range(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2):
        raise ConfigError(f"{where}: expected [min, max], got {value!r}")
    lo, hi = (_number(v, f"{where}[{i}]") for i, v in enumerate(value))
    if lo > hi:
        raise ConfigError(f"{where}: min {lo} is greater than max {hi}")
    return float(lo), float(hi)


def _sha256(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value)):
        raise ConfigError(f"{where}: expected null or 64 hex digits, got {value!r}")
    return value.lower()


def _text(value: Any, where: str) -> str:
    if not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Source:
    """Where one dataset's archive comes from."""

    url: str
    sha256: str | None
    mirror_file: str
    mirror_sha256: str | None


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int
    max_files: int
    max_ratio: float


@dataclass(frozen=True)
class DemoConfig:
    seed: int
    pets: dict[str, int]
    houses: int


@dataclass(frozen=True)
class DataConfig:
    profile: str
    mirror: str | None
    timeout_s: float
    retries: int
    extract: ExtractLimits
    demo: DemoConfig


def _data(d: Any) -> DataConfig:
    d = _section(d, "data", ("profile", "mirror", "timeout_s", "retries", "extract", "demo"))
    ex = _section(d["extract"], "data.extract", ("max_bytes", "max_files", "max_ratio"))
    demo = _section(d["demo"], "data.demo", ("seed", "pets", "houses"))
    pets = _section(demo["pets"], "data.demo.pets", ("Cat", "Dog"))
    mirror = d["mirror"]
    if mirror is not None:
        _text(mirror, "data.mirror")
    return DataConfig(
        profile=_choice(d["profile"], "data.profile", PROFILES),
        mirror=mirror,
        timeout_s=float(_number(d["timeout_s"], "data.timeout_s", 1)),
        retries=_number(d["retries"], "data.retries", 0, 100, integer=True),
        extract=ExtractLimits(
            max_bytes=_number(ex["max_bytes"], "data.extract.max_bytes", 1, integer=True),
            max_files=_number(ex["max_files"], "data.extract.max_files", 1, integer=True),
            max_ratio=float(_number(ex["max_ratio"], "data.extract.max_ratio", 1)),
        ),
        demo=DemoConfig(
            seed=_number(demo["seed"], "data.demo.seed", 0, integer=True),
            pets={k: _number(v, f"data.demo.pets.{k}", 10, 100000, integer=True) for k, v in pets.items()},
            houses=_number(demo["houses"], "data.demo.houses", 40, 100000, integer=True),
        ),
    )


def _sources(d: Any) -> dict[str, Source]:
    d = _section(d, "datasets", DATASETS)
    out = {}
    for name in DATASETS:
        where = f"datasets.{name}"
        s = _section(d[name], where, ("url", "sha256", "mirror"))
        m = _section(s["mirror"], f"{where}.mirror", ("file", "sha256"))
        out[name] = Source(
            url=_text(s["url"], f"{where}.url"),
            sha256=_sha256(s["sha256"], f"{where}.sha256"),
            mirror_file=_text(m["file"], f"{where}.mirror.file"),
            mirror_sha256=_sha256(m["sha256"], f"{where}.mirror.sha256"),
        )
    return out


# --------------------------------------------------------------------------- validate


@dataclass(frozen=True)
class PetsChecks:
    classes: tuple[str, ...]
    min_side: int
    max_side: int
    max_reject_rate: float
    max_duplicate_rate: float


@dataclass(frozen=True)
class HousesChecks:
    min_side: int
    max_side: int
    max_reject_rate: float
    bedrooms: tuple[float, float]
    bathrooms: tuple[float, float]
    area: tuple[float, float]
    price: tuple[float, float]


@dataclass(frozen=True)
class ValidateConfig:
    workers: int
    max_pixels: int
    pets: PetsChecks
    houses: HousesChecks


def _sides(s: Mapping, where: str) -> tuple[int, int]:
    lo = _number(s["min_side"], f"{where}.min_side", 1, integer=True)
    hi = _number(s["max_side"], f"{where}.max_side", lo, integer=True)
    return lo, hi


def _validate(d: Any) -> ValidateConfig:
    d = _section(d, "validate", ("workers", "max_pixels", "pets", "houses"))
    p = _section(d["pets"], "validate.pets", ("classes", "min_side", "max_side", "max_reject_rate", "max_duplicate_rate"))
    h = _section(
        d["houses"],
        "validate.houses",
        ("min_side", "max_side", "max_reject_rate", "bedrooms", "bathrooms", "area", "price"),
    )
    classes = p["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and len(set(classes)) == len(classes)):
        raise ConfigError(f"validate.pets.classes: expected a list of at least 2 distinct names, got {classes!r}")
    for i, c in enumerate(classes):
        if not (isinstance(c, str) and re.fullmatch(r"[A-Za-z0-9_-]+", c)):
            raise ConfigError(f"validate.pets.classes[{i}]: {c!r} is not a folder name (letters, digits, _ and -)")
    return ValidateConfig(
        workers=_number(d["workers"], "validate.workers", 0, 256, integer=True),
        max_pixels=_number(d["max_pixels"], "validate.max_pixels", 1, integer=True),
        pets=PetsChecks(
            tuple(classes),
            *_sides(p, "validate.pets"),
            max_reject_rate=float(_number(p["max_reject_rate"], "validate.pets.max_reject_rate", 0, 1)),
            max_duplicate_rate=float(_number(p["max_duplicate_rate"], "validate.pets.max_duplicate_rate", 0, 1)),
        ),
        houses=HousesChecks(
            *_sides(h, "validate.houses"),
            max_reject_rate=float(_number(h["max_reject_rate"], "validate.houses.max_reject_rate", 0, 1)),
            **{k: _range(h[k], f"validate.houses.{k}") for k in ("bedrooms", "bathrooms", "area", "price")},
        ),
    )


# --------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class Split:
    """Split sizes: fractions of each class (``per_class=False``) or image counts per class."""

    train: float
    val: float
    test: float
    per_class: bool


@dataclass(frozen=True)
class PetsPrepare:
    image_size: int
    resize: str
    split: Split


@dataclass(frozen=True)
class HousesPrepare:
    photo_size: int
    min_houses_per_zip: int
    group_duplicates: bool
    split: Split


@dataclass(frozen=True)
class PrepareConfig:
    seed: int
    shard_size: int
    pets: PetsPrepare
    houses: HousesPrepare


def _split(value: Any, where: str, counts_allowed: bool) -> Split:
    s = _section(value, where, SPLITS)
    vals = [s[k] for k in SPLITS]
    for k, v in zip(SPLITS, vals):
        _number(v, f"{where}.{k}", 0)
    if counts_allowed and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        if vals[0] < 1:
            raise ConfigError(f"{where}.train: needs at least 1 image per class, got {vals[0]}")
        return Split(*map(float, vals), per_class=True)
    if not all(isinstance(v, float) for v in vals if v != 0):
        kinds = "fractions (0.7) or whole numbers per class (1000)" if counts_allowed else "fractions (0.7)"
        raise ConfigError(f"{where}: give all three sizes as {kinds}, not a mix: {dict(s)}")
    total = sum(vals)
    if not (0 < vals[0] and 0.999 <= total <= 1.001 and vals[2] > 0):
        raise ConfigError(f"{where}: fractions must be > 0 for train and test and sum to 1, got {dict(s)}")
    return Split(*map(float, vals), per_class=False)


def _prepare(d: Any) -> PrepareConfig:
    d = _section(d, "prepare", ("seed", "shard_size", "pets", "houses"))
    p = _section(d["pets"], "prepare.pets", ("image_size", "resize", "split"))
    h = _section(d["houses"], "prepare.houses", ("photo_size", "min_houses_per_zip", "group_duplicates", "split"))
    return PrepareConfig(
        seed=_number(d["seed"], "prepare.seed", 0, 2**32 - 1, integer=True),
        shard_size=_number(d["shard_size"], "prepare.shard_size", 1, integer=True),
        pets=PetsPrepare(
            image_size=_number(p["image_size"], "prepare.pets.image_size", 16, 1024, integer=True),
            resize=_choice(p["resize"], "prepare.pets.resize", RESIZE_MODES),
            split=_split(p["split"], "prepare.pets.split", counts_allowed=True),
        ),
        houses=HousesPrepare(
            photo_size=_number(h["photo_size"], "prepare.houses.photo_size", 8, 512, integer=True),
            min_houses_per_zip=_number(h["min_houses_per_zip"], "prepare.houses.min_houses_per_zip", 1, integer=True),
            group_duplicates=_flag(h["group_duplicates"], "prepare.houses.group_duplicates"),
            split=_split(h["split"], "prepare.houses.split", counts_allowed=False),
        ),
    )


# --------------------------------------------------------------------------- augment

FILL_MODES: tuple[str, ...] = ("nearest", "reflect", "constant", "wrap")
_POLICY_FRACTIONS = ("translation", "shear", "zoom", "brightness", "contrast", "saturation")


NO_AUGMENTATION = "none"  # the policy name of variants that train on the images as they are


@dataclass(frozen=True)
class AugmentPolicy:
    """One named policy of ``augment.policies``: its random seed and the ops' strengths."""

    seed: int
    ops: dict[str, Any]  # keyword arguments of pipeline.training.augment_ops.Policy


@dataclass(frozen=True)
class AugmentConfig:
    preview: int  # train images in each policy's preview grid
    policies: dict[str, AugmentPolicy]  # by name; ``none`` (no augmentation) is not listed


def _policy(p: Any, where: str) -> AugmentPolicy:
    keys = ("flip", "crop", "rotation", *_POLICY_FRACTIONS, "pca_color", "fill_mode")
    p = _section(p, where, ("seed", *keys))
    crop = float(_number(p["crop"], f"{where}.crop", 0, 1))
    if 0 < crop < 0.25:
        raise ConfigError(f"{where}.crop: {crop} keeps under a quarter of each side; use 0 (off) or 0.25..1")
    ops = {
        "flip": _flag(p["flip"], f"{where}.flip"),
        "crop": 0.0 if crop == 1 else crop,
        "rotation": float(_number(p["rotation"], f"{where}.rotation", 0, 180)),
        **{k: float(_number(p[k], f"{where}.{k}", 0, 1)) for k in _POLICY_FRACTIONS},
        "pca_color": float(_number(p["pca_color"], f"{where}.pca_color", 0, 1)),
        "fill_mode": _choice(p["fill_mode"], f"{where}.fill_mode", FILL_MODES),
    }
    return AugmentPolicy(seed=_number(p["seed"], f"{where}.seed", 0, 2**31 - 1, integer=True), ops=ops)


def _augment(d: Any) -> AugmentConfig:
    d = _section(d, "augment", ("preview", "policies"))
    policies = d["policies"]
    if not isinstance(policies, Mapping) or policies.get(NO_AUGMENTATION, MISSING) != {}:
        raise ConfigError(
            f"augment.policies: expected a mapping of policy name -> ops with `{NO_AUGMENTATION}: {{}}`"
            f" (train@<variant> declares augment.policies.<its policy>, so DVC needs the key), got {policies!r}"
        )
    for name in policies:
        if not (isinstance(name, str) and re.fullmatch(r"[a-z0-9_]+", name)):
            raise ConfigError(f"augment.policies.{name}: a policy name is lower-case letters, digits and _ (it names a file)")
    return AugmentConfig(
        preview=_number(d["preview"], "augment.preview", 1, 64, integer=True),
        policies={k: _policy(v, f"augment.policies.{k}") for k, v in policies.items() if k != NO_AUGMENTATION},
    )


# --------------------------------------------------------------------------- train

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES: tuple[str, ...] = ("constant", "inverse_time", "step", "cosine")
LOSSES: tuple[str, ...] = ("auto", "binary_crossentropy", "mse", "mae", "mape")
CLASS_WEIGHTS: tuple[str, ...] = ("balanced", "inverse", "none")
TRAIN_KEYS: tuple[str, ...] = (
    "seed",
    "epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "schedule",
    "decay",
    "warmup",
    "weight_decay",
    "loss",
    "label_smoothing",
    "class_weight",
    "early_stopping",
    "mixup",
    "cutmix",
)


@dataclass(frozen=True)
class TrainConfig:
    """The training knobs; a variant's ``train`` mapping overrides any of them."""

    seed: int
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    schedule: str
    decay: float
    warmup: int  # epochs of linear ramp from 0 to learning_rate before the schedule (constant or cosine)
    weight_decay: float
    loss: str
    label_smoothing: float
    class_weight: str | dict[str, float]  # a CLASS_WEIGHTS name or an explicit weight per class
    early_stopping: int
    mixup: float  # Beta(alpha, alpha) of MixUp, 0 = off (pipeline.training.augment_ops.mix_batch)
    cutmix: float  # the same for CutMix


def _class_weight(value: Any, where: str) -> str | dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): float(_number(v, f"{where}.{k}", 1e-6)) for k, v in value.items()}
    if value not in CLASS_WEIGHTS:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(CLASS_WEIGHTS)} nor a mapping class -> weight")
    return value


WARMUP_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def _train(d: Any, where: str) -> TrainConfig:
    d = _section(d, where, TRAIN_KEYS)
    epochs = _number(d["epochs"], f"{where}.epochs", 1, 10000, integer=True)
    schedule = _choice(d["schedule"], f"{where}.schedule", SCHEDULES)
    warmup = _number(d["warmup"], f"{where}.warmup", 0, integer=True)
    if warmup >= epochs:
        raise ConfigError(
            f"{where}.warmup: {warmup} epochs of warmup leave none of the {epochs} epochs to train at the learning rate"
        )
    if warmup and schedule not in WARMUP_SCHEDULES:
        raise ConfigError(f"{where}.warmup: a warmup ramps into schedule {' or '.join(WARMUP_SCHEDULES)}, not {schedule!r}")
    return TrainConfig(
        seed=_number(d["seed"], f"{where}.seed", 0, 2**31 - 1, integer=True),
        epochs=epochs,
        batch_size=_number(d["batch_size"], f"{where}.batch_size", 1, 65536, integer=True),
        optimizer=_choice(d["optimizer"], f"{where}.optimizer", OPTIMIZERS),
        learning_rate=float(_number(d["learning_rate"], f"{where}.learning_rate", 1e-8, 10)),
        schedule=schedule,
        decay=float(_number(d["decay"], f"{where}.decay", 0)),
        warmup=warmup,
        weight_decay=float(_number(d["weight_decay"], f"{where}.weight_decay", 0, 1)),
        loss=_choice(d["loss"], f"{where}.loss", LOSSES),
        label_smoothing=float(_number(d["label_smoothing"], f"{where}.label_smoothing", 0, 0.5)),
        class_weight=_class_weight(d["class_weight"], f"{where}.class_weight"),
        early_stopping=_number(d["early_stopping"], f"{where}.early_stopping", 0, 10000, integer=True),
        mixup=float(_number(d["mixup"], f"{where}.mixup", 0, 100)),
        cutmix=float(_number(d["cutmix"], f"{where}.cutmix", 0, 100)),
    )


@dataclass(frozen=True)
class Variant:
    """One trained model: a registry family on a dataset, with its knobs and resolved training config."""

    name: str
    dataset: str
    model: str
    augment: str  # a policy of augment.policies, or "none"
    dropout: float
    batchnorm: bool
    width: float
    extra: dict[str, Any]
    train: TrainConfig
    tta: str = "none"  # test-time flipping built into the model (pipeline.models.wrap)
    image_size: int = 0  # the model's own resolution, resized from the prepared images inside the model; 0 = theirs


VARIANT_KEYS = ("dataset", "model", "augment", "dropout", "batchnorm", "width", "extra", "train", "tta", "image_size")
TTA: tuple[str, ...] = ("none", "flip")


def _variants(d: Any, train: Mapping, policies: tuple[str, ...]) -> dict[str, Variant]:
    if not (isinstance(d, Mapping) and d):
        raise ConfigError(f"variants: expected a mapping of variant name -> settings, got {d!r}")
    out = {}
    for name, v in d.items():
        where = f"variants.{name}"
        if not (isinstance(name, str) and re.fullmatch(r"[a-z0-9_]+", name)):
            raise ConfigError(f"{where}: a variant name is lower-case letters, digits and _ (it names a stage and a folder)")
        if name == "pretrain":  # models/pretrain is the pretrain stage's backbone
            raise ConfigError(f"{where}: the name is reserved for the pretrain stage's models/pretrain; choose another")
        v = _section(v, where, ("dataset", "model", "augment"), VARIANT_KEYS[3:])
        overrides = _section(v.get("train", {}), f"{where}.train", (), TRAIN_KEYS)
        extra = v.get("extra", {})
        if not isinstance(extra, Mapping):
            raise ConfigError(f"{where}.extra: expected a mapping, got {extra!r}")
        out[name] = Variant(
            name=name,
            dataset=_choice(v["dataset"], f"{where}.dataset", DATASETS),
            model=_text(v["model"], f"{where}.model"),
            augment=_choice(v["augment"], f"{where}.augment", policies),
            dropout=float(_number(v.get("dropout", 0.0), f"{where}.dropout", 0, 0.95)),
            batchnorm=_flag(v.get("batchnorm", False), f"{where}.batchnorm"),
            width=float(_number(v.get("width", 1.0), f"{where}.width", 0.05, 8)),
            extra=dict(extra),
            train=_train({**train, **overrides}, f"{where}.train"),
            tta=_choice(v.get("tta", "none"), f"{where}.tta", TTA),
            image_size=_number(v.get("image_size", 0), f"{where}.image_size", 0, 4096, integer=True),
        )
    return out


# --------------------------------------------------------------------------- pretrain / transfer (transfer learning)

BACKBONES: tuple[str, ...] = ("pretrain", "imagenet", "file")
APPLICATIONS: tuple[str, ...] = tuple(PREPROCESSING)  # the keras.applications backbones whose input scaling is known
PRETRAIN_KEYS: tuple[str, ...] = ("seed", "epochs", "batch_size", "learning_rate", "width", "val_fraction", "image_size")


@dataclass(frozen=True)
class PretrainConfig:
    """The offline source task: room types of the house photos, at ``image_size`` (0: ``prepare.pets.image_size``)."""

    seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    width: float
    val_fraction: float  # of the houses, held out with all their photos
    image_size: int  # 0 = prepare.pets.image_size; else the transfer variants' image_size


@dataclass(frozen=True)
class TransferConfig:
    """Which backbone the ``needs_backbone`` variants start from."""

    backbone: str  # pretrain | imagenet | file
    application: str  # keras.applications name (imagenet, file)
    weights: str | None  # local weights file (file: required; imagenet: instead of the download)


def _pretrain(d: Any) -> PretrainConfig:
    d = _section(d, "pretrain", PRETRAIN_KEYS)
    return PretrainConfig(
        seed=_number(d["seed"], "pretrain.seed", 0, 2**31 - 1, integer=True),
        epochs=_number(d["epochs"], "pretrain.epochs", 1, 10000, integer=True),
        batch_size=_number(d["batch_size"], "pretrain.batch_size", 1, 65536, integer=True),
        learning_rate=float(_number(d["learning_rate"], "pretrain.learning_rate", 1e-8, 10)),
        width=float(_number(d["width"], "pretrain.width", 0.05, 8)),
        val_fraction=float(_number(d["val_fraction"], "pretrain.val_fraction", 0.01, 0.5)),
        image_size=_number(d["image_size"], "pretrain.image_size", 0, 4096, integer=True),
    )


def _transfer(d: Any) -> TransferConfig:
    d = _section(d, "transfer", ("backbone", "application", "weights"))
    backbone = _choice(d["backbone"], "transfer.backbone", BACKBONES)
    weights = d["weights"]
    if weights is not None:
        _text(weights, "transfer.weights")
    elif backbone == "file":
        raise ConfigError(
            "transfer.weights: required when transfer.backbone is file"
            " (a weights file of transfer.application, or a .keras backbone)"
        )
    return TransferConfig(
        backbone=backbone, application=_choice(d["application"], "transfer.application", APPLICATIONS), weights=weights
    )


# --------------------------------------------------------------------------- review (python -m pipeline report --base)


@dataclass(frozen=True)
class ReviewConfig:
    """The review report (no DVC stage reads it): a metric whose relative change exceeds ``threshold`` is marked."""

    threshold: float  # relative change, 0.02 = 2 %


REVIEW_DEFAULT = ReviewConfig(threshold=0.02)


def _review(d: Any) -> ReviewConfig:
    d = _section(d, "review", ("threshold",))
    return ReviewConfig(threshold=float(_number(d["threshold"], "review.threshold", 0, 10)))


# --------------------------------------------------------------------------- whole file


@dataclass(frozen=True)
class Params:
    data: DataConfig
    datasets: dict[str, Source]
    validate: ValidateConfig
    prepare: PrepareConfig
    augment: AugmentConfig
    train: TrainConfig
    variants: dict[str, Variant]
    pretrain: PretrainConfig
    transfer: TransferConfig
    review: ReviewConfig = REVIEW_DEFAULT


SECTIONS = ("data", "datasets", "validate", "prepare", "augment", "train", "variants", "pretrain", "transfer", "review")
# absent from older params files (a review compares with them): defaults apply
OPTIONAL_SECTIONS = ("review",)


def parse(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`."""
    raw = _section(raw, "", tuple(s for s in SECTIONS if s not in OPTIONAL_SECTIONS), OPTIONAL_SECTIONS)
    augment = _augment(raw["augment"])
    return Params(
        data=_data(raw["data"]),
        datasets=_sources(raw["datasets"]),
        validate=_validate(raw["validate"]),
        prepare=_prepare(raw["prepare"]),
        augment=augment,
        train=_train(raw["train"], "train"),
        variants=_variants(raw["variants"], raw["train"], (NO_AUGMENTATION, *augment.policies)),
        pretrain=_pretrain(raw["pretrain"]),
        transfer=_transfer(raw["transfer"]),
        review=_review(raw["review"]) if "review" in raw else REVIEW_DEFAULT,
    )


def load(path: Path = Path("params.yaml")) -> Params:
    """Read and validate ``params.yaml``; errors name the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
