"""pipeline.training.ssl: SimCLR's views, its NT-Xent loss, the two-view model, the probes and fit_simclr, on tiny arrays."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import config

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from pipeline.models import transfer  # noqa: E402
from pipeline.training import loop, ssl  # noqa: E402

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
UNLABELED = yaml.safe_load(REPO_PARAMS.read_text())["pretrain"]["pets_unlabeled"]


def unlabeled_cfg(**changes: object) -> config.UnlabeledPretrain:
    """The repository's ``pretrain.pets_unlabeled`` with ``changes``, validated as params are."""
    return config.UnlabeledPretrain.model_validate({**copy.deepcopy(UNLABELED), **changes})


def photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


# --- views ------------------------------------------------------------------------------------------


def test_views_are_a_function_of_the_seed_eagerly_and_inside_tf_data() -> None:
    images = photos(6, 24)
    seed = tf.constant([7, 11], tf.int64)
    eager = ssl.views(tf.constant(images), seed, 16, 0.2, 0.5).numpy()
    assert eager.shape == (6, 16, 16, 3) and eager.dtype == np.float32
    assert eager.min() >= 0.0 and eager.max() <= 255.0
    np.testing.assert_array_equal(eager, ssl.views(tf.constant(images), seed, 16, 0.2, 0.5).numpy())
    mapped = tf.data.Dataset.from_tensors((seed, images)).map(lambda s, x: ssl.views(x, s, 16, 0.2, 0.5))
    (in_data,) = list(mapped.as_numpy_iterator())
    np.testing.assert_allclose(in_data, eager, atol=1e-3)  # the same draws in graph mode (tf.data) as eagerly
    other = ssl.views(tf.constant(images), tf.constant([7, 12], tf.int64), 16, 0.2, 0.5).numpy()
    assert np.abs(other - eager).mean() > 1.0  # another seed, other crops and colours
    per_image = [np.abs(other[i] - eager[i]).mean() for i in range(len(images))]
    assert min(per_image) > 0  # every image of the batch draws its own view


def test_view_pairs_give_two_different_views_of_each_image_and_keep_the_targets() -> None:
    pair = ssl.view_pairs(16, 0.2, 0.5)
    images, y = photos(4, 24), tf.zeros(4)
    (views, targets) = pair(tf.constant([1, 2], tf.int64), ({"image": tf.constant(images)}, y))
    assert set(views) == set(ssl.VIEWS) and all(tuple(v.shape) == (4, 16, 16, 3) for v in views.values())
    assert np.abs(views["view1"].numpy() - views["view2"].numpy()).mean() > 1.0
    assert targets is y


def test_view_pairs_add_small_crops_from_the_smaller_areas() -> None:
    pair = ssl.view_pairs(16, 0.5, 0.5, small=(2, 8, 0.05))
    (views, _) = pair(tf.constant([3, 4], tf.int64), ({"image": tf.constant(photos(3, 32))}, tf.zeros(3)))
    assert list(views) == ["view1", "view2", "small1", "small2"] == list(ssl.view_names(2))
    assert tuple(views["small1"].shape) == (3, 8, 8, 3) and tuple(views["view1"].shape) == (3, 16, 16, 3)
    assert np.abs(views["small1"].numpy() - views["small2"].numpy()).mean() > 1.0  # each crop its own draw


def test_views_crop_between_min_scale_and_max_scale_of_the_area() -> None:
    images = np.zeros((64, 32, 32, 3), np.float32)
    images[:, 8:24, 8:24] = 255.0  # a bright centre, a quarter of the area: every crop of half the area or more meets it

    def uniform_crops(min_scale: float, max_scale: float) -> float:
        x = ssl.views(tf.constant(images), tf.constant([5, 6], tf.int64), 8, min_scale, 0.0, grey=0.0, max_scale=max_scale)
        return float(np.mean(x.numpy().std(axis=(1, 2, 3)) < 1.0))

    assert uniform_crops(0.5, 1.0) == 0.0
    assert uniform_crops(0.005, 0.02) > 0.5  # tiny crops: mostly all bright or all dark


# --- NT-Xent ----------------------------------------------------------------------------------------


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, temperature: float, decoupled: bool = False) -> np.ndarray:
    """NT-Xent written out: each of the 2B projections picks its partner among the 2B - 1 others; mean of a pair's two.

    ``decoupled`` (DCL): the partner is left out of the denominator.
    """
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i and not (decoupled and j == partner)]
        losses.append(-sim[i, partner] + np.log(np.sum(np.exp(sim[i, others]))))
    losses = np.array(losses)
    return (losses[:n] + losses[n:]) / 2


