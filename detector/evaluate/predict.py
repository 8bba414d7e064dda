"""Score image files with a trained detector: the probability that each image is Real.

Images go through exactly the evaluation path: ``decode_image`` (the loader's decoder) then
``ClassificationPresetEval`` at the checkpoint's image size. Files that cannot be read become rows
with an ``error`` instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detector.data.images import MAX_PIXELS
from detector.device import autocast


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class Prediction:
    path: str
    prob_real: float | None  # None when the file could not be read
    label: str | None  # "real" or "fake"
    error: str | None = None
    size: tuple[int, int] | None = None  # (width, height) of the image as read, before the resize


# An image this many times larger or smaller than the model's input is far from what it was trained on:
# the resize to the input size removes (or invents) the fine detail a detector of generated images reads.
SIZE_MISMATCH_FACTOR = 2.0


def size_mismatch(size: tuple[int, int], image_size: int) -> bool:
    """Whether an image of ``size`` (width, height) is far from a model's ``image_size`` x ``image_size`` input.

    >>> size_mismatch((1024, 1024), 64), size_mismatch((256, 256), 224), size_mismatch((64, 100), 224)
    (True, False, True)
    """
    return max(size) > SIZE_MISMATCH_FACTOR * image_size or min(size) < image_size / SIZE_MISMATCH_FACTOR


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix); folders searched recursively for image suffixes, sorted.

    A path that does not exist is kept, so that it is reported as unreadable rather than dropped.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(p)
    return found


class _ImageFiles(Dataset):
    def __init__(self, files: list[Path], image_size: int, max_pixels: int) -> None:
        from detector.data.transforms import ClassificationPresetEval

        self.files = files
        self.transform = ClassificationPresetEval(image_size=image_size)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | tuple[int, int]]:
        """(index, preprocessed image, its (width, height)), or (index, None, the error)."""
        from detector.data.images import decode_image

        path = self.files[i]
        try:
            image = decode_image(path.read_bytes(), name=str(path), max_pixels=self.max_pixels)
        except (OSError, ValueError) as e:  # missing, unreadable, not an image, corrupt
            return i, None, str(e) if str(path) in str(e) else f"{path}: {e}"
        return i, self.transform(image), image.size


def _collate(items: list[tuple[int, torch.Tensor | None, str | tuple[int, int]]]):
    ok = [(i, t, size) for i, t, size in items if t is not None]
    errors = [(i, e) for i, t, e in items if t is None]
    images = torch.stack([t for _, t, _ in ok]) if ok else None
    return [(i, size) for i, _, size in ok], images, errors


@torch.inference_mode()
def predict_images(
    model: nn.Module,
    paths: Iterable[str | Path],
    *,
    image_size: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    threshold: float = 0.5,
    num_workers: int = 0,
    max_pixels: int = MAX_PIXELS,
) -> Iterator[Prediction]:
    """One ``Prediction`` per file (folders expanded by ``find_images``), in input order. A file that cannot be
    read (missing, not an image, more than ``max_pixels`` pixels) is a row with its ``error``, reported by the
    caller, once."""
    device = torch.device(device)
    files = find_images(paths)
    model.eval().to(device)
    loader = DataLoader(_ImageFiles(files, image_size, max_pixels), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    for scored, images, errors in loader:
        rows: dict[int, Prediction] = {i: Prediction(str(files[i]), None, None, e) for i, e in errors}
        if images is not None:
            with autocast(device, precision):
                logits = model(images.to(device, non_blocking=True)).squeeze(1)
            for (i, size), p in zip(scored, torch.sigmoid(logits.float()).cpu().tolist()):
                rows[i] = Prediction(str(files[i]), p, "real" if p >= threshold else "fake", size=tuple(size))
        for i in sorted(rows):
            yield rows[i]
