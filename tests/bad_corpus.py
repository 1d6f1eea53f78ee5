"""A generated corpus of hostile image files, and a BreaKHis tree seeded with it.

Each item: (file name suffix, writer, expected) where expected is None for a file that must decode to the
given pixels, or a substring of the reason it is refused.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def giant_header_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG signature and header claiming width x height pixels, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b"")


def tile(seed: int = 0, size=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_bad(folder: Path, stem: str) -> dict[str, str]:
    """Files that must be refused: {path: expected reason substring}."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png = cv2.imencode(".png", tile(1))[1].tobytes()
    good_tif = cv2.imencode(".tif", tile(2))[1].tobytes()
    items = {
        "empty": (b"", "file is empty"),
        "truncated_png": (good_png[: len(good_png) // 3], "not a decodable image"),
        "truncated_tif": (good_tif[:200], "not a decodable image"),
        "text_named_png": (b"patient notes, not an image\n", "not a decodable image"),
        "giant_header": (giant_header_png(), "header claims 900,000,000 pixels"),
    }
    written = {}
    for i, (name, (data, reason)) in enumerate(items.items()):
        path = folder / f"{stem}-{901 + i}.png"
        path.write_bytes(data)
        written[str(path)] = reason
    return written


def write_unusual(folder: Path, stem: str) -> dict[str, np.ndarray]:
    """Files that must decode, and the RGB pixels they must decode to: {path: expected array}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}

    def save(index: int, writer, pixels: np.ndarray) -> None:
        path = folder / f"{stem}-{950 + index}.png"
        writer(path)
        expected[str(path)] = pixels

    bits = np.zeros((8, 8), bool)
    bits[::2] = True
    save(0, lambda p: Image.fromarray(bits).convert("1").save(p), np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, 2))
    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    save(1, lambda p: cv2.imwrite(str(p), grey16), np.repeat(((grey16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, 2))
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    save(2, lambda p: cv2.imwrite(str(p), grey), np.repeat(grey[..., None], 3, 2))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent red: white after compositing
    rgba[:4, :, 3] = 255  # top half opaque red
    white_bottom = np.full((8, 8, 3), 255, np.uint8)
    white_bottom[:4] = (200, 0, 0)
    save(3, lambda p: Image.fromarray(rgba, "RGBA").save(p), white_bottom)
    palette_index = (np.arange(64).reshape(8, 8) % 4).astype(np.uint8)
    colours = [(10, 20, 30), (200, 100, 50), (0, 255, 0), (250, 250, 250)]

    def palette_png(path):
        image = Image.fromarray(palette_index, "P")
        image.putpalette([c for rgb in colours for c in rgb] + [0] * (768 - 12))
        image.save(path)

    save(4, palette_png, np.array(colours, np.uint8)[palette_index])
    return expected


def seed_breakhis_tree(root: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Add bad and unusual files, with BreaKHis names, beside real tiles of two patients; plus traps for scanners."""
    slides = sorted(root.rglob("*-001.png"))
    benign = next(p for p in slides if "/benign/" in str(p))
    malignant = next(p for p in slides if "/malignant/" in str(p))
    bad = write_bad(benign.parent, benign.name[: -len("-001.png")])
    unusual = write_unusual(malignant.parent, malignant.name[: -len("-001.png")])
    (benign.parent / benign.name.replace("-001.png", "-999.png")).mkdir()  # a directory named like an image
    shutil.copy(benign, benign.parent / "copie é 测试.png")  # a unicode name that is not a BreaKHis name
    loop = benign.parent.parent / "loop"
    os.symlink(benign.parent.parent, loop, target_is_directory=True)  # a symlink loop inside the tree
    return bad, unusual
