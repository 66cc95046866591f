"""The upstream archives' layouts, in one place: ``PetImages/<class>/*.jpg``; ``HousesInfo.txt`` and ``N_<room>.jpg``.

:func:`parse_house` is the one parser of a ``HousesInfo.txt`` line (the
validate stage reads the file, ``predict`` reads the lines it is given).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pipeline.config import HOUSE_CONTINUOUS, HOUSE_ROOMS

PETS_ROOT = "PetImages"
HOUSES_INFO = "HousesInfo.txt"
PHOTO_NAME = re.compile(r"(\d+)_(" + "|".join(HOUSE_ROOMS) + r")\.jpg")  # N_<room>.jpg: house N's photo of a room


def house_photos(folder: Path, house_id: int) -> list[Path]:
    """House ``house_id``'s four photos in ``folder``, in the montage order (:data:`HOUSE_ROOMS`)."""
    return [folder / f"{house_id}_{room}.jpg" for room in HOUSE_ROOMS]


def parse_house(line: str, price_required: bool) -> dict[str, Any]:
    """One ``bedrooms bathrooms area zipcode price`` line (the price optional unless required).

    Returns the numbers as floats, the zip code as written and ``price``
    (None when absent); ValueError says what is wrong with the line.
    """
    fields = line.split()
    if len(fields) not in ((5,) if price_required else (4, 5)):
        expected = "5 fields (bedrooms bathrooms area zipcode price)"
        if not price_required:
            expected = "4 or 5 fields (bedrooms bathrooms area zipcode [price])"
        raise ValueError(f"expected {expected}, got {len(fields)}: {line.strip()!r}")
    try:
        numbers = [float(f) for f in (*fields[:3], *fields[4:])]
    except ValueError as exc:
        raise ValueError(f"bedrooms, bathrooms, area and price must be numbers ({exc}): {line.strip()!r}") from None
    if not all(math.isfinite(n) for n in numbers):
        raise ValueError(f"not a finite number in {line.strip()!r}")
    return dict(zip(HOUSE_CONTINUOUS, numbers[:3]), zipcode=fields[3], price=numbers[3] if len(numbers) == 4 else None)
