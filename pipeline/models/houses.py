"""House price model families (the seed's regression models), fed a dict of named raw inputs.

Inputs, by name:

- ``"tabular"``: float32 (batch, 3), the raw [bedrooms, bathrooms, area], standardized
  in the model with ``spec.tabular_mean`` / ``spec.tabular_variance``;
- ``"zipcode"``: string (batch, 1), one-hot encoded in the model over ``spec.zipcodes``
  (an unknown zip code lands in the out-of-vocabulary column);
- ``"image"``: the 2x2 montage of the four photos, raw 0-255 pixels.

Every model ends with ``Rescaling(spec.target_scale)``, so it outputs prices directly.
``spec.dropout`` adds Dropout before the output unit; ``spec.width`` scales every
channel and hidden unit count; ``spec.batchnorm`` is ignored (the seed CNN has
BatchNormalization by design, the MLP has no convolutions).

Variant ``extra`` keys (schemas in :mod:`pipeline.models.houses_knobs`; every default is the seed's model):

- ``target`` (all): ``scaled`` (the seed: one linear unit x the largest train price) or
  ``log``: the unit is the log of the price (``exp`` -> x ``spec.target_scale``, starting at
  ``spec.target_mean``), so errors are relative, as MAPE measures them, and prices stay positive;
- ``log_tabular`` (tabular models, false): take the log of bedrooms, bathrooms and area before
  standardizing (price is closer to a power of the area than to a linear function of it);
- ``hidden`` (tabular models, ``[8, 4]``): the MLP's hidden ReLU units; ``[]`` feeds the
  features straight to the output unit (with ``target: log``: a log-linear model);
- ``combined`` (``mixed_inputs``, 4): the ReLU units after joining the branches; 0: none, each
  branch has its own output unit and the two are added, the photo unit starting at zero
  (the photos then correct the tabular prediction instead of sharing a 4-unit bottleneck);
- ``photo_pool`` (image models, 1): average-pool the standardized montage by this factor first;
- ``photo_filters`` (image models, ``[16, 32, 64]``): the CNN's conv stages (conv 3x3, BN, pool 2);
- ``photo_head`` (image models, ``flatten``): the seed's Flatten -> Dense 16 -> BN -> Dropout ->
  Dense 4, or ``average``: global average pooling -> Dropout (few weights, less memorizing);
- ``branch_dropout`` (image models, 0.5): the CNN branch's Dropout rate (0 removes the layer).

Feeding strings: ``model(dict)`` accepts NumPy string arrays, but ``model.predict`` /
``fit`` need the zip codes as a ``tf.Tensor`` or inside a ``tf.data.Dataset``
(Keras' NumPy adapter rejects string dtypes: "Invalid dtype: str96").
"""

from __future__ import annotations

import math

import keras

from pipeline.models.houses_knobs import MixedKnobs, PhotoKnobs, TabularKnobs
from pipeline.models.layers import batch_norm, dropout, image_input, price_output, units
from pipeline.models.registry import ModelSpec, register

TASK = "regression"
TABULAR = "tabular"
ZIPCODE = "zipcode"
IMAGE = "image"
TABULAR_COLUMNS = ("bedrooms", "bathrooms", "area")


