"""Load ``params.yaml`` once into typed, validated, frozen objects (pydantic models).

Stages receive these objects (or plain values taken from them); no other
module reads ``params.yaml``. Every error names the offending key with its
full dotted path and, for choices, the allowed values: :func:`parse` turns
pydantic's first error into that one line. Field types and their rules:
:mod:`pipeline.schema`. Neither Keras nor TensorFlow is imported: a variant's
``model`` and ``extra`` are checked against the families' Keras-free schemas
(:data:`pipeline.models.registry.KNOBS`), so a typo fails in seconds.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    StrictBool,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.errors import PipelineError
from pipeline.models.backbones import PREPROCESSING
from pipeline.models.registry import KNOBS
from pipeline.schema import KeyedError, Section, Text, UnknownKey, integer, number

DATASETS: tuple[str, ...] = ("pets", "houses")
PROFILES: tuple[str, ...] = ("demo", "real")
RESIZE_MODES: tuple[str, ...] = ("squash", "crop", "pad")
SPLITS: tuple[str, ...] = ("train", "val", "test")
HOUSE_ROOMS: tuple[str, ...] = ("bathroom", "bedroom", "frontal", "kitchen")
# HousesInfo.txt's continuous columns: the models' ``tabular`` input, in this order
HOUSE_CONTINUOUS: tuple[str, ...] = ("bedrooms", "bathrooms", "area")
SEED = integer(0, 2**31 - 1)


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


def _sha256(value: Any) -> Any:
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value)):
        raise ValueError(f"expected null or 64 hex digits, got {value!r}")
    return value.lower()


Sha256 = Annotated[str, BeforeValidator(_sha256)]


def _as_dict(schema: type[Section]) -> BeforeValidator:
    """A mapping with the fixed keys of ``schema`` (checked by it), kept as a plain dict of its values."""
    return BeforeValidator(lambda value: dict(schema.model_validate(value)))


def _pair(value: Any) -> Any:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError(f"expected [min, max], got {value!r}")
    return value


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"min {pair[0]:g} is greater than max {pair[1]:g}")
    return pair


MinMax = Annotated[tuple[number(), number()], BeforeValidator(_pair), AfterValidator(_ordered)]


def _name(pattern: str, what: str) -> AfterValidator:
    """A mapping key that names files or stages: ``pattern``, else the message ``what``."""

    def check(name: str) -> str:
        if not re.fullmatch(pattern, name):
            raise ValueError(what)
        return name

    return AfterValidator(check)


# --------------------------------------------------------------------------- data


class Mirror(Section):
    file: Text
    sha256: Sha256 | None


class Source(Section):
    """Where one dataset's archive comes from: its upstream URL, or its file in ``data.mirror``."""

    url: Text
    sha256: Sha256 | None  # null: the digest is printed so it can be pinned
    mirror: Mirror

    @property
    def mirror_file(self) -> str:
        return self.mirror.file

    @property
    def mirror_sha256(self) -> str | None:
        return self.mirror.sha256


class Sources(Section):
    pets: Source
    houses: Source


class ExtractLimits(Section):
    max_bytes: integer(1)
    max_files: integer(1)
    max_ratio: number(1)


class DemoPets(Section):
    Cat: integer(10, 100000)
    Dog: integer(10, 100000)


class DemoConfig(Section):
    seed: integer(0)
    pets: Annotated[dict[str, int], _as_dict(DemoPets)]  # photos per class
    houses: integer(40, 100000)


class DataConfig(Section):
    profile: Literal[PROFILES]
    mirror: Text | None
    timeout_s: number(1)
    retries: integer(0, 100)
    extract: ExtractLimits
    demo: DemoConfig


# --------------------------------------------------------------------------- validate


def _distinct_names(value: Any) -> Any:
    if not (isinstance(value, list) and len(value) >= 2 and len(set(map(str, value))) == len(value)):
        raise ValueError(f"expected a list of at least 2 distinct names, got {value!r}")
    return value


def _folder_name(value: Any) -> Any:
    if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_-]+", value)):
        raise ValueError(f"{value!r} is not a folder name (letters, digits, _ and -)")
    return value


