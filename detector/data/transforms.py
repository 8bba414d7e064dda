"""The paper's preprocessing (§2.1), as presets: resize to a square, ImageNet mean/std, and a random
horizontal flip on the training split only. Evaluation, search trials and ``predict`` share these.

Each preset runs in two stages so the loader can batch the second one:

1. ``to_uint8(img)``: PIL RGB image -> uint8 tensor (3, size, size), resized (bilinear, antialiased) and,
   for training, maybe flipped. Working in uint8 keeps this stage cheap.
2. ``normalize(x, out=None)``: uint8 (..., 3, size, size) -> float32, ImageNet mean/std, written into
   ``out`` when given, so a batch is normalised straight into the buffer the DataLoader ships.

``preset(img)`` is the two stages together; a batch built by the loader equals stacking ``preset(img)``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W), a channels-last view (the resize kernel is fastest on it)."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode}; decode with detector.data.images.decode_image")
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class _Preset:
    def __init__(self, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = image_size
        # (x / 255 - mean) / std == x * scale - shift, one multiply and one subtract per element
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _resize(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        x = pil_to_uint8(img) if isinstance(img, Image.Image) else img
        if x.dtype != torch.uint8 or x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a uint8 tensor (3, H, W), got {x.dtype} {tuple(x.shape)}")
        size = [self.image_size, self.image_size]
        return F.resize(x, size, antialias=True) if list(x.shape[1:]) != size else x

    def normalize(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (..., 3, S, S) -> float32 normalised; into ``out`` (same shape, float32) when given.

        Works on any device: a loader built with ``normalize=False`` ships uint8 batches (4x fewer
        bytes) and the trainer calls this on the GPU.
        """
        if out is None:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        scale, shift = self._scale, self._shift
        if scale.device != x.device:
            if x.device not in self._on_device:  # once per device: no small copies per batch
                self._on_device[x.device] = (scale.to(x.device), shift.to(x.device))
            scale, shift = self._on_device[x.device]
        return torch.mul(x, scale, out=out).sub_(shift)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(img))


class ClassificationPresetTrain(_Preset):
    """PIL RGB image -> float tensor (3, size, size), normalised, randomly flipped."""

    def __init__(self, *, image_size: int = 224, hflip_prob: float = 0.5,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__(image_size=image_size, mean=mean, std=std)
        self.hflip_prob = hflip_prob

    def to_uint8(self, img: Image.Image | torch.Tensor, *, flip: bool | None = None) -> torch.Tensor:
        """Resize, then flip when ``flip`` is true; ``flip=None`` draws it from torch's RNG."""
        x = self._resize(img)
        if flip is None:
            flip = self.hflip_prob > 0 and bool(torch.rand(()) < self.hflip_prob)
        return x.flip(-1) if flip else x


class ClassificationPresetEval(_Preset):
    """PIL RGB image -> float tensor (3, size, size), normalised; deterministic."""

    def __init__(self, *, image_size: int = 224,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__(image_size=image_size, mean=mean, std=std)
        self.hflip_prob = 0.0

    def to_uint8(self, img: Image.Image | torch.Tensor, *, flip: bool | None = None) -> torch.Tensor:
        """Resize only; ``flip`` is accepted for symmetry with the training preset and must not be true."""
        if flip:
            raise ValueError("the evaluation preset never flips")
        return self._resize(img)


_IMAGENET = ClassificationPresetEval(image_size=1)


def normalize_imagenet(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (..., 3, S, S) on any device -> float32 with the presets' ImageNet mean/std (into ``out``).

    The same arithmetic as the loader's CPU normalisation (so the same values): the trainer applies it
    on the device to the uint8 batches of ``build_loader(..., normalize=False)``.
    """
    return _IMAGENET.normalize(x, out=out)
