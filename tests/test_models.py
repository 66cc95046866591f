"""The model registry: every registered variant builds, runs, reloads safely; the spec's knobs act.

Models are built tiny (``width=0.25``, 32 px images) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

# TensorFlow's EagerTensor.__array__ predates NumPy 2's copy keyword: noise from every tensor -> NumPy conversion.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

from pipeline.models import registry  # noqa: E402
from pipeline.models.pets import SeedCNN  # noqa: E402
from pipeline.models.registry import Entry, ModelSpec  # noqa: E402
from pipeline.models.transfer import backbone_of, conv_backbone  # noqa: E402

ZIPCODES = ("85255", "92677", "93510")
UNKNOWN_ZIP = "00000"
TINY = 0.25  # pets' width in these tests; the houses models are small already (and at 0.25 a one-unit ReLU layer may die)
PETS = [n for n in registry.names() if registry.get(n).task == "binary_classification"]
HOUSES = [n for n in registry.names() if registry.get(n).task == "regression"]
SEED_VARIANTS = ("cnn_sequential", "cnn_functional", "cnn_subclassed")
BATCHNORM_BY_DESIGN = {"resnet", "cnn_montage", "mixed_inputs"}  # always BN: spec.batchnorm changes nothing
BATCHNORM_BY_DESIGN |= {n for n in registry.names() if registry.get(n).needs_backbone}  # the backbone's own BN
NO_CONVOLUTIONS = {"mlp_tabular"}
DROPOUT_BY_DESIGN = {"cnn_augmented": 0.5}  # name -> the rate it has when spec.dropout is 0


@pytest.fixture(autouse=True)
def _seeded() -> None:
    keras.utils.set_random_seed(0)


def make_spec(entry: Entry, image_size: int = 32, **overrides) -> ModelSpec:
    """A spec fit for ``entry``'s task, with non-default statistics so the normalization is visible."""
    fields: dict = {
        "image_size": image_size,
        "image_mean": (120.0, 110.0, 100.0),
        "image_variance": (4000.0, 3600.0, 3000.0),
        "width": TINY,
    }
    if entry.task == "regression":
        fields |= {
            "width": 1.0,
            "tabular_mean": (3.4, 2.5, 2300.0),
            "tabular_variance": (0.8, 0.9, 1.4e6),
            "zipcodes": ZIPCODES,
            "target_scale": 500_000.0,
        }
    fields |= overrides
    if entry.needs_backbone:  # a tiny stand-in for the pretrained backbone, normalizing with the spec's statistics
        fields.setdefault(
            "backbone", conv_backbone(fields["image_size"], fields["image_mean"], fields["image_variance"], width=TINY)
        )
    return ModelSpec(**fields)