@keras.saving.register_keras_serializable(package="pipeline")
class Log(keras.layers.Layer):
    """Natural log of positive inputs (clipped at ``floor``), for extra ``log_tabular``.

    Registered, so a model holding it reloads with ``safe_mode=True`` once this module is imported
    (``registry.get`` / ``registry.names`` import it: call one before ``keras.models.load_model``).
    """

    def __init__(self, floor: float = 1e-3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.floor = float(floor)

    def call(self, x):  # noqa: ANN001, ANN201
        return keras.ops.log(keras.ops.maximum(x, self.floor))

    def get_config(self) -> dict:
        return {**super().get_config(), "floor": self.floor}


def log_moments(mean: float, variance: float) -> tuple[float, float]:
    """Mean and variance of ``log(x)`` for ``x`` of the given mean and variance (log-normal moments)."""
    spread = math.log1p(variance / max(mean, 1e-6) ** 2)
    return math.log(max(mean, 1e-6)) - spread / 2, spread


def tabular_features(spec: ModelSpec, knobs: TabularKnobs) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor]:
    """The ``tabular`` and ``zipcode`` inputs and their features: standardized columns ++ zip one-hot."""
    n = len(TABULAR_COLUMNS)
    if len(spec.tabular_mean) != n or len(spec.tabular_variance) != n:
        raise ValueError(f"tabular_mean and tabular_variance need {n} values ({', '.join(TABULAR_COLUMNS)})")
    if not spec.zipcodes:
        raise ValueError("the zipcode one-hot needs spec.zipcodes (the train split's zip codes)")
    tabular = keras.Input(shape=(n,), dtype="float32", name=TABULAR)
    zipcode = keras.Input(shape=(1,), dtype="string", name=ZIPCODE)
    x, mean, variance = tabular, list(spec.tabular_mean), list(spec.tabular_variance)
    if knobs.log_tabular:  # standardize log(column) with the log-normal moments of the column
        x = Log(name="log_tabular")(x)
        mean, variance = (list(v) for v in zip(*(log_moments(m, v) for m, v in zip(mean, variance))))
    scaled = keras.layers.Normalization(mean=mean, variance=variance, name="normalize_tabular")(x)
    onehot = keras.layers.StringLookup(vocabulary=[str(z) for z in spec.zipcodes], output_mode="one_hot", name="zipcode_onehot")(
        zipcode
    )
    features = keras.layers.Concatenate(name="tabular_features")([scaled, onehot])
    return {TABULAR: tabular, ZIPCODE: zipcode}, features


def mlp_branch(x: keras.KerasTensor, spec: ModelSpec, knobs: TabularKnobs) -> keras.KerasTensor:
    """The seed's MLP: Dense 8 relu, Dense 4 relu (extra ``hidden``: other units; ``[]``: the features unchanged)."""
    for i, n in enumerate(knobs.hidden, start=1):
        x = keras.layers.Dense(units(n, spec.width), activation="relu", name=f"mlp_dense{i}")(x)
    return x


def cnn_branch(x: keras.KerasTensor, spec: ModelSpec, knobs: PhotoKnobs) -> keras.KerasTensor:
    """The seed's small CNN: (conv 3x3 relu, BN, 2x2 max-pool) x 16/32/64, Flatten, Dense 16 relu, BN, Dropout, Dense 4 relu.

    Extra: ``branch_dropout`` (0.5, the seed's rate; 0 removes the layer), ``photo_pool``,
    ``photo_filters``, ``photo_head`` (see the module docstring).
    """
    _check_photo_pooling(spec, knobs)
    rate = knobs.branch_dropout
    if knobs.photo_pool > 1:
        x = keras.layers.AveragePooling2D(knobs.photo_pool, name="cnn_input_pool")(x)
    for i, filters in enumerate(knobs.photo_filters, start=1):
        x = keras.layers.Conv2D(units(filters, spec.width), 3, padding="same", activation="relu", name=f"cnn_conv{i}")(x)
        x = batch_norm(name=f"cnn_bn{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"cnn_pool{i}")(x)
    if knobs.photo_head == "average":
        x = keras.layers.GlobalAveragePooling2D(name="cnn_average")(x)
        return dropout(x, rate, name="cnn_dropout")
    x = keras.layers.Flatten(name="cnn_flatten")(x)
    x = keras.layers.Dense(units(16, spec.width), activation="relu", name="cnn_dense1")(x)
    x = batch_norm(name="cnn_bn_dense")(x)
    x = dropout(x, rate, name="cnn_dropout")
    return keras.layers.Dense(units(4, spec.width), activation="relu", name="cnn_dense2")(x)


def _check_photo_pooling(spec: ModelSpec, knobs: PhotoKnobs) -> None:
    """The montage must survive extra ``photo_pool`` and one halving per ``photo_filters`` stage."""
    pool, stages = knobs.photo_pool, len(knobs.photo_filters)
    need = pool * 2**stages
    if spec.image_size < need:
        raise ValueError(
            f"the montage CNN pools {stages} times (photo_pool {pool}): image_size must be >= {need}, got {spec.image_size}"
        )


def price_head(x: keras.KerasTensor, spec: ModelSpec, target: str) -> keras.KerasTensor:
    """The output: the seed's linear unit x ``target_scale`` or, with extra ``target: log``, exp(unit) x ``target_scale``."""
    if target == "scaled":
        return price_output(x, spec)
    x = keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(_log_start(spec)), name="regression")(x)
    return _to_price(x, spec, target)


