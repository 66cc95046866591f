"""Decoding checks for one image file, shared by the validate stage and its tests.

Pure functions on bytes: no params, no paths beyond the one being read.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

_EXPECTED_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP"}
_MODE_NOTES = {
    "L": "grayscale (mode L)",
    "LA": "grayscale with alpha (mode LA)",
    "CMYK": "CMYK (mode CMYK)",
    "P": "palette colours (mode P)",
    "RGBA": "alpha channel (mode RGBA)",
    "1": "black and white (mode 1)",
    "I;16": "16-bit grayscale (mode I;16)",
}
# Bytes per pixel of a decoded image in Pillow's memory: RGB is stored as 4
# bytes (RGBX), like RGBA, CMYK and the 32-bit modes; LA and PA are 4 as well.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
# What concurrent decodes may hold together (see MemoryBudget): a few dozen
# ordinary photos, or one image of up to ~40 MP with its RGB conversion.
DECODE_BUDGET = 512 * 2**20
# Pillow does not expose libjpeg's "N extraneous bytes before marker 0xd9"
# warning. A heuristic stands in: encoders pad the last entropy-coded byte
# with 1-bits, and a flat image coded with short all-zero codes yields at most
# a few zero bytes, so a longer zero run just before EOI is skipped padding.
_MIN_ZERO_RUN = 16


class ImageTooLarge(ValueError):
    """An image refused from its header: more pixels than allowed."""


@dataclass(frozen=True)
class ImageLimits:
    """Acceptance limits; ``max_pixels`` guards against decompression bombs."""

    min_side: int
    max_side: int
    max_pixels: int


class MemoryBudget:
    """Bytes that concurrent decodes may hold together, granted first come, first served.

    A decode asks for its estimated peak (:func:`peak_bytes`, known from the
    header) and waits until it fits beside the decodes in flight; one larger
    than the whole budget waits until it can run alone, so it is still decoded.
    Threads only: a process has its own budget.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._used = 0
        self._next = 0  # tickets keep the order of arrival: a large decode is not starved by small ones
        self._serving = 0

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Block until ``n`` bytes fit (or nothing else is held), hold them for the ``with`` block."""
        with self._cond:
            ticket = self._next
            self._next += 1
            self._cond.wait_for(lambda: self._serving == ticket and (self._used == 0 or self._used + n <= self.limit))
            self._serving += 1
            self._used += n
            self._cond.notify_all()  # the next ticket may fit too
        try:
            yield
        finally:
            with self._cond:
                self._used -= n
                self._cond.notify_all()


def return_freed_images_to_the_os(threshold: int = 2**20) -> bool:
    """Have glibc give large freed blocks (decoded images) back to the OS at once; False where not glibc.

    glibc raises its mmap threshold after the first large free, so later
    16 MB Pillow blocks come from per-thread heaps that keep them: eight
    36 MP RGBA images decoded one at a time on two threads left 775 MB
    resident where one decode needs 413 MB (measured). A fixed threshold
    keeps the resident memory at what :class:`MemoryBudget` allows.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD; 1 on success
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator, its behaviour
        log.debug("mallopt unavailable; freed image memory may stay resident")
        return False


def decoded_bytes(im: Image.Image) -> int:
    """Bytes the pixels of ``im`` take once loaded, from its header (nothing decoded)."""
    w, h = im.size
    return w * h * _PIXEL_BYTES.get(im.mode, 4)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def peak_bytes(im: Image.Image) -> int:
    """Upper estimate of the memory :func:`load` needs for ``im`` at once: the decoded pixels and :func:`to_rgb`'s copies."""
    w, h = im.size
    if im.mode == "RGB":
        copies = 0
    elif _has_alpha(im):  # RGBA copy (unless already RGBA), white background, composite; then the RGB result
        copies = 3 if im.mode != "RGBA" else 2
    else:
        copies = 1
    return decoded_bytes(im) + copies * w * h * 4


def too_large(im: Image.Image, max_pixels: int) -> str | None:
    """Why ``im`` is refused before decoding (its header says over ``max_pixels``), or None."""
    w, h = im.size
    if w * h > max_pixels:
        return f"too large: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}"
    return None


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<html", b"<!doctype html", b"<?xml", b"<body")) or b"<html" in head:
        return "an HTML/XML page"
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "an OLE2 compound file (e.g. Windows Thumbs.db)"
    return f"unrecognised data starting with {data[:8].hex()}"


def _jpeg_notes(data: bytes) -> list[str]:
    notes = []
    if data[2:4] != b"\xff\xe0" or data[6:11] != b"JFIF\x00":
        app = "Exif (APP1)" if data[2:4] == b"\xff\xe1" else f"marker {data[2:4].hex()}"
        notes.append(f"no JFIF header ({app} first)")
    eoi = data.rfind(b"\xff\xd9")
    if eoi < 0:
        notes.append("no EOI marker")
        return notes
    if len(data) > eoi + 2:
        notes.append(f"{len(data) - eoi - 2} trailing bytes after the EOI marker")
    body = data[:eoi]
    zeros = len(body) - len(body.rstrip(b"\x00"))
    if zeros >= _MIN_ZERO_RUN:
        notes.append(f"{zeros} extraneous zero bytes before the EOI marker")
    return notes