class ImageChecks(Section):
    """What every dataset's photos must pass."""

    min_side: integer(1)
    max_side: integer(1)
    max_reject_rate: number(0, 1)

    @field_validator("max_side")
    @classmethod
    def _above_min(cls, max_side: int, info: ValidationInfo) -> int:
        lo = info.data.get("min_side", 1)  # absent: min_side is wrong, and named first
        if max_side < lo:
            raise ValueError(f"{max_side!r} is outside [{lo}, None]")
        return max_side


class PetsChecks(ImageChecks):
    classes: Annotated[tuple[Annotated[str, BeforeValidator(_folder_name)], ...], BeforeValidator(_distinct_names)]
    max_duplicate_rate: number(0, 1)


class HousesChecks(ImageChecks):
    bedrooms: MinMax
    bathrooms: MinMax
    area: MinMax
    price: MinMax


class ValidateConfig(Section):
    workers: integer(0, 256)
    max_pixels: integer(1)
    pets: PetsChecks
    houses: HousesChecks


# --------------------------------------------------------------------------- prepare


class Split(Section):
    """Split sizes: fractions of each class (``per_class=False``) or image counts per class."""

    DERIVED = ("per_class",)  # from the sizes' types in params: whole numbers are counts
    PARTIAL: ClassVar[bool] = False  # fractions may leave photos out of every split (sum < 1)

    train: number(0)
    val: number(0)
    test: number(0)
    per_class: bool

    @model_validator(mode="after")
    def _sizes(self) -> Split:
        total = self.train + self.val + self.test
        if self.per_class:
            if self.train < 1:
                raise KeyedError("train", f"needs at least 1 image per class, got {self.train:g}")
        elif not (self.train > 0 and self.test > 0 and (self.PARTIAL or total >= 0.999) and total <= 1.001):
            sizes = {k: getattr(self, k) for k in SPLITS}
            rule = "sum to at most 1" if self.PARTIAL else "sum to 1"
            raise ValueError(f"fractions must be > 0 for train and test and {rule}, got {sizes}")
        return self


class PetsSplit(Split):
    """Pets' split: what it leaves out of train / val / test is the ``pretrain.pets_unlabeled`` photos."""

    PARTIAL = True