def make_batch(entry: Entry, spec: ModelSpec, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw inputs by name: pixels 0-255, plausible house attributes, the known zip codes plus an unknown one."""
    rng = np.random.default_rng(seed)
    feeds = {
        "image": lambda: rng.uniform(0, 255, (n, spec.image_size, spec.image_size, 3)).astype("float32"),
        "tabular": lambda: np.column_stack([rng.integers(1, 6, n), rng.integers(1, 4, n), rng.uniform(800, 4000, n)]).astype(
            "float32"
        ),
        "zipcode": lambda: np.array([[z] for z in [*ZIPCODES, UNKNOWN_ZIP] * n][:n]),
    }
    unknown = set(entry.inputs) - set(feeds)
    assert not unknown, f"{entry.name}: the test does not know how to feed inputs {unknown}"
    return {name: feeds[name]() for name in entry.inputs}


def input_names(model: keras.Model) -> set[str]:
    if isinstance(model, SeedCNN):
        return {"image"}
    return {t.name for t in model.inputs}


def predict(model: keras.Model, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The model's output on ``batch``: a dict by input name (a Sequential model takes the lone tensor)."""
    if isinstance(model, keras.Sequential):  # it accepts the dict too, with a "structure doesn't match" warning
        (batch,) = batch.values()
    return keras.ops.convert_to_numpy(model(batch, training=False))


def layers_of(model: keras.Model, kind: type) -> list:
    """The layers of ``kind``, nested models (a transfer model's backbone) searched too."""
    found = []
    for layer in model.layers:
        if isinstance(layer, kind):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += layers_of(layer, kind)
    return found


@pytest.mark.parametrize("name", registry.names())
def test_every_variant_builds_runs_and_reloads_safely(name: str, tmp_path: Path) -> None:
    entry = registry.get(name)
    spec = make_spec(entry)
    model = registry.build(name, spec)
    assert isinstance(model, keras.Model)
    assert not model.compiled and getattr(model, "optimizer", None) is None, "builders return uncompiled models"
    assert input_names(model) == set(entry.inputs)

    batch = make_batch(entry, spec)
    out = predict(model, batch)
    assert out.shape == (4, 1)
    assert np.isfinite(out).all()
    if entry.task == "binary_classification":
        assert ((out >= 0) & (out <= 1)).all()

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert input_names(loaded) == set(entry.inputs)
    np.testing.assert_allclose(predict(loaded, batch), out, rtol=1e-5, atol=1e-6 * max(1.0, spec.target_scale))


@pytest.mark.parametrize("name", registry.names())
def test_tta_flip_averages_the_image_and_its_mirror_at_inference_only(name: str, tmp_path: Path) -> None:
    entry = registry.get(name)
    spec = make_spec(entry)
    if entry.inputs != ("image",):
        with pytest.raises(ValueError, match=rf"model '{name}' takes .*: image_size and tta 'flip' need an image-only model"):
            registry.build(name, dataclasses.replace(spec, tta="flip"))
        return
    model = registry.build(name, dataclasses.replace(spec, tta="flip"))
    inner = model.get_layer(name)  # the model tta wraps
    batch = make_batch(entry, spec)
    mirrored = {"image": batch["image"][:, :, ::-1]}
    expected = (predict(inner, batch) + predict(inner, mirrored)) / 2
    np.testing.assert_allclose(predict(model, batch), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(model, mirrored), predict(model, batch), rtol=1e-5, atol=1e-6)  # mirror-invariant
    assert tuple(model(batch, training=True).shape) == (4, 1)  # training: one pass over the batch as given
    for layer in ("flip_stack", "flip_mean"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model.get_layer(layer)(batch["image"], training=True)), batch["image"]
        )
    if entry.needs_backbone:
        assert backbone_of(model).name == "backbone"  # found inside the wrapper (fine-tuning and kNN need it)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(predict(loaded, batch), predict(model, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in registry.names() if registry.get(n).inputs == ("image",)])