def _log_start(spec: ModelSpec) -> float:
    """The log-price unit's starting bias: the model first predicts ``target_mean`` (0 when unknown)."""
    return math.log(spec.target_mean / spec.target_scale) if spec.target_mean > 0 and spec.target_scale > 0 else 0.0


def _to_price(x: keras.KerasTensor, spec: ModelSpec, target: str) -> keras.KerasTensor:
    """The output unit as a price: exp of it (``target: log``), then x ``target_scale``."""
    if target == "log":
        x = keras.layers.Activation("exponential", name="exp")(x)
    return keras.layers.Rescaling(spec.target_scale, name="price")(x)


@register("mlp_tabular", TASK, inputs=(TABULAR, ZIPCODE))
def mlp_tabular(spec: ModelSpec) -> keras.Model:
    """The seed's MLP on the house attributes: standardized columns ++ zip one-hot -> 8 -> 4 -> price.

    Extra: ``target``, ``log_tabular``, ``hidden`` (see the module docstring).
    """
    knobs = TabularKnobs.model_validate(spec.extra)
    inputs, x = tabular_features(spec, knobs)
    x = dropout(mlp_branch(x, spec, knobs), spec.dropout, name="dropout")
    return keras.Model(inputs, price_head(x, spec, knobs.target), name="mlp_tabular")


@register("cnn_montage", TASK, inputs=(IMAGE,))
def cnn_montage(spec: ModelSpec) -> keras.Model:
    """The seed's CNN regression on the 2x2 montage of the four photos -> price.

    Extra: ``target``, ``photo_pool``, ``photo_filters``, ``photo_head``, ``branch_dropout``.
    """
    knobs = PhotoKnobs.model_validate(spec.extra)
    image, x = image_input(spec)
    x = dropout(cnn_branch(x, spec, knobs), spec.dropout, name="dropout")
    return keras.Model({IMAGE: image}, price_head(x, spec, knobs.target), name="cnn_montage")


@register("mixed_inputs", TASK, inputs=(TABULAR, ZIPCODE, IMAGE))
def mixed_inputs(spec: ModelSpec) -> keras.Model:
    """The seed's mixed-data model: MLP branch ++ CNN branch -> Dense 4 relu -> price (fed a dict).

    Extra: every key of ``mlp_tabular`` and ``cnn_montage``, and ``combined`` (4; 0: one output
    unit per branch, added, the photo unit starting at zero; see the module docstring).
    """
    knobs = MixedKnobs.model_validate(spec.extra)
    _check_photo_pooling(spec, knobs)  # before building anything
    inputs, tab = tabular_features(spec, knobs)
    image, img = image_input(spec)
    tab, img = mlp_branch(tab, spec, knobs), cnn_branch(img, spec, knobs)
    if knobs.combined:
        x = keras.layers.Concatenate(name="branches")([tab, img])
        x = keras.layers.Dense(units(knobs.combined, spec.width), activation="relu", name="combined_dense")(x)
        x = dropout(x, spec.dropout, name="dropout")
        return keras.Model({**inputs, IMAGE: image}, price_head(x, spec, knobs.target), name="mixed_inputs")
    # one unit per branch, added: the tabular unit is the model without photos, the photo unit a correction from 0
    start = _log_start(spec) if knobs.target == "log" else 0.0
    tab = keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(start), name="tabular_unit")(
        dropout(tab, spec.dropout, name="dropout")
    )
    img = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="photo_unit")(img)
    x = keras.layers.Add(name="regression")([tab, img])
    return keras.Model({**inputs, IMAGE: image}, _to_price(x, spec, knobs.target), name="mixed_inputs")
