"""Tests for pipeline.training.augment_ops: invariants eagerly and in tf.data, each op's semantics, seeds, the preview grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import FILL_MODES, Policy
from pipeline.training import augment_ops

tf = pytest.importorskip("tensorflow")

REPO = Path(__file__).resolve().parents[1]
SIZE = 24
N = 16  # images per invariant check: P(no image flipped) = 2**-16
# an orthonormal, non-symmetric basis (columns), so that using rows instead of columns is caught
EIGVECS = np.linalg.qr(np.array([[2.0, 1.0, 0.5], [0.3, 1.5, -1.0], [1.0, -0.4, 1.2]]))[0]
EIGVALS = np.array([1.0, 0.5, 0.1])

OPS = {
    "flip": Policy(flip=True),
    "crop": Policy(crop=0.75),
    "rotation": Policy(rotation=40.0),
    "translation": Policy(translation=0.2),
    "shear": Policy(shear=0.2),
    "zoom": Policy(zoom=0.2),
    "brightness": Policy(brightness=0.3),
    "contrast": Policy(contrast=0.3),
    "saturation": Policy(saturation=0.5),
    "pca_color": Policy(pca_color=0.1),
    "everything": Policy(
        flip=True,
        crop=0.875,
        rotation=40.0,
        translation=0.2,
        shear=0.2,
        zoom=0.2,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        pca_color=0.1,
        fill_mode="reflect",
    ),
}
SEED_LIKE = Policy(flip=True, rotation=40.0, translation=0.2, shear=0.2, zoom=0.2)


def textured(n: int = N, height: int = SIZE, width: int = SIZE, seed: int = 0) -> np.ndarray:
    """Colourful float32 0-255 images: a gradient plus noise, no symmetry."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 120, width)[None, None, :, None] + np.linspace(0, 60, height)[None, :, None, None]
    return np.clip(ramp + rng.uniform(0, 135, (n, height, width, 3)), 0, 255).astype(np.float32)


