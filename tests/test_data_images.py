"""decode_image: every odd kind of file becomes a correct RGB image or a clear ImageDecodeError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import image_bytes
from detector.data.images import ImageDecodeError, decode_image, open_image
from detector.data.transforms import ClassificationPresetEval, ClassificationPresetTrain


def encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def pixel(data: bytes, xy=(0, 0)) -> tuple[int, int, int]:
    img = decode_image(data, name="x")
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_rgb_jpeg_and_png_decode_to_rgb():
    assert pixel(image_bytes("PNG", color=(200, 30, 30))) == (200, 30, 30)
    r, g, b = pixel(image_bytes("JPEG", (16, 16), (200, 30, 30), quality=95))
    assert abs(r - 200) < 4 and abs(g - 30) < 4 and abs(b - 30) < 4


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 77, (77, 77, 77)),
    ("1", 1, (255, 255, 255)),
    ("I;16", 65535, (255, 255, 255)),
    ("I;16", 32896, (128, 128, 128)),  # 16-bit is scaled by 1/257, not clipped at 255
    ("I", 65535, (255, 255, 255)),
])
def test_gray_and_16_bit_become_rgb(mode, value, expected):
    img = Image.new(mode, (4, 4), value)
    assert pixel(encode(img, "TIFF" if mode == "I" else "PNG")) == expected


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = pixel(encode(cmyk, "JPEG", quality=95))
    assert r > 230 and g < 30 and b < 30


def test_alpha_is_composited_over_white():
    img = Image.new("RGBA", (2, 1), (0, 0, 255, 255))
    img.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    data = encode(img, "PNG")
    assert pixel(data, (0, 0)) == (0, 0, 255)
    assert pixel(data, (1, 0)) == (255, 255, 255)
    half = encode(Image.new("LA", (1, 1), (0, 128)), "PNG")
    assert pixel(half) == (127, 127, 127)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_images(transparent):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG", **({"transparency": 0} if transparent else {}))
    assert pixel(data, (1, 0)) == (200, 100, 50)
    assert pixel(data, (0, 0)) == ((255, 255, 255) if transparent else (10, 20, 30))


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(img, "PNG", exif=exif), name="x")
    assert out.size == (2, 4)
    assert out.getpixel((1, 0)) == (255, 255, 255)  # the top-left pixel moved to the top-right


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=10)
    img, info = open_image(buf.getvalue(), name="a.gif")
    assert info.frames == 2
    assert img.getpixel((0, 0)) == (255, 0, 0)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims width x height (a decompression bomb's signature)."""
    data = image_bytes("PNG", (1, 1))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"this is a text file, not a JPEG\n", "not an image"),
    (image_bytes("JPEG", (64, 64), quality=90)[:300], "corrupt or truncated"),
    (image_bytes("PNG", (64, 64))[:60], "corrupt or truncated"),
    (_png_claiming(20_000, 20_000), "decompression bomb"),
])
def test_bad_bytes_raise_a_value_error_naming_the_file(data, reason):
    with pytest.raises(ImageDecodeError, match=reason) as e:
        decode_image(data, name="photos/bad.jpg")
    assert isinstance(e.value, ValueError)
    assert "photos/bad.jpg" in str(e.value)


def test_pixel_limit_is_configurable():
    data = image_bytes("PNG", (10, 10))
    decode_image(data, max_pixels=100)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 99"):
        decode_image(data, max_pixels=99)


def test_presets_resize_normalise_and_flip():
    img = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (20, 1, 3)))
    ev = ClassificationPresetEval(image_size=16)(img)
    assert ev.shape == (3, 16, 16) and ev.dtype == torch.float32
    # ImageNet normalisation: 0 maps to -mean/std
    black = ClassificationPresetEval(image_size=4)(Image.new("RGB", (4, 4)))
    assert torch.allclose(black[:, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]), atol=1e-5)
    train = ClassificationPresetTrain(image_size=16)
    assert torch.equal(train.to_uint8(img, flip=True), train.to_uint8(img, flip=False).flip(-1))
    assert torch.equal(train.normalize(train.to_uint8(img, flip=False)), ev)
    never = ClassificationPresetTrain(image_size=16, hflip_prob=0.0)
    assert all(torch.equal(never(img), ev) for _ in range(5))


def test_jpeg_draft_decodes_large_jpegs_smaller_and_close():
    yy, xx = np.mgrid[0:512, 0:640]
    img = Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8))
    data = encode(img, "JPEG", quality=90)
    full = decode_image(data)
    small = decode_image(data, draft_size=100)
    assert full.size == (640, 512) and small.size == (160, 128)  # 1/4 scale, still >= 100 on both sides
    preset = ClassificationPresetEval(image_size=100)
    diff = (preset.to_uint8(full).float() - preset.to_uint8(small).float()).abs().mean()
    assert diff < 3
    assert decode_image(data, draft_size=300).size == (640, 512)  # not twice as large: full decode