def _split(counts: bool) -> BeforeValidator:
    """params' ``{train, val, test}``: whole numbers are images per class (where ``counts``), else fractions."""
    kinds = "fractions (0.7) or whole numbers per class (1000)" if counts else "fractions (0.7)"

    def sizes(raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return raw  # Split names what it expects
        if "per_class" in raw:
            raise UnknownKey("per_class", Split.params_keys())
        values = [raw.get(k) for k in SPLITS]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return {**raw, "per_class": False}  # Split names the missing or bad size
        whole = all(isinstance(v, int) for v in values)
        if not (counts and whole) and any(isinstance(v, int) and v for v in values):  # a zero fits either
            raise ValueError(f"give all three sizes as {kinds}, not a mix: {dict(raw)}")
        return {**raw, "per_class": counts and whole}

    return BeforeValidator(sizes)


class PetsPrepare(Section):
    image_size: integer(16, 1024)
    resize: Literal[RESIZE_MODES]
    split: Annotated[PetsSplit, _split(counts=True)]


class HousesPrepare(Section):
    # the houses split's own seed (null: prepare.seed): make results varies it alone, so the
    # pets split, and the backbone pretrained on the photos it leaves out, stay put
    seed: integer(0, 2**32 - 1) | None = None
    photo_size: integer(8, 512)
    min_houses_per_zip: integer(1)
    group_duplicates: StrictBool
    split: Annotated[Split, _split(counts=False)]


class PrepareConfig(Section):
    seed: integer(0, 2**32 - 1)
    shard_size: integer(1)
    pets: PetsPrepare
    houses: HousesPrepare

    def split_seed(self, dataset: str) -> int:
        """The seed of ``dataset``'s split: ``prepare.houses.seed`` where set, else ``prepare.seed``."""
        own = self.houses.seed if dataset == "houses" else None
        return self.seed if own is None else own


# --------------------------------------------------------------------------- augment

NO_AUGMENTATION = "none"  # the policy name of variants that train on the images as they are


FILL_MODES = ("nearest", "reflect", "constant", "wrap")


class Policy(Section):
    """Which ops run and how strongly; 0 / False switches an op off.

    Ranges are symmetric: a value ``v`` draws uniformly from ``[-v, v]``
    (angles, shifts, shear) or ``[1 - v, 1 + v]`` (zoom and colour factors),
    independently per image.
    """

    flip: StrictBool = False  # horizontal flip with probability 1/2
    # random crop keeping this fraction of each side, resized back (e.g. 0.875); 0 (or 1) = off
    crop: number(0, 1) = 0.0
    rotation: number(0, 180) = 0.0  # max degrees (the seed: 40)
    translation: number(0, 1) = 0.0  # max shift as a fraction of width / height (the seed: 0.2)
    # shear factor s: x' = x + s * y with s ~ U(-shear, shear). NB ImageDataGenerator read its
    # shear_range=0.2 as an angle in *degrees* (almost no shear); 0.2 here is ~11 degrees.
    shear: number(0, 1) = 0.0
    zoom: number(0, 1) = 0.0  # scale x and y independently by U(1 - zoom, 1 + zoom), like ImageDataGenerator
    brightness: number(0, 1) = 0.0  # pixels * U(1 - b, 1 + b): ImageDataGenerator's brightness_range
    contrast: number(0, 1) = 0.0  # tf.image.adjust_contrast with factor U(1 - c, 1 + c)
    saturation: number(0, 1) = 0.0  # tf.image.adjust_saturation with factor U(1 - s, 1 + s)
    pca_color: number(0, 1) = 0.0  # std of AlexNet's alpha ~ N(0, pca_color) (AlexNet: 0.1)
    fill_mode: Literal[FILL_MODES] = "nearest"  # where the transform samples outside the image

    @field_validator("crop")
    @classmethod
    def _crop(cls, crop: float) -> float:
        if 0 < crop < 0.25:
            raise ValueError(f"{crop} keeps under a quarter of each side; use 0 (off) or 0.25..1")
        return 0.0 if crop == 1 else crop  # keeping the whole side is no crop

    @field_validator("zoom", "brightness", "contrast", "saturation")
    @classmethod
    def _factor(cls, value: float) -> float:
        if value >= 1:  # 1 - v would reach a zero or negative scale
            raise ValueError(f"{value!r} must be < 1 (the factor is drawn from [1 - v, 1 + v])")
        return value

    @property
    def geometric(self) -> bool:
        """Whether the projective transform is needed at all."""
        return any((self.rotation, self.translation, self.shear, self.zoom))

    @property
    def identity(self) -> bool:
        """True when every op is off."""
        return not (self.flip or self.cropping or self.geometric or self.color or self.pca_color)

    @property
    def cropping(self) -> bool:
        """Whether the crop does anything (keeping the whole side, 1, is no crop)."""
        return 0 < self.crop < 1

    @property
    def color(self) -> bool:
        """Whether any colour jitter (brightness, contrast, saturation) is on."""
        return any((self.brightness, self.contrast, self.saturation))

    def describe(self) -> dict[str, Any]:
        """The policy as a plain dict (for logs and MLflow params)."""
        return self.model_dump()


class AugmentPolicy(Policy):
    """One named policy of ``augment.policies``: the ops' strengths (:class:`augment_ops.Policy`) and its random seed."""

    seed: SEED


PolicyName = Annotated[str, _name(r"[a-z0-9_]+", "a policy name is lower-case letters, digits and _ (it names a file)")]


class AugmentConfig(Section):
    preview: integer(1, 64)  # train images in each policy's preview grid
    policies: dict[PolicyName, AugmentPolicy]  # by name; ``none`` (no augmentation) is not listed

    @field_validator("policies", mode="before")
    @classmethod
    def _without_none(cls, policies: Any) -> Any:
        # train@<variant> declares augment.policies.<its policy>, so DVC needs `none: {}` in the file
        if not isinstance(policies, Mapping) or policies.get(NO_AUGMENTATION, ...) != {}:
            raise ValueError(
                f"expected a mapping of policy name -> ops with `{NO_AUGMENTATION}: {{}}`"
                f" (train@<variant> declares augment.policies.<its policy>, so DVC needs the key), got {policies!r}"
            )
        return {k: v for k, v in policies.items() if k != NO_AUGMENTATION}


# --------------------------------------------------------------------------- train

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES: tuple[str, ...] = ("constant", "inverse_time", "step", "cosine")
WARMUP_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
LOSSES: tuple[str, ...] = ("auto", "binary_crossentropy", "mse", "mae", "mape")
CLASS_WEIGHTS: tuple[str, ...] = ("balanced", "inverse", "none")
_WEIGHTS = TypeAdapter(dict[Annotated[str, BeforeValidator(str)], number(1e-6)])


def _class_weight(value: Any) -> str | dict[str, float]:
    if isinstance(value, Mapping):
        return _WEIGHTS.validate_python(value)
    if value not in CLASS_WEIGHTS:
        raise ValueError(f"{value!r} is not one of {', '.join(CLASS_WEIGHTS)} nor a mapping class -> weight")
    return value


class TrainConfig(Section):
    """The training knobs; a variant's ``train`` mapping overrides any of them."""

    seed: SEED
    epochs: integer(1, 10000)
    batch_size: integer(1, 65536)
    optimizer: Literal[OPTIMIZERS]
    learning_rate: number(1e-8, 10)
    schedule: Literal[SCHEDULES]
    decay: number(0)
    warmup: integer(0)  # epochs of linear ramp from 0 to learning_rate before the schedule (constant or cosine)
    weight_decay: number(0, 1)
    loss: Literal[LOSSES]
    label_smoothing: number(0, 0.5)
    # a CLASS_WEIGHTS name or an explicit weight per class
    class_weight: Annotated[str | dict[str, float], PlainValidator(_class_weight)]
    early_stopping: integer(0, 10000)
    mixup: number(0, 100)  # Beta(alpha, alpha) of MixUp, 0 = off (pipeline.training.augment_ops.mix_batch)
    cutmix: number(0, 100)  # the same for CutMix

    @field_validator("warmup")
    @classmethod
    def _leaves_epochs(cls, warmup: int, info: ValidationInfo) -> int:
        epochs, schedule = info.data.get("epochs"), info.data.get("schedule")  # absent when wrong themselves
        if epochs is not None and warmup >= epochs:
            raise ValueError(f"{warmup} epochs of warmup leave none of the {epochs} epochs to train at the learning rate")
        if warmup and schedule is not None and schedule not in WARMUP_SCHEDULES:
            raise ValueError(f"a warmup ramps into schedule {' or '.join(WARMUP_SCHEDULES)}, not {schedule!r}")
        return warmup


# --------------------------------------------------------------------------- pretrain / transfer (transfer learning)

BACKBONES: tuple[str, ...] = ("pretrain", "imagenet", "file")
APPLICATIONS: tuple[str, ...] = tuple(PREPROCESSING)  # the keras.applications backbones whose input scaling is known
ENCODERS: tuple[str, ...] = ("conv", "resnet")  # pipeline.models.transfer.conv_backbone / resnet_backbone


class RoomsPretrain(Section):
    """``houses_rooms``: room types (supervised) of the house photos; val on houses never trained on."""

    seed: SEED
    epochs: integer(1, 10000)
    batch_size: integer(1, 65536)
    learning_rate: number(1e-8, 10)
    width: number(0.05, 8)
    val_fraction: number(0.01, 0.5)  # of the houses, held out with all their photos


class UnlabeledPretrain(Section):
    """``pets_unlabeled``: SimCLR on the pet photos of no split (labels never read); probed on the labeled splits."""

    seed: SEED
    epochs: integer(1, 10000)
    batch_size: integer(2, 65536)
    learning_rate: number(1e-8, 10)  # AdamW, after ``warmup`` epochs of linear ramp, cosine decay to 0
    weight_decay: number(0, 1)
    warmup: integer(0, 10000)
    encoder: Literal[ENCODERS]
    width: number(0.05, 8)
    extra: dict[str, Any] = Field(default_factory=dict)  # the resnet encoder's knobs (filters, blocks, stem, min_map)
    train_size: integer(0, 4096)  # the views' size; 0 = pretrain.image_size (smaller is faster; the backbone keeps its size)
    temperature: number(0.001, 10)
    loss: Literal["nt_xent", "dcl"]  # SimCLR's NT-Xent, or decoupled (DCL: the positive out of the denominator)
    min_scale: number(0.01, 1)  # the smallest crop, as a fraction of the photo's area
    small_crops: integer(0, 64)  # multi-crop: small views per photo besides the two, each paired with both
    small_size: integer(1, 4096)  # their size in px
    small_min_scale: number(0.001, 1)  # their crops cover small_min_scale..min_scale of the photo's area
    jitter: number(0, 1)  # colour jitter strength (SimCLR's s)
    projection_dim: integer(1, 4096)
    knn: integer(1, 1000)  # k of the kNN probe

    @field_validator("warmup")
    @classmethod
    def _leaves_epochs(cls, warmup: int, info: ValidationInfo) -> int:
        epochs = info.data.get("epochs")
        if epochs is not None and warmup >= epochs:
            raise ValueError(f"{warmup} epochs of warmup leave none of the {epochs} epochs")
        return warmup

    @field_validator("small_min_scale")
    @classmethod
    def _below_min_scale(cls, small_min_scale: float, info: ValidationInfo) -> float:
        min_scale = info.data.get("min_scale")
        if min_scale is not None and small_min_scale >= min_scale:
            raise ValueError(f"{small_min_scale} leaves the small crops no area below min_scale {min_scale}")
        return small_min_scale

    @field_validator("extra")
    @classmethod
    def _resnet_knobs(cls, extra: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.data.get("encoder") == "resnet":
            KNOBS["resnet"].model_validate(extra, context={"owner": "the resnet encoder's extra"})
        elif extra:
            raise ValueError(f"only the resnet encoder has extra knobs, got {extra!r}")
        return extra


class PretrainConfig(Section):
    """The offline source tasks, one ``pretrain@<source>`` stage each, at ``image_size`` (0: ``prepare.pets.image_size``)."""

    image_size: integer(0, 4096)  # 0 = prepare.pets.image_size; else the transfer variants' image_size
    houses_rooms: RoomsPretrain
    pets_unlabeled: UnlabeledPretrain


PRETRAIN_SOURCES: tuple[str, ...] = tuple(PretrainConfig.model_fields)[1:]  # the fields after image_size


class TransferConfig(Section):
    """Which backbone the ``needs_backbone`` variants start from."""

    backbone: Literal[BACKBONES]
    source: Literal[PRETRAIN_SOURCES]  # backbone pretrain: models/pretrain/<source>
    application: Literal[APPLICATIONS]  # keras.applications name (imagenet, file)
    weights: Text | None  # local weights file (file: required; imagenet: instead of the download)

    @field_validator("weights")
    @classmethod
    def _required_for_file(cls, weights: str | None, info: ValidationInfo) -> str | None:
        if weights is None and info.data.get("backbone") == "file":
            raise ValueError(
                "required when transfer.backbone is file (a weights file of transfer.application, or a .keras backbone)"
            )
        return weights


TTA: tuple[str, ...] = ("none", "flip")
MODELS: tuple[str, ...] = tuple(KNOBS)  # the registered families (pipeline.models.registry), without Keras


class Variant(Section):
    """One trained model: a registry family on a dataset, with its knobs and resolved training config."""

    DERIVED = ("name",)  # its key in ``variants``
    FILLED = ("train", "transfer")  # the top-level sections, overridden by the variant's own

    name: str
    dataset: Literal[DATASETS]
    model: Literal[MODELS]
    augment: str  # a policy of augment.policies, or "none" (checked by Params, which has them)
    dropout: number(0, 0.95) = 0.0
    batchnorm: StrictBool = False
    width: number(0.05, 8) = 1.0
    # the builder's own knobs, as written (checked against the model's schema, defaults not filled in)
    extra: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig
    transfer: TransferConfig  # the backbone of a transfer model (needs_backbone); the others ignore it
    tta: Literal[TTA] = "none"  # test-time flipping built into the model (pipeline.models.wrap)
    image_size: integer(0, 4096) = 0  # the model's own resolution, resized from the prepared images inside the model; 0 = theirs

    @field_validator("extra")
    @classmethod
    def _knobs_of_the_model(cls, extra: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        model = info.data.get("model")  # absent: the model is wrong, and named first
        if model is not None:
            KNOBS[model].model_validate(extra, context={"owner": f"{model}'s extra"})
        return extra


VariantName = Annotated[
    str,
    _name(r"[a-z0-9_]+", "a variant name is lower-case letters, digits and _ (it names a stage and a folder)"),
    _name(r"(?!pretrain$).*", "the name is reserved for the pretrain stage's models/pretrain; choose another"),
]


# --------------------------------------------------------------------------- review (python -m pipeline report --base)


class ReviewConfig(Section):
    """A relative change that counts: the review marks a metric moving more, ``register`` moves a champion only by more."""

    threshold: number(0, 10)  # relative change, 0.02 = 2 %


REVIEW_DEFAULT = ReviewConfig(threshold=0.02)


# --------------------------------------------------------------------------- whole file


# the section `validate` shadows pydantic's deprecated classmethod BaseModel.validate: the field is what callers mean
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", 'Field name "validate" in "Params" shadows', UserWarning)

    class Params(Section):
        data: DataConfig
        datasets: Annotated[dict[str, Source], _as_dict(Sources)]
        validate: ValidateConfig
        prepare: PrepareConfig
        augment: AugmentConfig
        train: TrainConfig
        pretrain: PretrainConfig
        transfer: TransferConfig
        variants: dict[VariantName, Variant]
        review: ReviewConfig = REVIEW_DEFAULT  # absent from older params files (a review compares with them)

        @field_validator("variants", mode="before")
        @classmethod
        def _resolve(cls, variants: Any, info: ValidationInfo) -> Any:
            """Each variant gets its name (its key) and the top-level ``train`` and ``transfer`` under its own overrides."""
            if not (isinstance(variants, Mapping) and variants):
                raise ValueError(f"expected a mapping of variant name -> settings, got {variants!r}")
            out = {}
            for name, v in variants.items():
                if isinstance(v, Mapping):
                    if "name" in v:
                        raise UnknownKey((name, "name"), Variant.params_keys())
                    v = {**v, "name": name}
                    for section in Variant.FILLED:
                        top = info.data.get(section)  # absent: it is wrong, and named first
                        if top is not None and isinstance(v.get(section, {}), Mapping):
                            v[section] = {**top.model_dump(), **v.get(section, {})}
                out[name] = v
            return out

        @field_validator("variants")
        @classmethod
        def _known_policies(cls, variants: dict[str, Variant], info: ValidationInfo) -> dict[str, Variant]:
            augment = info.data.get("augment")  # absent: it is wrong, and named first
            names = (NO_AUGMENTATION, *(augment.policies if augment else ()))
            for name, v in variants.items():
                if augment and v.augment not in names:
                    raise KeyedError((name, "augment"), f"{v.augment!r} is not one of {', '.join(names)}")
            return variants


# --------------------------------------------------------------------------- errors, parse, load

# pydantic's error types -> the project's words (the value follows)
_EXPECTED = {
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}


def _dotted(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _one_line(exc: ValidationError) -> str:
    """pydantic's first error as ``dotted.key: what is wrong``, with the allowed keys or choices."""
    error = exc.errors()[0]
    path = [p for p in error["loc"] if p != "[key]"]  # a bad mapping key is named by itself
    ctx = error.get("ctx", {})
    cause = ctx.get("error")
    if isinstance(cause, KeyedError):
        path += cause.key
    if isinstance(cause, UnknownKey):
        owner = cause.owner or _dotted(path[:-1])
        message = f"unknown key; allowed keys{' of ' + owner if owner else ''}: {', '.join(cause.allowed) or '(none)'}"
    elif cause is not None:
        message = str(cause)
    elif error["type"] == "literal_error":  # ctx: "'a', 'b' or 'c'"
        choices = re.findall(r"'(.*?)'", ctx["expected"])
        message = f"{error['input']!r} is not one of {', '.join(choices)}"
    elif error["type"] in _EXPECTED:
        message = f"{_EXPECTED[error['type']]}, got {error['input']!r}"
    else:
        message = error["msg"]
    return f"{_dotted(path) or 'params'}: {message}"


def parse(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`; a bad key raises :class:`ConfigError`."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


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
