"""The model registry: variant family name -> builder returning an uncompiled ``keras.Model``.

A builder is one small function decorated with :func:`register`. It receives
a :class:`ModelSpec` (sizes and knobs from params, fitted statistics from the
``stats`` artifact) and never reads params or files itself. Every model takes
raw inputs (uint8-range pixels, unscaled house attributes, zip codes as
strings) and normalizes them with layers built from the spec, so training,
evaluation and ``predict`` feed exactly the same thing.

Each family declares the schema of its ``extra`` knobs in a Keras-free module
beside it (``pets_knobs``, ``houses_knobs``, ``transfer_knobs``); :data:`KNOBS`
gathers them, so :mod:`pipeline.config` knows every model name and checks a
variant's ``extra`` before TensorFlow is imported. A builder must declare its knobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.models import houses_knobs, pets_knobs, transfer_knobs
from pipeline.schema import Section

if TYPE_CHECKING:  # keep TensorFlow out of the import of this module
    import keras

TASKS = ("binary_classification", "regression")
# model name -> the schema of its variant ``extra``: every model there is, without importing a builder
KNOBS: dict[str, type[Section]] = {**pets_knobs.KNOBS, **transfer_knobs.KNOBS, **houses_knobs.KNOBS}


@dataclass(frozen=True)
class ModelSpec:
    """What a builder needs; the train stage fills it from params and the stats artifact."""

    image_size: int
    image_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)  # per channel, 0-255 pixels
    image_variance: tuple[float, float, float] = (5418.75, 5418.75, 5418.75)
    dropout: float = 0.0
    batchnorm: bool = False
    width: float = 1.0  # multiplies every layer's channel count
    # houses: the continuous columns (bedrooms, bathrooms, area) and the zip codes
    tabular_mean: tuple[float, ...] = ()
    tabular_variance: tuple[float, ...] = ()
    zipcodes: tuple[str, ...] = ()
    target_scale: float = 1.0  # the model's output is multiplied by this (the seed: max train price)
    target_mean: float = 0.0  # houses: the mean train price, where a log-price output starts (0: unknown, start at target_scale)
    extra: dict = field(default_factory=dict)  # family-specific knobs from params
    tta: str = "none"  # test-time augmentation inside the model: none | flip (pipeline.models.wrap)
    input_size: int = 0  # the prepared images' size when the model works at a smaller image_size (0: the same)
    # transfer learning: the pretrained keras.Model (image -> features) for entries with needs_backbone;
    # the train stage loads it (pipeline.models.backbones.load_backbone), the builder copies it
    backbone: Any = None


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    inputs: tuple[str, ...]  # names of the model's inputs, e.g. ("image",) or ("tabular", "zipcode", "image")
    build: Callable[[ModelSpec], keras.Model]
    needs_backbone: bool = False  # the builder needs ModelSpec.backbone (transfer learning)


REGISTRY: dict[str, Entry] = {}


def register(name: str, task: str, inputs: tuple[str, ...] = ("image",), needs_backbone: bool = False) -> Callable:
    """Decorator adding a builder to :data:`REGISTRY` under ``name`` (``needs_backbone``: it reads ``spec.backbone``)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    if name not in KNOBS:  # config takes the model names from there
        raise ValueError(f"model {name!r} declares no extra knobs in pipeline.models.<family>_knobs")

    def wrap(fn: Callable[[ModelSpec], keras.Model]) -> Callable[[ModelSpec], keras.Model]:
        if name in REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        REGISTRY[name] = Entry(name, task, inputs, fn, needs_backbone)
        return fn

    return wrap


def names() -> list[str]:
    """Every registered family, in registration order (imports the builders)."""
    _load()
    return list(REGISTRY)


def knobs(name: str, extra: Mapping[str, Any]) -> Section:
    """The variant ``extra`` as model ``name``'s knobs, defaults filled in (a bad knob raises pydantic's ValidationError)."""
    return KNOBS[name].model_validate(extra)


def get(name: str) -> Entry:
    """The registry entry of ``name``; an unknown name lists the choices."""
    _load()
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build(name: str, spec: ModelSpec) -> keras.Model:
    """Build the uncompiled model ``name`` from ``spec``.

    Wrapped for ``spec.input_size`` / ``spec.tta``: :mod:`pipeline.models.wrap`.
    """
    from pipeline.models import wrap

    entry = get(name)
    model = entry.build(spec)
    if not wrap.needed(spec):
        return model
    if entry.inputs != ("image",):
        raise ValueError(
            f"model {name!r} takes {', '.join(entry.inputs)}: image_size and tta {spec.tta!r} need an image-only model"
        )
    return wrap.image_model(model, spec)


def load_trained(path: Path) -> keras.Model:
    """``keras.models.load_model(path, safe_mode=True)`` with the project's layers registered.

    A file that cannot be loaded (missing, corrupt, foreign, or unsafe: a
    ``Lambda`` layer's Python code) raises a one-line
    :class:`~pipeline.errors.PipelineError` naming it, not a traceback.
    """
    import keras

    from pipeline.errors import PipelineError

    _load()  # the families register the custom layers load_model needs
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError, zipfile errors...: this file only
        why = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise PipelineError(f"{path}: cannot load the model: {why}") from None


def _load() -> None:
    # Importing the family modules runs their @register decorators.
    from pipeline.models import houses, pets, transfer, wrap  # noqa: F401
