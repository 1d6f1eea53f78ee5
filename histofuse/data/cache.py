"""An on-disk cache of decoded, resized images, memory-mapped when read.

An entry is one ``.npy`` file named by the SHA-256 of the source file's bytes and the
resize setting, so a changed file or setting is simply another entry. Entries are
written under a temporary name and renamed into place: a killed build or two
processes building at once never leave a half-written entry where a reader looks.
A per-process index maps (path, size, mtime) to the entry, so a warm epoch reads
no source file at all.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from histofuse.data.decode import MAX_PIXELS, decode_buffer
from histofuse.data.tiles import rescale
from histofuse.errors import ImageDecodeError

VERSION = "1"  # bump when the decoded representation changes


class DecodeCache:
    def __init__(self, folder: Path, resize: int, max_pixels: int = MAX_PIXELS):
        self.folder = Path(folder)
        self.resize = resize
        self.max_pixels = max_pixels
        self.index: dict[tuple[str, int, int, float | None], Path] = {}
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self, path: str, scale: float | None = None) -> np.ndarray:
        """The image at ``path`` decoded and resized (shorter side = ``resize``; by ``scale`` instead when given, to
        the recipe's µm per pixel), from the cache when it is there."""
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise ImageDecodeError(str(path), f"cannot read file ({exc.strerror or exc})") from None
        fingerprint = (str(path), stat.st_size, stat.st_mtime_ns, scale)
        entry = self.index.get(fingerprint)
        if entry is not None:
            try:
                return np.load(entry, mmap_mode="r")
            except (OSError, ValueError):  # removed or damaged since: rebuild below
                self.index.pop(fingerprint, None)
        data = np.fromfile(path, dtype=np.uint8)
        entry = self.folder / f"{self._key(data, scale)}.npy"
        if entry.exists():
            try:
                image = np.load(entry, mmap_mode="r")
                self.index[fingerprint] = entry
                return image
            except (OSError, ValueError):
                pass
        image = decode_buffer(data, str(path), self.max_pixels)
        image = self.shrink(image) if scale is None else rescale(image, scale)
        self._write(entry, image)
        self.index[fingerprint] = entry
        return image

    def _key(self, data: np.ndarray, scale: float | None) -> str:
        digest = hashlib.sha256(data.tobytes())
        setting = f"resize={self.resize}" if scale is None else f"scale={scale:.6g}"
        digest.update(f"|{setting}|v{VERSION}".encode())
        return digest.hexdigest()

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """Shorter side to ``resize`` with area interpolation: what the transforms' first step would do anyway."""
        h, w = image.shape[:2]
        scale = self.resize / min(h, w)
        if scale >= 1:
            return image
        size = (max(self.resize, round(w * scale)), max(self.resize, round(h * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _write(self, entry: Path, image: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".building-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(image))
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "histofuse" / "decoded"


def warm_cache(paths: list[str], folder: Path, resize: int, max_pixels: int, scales: list[float] | None = None) -> DecodeCache:
    """Decode every image into the cache once (each brought to the recipe's µm per pixel by its factor in ``scales``,
    when given); unreadable files are left to the loader to report."""
    from histofuse.reporting import log, progress

    cache = DecodeCache(folder, resize, max_pixels)
    with progress("decode cache", len(paths)) as advance:
        for i, path in enumerate(paths):
            try:
                cache.load(path, None if scales is None else scales[i])
            except ImageDecodeError:
                pass
            advance()
    size = f"shorter side {resize}" if scales is None else "the recipe's scale"
    log.info(f"decode cache: {len(cache.index)} images at {size} in {folder}")
    return cache
