"""Tests for pipeline.data.images: the decoding checks, RGB conversion, resizing and the 2x2 montage."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import ImageLimits, ImageTooLarge, MemoryBudget, inspect, load, montage, peak_bytes, resize, to_rgb
from tests.hostile import header_only_png

LIMITS = ImageLimits(min_side=16, max_side=8000, max_pixels=40_000_000)


def photo(w: int = 48, h: int = 40, mode: str = "RGB", seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def good_jpeg() -> bytes:
    return encode(photo(), quality=90)


def without_app0(data: bytes) -> bytes:
    """Drop the JFIF APP0 segment that follows SOI, so that the next segment (APP1 Exif) comes first."""
    assert data[2:4] == b"\xff\xe0"
    length = int.from_bytes(data[4:6], "big")
    return data[:2] + data[4 + length :]


def exif_only_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Acme"  # Make
    return without_app0(encode(photo(), exif=exif))


def zeros_before_eoi() -> bytes:
    data = good_jpeg()
    assert data.endswith(b"\xff\xd9") and data[-3] != 0
    return data[:-2] + bytes(40) + data[-2:]


def check(tmp_path: Path, name: str, data: bytes, limits: ImageLimits = LIMITS) -> dict:
    """Inspect ``data`` written as ``tmp_path/name``; the file must be left byte for byte as it was."""
    path = tmp_path / name
    path.write_bytes(data)
    row = inspect(path, f"PetImages/Cat/{name}", limits)
    assert path.read_bytes() == data
    assert row["path"] == f"PetImages/Cat/{name}"
    assert row["bytes"] == len(data)
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    return row


# --------------------------------------------------------------------------- inspect


def test_good_rgb_jpeg_is_accepted_without_warning(tmp_path: Path) -> None:
    row = check(tmp_path, "1.jpg", good_jpeg())
    assert row["status"] == "accepted"
    assert row["reason"] is None and row["warning"] is None
    assert (row["format"], row["mode"], row["width"], row["height"]) == ("JPEG", "RGB", 48, 40)


def test_good_png_named_png_has_no_warning(tmp_path: Path) -> None:
    row = check(tmp_path, "1.png", encode(photo(), "PNG"))
    assert (row["status"], row["warning"], row["format"]) == ("accepted", None, "PNG")


def truncated() -> bytes:
    data = good_jpeg()
    return data[: len(data) // 2]


REJECTED: list[tuple[str, Callable[[], bytes], ImageLimits, str]] = [
    ("666.jpg", lambda: b"", LIMITS, "empty file (0 bytes)"),
    ("20009.jpg", lambda: b"<html><body>404 Not Found</body></html>\n", LIMITS, "not an image: an HTML/XML page"),
    ("page.jpg", lambda: b"  \n<!DOCTYPE html><p>moved</p>", LIMITS, "not an image: an HTML/XML page"),
    (
        "Thumbs.db",
        lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 4,
        LIMITS,
        "not an image: an OLE2 compound file (e.g. Windows Thumbs.db)",
    ),
    (
        "noise.jpg",
        lambda: b"\x01\x02\x03\x04garbage" * 10,
        LIMITS,
        "not an image: unrecognised data starting with 0102030467617262",
    ),
    ("20004.jpg", truncated, LIMITS, "corrupt or truncated image data: image file is truncated"),
    ("small.jpg", lambda: encode(photo(10, 40)), LIMITS, "too small: 10x40, shorter side under min_side=16"),
    (
        "bomb.jpg",
        lambda: encode(photo(20, 20)),
        ImageLimits(1, 8000, 100),
        "too large: 20x20 = 400 pixels exceeds max_pixels=100",
    ),
    ("wide.jpg", lambda: encode(photo(40, 20)), ImageLimits(16, 30, 10_000), "too large: 40x20, longer side over max_side=30"),
    # no pixel data at all: "too large", not "truncated", shows the header alone decided (nothing was decoded)
    (
        "bomb.png",
        lambda: header_only_png(13000, 13000),
        LIMITS,
        "too large: 13000x13000 = 169000000 pixels exceeds max_pixels=40000000",
    ),
    ("tall.png", lambda: header_only_png(100, 9000), LIMITS, "too large: 100x9000, longer side over max_side=8000"),
]


@pytest.mark.parametrize(("name", "make", "limits", "reason"), REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected(tmp_path: Path, name: str, make: Callable[[], bytes], limits: ImageLimits, reason: str) -> None:
    row = check(tmp_path, name, make(), limits)
    assert row["status"] == "rejected"
    assert row["reason"].startswith(reason), row["reason"]
    assert row["warning"] is None


ACCEPTED_WITH_WARNING: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("20001.jpg", lambda: encode(photo(), "PNG"), "RGB", "PNG data behind a .jpg name"),
    ("20006.jpg", lambda: encode(photo(mode="L")), "L", "grayscale (mode L), converted to RGB"),
    (
        "20007.jpg",
        lambda: encode(photo(mode="CMYK")),
        "CMYK",
        "CMYK (mode CMYK), converted to RGB; no JFIF header (marker ffee first)",
    ),
    ("rgba.png", lambda: encode(photo(mode="RGBA"), "PNG"), "RGBA", "alpha channel (mode RGBA), converted to RGB"),
    ("exif.jpg", exif_only_jpeg, "RGB", "no JFIF header (Exif (APP1) first)"),
    ("trailing.jpg", lambda: good_jpeg() + b"trailer", "RGB", "7 trailing bytes after the EOI marker"),
    ("zeros.jpg", zeros_before_eoi, "RGB", "40 extraneous zero bytes before the EOI marker"),
]


@pytest.mark.parametrize(("name", "make", "mode", "warning"), ACCEPTED_WITH_WARNING, ids=[a[0] for a in ACCEPTED_WITH_WARNING])
def test_accepted_with_warning(tmp_path: Path, name: str, make: Callable[[], bytes], mode: str, warning: str) -> None:
    row = check(tmp_path, name, make())
    assert row["status"] == "accepted"
    assert row["reason"] is None
    assert row["mode"] == mode
    assert row["warning"] == warning


def test_a_few_zero_bytes_are_not_flagged(tmp_path: Path) -> None:
    data = good_jpeg()
    row = check(tmp_path, "pad.jpg", data[:-2] + bytes(3) + data[-2:])
    assert row["warning"] is None


# --------------------------------------------------------------------------- to_rgb


def pixel(img: Image.Image) -> tuple[int, ...]:
    return tuple(np.asarray(img)[0, 0].tolist())


def test_to_rgb_keeps_rgb_as_is() -> None:
    img = photo()
    assert to_rgb(img) is img


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),  # transparent: the white background
        (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), (255, 0, 0)),  # opaque: the colour
        (Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ],
    ids=["rgba-clear", "rgba-opaque", "la-clear", "l", "cmyk-white", "cmyk-red"],
)
def test_to_rgb(img: Image.Image, expected: tuple[int, int, int]) -> None:
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    assert pixel(out) == expected


def test_to_rgb_palette_transparency_becomes_white() -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 1
    assert pixel(to_rgb(img)) == (255, 255, 255)
    del img.info["transparency"]
    assert pixel(to_rgb(img)) == (255, 0, 0)


# --------------------------------------------------------------------------- bounded decoding


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, from 89 MP
def test_load_refuses_an_image_over_max_pixels_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(header_only_png(13000, 13000))  # declares 169 MP, holds no pixels
    with pytest.raises(ImageTooLarge, match="13000x13000 = 169000000 pixels exceeds max_pixels=40000000"):
        load(path, 32, max_pixels=40_000_000)
    with pytest.raises(OSError):  # the control: without the cap, the decode is attempted (and finds no data)
        load(path, 32, max_pixels=None)


def test_peak_bytes_counts_the_rgb_conversion() -> None:
    # Pillow holds RGB as 4 bytes a pixel; RGBA adds a white background and the composite; L adds its RGB copy
    assert peak_bytes(Image.new("RGB", (10, 20))) == 10 * 20 * 4
    assert peak_bytes(Image.new("RGBA", (10, 20))) == 10 * 20 * 4 * 3
    assert peak_bytes(Image.new("L", (10, 20))) == 10 * 20 * (1 + 4)


def test_memory_budget_bounds_what_concurrent_holds_take() -> None:
    """Holds never exceed the budget together; one larger than the budget runs, alone."""
    budget = MemoryBudget(100)
    live, seen, alone, lock = [0], [0], [], threading.Lock()

    def work(n: int) -> None:
        with budget.hold(n):
            with lock:
                live[0] += n
                if n > 100:
                    alone.append(live[0] == n)
                else:
                    seen[0] = max(seen[0], live[0])
            time.sleep(0.005)
            with lock:
                live[0] -= n

    sizes = [60, 30, 30, 250, 10, 90, 40] * 4
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, sizes))
    assert live[0] == 0 and alone == [True] * 4
    assert 60 <= seen[0] <= 100  # holds did run together, within the budget


# --------------------------------------------------------------------------- resize


def stripes() -> Image.Image:
    """60x20: red, green and blue thirds."""
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20, 0] = arr[:, 20:40, 1] = arr[:, 40:, 2] = 255
    return Image.fromarray(arr)


def test_resize_squash_keeps_everything() -> None:
    out = np.asarray(resize(stripes(), 15, "squash"))
    assert out.shape == (15, 15, 3)
    assert out[:, 0].tolist() == [[255, 0, 0]] * 15
    assert out[:, 7].tolist() == [[0, 255, 0]] * 15
    assert out[:, -1].tolist() == [[0, 0, 255]] * 15


def test_resize_crop_keeps_the_centre() -> None:
    out = np.asarray(resize(stripes(), 16, "crop")).astype(int)
    assert out.shape == (16, 16, 3)
    assert (out[..., 1] > 200).all() and (out[..., 0] < 60).all() and (out[..., 2] < 60).all()


def test_resize_pad_adds_black_bars() -> None:
    out = np.asarray(resize(Image.new("RGB", (40, 20), (255, 255, 255)), 20, "pad"))
    assert out.shape == (20, 20, 3)
    column = out[:, 10, 0].tolist()
    assert column == [0] * 5 + [255] * 10 + [0] * 5


def test_resize_unknown_mode() -> None:
    with pytest.raises(ValueError, match="stretch"):
        resize(stripes(), 16, "stretch")


# --------------------------------------------------------------------------- load and montage


def test_load_converts_and_resizes(tmp_path: Path) -> None:
    path = tmp_path / "gray.jpg"
    Image.new("L", (30, 50), 128).save(path, "JPEG")
    arr = load(path, 24)
    assert arr.shape == (24, 24, 3) and arr.dtype == np.uint8
    assert np.abs(arr.astype(int) - 128).max() <= 2


def test_load_matches_resize_of_rgb(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    img = photo(50, 30)
    img.save(path)
    for mode in ("squash", "crop", "pad"):
        np.testing.assert_array_equal(load(path, 20, mode), np.asarray(resize(img, 20, mode)))


def test_montage_layout() -> None:
    colours = [(10, 0, 0), (0, 20, 0), (0, 0, 30), (40, 40, 40)]
    photos = [np.full((8, 8, 3), c, np.uint8) for c in colours]
    out = montage(photos)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out[:8, :8] == colours[0]).all()  # top left: photo 0
    assert (out[:8, 8:] == colours[1]).all()  # top right: photo 1
    assert (out[8:, :8] == colours[3]).all()  # bottom left: photo 3
    assert (out[8:, 8:] == colours[2]).all()  # bottom right: photo 2