def run(fn, images: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``fn`` on each image, eagerly or in a parallel tf.data map; returns (outputs, labels)."""
    labels = np.arange(len(images)) * 10 + 3
    if mode == "eager":
        return np.stack([fn(tf.constant(im)).numpy() for im in images]), labels
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(lambda x, y: (fn(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    pairs = list(ds.as_numpy_iterator())
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


# --------------------------------------------------------------------------- invariants, eager and tf.data


@pytest.mark.parametrize("mode", ["eager", "tf.data"])
@pytest.mark.parametrize("op", list(OPS))
def test_each_op_keeps_shape_dtype_range_labels_and_changes_the_image(op: str, mode: str) -> None:
    images = textured()
    fn = augment_ops.build(OPS[op], EIGVALS, EIGVECS, seed=1)
    out, labels = run(fn, images, mode)
    assert out.shape == images.shape
    assert out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert labels.tolist() == (np.arange(N) * 10 + 3).tolist()
    changed = np.abs(out - images).reshape(N, -1).max(axis=1) > 1.0
    assert changed.any(), f"{op} left every image unchanged"
    if op != "flip":  # a flip leaves about half the images as they are
        assert changed.mean() > 0.5


@pytest.mark.parametrize("mode", ["eager", "tf.data"])
def test_all_off_is_the_identity(mode: str) -> None:
    images = textured()
    fn = augment_ops.build(Policy(crop=1.0), None, None, seed=1)  # keeping the whole side is no crop either
    out, labels = run(fn, images, mode)
    np.testing.assert_array_equal(out, images)
    assert labels.tolist() == (np.arange(N) * 10 + 3).tolist()


def test_graph_mode_keeps_the_static_shape() -> None:
    fn = augment_ops.build(OPS["everything"], EIGVALS, EIGVECS, seed=1)
    ds = tf.data.Dataset.from_tensor_slices(textured(8)).batch(4).map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    assert ds.element_spec.shape.as_list() == [None, SIZE, SIZE, 3]
    single = tf.data.Dataset.from_tensor_slices(textured(2)).map(fn)
    assert single.element_spec.shape.as_list() == [SIZE, SIZE, 3]


# --------------------------------------------------------------------------- semantics of each op


def test_flip_gives_the_image_or_its_exact_mirror() -> None:
    images = textured()
    out = augment_ops.build(Policy(flip=True), None, None, seed=3)(images).numpy()
    flipped = [np.array_equal(o, im[:, ::-1]) for o, im in zip(out, images)]
    same = [np.array_equal(o, im) for o, im in zip(out, images)]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


def square_image(n: int, size: int, half: int) -> np.ndarray:
    """Black images with a white square of side ``2 * half`` at the centre."""
    images = np.zeros((n, size, size, 3), np.float32)
    c = size // 2
    images[:, c - half : c + half, c - half : c + half] = 255.0
    return images


def centroid(image: np.ndarray) -> np.ndarray:
    """(row, column) centre of mass of the first channel."""
    weight = image[..., 0]
    rows, cols = np.indices(weight.shape)
    return np.array([(rows * weight).sum(), (cols * weight).sum()]) / weight.sum()


def test_translation_moves_content_by_at_most_its_fraction() -> None:
    size, fraction = 40, 0.2
    images = square_image(32, size, half=4)
    out = augment_ops.build(Policy(translation=fraction, fill_mode="constant"), None, None, seed=5)(images).numpy()
    moves = np.array([centroid(o) - centroid(im) for o, im in zip(out, images)])
    assert np.abs(moves).max() <= fraction * size + 0.5
    assert np.abs(moves).max() > 0.5 * fraction * size  # it does move, over most of the range
    assert moves[:, 0].std() > 1 and moves[:, 1].std() > 1  # in both directions, independently
    # a pure shift: the square stays whole (bilinear sampling keeps its mass)
    np.testing.assert_allclose(out[..., 0].sum(axis=(1, 2)), images[..., 0].sum(axis=(1, 2)), rtol=0.01)


def test_rotation_barely_changes_a_centred_disk() -> None:
    size = 33  # odd, so the disk's centre is the image centre (W - 1) / 2
    rows, cols = np.indices((size, size))
    disk = np.where((rows - 16) ** 2 + (cols - 16) ** 2 <= 10**2, 200.0, 50.0).astype(np.float32)
    disks = np.repeat(np.repeat(disk[None, :, :, None], 3, axis=3), 16, axis=0)
    fn = augment_ops.build(Policy(rotation=40.0), None, None, seed=2)
    rotated = fn(disks).numpy()
    disk_change = np.abs(rotated - disks).mean()
    texture = textured(16, size, size)
    texture_change = np.abs(fn(texture).numpy() - texture).mean()
    assert disk_change < 5.0  # only the hard rim's bilinear interpolation (about 3 grey levels on average)
    assert texture_change > 5 * disk_change
    for image in rotated:  # rotation pivots on the image centre: the disk does not move
        np.testing.assert_allclose(centroid(image - 50.0), [16.0, 16.0], atol=0.05)


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_the_warp_is_tensorflows_projective_transform(fill_mode: str) -> None:
    """The vectorised warp samples as ImageProjectiveTransformV3 does, far outside the image too."""
    rng = np.random.default_rng(1)
    images = textured(6, height=17, width=31)
    angle, zoom = rng.uniform(-3, 3, 6), rng.uniform(0.3, 3, 6)
    shifts = rng.uniform(-90, 90, (2, 6))
    matrices = np.stack(
        [np.cos(angle) * zoom, 0.3 - np.sin(angle) * zoom, shifts[0], np.sin(angle) * zoom, np.cos(angle) * zoom, shifts[1]], 1
    ).astype(np.float32)
    kernel = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=np.pad(matrices, [(0, 0), (0, 2)]),
        output_shape=[17, 31],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    ).numpy()
    np.testing.assert_array_equal(augment_ops.affine_warp(tf.constant(images), tf.constant(matrices), fill_mode).numpy(), kernel)
    compiled = augment_ops._compiled_warp(fill_mode)(tf.constant(images), tf.constant(matrices)).numpy()
    np.testing.assert_allclose(compiled, kernel, atol=0.05)  # XLA: float rounding only


def test_a_folded_flip_mirrors_the_input_of_the_transform() -> None:
    """flip + transform: the flip folded into the matrix samples what flipping first would."""
    images = textured(N)
    both = augment_ops.build(SEED_LIKE, None, None, seed=0)(images, seed=[5, 6]).numpy()
    no_flip = augment_ops.build(SEED_LIKE.model_copy(update={"flip": False}), None, None, seed=0)
    mirrored = no_flip(images[:, :, ::-1], seed=[5, 6]).numpy()
    plain = no_flip(images, seed=[5, 6]).numpy()
    as_flipped = [np.allclose(b, m, atol=0.05) for b, m in zip(both, mirrored)]
    as_plain = [np.allclose(b, p, atol=0.05) for b, p in zip(both, plain)]
    assert all(f or p for f, p in zip(as_flipped, as_plain))
    assert any(as_flipped) and any(as_plain)


@pytest.mark.parametrize("policy", [Policy(zoom=0.3), Policy(crop=0.6), Policy(shear=0.3, rotation=20.0)])
def test_resampling_ops_keep_a_non_square_shape(policy: Policy) -> None:
    images = textured(4, height=20, width=36)
    out = augment_ops.build(policy, None, None, seed=0)(images)
    assert out.shape == images.shape
    assert not np.allclose(out.numpy(), images)


def test_crop_zooms_in() -> None:
    images = square_image(8, 40, half=8)
    out = augment_ops.build(Policy(crop=0.5), None, None, seed=0)(images).numpy()
    # a window of half the side resized back doubles every length: the square's area grows
    assert ((out[..., 0] > 127).sum(axis=(1, 2)) > (images[..., 0] > 127).sum(axis=(1, 2))).all()


def test_brightness_changes_the_mean_not_the_pattern() -> None:
    images = np.clip(textured(8) * 0.5 + 60, 0, 255).astype(np.float32)  # 60..188: no clipping at +-20 %
    out = augment_ops.build(Policy(brightness=0.2), None, None, seed=4)(images).numpy()
    means_in, means_out = images.mean(axis=(1, 2, 3)), out.mean(axis=(1, 2, 3))
    assert np.abs(means_out - means_in).max() > 2.0
    for o, im in zip(out, images):
        assert np.corrcoef(o.ravel(), im.ravel())[0, 1] > 0.999


def test_pca_colour_shifts_every_pixel_along_the_train_eigenvector() -> None:
    grey = np.full((64, 8, 8, 3), 128.0, np.float32)
    fn = augment_ops.build(Policy(pca_color=0.1), [1.0, 0.0, 0.0], EIGVECS, seed=6)
    shift = fn(grey).numpy() - grey
    per_image = shift[:, 0, 0, :]
    # one constant vector per image ...
    np.testing.assert_allclose(shift, np.broadcast_to(per_image[:, None, None, :], shift.shape), atol=1e-4)
    assert np.unique(per_image.round(3), axis=0).shape[0] == 64
    # ... parallel to the first eigenvector (a column of eigenvectors), of size |alpha| * eigenvalue * 255
    cosine = per_image @ EIGVECS[:, 0] / np.linalg.norm(per_image, axis=1)
    np.testing.assert_allclose(np.abs(cosine), 1.0, atol=1e-4)
    alpha = per_image @ EIGVECS[:, 0] / 255.0
    assert 0.06 < alpha.std() < 0.14


def test_pca_colour_needs_the_eigenpairs() -> None:
    with pytest.raises(ValueError, match="pca_eigenvalues"):
        augment_ops.build(Policy(pca_color=0.1), None, None, seed=0)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        augment_ops.build(Policy(pca_color=0.1), [1.0, 0.5], np.eye(3), seed=0)


# --------------------------------------------------------------------------- randomness


def test_same_seed_same_outputs_different_seed_different_outputs() -> None:
    images = textured(4)
    first, second, other = (augment_ops.build(OPS["everything"], EIGVALS, EIGVECS, seed=s) for s in (11, 11, 12))
    a = [first(images).numpy() for _ in range(3)]
    b = [second(images).numpy() for _ in range(3)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[1], a[0])  # successive calls draw fresh transforms
    assert not np.allclose(other(images).numpy(), a[0])


def seeded_pipeline(images: np.ndarray, seed: int) -> tf.data.Dataset:
    """The module docstring's parallel, reproducible pattern: per-batch seeds from Dataset.random."""
    fn = augment_ops.build(SEED_LIKE, None, None, seed=0)
    seeds = tf.data.Dataset.random(seed, rerandomize_each_iteration=True).batch(2)
    batches = tf.data.Dataset.from_tensor_slices((images, np.arange(len(images)))).batch(4)
    ds = tf.data.Dataset.zip(seeds, batches)
    return ds.map(lambda s, xy: (fn(xy[0], seed=s), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)


def test_explicit_seeds_make_a_parallel_tf_data_map_reproducible_with_new_draws_each_epoch() -> None:
    images = textured(8)

    def epochs(ds: tf.data.Dataset) -> list[np.ndarray]:
        return [np.concatenate([x for x, _ in ds.as_numpy_iterator()]) for _ in range(2)]

    first, second = epochs(seeded_pipeline(images, 5)), epochs(seeded_pipeline(images, 5))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first[1])
    assert not np.allclose(epochs(seeded_pipeline(images, 6))[0], first[0])
    # the explicit seed replaces the generator: an eager call with the same seed agrees
    one, other = (augment_ops.build(SEED_LIKE, None, None, seed=s) for s in (123, 0))
    np.testing.assert_array_equal(one(images[:4], seed=[3, 4]).numpy(), other(images[:4], seed=[3, 4]).numpy())


def test_a_batch_gets_one_transform_per_image() -> None:
    image = textured(1)[0]
    batch = np.repeat(image[None], 8, axis=0)
    out = augment_ops.build(SEED_LIKE, None, None, seed=9)(batch).numpy()
    assert out.shape == batch.shape
    for i in range(8):
        for j in range(i + 1, 8):
            assert not np.allclose(out[i], out[j]), f"images {i} and {j} got the same transform"
    single = augment_ops.build(SEED_LIKE, None, None, seed=9)(image)
    assert single.shape == image.shape


# --------------------------------------------------------------------------- policy, preview, imports


def test_policy_describe_and_validation() -> None:
    described = SEED_LIKE.describe()
    assert described == SEED_LIKE.model_dump()
    assert json.loads(json.dumps(described))["rotation"] == 40.0
    assert Policy().identity and not SEED_LIKE.identity
    with pytest.raises(ValueError, match="fill_mode"):
        Policy(fill_mode="mirror")
    with pytest.raises(ValueError, match="rotation"):
        Policy(rotation=-1.0)
    with pytest.raises(ValueError, match="zoom"):
        Policy(zoom=1.0)
    with pytest.raises(ValueError, match="crop"):
        Policy(crop=1.5)


def test_preview_grid_writes_a_png_growing_with_rows_and_columns(tmp_path: Path) -> None:
    fn = augment_ops.build(SEED_LIKE, None, None, seed=0)
    images = textured(3).astype(np.uint8)
    small, large = tmp_path / "small.png", tmp_path / "sub" / "large.png"
    augment_ops.preview_grid(images[:1], fn, per_image=2, path=small, title="pets")
    augment_ops.preview_grid(images, fn, per_image=4, path=large, title="pets")
    with Image.open(small) as a, Image.open(large) as b:
        assert a.format == b.format == "PNG"
        assert b.size[0] > a.size[0] and b.size[1] > a.size[1]
        assert np.asarray(b.convert("L")).std() > 0  # not a blank canvas
    assert not list(tmp_path.rglob(".*.tmp"))


def test_importing_the_module_does_not_import_tensorflow() -> None:
    code = "import sys, pipeline.training.augment_ops; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- MixUp / CutMix -------------------------------------------------------------------------------

FLAT = np.stack([np.full((SIZE, SIZE, 3), v, np.float32) for v in (0.0, 60.0, 180.0, 255.0)])
LABELS = np.array([[0.0], [1.0], [0.0], [1.0]], np.float32)  # each image's partner (reversed batch) has the other label


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
@pytest.mark.parametrize("mode", ["eager", "tf.data"])
def test_mixing_mixes_labels_in_the_proportion_of_the_pixels(kind: str, mode: str) -> None:
    alphas = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0), "both": (0.4, 1.0)}[kind]
    if mode == "eager":
        x, y = (t.numpy() for t in augment_ops.mix_batch(FLAT, LABELS, tf.constant([7, 8]), *alphas))
    else:
        ds = tf.data.Dataset.from_tensors((FLAT, LABELS)).map(
            lambda a, b: augment_ops.mix_batch(a, b, tf.constant([7, 8]), *alphas)
        )
        x, y = next(ds.as_numpy_iterator())
    partner = FLAT[::-1]
    # the share of the partner in each image, from its pixels (flat images: a blend or a pasted box)
    share = (x - FLAT).mean(axis=(1, 2, 3)) / (partner - FLAT).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(y.ravel(), (1 - share) * LABELS.ravel() + share * LABELS[::-1].ravel(), atol=1e-5)
    assert x.shape == FLAT.shape and ((x >= 0) & (x <= 255)).all() and ((y >= 0) & (y <= 1)).all()
    assert 0 < share.max() and share.min() < 1  # something mixed, not everything replaced
    if kind == "cutmix":  # pixels are either the image's own or its partner's, never a blend
        own_or_partner = np.isclose(x, FLAT) | np.isclose(x, partner)
        assert own_or_partner.all()


def test_mixing_is_off_at_zero_and_reproducible_per_seed() -> None:
    x, y = augment_ops.mix_batch(FLAT, LABELS, tf.constant([1, 2]))
    np.testing.assert_array_equal(x.numpy(), FLAT)
    np.testing.assert_array_equal(y.numpy(), LABELS)
    a, b, c = (augment_ops.mix_batch(FLAT, LABELS, tf.constant(s), 0.4, 1.0)[1].numpy() for s in ([1, 2], [1, 2], [3, 4]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
