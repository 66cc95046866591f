"""Small, deterministic, learnable stand-ins for the two real datasets.

They use the real archives' layout and file formats, so every later stage runs
unchanged on either profile:

* pets: ``PetImages/Cat/*.jpg``, ``PetImages/Dog/*.jpg`` (imbalanced classes)
  plus the kinds of defects the real archive is known for (zero-byte files,
  ``Thumbs.db``, a truncated JPEG, an HTML page named ``.jpg``) and decodable
  oddities (PNG behind a ``.jpg`` name, grayscale, CMYK).
* houses: ``Houses-dataset-master/Houses Dataset/HousesInfo.txt`` (bedrooms
  bathrooms area zipcode price) and ``N_{bathroom,bedroom,frontal,kitchen}.jpg``.
  The price depends on the attributes, on the zip code and on a hidden
  "quality" that only the photos show.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.config import HOUSE_ROOMS, DemoConfig
from pipeline.data.formats import HOUSES_INFO, PETS_ROOT

log = logging.getLogger(__name__)

HOUSES_ROOT = "Houses-dataset-master/Houses Dataset"

# Cats: lighter, warmer fur and pointed ears; dogs: darker fur and floppy ears.
_FUR = {"Cat": ((200, 130, 60), (150, 150, 150), (230, 200, 150)), "Dog": ((110, 70, 40), (60, 50, 45), (170, 120, 80))}
# (zip code, base price per square foot, how many demo houses per 160)
_ZIPS = ((92276, 95.0, 52), (93446, 210.0, 46), (85255, 320.0, 38))
_RARE_ZIPS = (94501, 60016, 92880, 91901, 93510, 81524, 94531, 92677, 93111, 95220, 98021, 96019)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    base = rng.integers(40, 220, size=3)
    noise = rng.normal(0, 18, size=(h, w, 3))
    ramp = np.linspace(-25, 25, w)[None, :, None] * rng.choice([-1, 1])
    arr = np.clip(base + noise + ramp, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def pet_image(rng: np.random.Generator, label: str) -> Image.Image:
    """Draw one animal: a furry head with ears whose shape and colour depend on ``label``."""
    w, h = (int(v) for v in rng.integers(72, 129, size=2))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    fur = np.array(_FUR[label][rng.integers(len(_FUR[label]))]) + rng.integers(-25, 26, size=3)
    fur_t = tuple(int(v) for v in np.clip(fur, 0, 255))
    r = min(w, h) * rng.uniform(0.22, 0.32)
    cx, cy = w * rng.uniform(0.38, 0.62), h * rng.uniform(0.45, 0.62)
    if label == "Cat":  # pointed ears above the head
        for side in (-1, 1):
            x = cx + side * r * 0.6
            draw.polygon(
                [(x - r * 0.35, cy - r * 0.6), (x + r * 0.35, cy - r * 0.6), (x + side * r * 0.1, cy - r * 1.45)], fill=fur_t
            )
    else:  # long floppy ears hanging at the sides
        for side in (-1, 1):
            x = cx + side * r * 0.95
            draw.ellipse([x - r * 0.3, cy - r * 0.5, x + r * 0.3, cy + r * 0.9], fill=tuple(max(0, v - 30) for v in fur_t))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fur_t)
    for side in (-1, 1):  # eyes
        ex, ey, er = cx + side * r * 0.38, cy - r * 0.15, r * 0.13
        draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(20, 20, 20))
    snout = (cx, cy + r * 0.35)
    sr = r * (0.12 if label == "Cat" else 0.28)
    draw.ellipse([snout[0] - sr, snout[1] - sr * 0.8, snout[0] + sr, snout[1] + sr * 0.8], fill=(40, 25, 25))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def write_pets(root: Path, cfg: DemoConfig) -> int:
    """Write the demo PetImages tree under ``root``; return the number of files."""
    rng = np.random.default_rng(cfg.seed)
    count = 0
    for label, n in cfg.pets.items():
        folder = root / PETS_ROOT / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{i}.jpg").write_bytes(_jpeg(pet_image(rng, label), int(rng.integers(75, 95))))
            count += 1
    return count + _write_pet_defects(root / PETS_ROOT, rng)


def _write_pet_defects(root: Path, rng: np.random.Generator) -> int:
    """Plant the real archive's kinds of defects (rejected) and oddities (accepted with a warning)."""
    cat, dog = pet_image(rng, "Cat"), pet_image(rng, "Dog")
    good = _jpeg(dog)
    png = io.BytesIO()
    cat.save(png, "PNG")
    defects = {
        "Cat/666.jpg": b"",  # zero-byte, as in the real archive
        "Dog/11702.jpg": b"",
        "Cat/Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(rng.integers(0, 256, 4088, dtype=np.uint8)),
        "Dog/Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(rng.integers(0, 256, 4088, dtype=np.uint8)),
        "Dog/20004.jpg": good[: len(good) // 2],  # truncated
        "Cat/20009.jpg": b"<html><body>404 Not Found</body></html>\n",
        "Cat/20001.jpg": png.getvalue(),  # PNG behind a .jpg name
        "Dog/20006.jpg": _jpeg(dog.convert("L")),  # grayscale
        "Cat/20007.jpg": _jpeg(cat.convert("CMYK")),  # CMYK
    }
    for rel, data in defects.items():
        (root / rel).write_bytes(data)
    return len(defects)


def _room_photo(rng: np.random.Generator, room: str, quality: float, area: float, size: int) -> Image.Image:
    """One photo: the room shows in its shapes, the house's hidden quality in light and window size.

    The background colour is random, so telling rooms apart (the pretrain
    stage's source task) takes shapes: round fixtures in bathrooms, a bed in
    bedrooms, cabinets and burners in kitchens, a triangular roof in front.
    """
    light = 0.55 + 0.45 * quality
    base = rng.uniform(90, 230, size=3) * light
    arr = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    u = lambda lo, hi: float(rng.uniform(lo, hi)) * size  # noqa: E731 - a position or length in pixels
    ink = tuple(int(v) for v in rng.integers(20, 120, size=3))
    if room == "frontal":  # the house: width grows with the area, roof colour with quality
        hw = size * min(0.45, 0.18 + area / 20000)
        cx = u(0.4, 0.6)
        x0, x1, y0, y1 = cx - hw, cx + hw, u(0.42, 0.5), u(0.85, 0.95)
        draw.rectangle([x0, y0, x1, y1], fill=(int(200 * light), int(190 * light), int(170 * light)))
        roof = (int(60 + 150 * quality), int(40 + 30 * quality), 40)
        draw.polygon([(x0 - 4, y0), (x1 + 4, y0), (cx, u(0.12, 0.25))], fill=roof)
        draw.rectangle([cx - 4, y1 - 14, cx + 4, y1], fill=(60, 40, 30))
        return img
    win = size * (0.12 + 0.2 * quality)  # better houses get bigger windows
    wx = u(0.05, 0.6)
    draw.rectangle([wx, size * 0.08, wx + win, size * 0.08 + win], fill=(235, 240, 255))
    if room == "bathroom":  # a tub and a round mirror
        draw.ellipse([u(0.05, 0.3), u(0.55, 0.65), u(0.7, 0.95), u(0.8, 0.95)], fill=(240, 240, 245), outline=ink, width=2)
        mx, my, mr = u(0.3, 0.7), u(0.3, 0.45), u(0.07, 0.12)
        draw.ellipse([mx - mr, my - mr, mx + mr, my + mr], fill=(200, 220, 235), outline=ink, width=2)
    elif room == "bedroom":  # a bed with a pillow
        bx, by = u(0.05, 0.35), u(0.5, 0.6)
        draw.rectangle([bx, by, bx + u(0.5, 0.6), by + u(0.3, 0.38)], fill=ink)
        draw.rectangle([bx + size * 0.03, by + size * 0.03, bx + u(0.15, 0.22), by + u(0.1, 0.14)], fill=(235, 235, 225))
    else:  # kitchen: a row of cabinets and four burners
        top = u(0.55, 0.65)
        for k in range(4):
            draw.rectangle(
                [size * (0.05 + 0.23 * k), top, size * (0.05 + 0.23 * k) + size * 0.2, top + size * 0.3], outline=ink, width=2
            )
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            x, y = size * (0.55 + 0.15 * dx), size * (0.3 + 0.12 * dy)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=ink)
    return img