def test_nt_xent_equals_the_reference_and_is_lower_for_aligned_pairs() -> None:
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    loss = ssl.nt_xent(0.5)
    got = loss(None, tf.constant(np.concatenate([z1, z2], axis=1), tf.float32)).numpy()
    assert got.shape == (6,)
    np.testing.assert_allclose(got, nt_xent_reference(z1, z2, 0.5), rtol=1e-4, atol=1e-5)
    aligned = loss(None, tf.constant(np.concatenate([z1, z1 + 0.01 * z2], axis=1), tf.float32)).numpy()
    np.testing.assert_allclose(aligned, nt_xent_reference(z1, z1 + 0.01 * z2, 0.5), rtol=1e-4, atol=1e-5)
    assert aligned.mean() < got.mean() - 0.5  # partners that agree: a clearly lower loss
    sharper = ssl.nt_xent(0.1)(None, tf.constant(np.concatenate([z1, z1 + 0.01 * z2], axis=1), tf.float32)).numpy()
    assert sharper.mean() < aligned.mean()  # a lower temperature sharpens the softmax around the aligned partner


def test_decoupled_nt_xent_leaves_the_partner_out_of_the_denominator() -> None:
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    y_pred = tf.constant(np.concatenate([z1, z2], axis=1), tf.float32)
    got = ssl.nt_xent(0.2, decoupled=True)(None, y_pred).numpy()
    np.testing.assert_allclose(got, nt_xent_reference(z1, z2, 0.2, decoupled=True), rtol=1e-4, atol=1e-5)
    assert np.all(got < ssl.nt_xent(0.2)(None, y_pred).numpy())  # a smaller denominator: a lower loss for every photo


