"""Train/val/test splits that never let an exact duplicate straddle two splits.

Pets: stratified per class, seeded, rows with identical bytes assigned as one
group. Houses: the seed's ``train_test_split``, then houses that share a photo
moved together. Pretrain: a seeded val share of whole house groups.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.config import SPLITS, Split
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def _targets(split: Split, n: int, label: str) -> tuple[int, int, int]:
    if split.per_class:
        want = (int(split.train), int(split.val), int(split.test))
        if sum(want) > n:
            raise PipelineError(
                f"prepare split: class {label!r} has {n} usable images, fewer than train+val+test = {sum(want)} {want}"
            )
        return want
    train, val = round(split.train * n), round(split.val * n)
    whole = split.train + split.val + split.test >= 0.999  # else the rest is in no split
    return train, val, (n - train - val) if whole else min(round(split.test * n), n - train - val)


def split_classes(frame: pd.DataFrame, split: Split, seed: int) -> pd.Series:
    """Assign each row (columns ``label``, ``sha256``) to train/val/test, or ``""`` when not drawn.

    Stratified per label and seeded; rows with identical bytes form one group
    that is assigned as a whole, so exact duplicates never straddle splits.
    The result depends only on the rows' content, not on their order.
    """
    rng = np.random.default_rng(seed)
    groups = frame.groupby("sha256").agg(label=("label", lambda s: s.mode().iloc[0]), n=("label", "size")).sort_index()
    assignment: dict[str, str] = {}
    for label in sorted(groups.label.unique()):
        members = groups[groups.label == label]
        bounds = np.cumsum(_targets(split, int(members.n.sum()), label))
        order = rng.permutation(len(members))
        taken = np.cumsum(members.n.to_numpy()[order])
        which = np.searchsorted(bounds, taken, side="left")  # 0 train, 1 val, 2 test, 3 not drawn
        names = np.array([*SPLITS, ""])[which]
        assignment.update(zip(members.index[order], names))
    return frame.sha256.map(assignment)


def filter_zipcodes(table: pd.DataFrame, min_houses: int) -> pd.DataFrame:
    """Drop houses whose zip code has fewer than ``min_houses`` houses (the seed's step)."""
    counts = table.zipcode.value_counts()
    keep = table.zipcode.map(counts) >= min_houses
    if not keep.any():
        raise PipelineError(
            f"prepare.houses.min_houses_per_zip={min_houses} leaves no house (largest zip code has {counts.max()} houses)"
        )
    return table[keep]


def split_houses(table: pd.DataFrame, photo_sha: pd.DataFrame, split: Split, seed: int, group_duplicates: bool) -> pd.Series:
    """The seed's split: ``train_test_split(test_size, random_state=seed)``, val carved from train.

    With ``group_duplicates``, houses sharing an identical photo are then
    moved together into the earliest split among them (train before val
    before test), so no photo leaks into evaluation.
    """
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(table.index.to_numpy(), test_size=split.test, random_state=seed)
    val_idx: np.ndarray = np.array([], dtype=int)
    if split.val > 0:
        train_idx, val_idx = train_test_split(train_idx, test_size=split.val / (split.train + split.val), random_state=seed)
    out = pd.Series("", index=table.index, dtype=object)
    for name, idx in zip(SPLITS, (train_idx, val_idx, test_idx)):
        out[idx] = name
    return _merge_duplicate_houses(table, photo_sha, out) if group_duplicates else out


def _merge_duplicate_houses(table: pd.DataFrame, photo_sha: pd.DataFrame, assignment: pd.Series) -> pd.Series:
    house_split = dict(zip(table.house_id, assignment))
    shared = photo_sha[photo_sha.house_id.isin(house_split)].groupby("sha256")["house_id"].agg(set)
    rank = {name: i for i, name in enumerate(SPLITS)}
    moved = 0
    for houses in (h for h in shared if len(h) > 1):
        first = min((house_split[h] for h in houses), key=rank.get)
        for h in houses:
            moved += house_split[h] != first
            house_split[h] = first
    if moved:
        log.warning("moved %d houses that share a photo with a house of another split", moved)
    return table.house_id.map(house_split).set_axis(table.index)


def house_groups(photos: pd.DataFrame) -> pd.Series:
    """A group id per photo: houses that share a photo (identical bytes) form one group."""
    parent: dict[int, int] = {}

    def find(h: int) -> int:
        while parent.setdefault(h, h) != h:
            parent[h] = parent[parent[h]]
            h = parent[h]
        return h

    for houses in photos.groupby("sha256").house_id.unique():
        first, *rest = (int(h) for h in houses)
        for h in rest:
            parent[find(h)] = find(first)
    return photos.house_id.map(lambda h: find(int(h)))


def split_by_house(photos: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the val photos: whole houses (groups), about ``val_fraction`` of them, seeded."""
    groups = house_groups(photos)
    ids = np.array(sorted(groups.unique()))
    order = np.random.default_rng(seed).permutation(ids)
    sizes = photos.groupby(groups).house_id.nunique()
    target = max(1, round(val_fraction * photos.house_id.nunique()))
    val, count = set(), 0
    for g in order:
        if count >= target:
            break
        val.add(g)
        count += sizes[g]
    if len(val) == len(ids):
        raise PipelineError(f"pretrain.houses_rooms.val_fraction: {val_fraction} leaves no house to train on")
    return groups.isin(val).to_numpy()
