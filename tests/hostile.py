"""Hostile inputs for the fault-tolerance tests: images that are tiny on disk and huge once decoded.

:func:`blank_png` writes a PNG row by row with zlib, so the test process never
holds the decoded image (Pillow would need all of it in memory to save one).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_COLOUR_TYPE = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}  # mode -> (PNG colour type, bytes per pixel)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(width: int, height: int, mode: str) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[mode][0], 0, 0, 0))


def header_only_png(width: int, height: int, mode: str = "RGBA") -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixel data: decoding it fails, its header opens."""
    return b"\x89PNG\r\n\x1a\n" + _ihdr(width, height, mode) + _chunk(b"IEND", b"")


def blank_png(path: Path, width: int, height: int, mode: str = "RGBA") -> Path:
    """An all-zero ``width`` x ``height`` 8-bit PNG at ``path`` (13000² RGBA: about 660 KB), written in constant memory."""
    bands = _COLOUR_TYPE[mode][1]
    row = b"\x00" * (1 + width * bands)  # filter byte 0 (None), then the pixels
    packer = zlib.compressobj(9)
    idat = bytearray()
    for _ in range(height):
        idat += packer.compress(row)
    idat += packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _ihdr(width, height, mode) + _chunk(b"IDAT", bytes(idat)) + _chunk(b"IEND", b""))
    return path
