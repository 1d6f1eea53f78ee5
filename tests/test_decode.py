"""Every image kind decodes to RGB uint8 with the expected pixel values; bad files raise a clear error."""

import cv2
import numpy as np
import pytest

from histofuse.data.decode import decode_image
from histofuse.errors import ImageDecodeError


def test_rgb_png_keeps_channel_order(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = decode_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 0, 0]


def test_grayscale_becomes_three_equal_channels(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((3, 3), 77, np.uint8))
    assert decode_image(tmp_path / "g.png")[1, 1].tolist() == [77, 77, 77]


def test_sixteen_bit_tiff_is_scaled_to_eight_bit(tmp_path):
    img = np.zeros((2, 2, 3), np.uint16)
    img[0, 0] = (65535, 32896, 0)  # BGR
    cv2.imwrite(str(tmp_path / "d.tif"), img)
    assert decode_image(tmp_path / "d.tif")[0, 0].tolist() == [0, 128, 255]


def test_alpha_is_composited_onto_white(tmp_path):
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 255  # red
    bgra[0, 0, 3] = 255  # opaque
    bgra[0, 1, 3] = 0  # transparent
    cv2.imwrite(str(tmp_path / "t.png"), bgra)
    out = decode_image(tmp_path / "t.png")
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "file is empty"), (b"this is not an image", "not a decodable image")],
)
def test_bad_files_raise_with_path_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.path == str(path) and reason in info.value.reason


def test_truncated_png_is_refused(tmp_path):
    ok, data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(ImageDecodeError):
        decode_image(tmp_path / "cut.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        decode_image(tmp_path / "nope.png")


def test_a_header_claiming_a_gigantic_image_is_refused_not_crashing(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(ImageDecodeError):
        decode_image(tmp_path / "bomb.png")
