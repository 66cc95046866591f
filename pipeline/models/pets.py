"""Pets (cats vs dogs) model families: one sigmoid unit, input ``"image"`` (raw 0-255 pixels).

Every builder returns an uncompiled model whose first layer after the input is
a ``Normalization`` with the fitted per-channel statistics. The classic
architectures are scaled to small inputs: all convolutions use ``same``
padding and the number of stride-2 reductions is derived from
``spec.image_size`` (see :func:`pipeline.models.layers.stride_plan`), so every
family builds for 32..160 pixel images and, unchanged, at 224.

Knobs: ``spec.batchnorm`` puts BatchNormalization after every convolution
(``resnet`` always has it), ``spec.dropout`` is the dropout rate of the
classifier (after each hidden Dense layer, or before the output when there is
none; 0 = no Dropout layer), ``spec.width`` scales every channel and hidden
unit count. Family-specific knobs come from ``spec.extra``, read through their schemas in
:mod:`pipeline.models.pets_knobs` (documented per builder; defaults there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from pipeline.models.layers import (
    CHANNELS,
    IMAGE,
    batch_norm,
    binary_output,
    conv,
    dense_head,
    dropout,
    image_input,
    max_pool,
    stride_plan,
    units,
)
from pipeline.models.pets_knobs import (
    AlexNetKnobs,
    AugmentedCNNKnobs,
    InceptionKnobs,
    LeNet5Knobs,
    ResNetKnobs,
    SeedCNNKnobs,
    VGGKnobs,
)
from pipeline.models.registry import ModelSpec, register

TASK = "binary_classification"
SEED_FILTERS = (32, 64, 128, 128)
SEED_DENSE = 512


# --- the seed CNN, written three ways ------------------------------------------------------------


def seed_cnn_layers(
    image_size: int,
    image_mean: tuple[float, ...],
    image_variance: tuple[float, ...],
    *,
    dropout: float = 0.0,
    batchnorm: bool = False,
    width: float = 1.0,
    padding: str = "same",
) -> list[keras.layers.Layer]:
    """The seed CNN as a flat list of fresh layers (shared by the three API variants, so weight order matches).

    Conv 32/64/128/128 3x3 relu, each followed by 2x2 max-pooling, Flatten,
    [Dropout], Dense 512 relu, Dense 1 sigmoid. ``padding="valid"`` is the
    book's exact model (3,453,121 parameters at 150 px); ``same`` (default)
    keeps 32 px inputs buildable.
    """
    size = image_size
    for _ in SEED_FILTERS:
        size = (size if padding == "same" else size - 2) // 2
    if size < 1:
        raise ValueError(f"the seed CNN with padding={padding!r} needs larger images than {image_size} px")
    layers: list[keras.layers.Layer] = [
        keras.layers.Normalization(mean=list(image_mean), variance=list(image_variance), name="normalize")
    ]
    for i, filters in enumerate(SEED_FILTERS, start=1):
        n = units(filters, width)
        if batchnorm:
            layers += [
                keras.layers.Conv2D(n, 3, padding=padding, use_bias=False, name=f"conv{i}"),
                batch_norm(name=f"bn{i}"),
                keras.layers.Activation("relu", name=f"relu{i}"),
            ]
        else:
            layers.append(keras.layers.Conv2D(n, 3, padding=padding, activation="relu", name=f"conv{i}"))
        layers.append(keras.layers.MaxPooling2D(2, name=f"pool{i}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    layers += [
        keras.layers.Dense(units(SEED_DENSE, width), activation="relu", name="fc"),
        keras.layers.Dense(1, activation="sigmoid", name="prediction"),
    ]
    return layers


def _seed_kwargs(spec: ModelSpec, knobs: SeedCNNKnobs, dropout_rate: float | None = None) -> dict[str, Any]:
    return {
        "dropout": spec.dropout if dropout_rate is None else dropout_rate,
        "batchnorm": spec.batchnorm,
        "width": spec.width,
        "padding": knobs.padding,
    }


def _seed_functional(spec: ModelSpec, name: str, knobs: SeedCNNKnobs, dropout_rate: float | None = None) -> keras.Model:
    image = keras.Input(shape=(spec.image_size, spec.image_size, CHANNELS), dtype="float32", name=IMAGE)
    x = image
    kwargs = _seed_kwargs(spec, knobs, dropout_rate)
    for layer in seed_cnn_layers(spec.image_size, spec.image_mean, spec.image_variance, **kwargs):
        x = layer(x)
    return keras.Model({IMAGE: image}, x, name=name)


@register("cnn_sequential", TASK)
def cnn_sequential(spec: ModelSpec) -> keras.Model:
    """The seed CNN with ``keras.Sequential``. Extra: ``padding`` ("same"; "valid" is the book's)."""
    kwargs = _seed_kwargs(spec, SeedCNNKnobs.model_validate(spec.extra))
    layers = seed_cnn_layers(spec.image_size, spec.image_mean, spec.image_variance, **kwargs)
    image = keras.Input(shape=(spec.image_size, spec.image_size, CHANNELS), dtype="float32", name=IMAGE)
    return keras.Sequential([image, *layers], name="cnn_sequential")


@register("cnn_functional", TASK)
def cnn_functional(spec: ModelSpec) -> keras.Model:
    """The seed CNN with the Functional API (same layers, same weight order as ``cnn_sequential``)."""
    return _seed_functional(spec, "cnn_functional", SeedCNNKnobs.model_validate(spec.extra))


@keras.saving.register_keras_serializable(package="pipeline")
class SeedCNN(keras.Model):
    """The seed CNN as a subclassed model; reloads with ``safe_mode=True`` (config = its arguments)."""

    def __init__(
        self,
        image_size: int,
        image_mean: tuple[float, ...] = (127.5, 127.5, 127.5),
        image_variance: tuple[float, ...] = (5418.75, 5418.75, 5418.75),
        dropout: float = 0.0,
        batchnorm: bool = False,
        width: float = 1.0,
        padding: str = "same",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_variance = tuple(float(v) for v in image_variance)
        self.dropout = float(dropout)
        self.batchnorm = bool(batchnorm)
        self.width = float(width)
        self.padding = str(padding)
        self.stack = seed_cnn_layers(
            self.image_size,
            self.image_mean,
            self.image_variance,
            dropout=self.dropout,
            batchnorm=self.batchnorm,
            width=self.width,
            padding=self.padding,
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create every layer's weights, in order, without running the model."""
        shape = tuple(input_shape)
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        """Accepts the image tensor or a dict with key ``"image"`` (what the pipeline feeds)."""
        x = inputs[IMAGE] if isinstance(inputs, Mapping) else inputs
        for layer in self.stack:
            x = layer(x, training=training)
        return x

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (plus the base model's name/trainable/dtype)."""
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "image_mean": list(self.image_mean),
            "image_variance": list(self.image_variance),
            "dropout": self.dropout,
            "batchnorm": self.batchnorm,
            "width": self.width,
            "padding": self.padding,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SeedCNN:
        """Rebuild from :meth:`get_config`."""
        return cls(**config)


@register("cnn_subclassed", TASK)
def cnn_subclassed(spec: ModelSpec) -> keras.Model:
    """The seed CNN as a subclassed ``keras.Model`` (:class:`SeedCNN`), built so it has weights at once."""
    kwargs = _seed_kwargs(spec, SeedCNNKnobs.model_validate(spec.extra))
    model = SeedCNN(spec.image_size, spec.image_mean, spec.image_variance, name="cnn_subclassed", **kwargs)
    model.build((None, spec.image_size, spec.image_size, CHANNELS))
    return model


@register("cnn_augmented", TASK)
def cnn_augmented(spec: ModelSpec) -> keras.Model:
    """The seed CNN with Dropout after Flatten: rate ``spec.dropout``, or extra ``dropout`` (0.5) when that is 0.

    The augmentation itself runs in the input pipeline, not in the model.
    """
    knobs = AugmentedCNNKnobs.model_validate(spec.extra)
    return _seed_functional(spec, "cnn_augmented", knobs, dropout_rate=spec.dropout or knobs.dropout)


# --- classic architectures, scaled to small inputs -----------------------------------------------


def _model(image: keras.KerasTensor, output: keras.KerasTensor, name: str) -> keras.Model:
    return keras.Model({IMAGE: image}, output, name=name)


@register("lenet5", TASK)
def lenet5(spec: ModelSpec) -> keras.Model:
    """LeNet-5: conv 6 5x5, subsample, conv 16 5x5, subsample, FC 120, FC 84, output.

    The subsampling (average pooling) factor grows with the image so the last
    map stays near LeNet's 5-8 pixels: 2 at 32 px, 3 at 96 px, 4 at 160 px.
    Extra: ``activation`` ("relu"; LeNet's own was "tanh").
    """
    activation = LeNet5Knobs.model_validate(spec.extra).activation
    pool = max(2, round((spec.image_size / 8) ** 0.5))
    image, x = image_input(spec)
    for i, filters in enumerate((6, 16), start=1):
        x = conv(x, units(filters, spec.width), 5, batchnorm=spec.batchnorm, activation=activation, name=f"c{2 * i - 1}")
        x = keras.layers.AveragePooling2D(pool, padding="same", name=f"s{2 * i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = dense_head(x, [120, 84], spec, activation=activation)
    return _model(image, binary_output(x), "lenet5")


def _alexnet_like(spec: ModelSpec, name: str, stem: tuple[int, int], pool_slots: tuple[int, int, int]) -> keras.Model:
    """conv1 -> pool1 -> conv2 -> pool2 -> conv3/4/5 -> pool5 -> Flatten -> FC, FC -> output.

    ``stem`` = (conv1 stride, conv2 stride); ``pool_slots`` = strides of pool1, pool2, pool5.
    """
    image, x = image_input(spec)
    hidden = AlexNetKnobs.model_validate(spec.extra).dense_units
    conv1_kernel = {4: 11, 2: 7, 1: 5}[stem[0]]
    x = conv(x, units(96, spec.width), conv1_kernel, strides=stem[0], batchnorm=spec.batchnorm, name="conv1")
    x = max_pool(x, pool_slots[0], name="pool1")
    x = conv(x, units(256, spec.width), 5, strides=stem[1], batchnorm=spec.batchnorm, name="conv2")
    x = max_pool(x, pool_slots[1], name="pool2")
    for i, filters in ((3, 384), (4, 384), (5, 256)):
        x = conv(x, units(filters, spec.width), 3, batchnorm=spec.batchnorm, name=f"conv{i}")
    x = max_pool(x, pool_slots[2], name="pool5")
    x = keras.layers.Flatten(name="flatten")(x)
    x = dense_head(x, [hidden, hidden], spec)
    return _model(image, binary_output(x), name)


@register("alexnet", TASK)
def alexnet(spec: ModelSpec) -> keras.Model:
    """AlexNet (no LRN, one tower): conv 96 11x11/4, pool, conv 256 5x5, pool, conv 384/384/256 3x3, pool, FC, FC.

    Five halvings at full size (conv1 counts two); small images drop the
    earliest (conv1 becomes 7x7/2 or 5x5/1). Extra: ``dense_units`` (512; the
    original's 4096 is sized for 224 px ImageNet).
    """
    s = stride_plan(spec.image_size, 5, min_size=2)
    return _alexnet_like(spec, "alexnet", (s[0] * s[1], 1), (s[2], s[3], s[4]))


@register("zfnet", TASK)
def zfnet(spec: ModelSpec) -> keras.Model:
    """ZFNet: AlexNet with a 7x7/2 first conv and a strided 5x5 second conv (denser early sampling).

    Halvings at conv1, pool1, conv2, pool2, pool5; small images drop the
    earliest. Extra: ``dense_units`` (512).
    """
    s = stride_plan(spec.image_size, 5, min_size=2)
    return _alexnet_like(spec, "zfnet", (s[0], s[2]), (s[1], s[3], s[4]))


@register("vgg", TASK)
def vgg(spec: ModelSpec) -> keras.Model:
    """VGG: blocks of stacked 3x3 convs, each block ending in 2x2 max-pooling, then FC, FC, output.

    Extra: ``filters`` (64, 128, 256, 512, 512) and ``convs`` per block
    (2, 2, 3, 3, 3) = VGG-16; ``dense_units`` (512). Blocks of small images
    skip their pooling from the first block on, so the last map is >= 2 px.
    """
    knobs = VGGKnobs.model_validate(spec.extra)
    plan = stride_plan(spec.image_size, len(knobs.filters), 2)
    image, x = image_input(spec)
    for b, (f, n, stride) in enumerate(zip(knobs.filters, knobs.convs, plan, strict=True), 1):
        for c in range(1, n + 1):
            x = conv(x, units(f, spec.width), 3, batchnorm=spec.batchnorm, name=f"block{b}_{c}")
        if stride == 2:
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{b}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = dense_head(x, [knobs.dense_units] * 2, spec)
    return _model(image, binary_output(x), "vgg")


@register("nin", TASK)
def nin(spec: ModelSpec) -> keras.Model:
    """Network in Network (the CIFAR model): three mlpconv blocks (a kxk conv + two 1x1 convs), global average pooling.

    Blocks: 192 5x5 -> 160 -> 96, pool 3/2; 192 5x5 -> 192 -> 192, pool 3/2;
    192 3x3 -> 192 -> 1 (the class map, linear), global average -> sigmoid.
    ``spec.dropout`` follows each pooling (the paper used 0.5). Images larger
    than 32 px get a strided first conv (x2 or x4) so the pooled maps stay >= 8 px.
    """
    s = stride_plan(spec.image_size, 4, min_size=8)
    blocks = ((192, 5, (160, 96)), (192, 5, (192, 192)), (192, 3, (192, None)))
    image, x = image_input(spec)
    for b, (f, k, (m1, m2)) in enumerate(blocks, start=1):
        strides = s[0] * s[1] if b == 1 else 1
        x = conv(x, units(f, spec.width), k, strides=strides, batchnorm=spec.batchnorm, name=f"mlpconv{b}_a")
        x = conv(x, units(m1, spec.width), 1, batchnorm=spec.batchnorm, name=f"mlpconv{b}_b")
        if m2 is None:  # the last 1x1 conv is the class map: linear, no BN (a ReLU would pin the sigmoid >= 0.5)
            x = keras.layers.Conv2D(1, 1, padding="same", name="class_map")(x)
            break
        x = conv(x, units(m2, spec.width), 1, batchnorm=spec.batchnorm, name=f"mlpconv{b}_c")
        x = max_pool(x, s[1 + b], name=f"pool{b}")
        x = dropout(x, spec.dropout, name=f"dropout{b}")
    x = keras.layers.GlobalAveragePooling2D(name="global_average")(x)
    return _model(image, keras.layers.Activation("sigmoid", name="prediction")(x), "nin")


# GoogLeNet modules: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
INCEPTION_STAGES: tuple[tuple[tuple[str, tuple[int, int, int, int, int, int]], ...], ...] = (
    (("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64))),
    (
        ("4a", (192, 96, 208, 16, 48, 64)),
        ("4b", (160, 112, 224, 24, 64, 64)),
        ("4c", (128, 128, 256, 24, 64, 64)),
        ("4d", (112, 144, 288, 32, 64, 64)),
        ("4e", (256, 160, 320, 32, 128, 128)),
    ),
    (("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128))),
)


def inception_module(x: keras.KerasTensor, sizes: tuple[int, ...], spec: ModelSpec, name: str) -> keras.KerasTensor:
    """1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1, concatenated along channels."""
    c1, r3, c3, r5, c5, pp = (units(n, spec.width) for n in sizes)
    bn = spec.batchnorm
    b1 = conv(x, c1, 1, batchnorm=bn, name=f"{name}_1x1")
    b2 = conv(conv(x, r3, 1, batchnorm=bn, name=f"{name}_3x3_reduce"), c3, 3, batchnorm=bn, name=f"{name}_3x3")
    b3 = conv(conv(x, r5, 1, batchnorm=bn, name=f"{name}_5x5_reduce"), c5, 5, batchnorm=bn, name=f"{name}_5x5")
    b4 = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    b4 = conv(b4, pp, 1, batchnorm=bn, name=f"{name}_pool_proj")
    return keras.layers.Concatenate(name=f"{name}_concat")([b1, b2, b3, b4])


@register("inception", TASK)
def inception(spec: ModelSpec) -> keras.Model:
    """GoogLeNet (no auxiliary classifiers): stem, inception 3a-3b, pool, 4a-4e, pool, 5a-5b, global average.

    Halvings at the stem conv, stem pool, after the stem's 3x3 conv, after 3b
    and after 4e; small images drop the earliest so the last map is >= 4 px
    (the stem conv is 7x7/2 when it strides, else 3x3). ``spec.batchnorm``
    makes it BN-Inception. Extra: ``stages`` (3; 1 = only 3a-3b, 2 = up to 4e).
    """
    stages = InceptionKnobs.model_validate(spec.extra).stages
    s = stride_plan(spec.image_size, 2 + stages, min_size=4)
    bn = spec.batchnorm
    image, x = image_input(spec)
    x = conv(x, units(64, spec.width), 7 if s[0] == 2 else 3, strides=s[0], batchnorm=bn, name="stem1")
    x = max_pool(x, s[1], name="stem_pool1")
    x = conv(x, units(64, spec.width), 1, batchnorm=bn, name="stem2")
    x = conv(x, units(192, spec.width), 3, batchnorm=bn, name="stem3")
    x = max_pool(x, s[2], name="stem_pool2")
    for i, stage in enumerate(INCEPTION_STAGES[:stages]):
        if i > 0:
            x = max_pool(x, s[2 + i], name=f"pool{i + 3}")
        for name, sizes in stage:
            x = inception_module(x, sizes, spec, f"inception{name}")
    x = keras.layers.GlobalAveragePooling2D(name="global_average")(x)
    x = dropout(x, spec.dropout, name="dropout")
    return _model(image, binary_output(x), "inception")


def residual_block(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    """Basic block: 3x3 conv-BN-relu, 3x3 conv-BN, + shortcut (identity, or 1x1 conv-BN projection), relu."""
    y = conv(x, filters, 3, strides=strides, batchnorm=True, name=f"{name}_1")
    y = conv(y, filters, 3, batchnorm=True, activation="", name=f"{name}_2")
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(x, filters, 1, strides=strides, batchnorm=True, activation="", name=f"{name}_projection")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def resnet_stem(x: keras.KerasTensor, filters: int, strides: int, kind: str) -> keras.KerasTensor:
    """The stem before the pool: one 7x7 conv (3x3 when it does not halve), or ``deep``: three 3x3 convs."""
    if kind == "single":
        return conv(x, filters, 7 if strides == 2 else 3, strides=strides, batchnorm=True, name="stem")
    half = max(filters // 2, 1)
    x = conv(x, half, 3, strides=strides, batchnorm=True, name="stem1")
    x = conv(x, half, 3, batchnorm=True, name="stem2")
    return conv(x, filters, 3, batchnorm=True, name="stem3")


def resnet_features(x: keras.KerasTensor, knobs: ResNetKnobs, width: float, plan_size: int) -> keras.KerasTensor:
    """The ResNet from the normalized image to its global average; halvings planned for ``plan_size`` px images."""
    s = stride_plan(plan_size, 1 + len(knobs.filters), min_size=knobs.min_map)
    x = resnet_stem(x, units(knobs.filters[0], width), s[0], knobs.stem)
    x = max_pool(x, s[1], name="stem_pool")
    for st, (f, n) in enumerate(zip(knobs.filters, knobs.blocks, strict=True), start=1):
        for b in range(1, n + 1):
            strides = s[st] if st > 1 and b == 1 else 1
            x = residual_block(x, units(f, width), strides, name=f"stage{st}_block{b}")
    return keras.layers.GlobalAveragePooling2D(name="global_average")(x)


@register("resnet", TASK)
def resnet(spec: ModelSpec) -> keras.Model:
    """ResNet-18: stem, four stages of two basic residual blocks (64/128/256/512), global average, output.

    BatchNormalization is part of the design (``spec.batchnorm`` is ignored).
    Halvings at the stem conv (7x7/2, else 3x3/1), the stem pool and the first
    block of stages 2-4; small images drop the earliest so the last map is >= 4 px.
    Extra: ``filters`` (64, 128, 256, 512) and ``blocks`` per stage (2, 2, 2, 2; 3, 4, 6, 3 = ResNet-34),
    ``min_map`` (4): the smallest last map before a halving is dropped (96 px keeps all five
    halvings with 3, at a quarter of the early layers' cost), ``stem``: ``single`` (one 7x7
    conv) or ``deep`` (three 3x3 convs, half, half and full width, the first one strided:
    ResNet-C of "Bag of Tricks", He et al. 2019).
    """
    image, x = image_input(spec)
    x = resnet_features(x, ResNetKnobs.model_validate(spec.extra), spec.width, spec.image_size)
    x = dropout(x, spec.dropout, name="dropout")
    return _model(image, binary_output(x), "resnet")
