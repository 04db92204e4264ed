"""Robust decoding: orientation, colour modes, bad files, and the training crop."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vq3d.data.decode import BadImageError, center_square_box, crop_resize, decode_rgb, load_crop, probe_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A valid PNG header announcing a huge image (a few hundred bytes on disk)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    path.write_bytes(data)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6 means "rotate 90
    # degrees clockwise to display", which puts the stored left side on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    upright = np.asarray(decode_rgb(path)).astype(int)
    assert upright.shape == (40, 20, 3)
    assert np.abs(upright[5, 10] - (255, 0, 0)).max() < 40  # top: red
    assert np.abs(upright[35, 10] - (0, 0, 255)).max() < 40  # bottom: blue


def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    rgb = np.asarray(decode_rgb(tmp_path / "g.png"))
    assert rgb.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_palette_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0  # palette index 0 is transparent
    img.save(tmp_path / "p.png", transparency=0)
    rgb = np.asarray(decode_rgb(tmp_path / "p.png"))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[1, 1]) == (200, 10, 20)


def test_rgba_half_transparent_red_over_white(tmp_path):
    Image.new("RGBA", (3, 3), (255, 0, 0, 128)).save(tmp_path / "a.png")
    rgb = np.asarray(decode_rgb(tmp_path / "a.png")).astype(int)
    # red * a + white * (1 - a), a = 128/255
    expected = np.array([255, 255 * (1 - 128 / 255), 255 * (1 - 128 / 255)])
    assert np.abs(rgb[1, 1] - expected).max() <= 1


def test_cmyk_converts_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # full cyan
    cmyk.save(tmp_path / "c.tif")
    rgb = np.asarray(decode_rgb(tmp_path / "c.tif"))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (0, 255, 255)


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 25700, 65535]], dtype=np.uint16)  # 25700 = 100 * 257
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = np.asarray(decode_rgb(tmp_path / "deep.png"))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 100, 255])


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty file"), ("text", "not an image"), ("truncated", "truncated"),
    ("missing", "missing"), ("directory", "unreadable"), ("bomb", "too large"),
])
def test_bad_files_raise_with_reason(tmp_path, kind, reason):
    path = tmp_path / "x.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
        data = (tmp_path / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing":
        path.symlink_to(tmp_path / "nowhere.jpg")
    elif kind == "directory":
        path.mkdir()
    elif kind == "bomb":
        path = tmp_path / "bomb.png"
        write_bomb_png(path)
    with pytest.raises(BadImageError) as info:
        decode_rgb(path)
    assert info.value.reason == reason


def test_max_pixels_limit_is_honoured(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "big.png")
    assert probe_image(tmp_path / "big.png", max_pixels=5000) == (100, 50)
    with pytest.raises(BadImageError, match="too large"):
        probe_image(tmp_path / "big.png", max_pixels=4999)


def test_crop_is_the_centre_square_at_scale_one():
    # 60x40: shorter side is already 40, so the crop is columns 10..49 exactly.
    pixels = (np.random.default_rng(1).random((40, 60, 3)) * 255).astype(np.uint8)
    out = np.asarray(crop_resize(Image.fromarray(pixels), 40))
    np.testing.assert_array_equal(out, pixels[:, 10:50])
    assert center_square_box(60, 40) == (10.0, 0.0, 50.0, 40.0)


def test_crop_matches_crop_then_resize_for_portrait():
    y, x = np.mgrid[0:120, 0:80]
    pixels = np.stack([x * 3, y * 2, (x + y)], -1).astype(np.uint8)
    img = Image.fromarray(pixels)
    ours = np.asarray(crop_resize(img, 40)).astype(int)
    reference = np.asarray(img.crop((0, 20, 80, 100)).resize((40, 40), Image.BICUBIC)).astype(int)
    assert np.abs(ours - reference).max() <= 2


def test_jpeg_draft_decoding_matches_full_decoding(tmp_path):
    y, x = np.mgrid[0:300, 0:400]
    pixels = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], -1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "smooth.jpg", quality=95)
    fast = load_crop(tmp_path / "smooth.jpg", 64).astype(float)
    full = Image.open(tmp_path / "smooth.jpg").convert("RGB")
    slow = np.asarray(full.crop((50, 0, 350, 300)).resize((64, 64), Image.BICUBIC)).astype(float)
    assert fast.shape == (64, 64, 3)
    assert np.abs(fast - slow).mean() < 2.0
