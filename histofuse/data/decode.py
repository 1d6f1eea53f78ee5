"""One way to turn any image file into RGB uint8 pixels, whatever dataset it came from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from histofuse.errors import ImageDecodeError

# We report undecodable files ourselves, naming the file; OpenCV's own log lines would only add noise.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

# 200 megapixels (about 14 000 x 14 000): far above any histology tile, far below what would exhaust memory.
# OpenCV's own limit (2^30 pixels) would still let a 30 000 x 30 000 header allocate 2.7 GB before failing.
MAX_PIXELS = 200_000_000


def header_pixels(data: np.ndarray) -> tuple[int, str] | None:
    """(pixel count, "W x H") from the file header alone, without decoding; None if Pillow cannot tell."""
    import io
    import re
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's complaints about broken EXIF and the like: OpenCV decides below
            with Image.open(io.BytesIO(data.tobytes())) as image:
                width, height = image.size
                return width * height, f"{width} x {height}"
    except Image.DecompressionBombError as exc:  # Pillow's own, lower limit: it only says how many pixels
        count = int(re.search(r"\((\d+) pixels\)", str(exc)).group(1))
        return count, f"{count:,}"
    except Exception:  # not a format Pillow reads, or a broken header: OpenCV decides below
        return None


def decode_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as an ``(H, W, 3)`` RGB uint8 array.

    Grayscale is replicated to three channels, 16-bit is scaled to 8-bit, and an
    alpha channel is composited onto white (slide background), never dropped blindly.

    Raises:
        ImageDecodeError: the file is missing, empty or not a decodable image.
    """
    path = Path(path)
    try:
        # fromfile + imdecode instead of imread: works for non-ASCII paths too.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageDecodeError(str(path), f"cannot read file ({exc.strerror or exc})") from None
    return decode_buffer(data, str(path), max_pixels)


def decode_buffer(data, where: str = "upload", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Like :func:`decode_image`, for bytes already in memory (an upload); ``where`` names them in errors."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise ImageDecodeError(where, "file is empty")
    claimed = header_pixels(data)
    if claimed is not None and claimed[0] > max_pixels:
        raise ImageDecodeError(
            where, f"its header claims {claimed[1]} pixels, above the limit of {max_pixels:,} (data.max_image_pixels); "
            "refused before decoding"
        )
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        # e.g. a header claiming more pixels than OpenCV's limit (OPENCV_IO_MAX_IMAGE_PIXELS)
        raise ImageDecodeError(where, f"refused by the decoder: {str(exc).strip().splitlines()[-1]}") from None
    if image is None:
        raise ImageDecodeError(where, "not a decodable image (truncated or not an image format OpenCV reads)")
    return to_rgb8(image, where)


def decoded_images(paths):
    """(position, RGB image) for each path that decodes; unreadable files are skipped.

    For streaming passes (stain statistics, baselines) over files the run has
    already checked and reported: one bad file must not stop a fit.
    """
    for position, path in enumerate(paths):
        try:
            yield position, decode_image(path)
        except ImageDecodeError:
            continue


def to_rgb8(image: np.ndarray, where: str = "image") -> np.ndarray:
    """Convert an OpenCV-decoded array (BGR order, any depth, 1-4 channels) to RGB uint8."""
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
        image = image.astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.nan_to_num(image) * (255.0 if image.max(initial=0) <= 1.0 else 1.0), 0, 255)
        image = (image + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(where, f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        rgb = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor((rgb + 0.5).astype(np.uint8), cv2.COLOR_BGR2RGB)
    raise ImageDecodeError(where, f"unsupported number of channels: {channels}")
