"""Decode image bytes into an RGB PIL image, the same way at import, in the loader and in ``predict``.

One function decides how every odd file is read, so training and inference never disagree:

- EXIF orientation is applied (a phone photo stored sideways is seen upright).
- CMYK goes through its embedded ICC profile when it has one, else Pillow's conversion.
- Grayscale, 1-bit and palette images become RGB; 16-bit samples are scaled to 8 bits (not clipped).
- Alpha is composited over white, so a transparent pixel has a defined colour instead of whatever RGB
  value the encoder left under it.
- Animated images (GIF, APNG, WebP) give their first frame.

Anything that cannot be read raises :class:`ImageDecodeError` (a ``ValueError``) whose message names the
file and the reason: empty, not an image, truncated or corrupt, too many pixels (decompression bomb).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# A 64-megapixel ceiling (8000 x 8000) admits every photo in the supported datasets (RAISE raw frames are
# ~16 MP) and stops a crafted file from expanding to gigabytes of RAM in a worker.
MAX_PIXELS = 64_000_000

# Pillow itself warns above Image.MAX_IMAGE_PIXELS (89 MP) and refuses above twice that, before our own check
# runs; we silence the warning and apply our own limit with a clearer message. Pillow's refusal caps any limit.
PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS

_WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """A file could not be read as an image; ``name`` says which file and ``reason`` why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name or '<bytes>'}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What the import records about a decodable file besides its bytes."""

    format: str  # Pillow's format name: "JPEG", "PNG", ...
    mode: str  # the mode as stored, before conversion to RGB
    width: int  # after EXIF orientation
    height: int
    frames: int  # > 1 for animated images


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's own "I;16" -> "L" conversion clips at 255 rather than scaling, which would turn most
    # 16-bit images white; divide by 257 so 65535 maps to 255 exactly.
    a = np.asarray(img, dtype=np.float64)
    a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(a, mode="L").convert("RGB")


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(img)
    if mode == "F":
        raise ImageDecodeError(name, "unsupported pixel format: 32-bit floating point (mode F)")
    if mode == "CMYK":
        icc = img.info.get("icc_profile")
        if icc:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except (ImageCms.PyCMSError, OSError):
                pass  # a broken profile is common in the wild; Pillow's conversion is the fallback
        return img.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGBA", img.size, _WHITE + (255,))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _claimed_format(data: bytes) -> str:
    """The format a file's first bytes announce, to tell a damaged image from a non-image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), "")


def open_image(data: bytes, *, name: str = "", max_pixels: int = MAX_PIXELS, count_frames: bool = True,
               draft_size: int | None = None) -> tuple[Image.Image, ImageInfo]:
    """Decode ``data`` fully; return the RGB image and what it was. Raises :class:`ImageDecodeError`.

    ``count_frames=False`` skips counting an animation's frames (which reads the whole file); ``frames``
    is then 1. ``draft_size``: see :func:`decode_image`.
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    name,
                    f"decompression bomb: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                    f"{max_pixels:,} (raise it with --max-pixels if the file is genuine)",
                )
            fmt = img.format or "unknown"
            mode = img.mode
            frames = int(getattr(img, "n_frames", 1) or 1) if count_frames else 1
            if draft_size and fmt == "JPEG" and min(width, height) >= 2 * draft_size:
                # libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT, never below draft_size on either side
                img.draft(img.mode, (draft_size, draft_size))
            img.load()  # the first frame of an animated file: Image.open starts there
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img, name)
            rgb.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        kind = _claimed_format(data)
        reason = (f"corrupt {kind}: it starts like one but its header cannot be read" if kind
                  else "not an image (format not recognised)")
        raise ImageDecodeError(name, reason) from None
    except Image.DecompressionBombError:
        # Pillow's refusal, above PILLOW_MAX_PIXELS: no --max-pixels admits the file, so no hint to raise it,
        # and Pillow's own message (which quotes a second, different limit) is left out
        raise ImageDecodeError(name, f"decompression bomb: more than {PILLOW_MAX_PIXELS:,} pixels, more than any "
                                     "--max-pixels admits") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
            struct.error, MemoryError, ZeroDivisionError) as e:
        # Pillow reports damage through many exception types depending on the codec and where it broke.
        raise ImageDecodeError(name, f"corrupt or truncated image: {type(e).__name__}: {e}") from None
    return rgb, ImageInfo(format=fmt, mode=mode, width=rgb.width, height=rgb.height, frames=frames)


def decode_image(data: bytes, *, name: str = "", max_pixels: int = MAX_PIXELS,
                 draft_size: int | None = None) -> Image.Image:
    """Bytes of any common image format -> RGB PIL image, oriented and converted as described above.

    ``draft_size``: a JPEG at least twice that size on both sides is decoded at a reduced scale (1/2,
    1/4 or 1/8, staying >= ``draft_size``), several times faster, for a caller that resizes to
    ``draft_size`` next. The result then differs slightly from a full decode followed by the same
    resize (mean 0.75 grey levels at 1024 -> 224 px), so train and predict should agree on it. Off by default.

    >>> decode_image(open("photo.jpg", "rb").read(), name="photo.jpg").mode  # doctest: +SKIP
    'RGB'
    """
    return open_image(data, name=name, max_pixels=max_pixels, count_frames=False, draft_size=draft_size)[0]

