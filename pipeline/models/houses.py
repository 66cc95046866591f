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

Feeding strings: ``model(dict)`` accepts NumPy string arrays, but ``model.predict`` /
``fit`` need the zip codes as a ``tf.Tensor`` or inside a ``tf.data.Dataset``
(Keras' NumPy adapter rejects string dtypes: "Invalid dtype: str96").
"""

from __future__ import annotations

import keras

from pipeline.models.layers import batch_norm, dropout, image_input, price_output, units
from pipeline.models.registry import ModelSpec, register

TASK = "regression"
TABULAR = "tabular"
ZIPCODE = "zipcode"
IMAGE = "image"
TABULAR_COLUMNS = ("bedrooms", "bathrooms", "area")


def tabular_features(spec: ModelSpec) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor]:
    """The ``tabular`` and ``zipcode`` inputs and their features: standardized columns ++ zip one-hot."""
    n = len(TABULAR_COLUMNS)
    if len(spec.tabular_mean) != n or len(spec.tabular_variance) != n:
        raise ValueError(f"tabular_mean and tabular_variance need {n} values ({', '.join(TABULAR_COLUMNS)})")
    if not spec.zipcodes:
        raise ValueError("the zipcode one-hot needs spec.zipcodes (the train split's zip codes)")
    tabular = keras.Input(shape=(n,), dtype="float32", name=TABULAR)
    zipcode = keras.Input(shape=(1,), dtype="string", name=ZIPCODE)
    scaled = keras.layers.Normalization(
        mean=list(spec.tabular_mean), variance=list(spec.tabular_variance), name="normalize_tabular"
    )(tabular)
    onehot = keras.layers.StringLookup(
        vocabulary=[str(z) for z in spec.zipcodes], output_mode="one_hot", name="zipcode_onehot"
    )(zipcode)
    features = keras.layers.Concatenate(name="tabular_features")([scaled, onehot])
    return {TABULAR: tabular, ZIPCODE: zipcode}, features


def mlp_branch(x: keras.KerasTensor, spec: ModelSpec) -> keras.KerasTensor:
    """The seed's MLP: Dense 8 relu, Dense 4 relu."""
    x = keras.layers.Dense(units(8, spec.width), activation="relu", name="mlp_dense1")(x)
    return keras.layers.Dense(units(4, spec.width), activation="relu", name="mlp_dense2")(x)


def cnn_branch(x: keras.KerasTensor, spec: ModelSpec) -> keras.KerasTensor:
    """The seed's small CNN: (conv 3x3 relu, BN, 2x2 max-pool) x 16/32/64, Flatten, Dense 16 relu, BN, Dropout, Dense 4 relu.

    Extra: ``branch_dropout`` (0.5, the seed's rate; 0 removes the layer).
    """
    for i, filters in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(units(filters, spec.width), 3, padding="same", activation="relu", name=f"cnn_conv{i}")(x)
        x = batch_norm(name=f"cnn_bn{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"cnn_pool{i}")(x)
    x = keras.layers.Flatten(name="cnn_flatten")(x)
    x = keras.layers.Dense(units(16, spec.width), activation="relu", name="cnn_dense1")(x)
    x = batch_norm(name="cnn_bn_dense")(x)
    x = dropout(x, float(spec.extra.get("branch_dropout", 0.5)), name="cnn_dropout")
    return keras.layers.Dense(units(4, spec.width), activation="relu", name="cnn_dense2")(x)


def _check_image_size(spec: ModelSpec) -> None:
    if spec.image_size < 8:
        raise ValueError(f"the montage CNN pools three times: image_size must be >= 8, got {spec.image_size}")


@register("mlp_tabular", TASK, inputs=(TABULAR, ZIPCODE))
def mlp_tabular(spec: ModelSpec) -> keras.Model:
    """The seed's MLP on the house attributes: standardized columns ++ zip one-hot -> 8 -> 4 -> price."""
    inputs, x = tabular_features(spec)
    x = dropout(mlp_branch(x, spec), spec.dropout, name="dropout")
    return keras.Model(inputs, price_output(x, spec), name="mlp_tabular")


@register("cnn_montage", TASK, inputs=(IMAGE,))
def cnn_montage(spec: ModelSpec) -> keras.Model:
    """The seed's CNN regression on the 2x2 montage of the four photos -> price."""
    _check_image_size(spec)
    image, x = image_input(spec)
    x = dropout(cnn_branch(x, spec), spec.dropout, name="dropout")
    return keras.Model({IMAGE: image}, price_output(x, spec), name="cnn_montage")


@register("mixed_inputs", TASK, inputs=(TABULAR, ZIPCODE, IMAGE))
def mixed_inputs(spec: ModelSpec) -> keras.Model:
    """The seed's mixed-data model: MLP branch ++ CNN branch -> Dense 4 relu -> price (fed a dict)."""
    _check_image_size(spec)
    inputs, tab = tabular_features(spec)
    image, img = image_input(spec)
    x = keras.layers.Concatenate(name="branches")([mlp_branch(tab, spec), cnn_branch(img, spec)])
    x = keras.layers.Dense(units(4, spec.width), activation="relu", name="combined_dense")(x)
    x = dropout(x, spec.dropout, name="dropout")
    return keras.Model({**inputs, IMAGE: image}, price_output(x, spec), name="mixed_inputs")
