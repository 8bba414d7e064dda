"""A built-in demo dataset, generated on the fly: no download, a few seconds on one core.

Construction (see docs/data.md for the reasoning and a measured learnability run):

- **real** (label 1): a colour texture with a natural 1/f^a power spectrum (a ~ U(1.6, 2.4)) synthesised
  at full resolution, blurred by a random lens-like Gaussian (sigma ~ U(0.4, 1.2) px), plus sensor-like
  noise added at full resolution (Gaussian, sigma ~ U(1.5, 5) grey levels, growing with brightness).
- **fake** (label 0): the same kind of texture *and* noise synthesised at half resolution, then
  up-sampled 2x by a "generator" chosen among nearest, bilinear and bicubic interpolation (the name is
  kept as the row's ``generator``), plus a faint full-resolution noise (sigma ~ U(0.3, 1)).

Colour, brightness, contrast, spectral slope and noise level are drawn from the same ranges for both
classes, so global statistics do not separate them; what does is the up-sampling trace: the fake's
noise is spatially correlated with a period of two pixels. That is the kind of evidence real detectors
learn (CNNDetection, spectral artefacts of GAN up-sampling), small enough to learn in a few CPU minutes.
Images are stored as PNG, so the trace survives exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image

from detector import FAKE, REAL
from detector.config import NonNegative, Range, check_fields

DEMO_IMAGE_SIZE = 64
DEMO_COUNTS = {"train": 600, "val": 100, "test": 200}
UPSAMPLERS = ("nearest", "bilinear", "bicubic")
_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# one fixed zero-mean 2x2 gain pattern per generator, tiled over the image: (S, S, 1)
_CHECKERBOARD_2X2 = {
    "nearest": np.array([[1.0, -1.0], [-1.0, 1.0]]),
    "bilinear": np.array([[1.0, 0.0], [0.0, -1.0]]),
    "bicubic": np.array([[0.5, 0.5], [-1.0, 0.0]]),
}


@dataclass(frozen=True)
class _Even:
    """The generators' 2x2 patterns tile the image: its size is even."""

    def reason(self, value: int) -> str | None:
        return None if value % 2 == 0 else f"{value} is not even (the 2x2 patterns tile the image)"


@dataclass(frozen=True)
class DemoConfig:
    """How many demo images of each split (balanced real/fake), at which size."""

    image_size: Annotated[int, Range(8), _Even()] = DEMO_IMAGE_SIZE
    train: NonNegative = DEMO_COUNTS["train"]
    val: NonNegative = DEMO_COUNTS["val"]
    test: NonNegative = DEMO_COUNTS["test"]

    def __post_init__(self) -> None:
        check_fields(self, where="demo")

    def count(self, split: str) -> int:
        return int(getattr(self, split))


def demo_label(index: int) -> int:
    """Even rows are real, odd rows fake: every split is balanced to within one image."""
    return REAL if index % 2 == 0 else FAKE


def _texture(rng: np.random.Generator, n: int, slope: float, blur: float) -> np.ndarray:
    """(n, n, 3) float texture, zero mean and unit variance per channel, spectrum 1/f^slope."""
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0 / n
    # amplitude 1/f^(slope/2) gives power 1/f^slope; the Gaussian OTF is a lens blur of `blur` pixels
    amp = f ** (-slope / 2.0) * np.exp(-2.0 * (np.pi * blur * f) ** 2)
    amp[0, 0] = 0.0
    out = np.empty((n, n, 3))
    for c in range(3):
        spec = np.fft.rfft2(rng.standard_normal((n, n))) * amp
        ch = np.fft.irfft2(spec, s=(n, n))
        out[..., c] = (ch - ch.mean()) / (ch.std() + 1e-12)
    return out


def _colourise(rng: np.random.Generator, tex: np.ndarray) -> np.ndarray:
    # mostly shared luminance with a little per-channel colour, like natural scenes
    mix = 0.75 + 0.25 * rng.random((3, 3)) * np.eye(3) + 0.15 * rng.standard_normal((3, 3))
    tex = tex @ mix.T
    base = rng.uniform(60, 190, size=3)
    contrast = rng.uniform(18, 45)
    return base + contrast * tex


def _sensor_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    # shot noise grows with brightness; read noise sets the floor
    std = np.sqrt(sigma**2 + 0.02 * np.clip(img, 0, None))
    return img + std * rng.standard_normal(img.shape)


def _checkerboard(name: str, size: int) -> np.ndarray:
    return np.tile(_CHECKERBOARD_2X2[name], (size // 2, size // 2))[..., None]


def _upsample(img: np.ndarray, size: int, method: str) -> np.ndarray:
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F")
                        .resize((size, size), _RESAMPLE[method])) for c in range(3)]
    return np.stack(chans, axis=-1).astype(np.float64)


def demo_image(*, split: str, index: int, seed: int = 0,
               image_size: int = DEMO_IMAGE_SIZE) -> tuple[np.ndarray, int, str]:
    """Image ``index`` of ``split``: (uint8 array (S, S, 3), label, generator name; "" for real)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_IDS)}")
    label = demo_label(index)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    slope = rng.uniform(1.6, 2.4)
    sigma = rng.uniform(2.0, 6.0)
    if label == REAL:
        img = _colourise(rng, _texture(rng, image_size, slope, blur=rng.uniform(0.4, 1.2)))
        img = _sensor_noise(rng, img, sigma)
        generator = ""
    else:
        generator = UPSAMPLERS[int(rng.integers(len(UPSAMPLERS)))]
        half = image_size // 2
        # the half-resolution texture is blurred half as much, so after 2x up-sampling the content
        # is as sharp as a real image's and only the fine structure differs
        low = _colourise(rng, _texture(rng, half, slope, blur=rng.uniform(0.2, 0.6)))
        low = _sensor_noise(rng, low, sigma)
        img = _upsample(low, image_size, generator)
        # a transposed convolution whose kernel overlaps unevenly leaves a 2x2-periodic gain pattern
        # (the "checkerboard" of GAN up-sampling), proportional to the signal and different per generator
        img = img * (1.0 + rng.uniform(0.03, 0.08) * _checkerboard(generator, image_size))
        img = _sensor_noise(rng, img, rng.uniform(0.2, 0.6))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label, generator


def demo_png(*, split: str, index: int, seed: int = 0, image_size: int = DEMO_IMAGE_SIZE) -> tuple[bytes, int, str]:
    """Like :func:`demo_image`, encoded as PNG (lossless, so the up-sampling trace is kept exactly)."""
    arr, label, generator = demo_image(split=split, index=index, seed=seed, image_size=image_size)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), label, generator


def write_demo_samples(folder: Path, *, count: int = 8, seed: int = 0,
                       image_size: int = DEMO_IMAGE_SIZE) -> list[Path]:
    """The first ``count`` images of the demo's test split (never trained on) as PNG files in ``folder``,
    their labels in their names: ``real-0.png``, ``fake-1-bilinear.png`` (the generator that made it), ...
    Something to try ``detector predict`` on, whose answers can be checked by eye. Returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        png, label, generator = demo_png(split="test", index=index, seed=seed, image_size=image_size)
        name = f"real-{index}" if label == REAL else f"fake-{index}-{generator}"
        path = folder / f"{name}.png"
        path.write_bytes(png)
        files.append(path)
    return files