def _decode(data: bytes, suffix: str, limits: ImageLimits, row: dict[str, Any]) -> tuple[str | None, list[str]]:
    """Fully decode ``data``; fill ``row``; return (rejection reason or None, warnings)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                row.update(format=im.format, mode=im.mode, width=w, height=h)
                # refused from the header, before a byte is decoded: memory stays bounded on hostile files
                if reason := too_large(im, limits.max_pixels):
                    return reason, []
                if max(w, h) > limits.max_side:
                    return f"too large: {w}x{h}, longer side over max_side={limits.max_side}", []
                im.load()
                frames = getattr(im, "n_frames", 1)
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}", []
    except UnidentifiedImageError:
        return f"not an image: {_sniff(data)}", []
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"corrupt or truncated image data: {exc}", []
    if min(w, h) < limits.min_side:
        return f"too small: {w}x{h}, shorter side under min_side={limits.min_side}", []
    notes = []
    expected = _EXPECTED_FORMAT.get(suffix.lower())
    if expected and row["format"] != expected:
        notes.append(f"{row['format']} data behind a {suffix} name")
    if row["mode"] != "RGB":
        notes.append(f"{_MODE_NOTES.get(row['mode'], 'mode ' + row['mode'])}, converted to RGB")
    if frames > 1:
        notes.append(f"{frames} frames, the first is used")
    if row["format"] == "JPEG":
        notes += _jpeg_notes(data)
    return None, notes


def inspect(path: Path, rel: str, limits: ImageLimits) -> dict[str, Any]:
    """Read and fully decode one file; return its manifest row.

    ``status`` is ``accepted`` or ``rejected``; ``reason`` says why a file was
    rejected and ``warning`` what is unusual about an accepted one. The file
    is only read, never modified.
    """
    data = path.read_bytes()
    row: dict[str, Any] = {
        "path": rel,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": None,
        "mode": None,
        "width": None,
        "height": None,
    }
    if not data:
        reason, notes = "empty file (0 bytes)", []
    else:
        reason, notes = _decode(data, path.suffix, limits, row)
    row.update(status="rejected" if reason else "accepted", reason=reason, warning="; ".join(notes) or None)
    return row


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any decodable mode to RGB (alpha composited on white, CMYK through Pillow's conversion)."""
    if im.mode == "RGB":
        return im
    if _has_alpha(im):
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")  # no copy of an RGBA image: same pixels, less memory
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        composite = Image.alpha_composite(background, rgba)
        del background, rgba  # freed before the RGB copy: the peak is what peak_bytes estimates
        return composite.convert("RGB")
    return im.convert("RGB")


def resize(im: Image.Image, size: int, mode: str) -> Image.Image:
    """Square ``size`` x ``size``: ``squash`` (the seed's target_size), ``crop`` (centre) or ``pad`` (black bars)."""
    box = (size, size)
    if mode == "squash":
        return im.resize(box, Image.Resampling.BILINEAR)
    if mode == "crop":
        return ImageOps.fit(im, box, Image.Resampling.BILINEAR)
    if mode == "pad":
        return ImageOps.pad(im, box, Image.Resampling.BILINEAR, color=(0, 0, 0))
    raise ValueError(f"unknown resize mode {mode!r} (squash, crop, pad)")


def load(
    path: Path, size: int, mode: str = "squash", max_pixels: int | None = None, budget: MemoryBudget | None = None
) -> np.ndarray:
    """Decode ``path``, convert to RGB and resize: the one image preprocessing of training and serving.

    With ``max_pixels`` an image whose header says it is larger raises
    :class:`ImageTooLarge` before anything is decoded; with ``budget`` the
    decode waits until its :func:`peak_bytes` fit beside the others in flight.
    """
    with Image.open(path) as im:
        if max_pixels is not None and (reason := too_large(im, max_pixels)):
            raise ImageTooLarge(reason)
        with budget.hold(peak_bytes(im)) if budget else nullcontext():
            return np.asarray(resize(to_rgb(im), size, mode), dtype=np.uint8)


def montage(photos: list[np.ndarray]) -> np.ndarray:
    """Tile 4 equal photos 2x2 as the seed does: [0 1] on top, [3 2] below."""
    a, b, c, d = photos
    return np.concatenate([np.concatenate([a, b], axis=1), np.concatenate([d, c], axis=1)], axis=0)


def load_many(root: Path, rels: list[str], size: int) -> np.ndarray:
    """:func:`load` of every photo, ``[n, size, size, 3]`` uint8, in threads on all cores (Pillow decodes without the GIL)."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda rel: load(root / rel, size), rels)))
