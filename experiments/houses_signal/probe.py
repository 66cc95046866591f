"""Do the house photos tell anything about the price that the table does not? (an experiment, not the pipeline)

Reads a workspace that ran the real profile's ``validate@houses`` and
``pretrain`` (``make results`` leaves one in ``results/workspace``): the
houses table, the raw photos and ``models/pretrain/backbone.keras``. On the
houses the workspace's ``prepare.houses`` keeps (``min_houses_per_zip``: the
seed's 362), for each of ``results.yaml``'s ``houses_split_seeds`` (the seed
split first) with the same test fraction, it fits a Huber regression of
the log price on the table (log area, bedrooms, bathrooms, zip code one-hot),
alone and with photo features added:

* ``backbone``: the pretrain backbone's pooled features of the four photos
  (4 x 128), standardised, reduced by PCA fitted on the training houses;
* ``stats``: per photo its width, height, aspect ratio, JPEG bytes per pixel,
  mean and std of the pixels, mean saturation, std of the value channel and
  the variance of an edge filter (sharpness), standardised and reduced the same
  way.

Prints, per feature set, the test MAPE on the seed split, its mean over the 5
splits, and the 5-fold cross-validated MAPE on the training houses (mean over
the splits), which is what a choice between feature sets may look at.
Usage: ``python experiments/houses_signal/probe.py [results/workspace]``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from sklearn.decomposition import PCA
from sklearn.linear_model import HuberRegressor
from sklearn.model_selection import KFold, train_test_split
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[2]

from pipeline import config  # noqa: E402
from pipeline.config import HOUSE_ROOMS  # noqa: E402
from pipeline.data import images  # noqa: E402
from pipeline.stages.prepare import filter_zipcodes  # noqa: E402
from scripts.results import load_plan  # noqa: E402  (the make results protocol)


def photo_paths(workspace: Path, houses: pd.DataFrame) -> list[list[Path]]:
    """Each house's four photos, in ``HOUSE_ROOMS`` order, from the validate stage's manifest."""
    manifest = pd.read_parquet(workspace / "data/validated/houses/manifest.parquet")
    by_house = manifest[manifest.status == "accepted"].pivot(index="house_id", columns="label", values="path")
    raw = workspace / "data/raw/houses"
    return [[raw / by_house.loc[h, room] for room in HOUSE_ROOMS] for h in houses.house_id]


def backbone_features(workspace: Path, paths: list[list[Path]]) -> np.ndarray:
    """``[houses, 4 * features]`` pooled features of the pretrain backbone, at the size it was trained at."""
    import keras

    import pipeline.models  # noqa: F401  (registers the layers the saved backbone uses)

    backbone = keras.models.load_model(workspace / "models/pretrain/backbone.keras")
    size = backbone.input_shape[1]
    pixels = np.stack([images.load(p, size) for house in paths for p in house]).astype(np.float32)
    return backbone.predict(pixels, batch_size=64, verbose=0).reshape(len(paths), -1)


def photo_stats(paths: list[list[Path]]) -> np.ndarray:
    """``[houses, 4 * 9]`` simple statistics of each photo as stored (see the module docstring)."""
    rows = []
    for house in paths:
        row: list[float] = []
        for path in house:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
                w, h = rgb.size
                a = np.asarray(rgb, np.float32)
                hsv = np.asarray(rgb.convert("HSV"), np.float32)
                edges = np.asarray(rgb.convert("L").filter(ImageFilter.FIND_EDGES), np.float32)
            row += [
                w,
                h,
                w / h,
                path.stat().st_size / (w * h),
                a.mean(),
                a.std(),
                hsv[..., 1].mean(),
                hsv[..., 2].std(),
                edges.var(),
            ]
        rows.append(row)
    return np.array(rows)


def table_features(houses: pd.DataFrame) -> np.ndarray:
    zips = pd.get_dummies(houses.zipcode).astype(float).to_numpy()
    return np.hstack([np.log(houses.area.to_numpy())[:, None], houses[["bedrooms", "bathrooms"]].to_numpy(float), zips])


def mape(log_true: np.ndarray, log_pred: np.ndarray) -> float:
    true, pred = np.exp(log_true), np.exp(log_pred)
    return float(np.mean(np.abs(pred - true) / true) * 100)


def fit_predict(
    table: np.ndarray, photos: np.ndarray | None, k: int, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> np.ndarray:
    """Huber regression on the table plus ``k`` principal components of ``photos``, fitted on ``train`` only."""
    x = table
    if photos is not None and k:
        scaler = StandardScaler().fit(photos[train])
        pca = PCA(k, random_state=0).fit(scaler.transform(photos[train]))
        z = pca.transform(scaler.transform(photos))
        x = np.hstack([table, z / z[train].std(axis=0)])
    model = HuberRegressor(epsilon=1.35, alpha=1e-3, max_iter=5000).fit(x[train], y[train])
    return model.predict(x[test])


def evaluate(
    table: np.ndarray, photos: np.ndarray | None, k: int, y: np.ndarray, seeds: tuple[int, ...], test_size: float
) -> tuple[float, float, float]:
    """(test MAPE on the first seed's split, mean test MAPE over ``seeds``, mean 5-fold CV MAPE on the training houses)."""
    tests, cvs = [], []
    for seed in seeds:
        train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed)
        tests.append(mape(y[test], fit_predict(table, photos, k, y, train, test)))
        folds = KFold(5, shuffle=True, random_state=0).split(train)
        cvs.append(np.mean([mape(y[train[b]], fit_predict(table, photos, k, y, train[a], train[b])) for a, b in folds]))
    return tests[0], float(np.mean(tests)), float(np.mean(cvs))


def main() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    workspace = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results/workspace"
    prepare = config.load(workspace / "params.yaml").prepare.houses
    seeds = load_plan(REPO / "results.yaml").split_seeds
    houses = pd.read_parquet(workspace / "data/validated/houses/houses.parquet")
    houses = filter_zipcodes(houses, prepare.min_houses_per_zip).reset_index(drop=True)
    paths = photo_paths(workspace, houses)
    table, y = table_features(houses), np.log(houses.price.to_numpy())
    sets = {"backbone": backbone_features(workspace, paths), "stats": photo_stats(paths)}
    print(f"{len(houses)} houses, split seeds {seeds}; Huber regression of the log price; MAPE in %")
    print(f"{'features':28s} {'seed split':>10s} {f'mean of {len(seeds)}':>10s} {'CV, train':>10s}")
    rows = [("table only", None, 0)] + [(f"table + {name} PCA {k}", x, k) for name, x in sets.items() for k in (2, 5, 9)]
    for label, photos, k in rows:
        seed_split, mean, cv = evaluate(table, photos, k, y, seeds, prepare.split.test)
        print(f"{label:28s} {seed_split:10.1f} {mean:10.2f} {cv:10.2f}")


if __name__ == "__main__":
    main()