def test_a_model_at_its_own_size_resizes_the_prepared_images(name: str, tmp_path: Path) -> None:
    entry = registry.get(name)
    spec = dataclasses.replace(make_spec(entry), input_size=48)  # prepared at 48 px, the model works at 32
    model = registry.build(name, spec)
    assert tuple(model.inputs[0].shape[1:]) == (48, 48, 3)
    inner = model.get_layer(name)
    batch = make_batch(entry, dataclasses.replace(spec, image_size=48))
    small = {"image": keras.ops.convert_to_numpy(keras.layers.Resizing(32, 32, antialias=True)(batch["image"]))}
    np.testing.assert_allclose(predict(model, batch), predict(inner, small), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(
        predict(keras.models.load_model(tmp_path / "m.keras", safe_mode=True), batch), predict(model, batch), rtol=1e-5, atol=1e-6
    )
    assert (
        registry.build(name, dataclasses.replace(spec, input_size=32)).get_layer(index=1).name != "resize"
    )  # same size: no wrapper


@pytest.mark.parametrize("image_size", [32, 96, 160])
@pytest.mark.parametrize("name", PETS)
def test_pets_models_build_for_small_and_larger_images(name: str, image_size: int) -> None:
    entry = registry.get(name)
    spec = make_spec(entry, image_size=image_size)
    out = predict(registry.build(name, spec), make_batch(entry, spec, n=1))
    assert out.shape == (1, 1) and np.isfinite(out).all()


def test_resnet_deep_stem_is_three_3x3_convs_the_first_strided() -> None:
    entry = registry.get("resnet")
    single = registry.build("resnet", make_spec(entry, image_size=64, extra={"min_map": 2}))  # all five halvings
    assert single.get_layer("stem_conv").kernel_size == (7, 7) and single.get_layer("stem_conv").strides == (2, 2)
    spec = make_spec(entry, image_size=64, extra={"min_map": 2, "stem": "deep"})
    deep = registry.build("resnet", spec)
    convs = [deep.get_layer(f"stem{i}_conv") for i in (1, 2, 3)]
    assert [(c.kernel_size, c.strides, c.filters) for c in convs] == [
        ((3, 3), (2, 2), 8),
        ((3, 3), (1, 1), 8),
        ((3, 3), (1, 1), 16),
    ]
    assert "stem_conv" not in [layer.name for layer in deep.layers]
    out = predict(deep, make_batch(entry, spec, n=2))
    assert out.shape == (2, 1) and np.isfinite(out).all()


@pytest.mark.parametrize("knobs", [{}, {"batchnorm": True, "dropout": 0.3}], ids=["plain", "bn+dropout"])
def test_the_seed_cnn_written_three_ways_is_one_model(knobs: dict) -> None:
    entry = registry.get("cnn_sequential")
    spec = make_spec(entry, **knobs)
    batch = make_batch(entry, spec)
    reference, *others = (registry.build(name, spec) for name in SEED_VARIANTS)
    assert isinstance(reference, keras.Sequential)
    assert isinstance(others[1], SeedCNN)
    for model in others:
        assert model.count_params() == reference.count_params()
        assert [w.shape for w in model.get_weights()] == [w.shape for w in reference.get_weights()]
        assert not np.allclose(predict(model, batch), predict(reference, batch))  # independent initializations
        model.set_weights(reference.get_weights())
        np.testing.assert_allclose(predict(model, batch), predict(reference, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", registry.names())
def test_spec_knobs_change_the_model(name: str) -> None:
    entry = registry.get(name)
    spec = make_spec(entry)
    plain = registry.build(name, spec)
    knobs = registry.build(name, make_spec(entry, batchnorm=True, dropout=0.3))
    wider = registry.build(name, make_spec(entry, width=2 * spec.width))

    bn_plain = len(layers_of(plain, keras.layers.BatchNormalization))
    bn_knobs = len(layers_of(knobs, keras.layers.BatchNormalization))
    if name in BATCHNORM_BY_DESIGN:
        assert bn_plain == bn_knobs > 0
    elif name in NO_CONVOLUTIONS:
        assert bn_plain == bn_knobs == 0
    else:
        assert bn_knobs > bn_plain == 0

    rates_plain = [layer.rate for layer in layers_of(plain, keras.layers.Dropout)]
    rates_knobs = [layer.rate for layer in layers_of(knobs, keras.layers.Dropout)]
    assert 0.3 in rates_knobs and 0.3 not in rates_plain
    if name in DROPOUT_BY_DESIGN:
        assert rates_plain == [DROPOUT_BY_DESIGN[name]]
    else:
        assert len(rates_knobs) > len(rates_plain)

    assert wider.count_params() > plain.count_params()


@pytest.mark.parametrize("name", registry.names())
def test_normalization_layers_carry_the_fitted_statistics(name: str) -> None:
    entry = registry.get(name)
    spec = make_spec(entry)
    model = registry.build(name, spec)
    norms = {layer.name: layer for layer in layers_of(model, keras.layers.Normalization)}
    expected = {}
    if "image" in entry.inputs:
        expected["normalize"] = (spec.image_mean, spec.image_variance)
    if "tabular" in entry.inputs:
        expected["normalize_tabular"] = (spec.tabular_mean, spec.tabular_variance)
    assert set(norms) == set(expected)
    for layer_name, (mean, variance) in expected.items():
        config = norms[layer_name].get_config()
        np.testing.assert_allclose(np.ravel(config["mean"]), mean)
        np.testing.assert_allclose(np.ravel(config["variance"]), variance)
        x = np.array([[m + 2 * v**0.5 for m, v in zip(mean, variance, strict=True)]], dtype="float32")
        np.testing.assert_allclose(np.ravel(keras.ops.convert_to_numpy(norms[layer_name](x))), 2.0, rtol=1e-4)
    if "image" in entry.inputs:  # the raw pixels go straight into it
        if isinstance(model, SeedCNN):
            assert model.layers[0] is norms["normalize"]
        else:
            assert norms["normalize"].input.name == "image"


@pytest.mark.parametrize("name", HOUSES)
def test_regression_outputs_are_rescaled_prices(name: str) -> None:
    entry = registry.get(name)
    unit = registry.build(name, make_spec(entry, target_scale=1.0))
    double = registry.build(name, make_spec(entry, target_scale=2.0))
    double.set_weights(unit.get_weights())
    batch = make_batch(entry, make_spec(entry))
    out = predict(unit, batch)
    assert np.abs(out).max() > 0
    np.testing.assert_allclose(predict(double, batch), 2 * out, rtol=1e-6)
    assert isinstance(unit.layers[-1], keras.layers.Rescaling)


# params.yaml's houses recipe (extra keys): log-price output, log columns, no hidden layer, a small added photo unit
HOUSES_RECIPE = {
    "mlp_tabular": {"target": "log", "log_tabular": True, "hidden": []},
    "cnn_montage": {"target": "log", "photo_head": "average", "photo_pool": 4, "photo_filters": [8]},
    "mixed_inputs": {
        "target": "log",
        "log_tabular": True,
        "hidden": [],
        "combined": 0,
        "photo_head": "average",
        "photo_pool": 4,
        "photo_filters": [8],
    },
}


@pytest.mark.parametrize("name", HOUSES)
def test_houses_recipe_knobs_start_at_the_mean_price_and_reload(name: str, tmp_path: Path) -> None:
    entry = registry.get(name)
    spec = make_spec(entry, target_mean=400_000.0, extra=HOUSES_RECIPE[name])
    model = registry.build(name, spec)
    names = {layer.name for layer in model.layers}
    assert "exp" in names and isinstance(model.layers[-1], keras.layers.Rescaling)
    assert ("log_tabular" in names) == ("tabular" in entry.inputs)
    assert not any(n.startswith("mlp_dense") for n in names)  # hidden: []
    start = model.get_layer("tabular_unit" if name == "mixed_inputs" else "regression").get_weights()[1]
    np.testing.assert_allclose(start, np.log(400_000.0 / spec.target_scale), rtol=1e-6)
    if name == "mixed_inputs":  # the photo unit starts at zero: the untrained model ignores the photos
        assert not model.get_layer("photo_unit").get_weights()[0].any()
    batch = make_batch(entry, spec)
    out = predict(model, batch)
    assert (out > 0).all() and np.isfinite(out).all()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(predict(loaded, batch), out, rtol=1e-5)


# the knobs' own checks (unknown keys, types, choices) run in config: tests/test_config.py
@pytest.mark.parametrize("name", ["cnn_montage", "mixed_inputs"])
def test_houses_photo_knobs_are_checked_against_the_image_size(name: str) -> None:
    entry = registry.get(name)
    with pytest.raises(ValueError, match=r"pools 2 times \(photo_pool 8\): image_size must be >= 32, got 16"):
        registry.build(name, make_spec(entry, image_size=16, extra={"photo_pool": 8, "photo_filters": [8, 16]}))


def test_every_builder_declares_its_knobs_and_every_schema_has_a_builder() -> None:
    assert sorted(registry.names()) == sorted(registry.KNOBS)


def test_unknown_zipcodes_share_the_out_of_vocabulary_column() -> None:
    entry = registry.get("mlp_tabular")
    spec = make_spec(entry)
    lookup = registry.build("mlp_tabular", spec).get_layer("zipcode_onehot")
    onehot = keras.ops.convert_to_numpy(lookup(np.array([[ZIPCODES[1]], [UNKNOWN_ZIP], ["11111"]])))
    assert onehot.shape == (3, len(ZIPCODES) + 1)
    assert onehot[0].argmax() == 2 and onehot[1].argmax() == onehot[2].argmax() == 0


def test_unknown_model_name_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="unknown model 'transformer'") as error:
        registry.build("transformer", ModelSpec(image_size=32))
    assert all(name in str(error.value) for name in registry.names())
    with pytest.raises(KeyError, match="registered: "):
        registry.get("")
