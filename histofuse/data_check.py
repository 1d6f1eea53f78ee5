"""histofuse data check: every image a recipe would use, scanned for what would skip, mislead or leak."""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import numpy as np

from histofuse.data.decode import MAX_PIXELS, decode_buffer, header_pixels
from histofuse.errors import ImageDecodeError

# Pillow modes that are not plain 8-bit RGB: decoded and converted correctly, but worth knowing about.
UNUSUAL_MODES = {
    "1": "1-bit", "L": "8-bit greyscale", "LA": "greyscale + alpha", "P": "palette", "PA": "palette + alpha",
    "RGBA": "RGB + alpha (composited onto white)", "I;16": "16-bit greyscale", "I;16B": "16-bit greyscale",
    "I": "32-bit integer", "F": "32-bit float", "CMYK": "CMYK", "YCbCr": "YCbCr", "RGBX": "RGB + padding",
}
MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP"}

# Kinds that make the run skip a file (counted against data.max_failed_fraction).
UNREADABLE = ("missing", "not a file", "empty", "truncated or corrupt", "not an image", "too large")


@dataclass
class Finding:
    path: str
    split: str
    kind: str
    detail: str


def check_images(frame: pd.DataFrame, max_pixels: int = MAX_PIXELS, progress=None) -> list[Finding]:
    """Findings for the images in ``frame`` (columns path, split): unreadable ones by kind, unusual formats,
    and files with identical bytes under two names (within a split, or across splits: leakage)."""
    findings: list[Finding] = []
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for path, split in zip(frame["path"], frame["split"]):
        finding, digest = _check_one(Path(path), split, max_pixels)
        if finding is not None:
            findings.append(finding)
        if digest is not None:
            by_hash[digest].append((str(path), split))
        if progress is not None:
            progress()
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        splits = sorted({s for _, s in copies})
        kind = "duplicate across splits" if len(splits) > 1 else "duplicate"
        names = ", ".join(p for p, _ in copies)
        for path, split in copies:
            findings.append(Finding(path, split, kind, f"same bytes as {len(copies) - 1} other file(s) in {', '.join(splits)}: {names}"))
    return findings


def _check_one(path: Path, split: str, max_pixels: int) -> tuple[Finding | None, str | None]:
    if not path.exists():
        return Finding(str(path), split, "missing", "no such file (moved, or a broken link)"), None
    if not path.is_file():
        return Finding(str(path), split, "not a file", "a folder (or device) named like an image"), None
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Finding(str(path), split, "missing", f"cannot read: {exc.strerror or exc}"), None
    if not data:
        return Finding(str(path), split, "empty", "0 bytes"), None
    digest = hashlib.sha256(data).hexdigest()
    claimed = header_pixels(np.frombuffer(data, np.uint8))
    if claimed is not None and claimed[0] > max_pixels:
        return Finding(str(path), split, "too large", f"header claims {claimed[1]} pixels (> {max_pixels:,}): a decompression bomb or a slide, not a tile"), digest
    try:
        decode_buffer(data, str(path), max_pixels)
    except ImageDecodeError as exc:
        known = next((name for magic, name in MAGIC.items() if data.startswith(magic)), None)
        if known:
            return Finding(str(path), split, "truncated or corrupt", f"a {known} file that does not decode ({exc.reason})"), digest
        return Finding(str(path), split, "not an image", f"no image signature ({data[:12]!r}...)"), digest
    mode = _mode(data)
    if mode in UNUSUAL_MODES:
        return Finding(str(path), split, "unusual depth or channels", f"{UNUSUAL_MODES[mode]}: converted to 8-bit RGB"), digest
    return None, digest


def _mode(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.mode
    except Exception:
        return None


def verdict(findings: list[Finding], total: int, max_failed_fraction: float) -> tuple[bool, str]:
    """Whether training is safe: no image shared across splits, and no more unreadable images than the run accepts."""
    unreadable = {f.path for f in findings if f.kind in UNREADABLE}
    leaks = {f.path for f in findings if f.kind == "duplicate across splits"}
    problems = []
    if leaks:
        problems.append(f"{len(leaks)} files have identical copies in another split or set (leakage between them)")
    if len(unreadable) > max_failed_fraction * total:
        problems.append(
            f"{len(unreadable)} of {total} images are unreadable, more than data.max_failed_fraction = {max_failed_fraction:g}"
        )
    if problems:
        return False, "NOT safe to train: " + "; ".join(problems)
    skipped = f"; {len(unreadable)} unreadable images will be skipped and reported" if unreadable else ""
    return True, f"safe to train: {total} images checked{skipped}"
