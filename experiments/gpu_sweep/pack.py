"""Pack a prepared pets folder (128 px shards, index.parquet) into one small .npz of JPEG bytes for the sweep.

Usage: python experiments/gpu_sweep/pack.py results/workspace/data/prepared/pets .gpu/pets128.npz
(JPEG at quality 95: about 32 MB for the 4,000 photos, small enough to travel to a GPU machine.)
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def pack(prepared: Path, out: Path) -> None:
    index = pd.read_parquet(prepared / "index.parquet")
    shards: dict[str, np.ndarray] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        rows = index[index.split == split]
        blobs = []
        for shard, offset in zip(rows.shard, rows.offset, strict=True):
            if shard not in shards:
                shards[shard] = np.load(prepared / shard, mmap_mode="r")
            buf = io.BytesIO()
            Image.fromarray(np.asarray(shards[shard][offset])).save(buf, format="JPEG", quality=95)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays[f"{split}_x"] = np.concatenate(blobs)
        arrays[f"{split}_len"] = np.array([len(b) for b in blobs])
        arrays[f"{split}_y"] = rows.label_index.to_numpy(np.int64)
    np.savez(out, **arrays)


if __name__ == "__main__":
    pack(Path(sys.argv[1]), Path(sys.argv[2]))
