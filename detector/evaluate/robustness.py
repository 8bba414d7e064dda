"""Robustness: every model scored again on perturbed copies of the test images (beyond the paper).

Does a pruned detector still work after the image was re-compressed, blurred or down-scaled? Each
perturbation is applied to the decoded image at its stored size, *before* the paper's resize to the
model's input (``ClassificationPresetEval``), inside the DataLoader's workers, so the perturbing runs on
the CPUs while the model runs on its device:

- ``jpeg``: re-encoded as JPEG at quality q (Pillow, 4:2:0 chroma subsampling), decoded again;
- ``blur``: Gaussian blur of standard deviation sigma pixels (``scipy.ndimage.gaussian_filter`` per channel,
  its defaults: truncated at 4 sigma, reflected borders; the call CNNDetection's blur uses);
- ``downscale``: resized to a factor f of its size, then back to its size (torchvision ``resize``,
  bilinear, antialiased, as the paper's resize);
- ``format``: format equalisation, every image re-encoded as JPEG q95 (the model-side half of the
  shortcut audit, ``detector.data.audit``): where PNG means fake in the training data, a detector that
  reads the format loses its fakes here.

Every perturbation is a pure function of the image and its severity (nothing random is drawn), so the
perturbed copy of an image is the same bytes for every model, every run and every worker count
(docs/evaluation.md; asserted in tests/test_robustness.py). JPEG, blur and down-scaling are scored on the
primary test set; format equalisation on the whole test split, since on a single-format set (the 140k
test set is all JPEG) it would test nothing about formats.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Sequence

from detector.config import ConfigError, Items, OneOf, Range, check_fields
from detector.data.loader import ShardDataset
from detector.evaluate.scoring import Scored, check_counts

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

FAMILIES = ("jpeg", "blur", "downscale", "format")
FORMAT_QUALITY = 95  # format equalisation re-encodes as JPEG at this quality
_ONCE = Items(unique=True)  # a severity listed twice would be scored twice under one name
_Quality = Annotated[int, Range(1, 100, why="a JPEG quality")]
_Sigma = Annotated[float, Range(0, 50, low_open=True, why="a blur sigma in pixels")]
_Factor = Annotated[float, Range(0, 1, low_open=True, high_open=True, why="a factor of the image's size")]


@dataclass(frozen=True)
class RobustnessSection:
    """``evaluate.robustness`` of the experiment config: which perturbations every model is scored under."""

    enabled: bool = False
    jpeg_quality: Annotated[tuple[_Quality, ...], _ONCE] = (95, 75, 50, 30)
    blur_sigma: Annotated[tuple[_Sigma, ...], _ONCE] = (1.0, 2.0, 3.0)
    downscale: Annotated[tuple[_Factor, ...], _ONCE] = (0.5, 0.25)
    format_equalisation: bool = True  # every image of the whole test split as JPEG q95

    def __post_init__(self) -> None:
        check_fields(self, where="evaluate.robustness")

    def validate(self) -> None:
        if self.enabled and not self.perturbations():
            raise ConfigError("evaluate.robustness: enabled, but no perturbation is listed")

    def perturbations(self) -> list["Perturbation"]:
        """The perturbations, family by family, from the mildest to the strongest."""
        out = [Perturbation("jpeg", q) for q in sorted(self.jpeg_quality, reverse=True)]
        out += [Perturbation("blur", s) for s in sorted(self.blur_sigma)]
        out += [Perturbation("downscale", f) for f in sorted(self.downscale, reverse=True)]
        if self.format_equalisation:
            out.append(Perturbation("format", FORMAT_QUALITY))
        return out


@dataclass(frozen=True)
class Perturbation:
    """One perturbation at one severity; calling it maps a decoded RGB image to the perturbed image."""

    family: Annotated[str, OneOf(FAMILIES)]
    severity: float

    def __post_init__(self) -> None:
        check_fields(self, where="perturbation")

    @property
    def name(self) -> str:
        """Stable key, in files: ``jpeg-q50``, ``blur-s2``, ``downscale-x0.5``, ``format-jpeg-q95``."""
        s = f"{self.severity:g}"
        return {"jpeg": f"jpeg-q{s}", "blur": f"blur-s{s}", "downscale": f"downscale-x{s}",
                "format": f"format-jpeg-q{s}"}[self.family]

    @property
    def label(self) -> str:
        """How the report names it."""
        s = f"{self.severity:g}"
        return {"jpeg": f"JPEG q{s}", "blur": f"Gaussian blur sigma {s} px", "downscale": f"downscale x{s} and back",
                "format": f"format equalised (all JPEG q{s})"}[self.family]

    @property
    def on(self) -> str:
        """Which test images it is scored on: ``primary`` or ``all`` (the whole test split)."""
        return "all" if self.family == "format" else "primary"

    def __call__(self, image: "Image.Image") -> "Image.Image | torch.Tensor":
        if self.family in ("jpeg", "format"):
            return jpeg_recompress(image, int(self.severity))
        if self.family == "blur":
            return gaussian_blur(image, float(self.severity))
        return downscale_and_back(image, float(self.severity))


def jpeg_recompress(image: "Image.Image", quality: int) -> "Image.Image":
    """``image`` encoded as a JPEG of ``quality`` (4:2:0 chroma subsampling, Pillow's default) and decoded
    again with the loader's decoder."""
    from detector.data.images import decode_image

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return decode_image(buf.getvalue(), name=f"JPEG q{quality}")


def gaussian_blur(image: "Image.Image", sigma: float) -> "torch.Tensor":
    """A uint8 (3, H, W) tensor: ``image`` blurred by a Gaussian of ``sigma`` pixels, each channel on its own:
    ``scipy.ndimage.gaussian_filter`` with its defaults (kernel truncated at 4 sigma, ``mode="reflect"``), the
    call CNNDetection's blur augmentation and the robustness tests that follow it use, computed in float32
    and rounded to uint8."""
    import numpy as np
    import torch
    from scipy.ndimage import gaussian_filter

    a = np.asarray(image)  # (H, W, 3) uint8
    out = gaussian_filter(a, sigma=(sigma, sigma, 0), output=np.float32)
    return torch.from_numpy(np.clip(np.rint(out), 0, 255).astype(np.uint8)).permute(2, 0, 1)


def downscale_and_back(image: "Image.Image", factor: float) -> "torch.Tensor":
    """A uint8 (3, H, W) tensor: ``image`` resized to ``factor`` of its size (at least 1 px), then back to
    its size; bilinear and antialiased both ways, as the paper's resize."""
    from torchvision.transforms.v2 import functional as F

    from detector.data.transforms import pil_to_uint8

    x = pil_to_uint8(image)
    h, w = x.shape[1:]
    small = F.resize(x, [max(1, round(h * factor)), max(1, round(w * factor))], antialias=True)
    return F.resize(small, [h, w], antialias=True)


def source_data(data: str) -> str:
    """The dataset with the original image bytes behind ``data``: ``data`` itself, or, for a decode-once
    pixel dataset (already resized, so too late to perturb), the dataset it was derived from."""
    from detector.data.loader import manifest_sha256, read_manifest

    pixels = read_manifest(data).get("pixels")
    if not pixels:
        return data
    origin = pixels["from"]["data"]
    try:
        same = manifest_sha256(origin) == pixels["from"]["manifest_sha256"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{data} holds decoded pixels; perturbing needs the original images of "
                                f"{origin}, which is not readable here") from None
    if not same:
        raise ValueError(f"{data}: derived from {origin}, whose manifest has changed since; derive the pixels "
                         "again (`detector pixels`) so both hold the same images")
    return origin


def perturbed_loader(data: str, perturbation: Callable[["Image.Image"], Any], *, image_size: int,
                     batch_size: int, sources: Sequence[str] | None = None, num_workers: int = 0,
                     pin_memory: bool = False) -> Any:
    """Test batches (uint8) of ``data`` (a dataset of encoded images) with ``perturbation`` applied to every
    decoded image before the resize, in the DataLoader's workers; the clean loader's rows and order."""
    from detector.data.loader import ReadSpec, ShardLoader, _Batches, _worker_init

    dataset = _PerturbedShards(data, "test", ReadSpec(image_size=image_size, sources=sources, with_meta=True),
                               perturbation=perturbation)
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        kwargs.update(worker_init_fn=_worker_init, persistent_workers=False)
    return ShardLoader(_Batches(dataset, batch_size, False, num_workers, normalize=False), **kwargs)


class _PerturbedShards(ShardDataset):
    """The test split as the evaluation reads it, with a perturbation between decoding and resizing."""

    def __init__(self, *args: Any, perturbation: Callable[["Image.Image"], Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.pixels is not None:
            raise ValueError(f"{self.data}: holds resized pixels; perturb the dataset they were derived from")
        self.perturbation = perturbation

    def decode(self, row: dict[str, Any], flip: bool = False) -> "torch.Tensor":
        from detector.data.images import decode_image

        image = decode_image(row["image"], name=row.get("original_path") or "shard row")
        return self.transform.to_uint8(self.perturbation(image), flip=flip)


def score_perturbed(model: Any, data: str, perturbation: Perturbation, *, image_size: int, batch_size: int,
                    sources: Sequence[str] | None = None, device: Any = "cpu", num_workers: int = 0,
                    precision: str = "fp32") -> Scored:
    """``model``'s probability of Real on the perturbed test images of ``data`` (``sources`` only, if given)."""
    import torch

    from detector.data.loader import manifest_sha256
    from detector.passes import collect_predictions

    device = torch.device(device)
    loader = perturbed_loader(data, perturbation, image_size=image_size, batch_size=batch_size, sources=sources,
                              num_workers=num_workers, pin_memory=device.type == "cuda")
    labels, probs, metas = collect_predictions(model, loader, device=device, precision=precision)
    assert metas is not None  # with_meta=True
    return Scored("test", manifest_sha256(data), labels, probs, dict(metas))


def evaluate_robustness(model: Any, data: str, cfg: RobustnessSection, *, primary_source: str | None,
                        image_size: int, batch_size: int, calibrated: float | None = None, device: Any = "cpu",
                        num_workers: int = 0, precision: str = "fp32") -> tuple[dict[str, Any], dict[str, Any]]:
    """Score ``model`` under every perturbation of ``cfg``: (results for ``eval/<model>.json``, predictions
    for ``eval/<model>.predictions.json``), both keyed by ``Perturbation.name``.

    ``data``: the evaluated dataset (a pixel dataset is traced back to its original images);
    ``primary_source``: the source whose test set is primary, or None for the whole test split.
    """
    import time

    from detector.data.loader import read_manifest
    from detector.evaluate.scoring import expected_counts

    origin = source_data(data)
    expected = expected_counts(read_manifest(origin), "test")
    results: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for p in cfg.perturbations():
        sources = [primary_source] if (p.on == "primary" and primary_source) else None
        t0 = time.perf_counter()
        scored = score_perturbed(model, origin, p, image_size=image_size, batch_size=batch_size, sources=sources,
                                 device=device, num_workers=num_workers, precision=precision)
        check_counts(origin, f"test ({p.name})", scored.metas,
                     {s: n for s, n in expected.items() if sources is None or s in sources})
        seconds = time.perf_counter() - t0
        metrics = scored.metrics(calibrated=calibrated)
        results[p.name] = {"family": p.family, "severity": p.severity, "label": p.label,
                           "set": primary_source if sources else "combined_test",
                           "images": int(scored.labels.size), "seconds": round(seconds, 3),
                           "metrics": metrics["all"]}
        # group and frame: a video's frames are one unit of the statistics (detector.evaluate.metrics.clusters)
        predictions[p.name] = {k: v for k, v in scored.predictions().items() if k in ("labels", "probs_real",
                                                                                       "sha256", "group", "frame")}
        log.info("robustness %s on %s: accuracy %.4f (%d images, %.0f images/s)", p.name, results[p.name]["set"],
                 metrics["all"]["accuracy"], scored.labels.size, scored.labels.size / max(seconds, 1e-9))
    return {"data": origin, "primary_source": primary_source, "calibrated_threshold": calibrated,
            "perturbations": results}, predictions