def write_houses(root: Path, cfg: DemoConfig, photo_size: int = 64) -> int:
    """Write the demo Houses dataset under ``root``; return the number of files."""
    rng = np.random.default_rng(cfg.seed + 1)
    photo_rng = np.random.default_rng([cfg.seed, 2])  # its own stream: drawing photos leaves the table unchanged
    folder = root / HOUSES_ROOT
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([z[2] for z in _ZIPS] + [24 / len(_RARE_ZIPS)] * len(_RARE_ZIPS), dtype=float)
    zips = [(z, p) for z, p, _ in _ZIPS] + [(z, float(rng.uniform(80, 300))) for z in _RARE_ZIPS]
    lines = []
    for house in range(1, cfg.houses + 1):
        zipcode, per_sqft = zips[rng.choice(len(zips), p=weights / weights.sum())]
        bedrooms = int(rng.integers(1, 7))
        bathrooms = float(rng.choice([1, 1.5, 2, 2.5, 3, 3.5, 4]))
        area = int(np.clip(rng.normal(600 + 450 * bedrooms, 300), 500, 6000))
        quality = float(rng.uniform(0, 1))
        price = per_sqft * area * (0.6 + 0.8 * quality) * (1 + 0.04 * bathrooms) * math.exp(rng.normal(0, 0.05))
        lines.append(f"{bedrooms} {bathrooms:g} {area} {zipcode} {int(round(price, -2))}")
        for room in HOUSE_ROOMS:
            img = _room_photo(photo_rng, room, quality, area, photo_size)
            (folder / f"{house}_{room}.jpg").write_bytes(_jpeg(img))
    (folder / HOUSES_INFO).write_text("\n".join(lines) + "\n")
    (root / "Houses-dataset-master" / "README.md").write_text("Demo stand-in for the Houses dataset (Ahmed & Moustafa, 2016).\n")
    return 4 * cfg.houses + 2