def test_multi_crop_nt_xent_pairs_each_small_view_with_both_views() -> None:
    rng = np.random.default_rng(2)
    z = [rng.normal(size=(4, 3)) for _ in range(4)]  # view1, view2, small1, small2
    got = ssl.nt_xent(0.5, views=4)(None, tf.constant(np.concatenate(z, axis=1), tf.float32)).numpy()
    pairs = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]  # never small with small
    expected = np.mean([nt_xent_reference(z[a], z[b], 0.5) for a, b in pairs], axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# --- the two-view model -------------------------------------------------------------------------------


def test_simclr_model_shares_one_backbone_and_outputs_both_projections() -> None:
    backbone = transfer.conv_backbone(16, (120.0,) * 3, (3600.0,) * 3, width=0.25)
    model = ssl.simclr_model(backbone, 8)
    x = photos(3, 16)
    out = model({"view1": x, "view2": x[::-1]}, training=False)
    assert tuple(out.shape) == (3, 16)  # [B, 2 * projection_dim]
    out = keras.ops.convert_to_numpy(out)
    np.testing.assert_allclose(out[:, :8], out[::-1, 8:], rtol=1e-5, atol=1e-5)  # one backbone, one head for both views
    assert sum(layer is backbone for layer in model.layers) == 1
    assert len(model.weights) == len(backbone.weights) + len(model.get_layer("projection").weights)


def test_simclr_model_takes_small_crops_through_the_same_backbone() -> None:
    backbone = transfer.conv_backbone(None, (120.0,) * 3, (3600.0,) * 3, width=0.25, plan_size=16)
    model = ssl.simclr_model(backbone, 8, size=16, small=(2, 8))
    shapes = {name: tuple(x.shape) for name, x in model.input.items()}
    assert shapes == {"view1": (None, 16, 16, 3), "view2": (None, 16, 16, 3)} | {f"small{i}": (None, 8, 8, 3) for i in (1, 2)}
    x, small = photos(3, 16), photos(3, 8)
    out = keras.ops.convert_to_numpy(model({"view1": x, "view2": x, "small1": small, "small2": small}, training=False))
    assert out.shape == (3, 32)  # [B, 4 * projection_dim]
    np.testing.assert_allclose(out[:, 16:24], out[:, 24:], rtol=1e-5, atol=1e-5)
    assert len(model.weights) == len(backbone.weights) + len(model.get_layer("projection").weights)


# --- probes -------------------------------------------------------------------------------------------


def test_probe_is_perfect_on_separable_photos_and_near_chance_on_noise() -> None:
    backbone = transfer.conv_backbone(16, (128.0,) * 3, (4000.0,) * 3, width=0.25)
    rng = np.random.default_rng(0)

    def dark_and_bright(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([rng.uniform(0, 40, (n, 16, 16, 3)), rng.uniform(215, 255, (n, 16, 16, 3))])
        return x.astype(np.float32), np.repeat([0, 1], n)

    scores = ssl.probe(backbone, dark_and_bright(20), dark_and_bright(20), k=5)
    assert scores == {"knn_accuracy": 1.0, "linear_probe_accuracy": 1.0}

    def noise(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(0, 255, (n, 16, 16, 3)).astype(np.float32), rng.permutation(np.repeat([0, 1], n // 2))

    chance = ssl.probe(backbone, noise(200), noise(200), k=5)
    assert set(chance) == {"knn_accuracy", "linear_probe_accuracy"}
    assert all(0.35 <= v <= 0.65 for v in chance.values()), chance  # labels unrelated to the photos: ~0.5
    few = ssl.probe(backbone, dark_and_bright(2), dark_and_bright(3), k=20)  # k above the train photos: all of them
    assert 0 <= few["knn_accuracy"] <= 1


# --- fit_simclr -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoder", "extra", "train_size"),
    [("conv", {}, 0), ("conv", {}, 16), ("resnet", {"filters": [8, 16], "blocks": [1, 1]}, 16)],
    ids=["conv-at-image-size", "conv-on-smaller-views", "resnet-on-smaller-views"],
)
def test_fit_simclr_returns_the_trained_encoder_as_a_backbone_at_the_image_size(
    monkeypatch: pytest.MonkeyPatch, encoder: str, extra: dict, train_size: int
) -> None:
    cfg = unlabeled_cfg(
        epochs=2, warmup=1, batch_size=8, width=0.25, encoder=encoder, extra=extra, train_size=train_size, projection_dim=8
    )
    pixels = photos(16, 32, seed=1)
    built = []

    def capture(backbone: keras.Model, projection_dim: int, *sizes: object) -> keras.Model:
        built.append(ssl_simclr_model(backbone, projection_dim, *sizes))
        return built[-1]

    ssl_simclr_model = ssl.simclr_model
    monkeypatch.setattr(ssl, "simclr_model", capture)
    backbone, history, seconds = ssl.fit_simclr(cfg, pixels, 32, None)

    assert tuple(backbone.inputs[0].shape) == (None, 32, 32, 3) and backbone.name == "backbone"
    assert list(history) == ["loss"] and len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    assert seconds > 0
    (model,) = built
    encoder_model = model.get_layer("backbone")
    assert tuple(encoder_model.inputs[0].shape) == (None, train_size or 32, train_size or 32, 3)
    trained = encoder_model.get_weights()
    assert len(trained) == len(backbone.get_weights())
    for w0, w1 in zip(trained, backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(w0, w1)
    # the same network: the halvings planned for the 32 px photos, whatever size the views had
    strides = [(layer.name, layer.get_config().get("strides")) for layer in transfer.leaves(backbone)]
    assert strides == [(layer.name, layer.get_config().get("strides")) for layer in transfer.leaves(encoder_model)]
    # trained: not the weights it started from
    fresh = transfer.ENCODERS[encoder](
        32, *loop.channel_stats(pixels), width=0.25, plan_size=32, **({"extra": extra} if extra else {})
    )
    assert any(not np.array_equal(w0, w1) for w0, w1 in zip(fresh.get_weights(), trained, strict=True))
    mean, variance = loop.channel_stats(pixels)
    np.testing.assert_allclose(np.ravel(backbone.get_layer("normalize").get_config()["mean"]), mean, rtol=1e-5)
    features = backbone.predict(pixels[:2], verbose=0)
    assert features.shape == (2, backbone.outputs[0].shape[-1]) and np.isfinite(features).all()


def test_fit_simclr_with_small_crops_returns_the_backbone_at_the_image_size() -> None:
    cfg = unlabeled_cfg(
        epochs=1, warmup=0, batch_size=8, width=0.25, train_size=16, projection_dim=8, loss="dcl", small_crops=2, small_size=8
    )
    backbone, history, _ = ssl.fit_simclr(cfg, photos(16, 32, seed=3), 32, None)
    assert tuple(backbone.inputs[0].shape) == (None, 32, 32, 3)
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"]).all()


def test_fit_simclr_is_reproducible() -> None:
    cfg = unlabeled_cfg(epochs=1, warmup=0, batch_size=8, width=0.25, train_size=16, projection_dim=8)
    pixels = photos(8, 16, seed=2)
    first, history, _ = ssl.fit_simclr(cfg, pixels, 16, None)
    again, history_again, _ = ssl.fit_simclr(cfg, pixels, 16, None)
    assert history == history_again
    for w0, w1 in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(w0, w1)
