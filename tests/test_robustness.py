"""Robustness perturbations: what each does, that it runs before the resize, and that every model sees the
same perturbed images (deterministic, whatever the worker count)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import ConfigError, from_dict
from detector.data.pixels import derive_pixels
from detector.evaluate.robustness import (Perturbation, RobustnessSection, downscale_and_back, evaluate_robustness,
                                          gaussian_blur, jpeg_recompress, perturbed_loader, source_data)
from detector.job.experiment import ExperimentConfig
from detector.model import build_model


def noise(size=(40, 24), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def as_array(x) -> np.ndarray:
    return np.asarray(x) if isinstance(x, Image.Image) else x.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("p", [Perturbation("jpeg", 30), Perturbation("blur", 2.0), Perturbation("downscale", 0.5),
                               Perturbation("format", 95)])
def test_each_perturbation_is_a_pure_function_of_the_image(p):
    image = noise()
    first, again = as_array(p(image)), as_array(p(noise()))
    assert first.shape == (24, 40, 3) and first.dtype == np.uint8  # the stored size: the resize comes after
    assert np.array_equal(first, again)
    assert not np.array_equal(first, np.asarray(image))


def test_what_each_perturbation_does():
    # JPEG: the re-encoded image is what Pillow's encoder at that quality and the loader's decoder give
    image = noise()
    q50 = as_array(jpeg_recompress(image, 50))
    assert np.abs(q50.astype(int) - np.asarray(image, int)).mean() > np.abs(
        as_array(jpeg_recompress(image, 95)).astype(int) - np.asarray(image, int)).mean()
    # blur: one white pixel spreads into a symmetric Gaussian of the given sigma
    dot = np.zeros((21, 21, 3), np.uint8)
    dot[10, 10] = 255
    blurred = as_array(gaussian_blur(Image.fromarray(dot), 1.0))[..., 0].astype(float)
    assert blurred[10, 10] == blurred.max() and blurred[10, 9] == blurred[10, 11] == blurred[9, 10]
    ratio = blurred[10, 9] / blurred[10, 10]
    assert ratio == pytest.approx(np.exp(-0.5), abs=0.03)  # exp(-1 / (2 sigma^2)) at one pixel
    # down-scaling by 1/2 and back turns a one-pixel checkerboard into flat grey
    board = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
    flat = as_array(downscale_and_back(Image.fromarray(np.stack([board] * 3, axis=-1)), 0.5))
    assert flat.std() < 2 and abs(flat.mean() - 127.5) < 2


def test_the_perturbed_loader_perturbs_before_the_resize_and_keeps_the_clean_order(demo_shards):
    from detector.data.loader import ReadSpec, build_loader

    seen = []

    def record(image):
        seen.append(image.size)
        return image

    perturbed = perturbed_loader(str(demo_shards), record, image_size=8, batch_size=4)
    clean = build_loader(str(demo_shards), "test", ReadSpec(image_size=8, with_meta=True), batch_size=4,
                         normalize=False, num_workers=0)
    for (x, y, meta), (cx, cy, cmeta) in zip(perturbed, clean, strict=True):
        assert torch.equal(x, cx) and torch.equal(y, cy) and meta["sha256"] == cmeta["sha256"]  # identity: same batches
    assert set(seen) == {(16, 16)}  # the stored size, not the model's 8 px


def perturbed_images(loader) -> dict[str, bytes]:
    """sha256 of each image as stored -> its perturbed, resized pixels (workers cut batches differently)."""
    out = {}
    for x, _, meta in loader:
        for image, sha in zip(x, meta["sha256"]):
            out[sha] = image.numpy().tobytes()
    return out


def test_perturbed_images_are_the_same_whatever_the_workers(demo_shards):
    p = Perturbation("jpeg", 30)
    images = {w: perturbed_images(perturbed_loader(str(demo_shards), p, image_size=16, batch_size=3, num_workers=w))
              for w in (0, 2)}
    assert len(images[0]) == 10 and images[0] == images[2]
    assert images[0] == perturbed_images(perturbed_loader(str(demo_shards), p, image_size=16, batch_size=3))


def test_every_model_is_scored_on_the_same_perturbed_images(demo_shards):
    cfg = RobustnessSection(enabled=True, jpeg_quality=(50,), blur_sigma=(1.0,), downscale=(0.5,))
    runs = [evaluate_robustness(build_model("resnet18", seed=seed), str(demo_shards), cfg, primary_source=None,
                                image_size=16, batch_size=4) for seed in (0, 1)]
    (results_a, pred_a), (results_b, pred_b) = runs
    assert list(results_a["perturbations"]) == ["jpeg-q50", "blur-s1", "downscale-x0.5", "format-jpeg-q95"]
    for name in pred_a:
        assert pred_a[name]["sha256"] == pred_b[name]["sha256"] and pred_a[name]["labels"] == pred_b[name]["labels"]
        assert results_a["perturbations"][name]["images"] == 10  # the demo test split
    assert pred_a["jpeg-q50"]["probs_real"] != pred_b["jpeg-q50"]["probs_real"]  # two different models


def test_a_pixel_dataset_is_perturbed_from_its_original_images(demo_shards, tmp_path):
    pixels = tmp_path / "pixels"
    derive_pixels(str(demo_shards), pixels, size=16, workers=1)
    assert source_data(str(pixels)) == str(demo_shards)
    assert source_data(str(demo_shards)) == str(demo_shards)


@pytest.mark.parametrize("section, message", [
    ({"jpeg_quality": [0]}, r"jpeg_quality\[0\]: 0 is not in \[1, 100\] \(a JPEG quality\)"),
    ({"downscale": [1.0]}, r"downscale\[0\]: 1.0 is not in \(0, 1\) \(a factor of the image's size\)"),
    ({"blur_sigma": [-1]}, r"blur_sigma\[0\]: -1.0 is not in \(0, 50\] \(a blur sigma in pixels\)"),
    ({"jpeg_quality": [50, 50]}, r"jpeg_quality: duplicates in \[50, 50\]"),
    ({"enabled": True, "jpeg_quality": [], "blur_sigma": [], "downscale": [], "format_equalisation": False},
     "no perturbation is listed"),
])
def test_bad_robustness_settings_name_the_key(section, message):
    with pytest.raises(ConfigError, match=f"evaluate.robustness.*{message}"):
        from_dict(ExperimentConfig, {"evaluate": {"robustness": section}})


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_the_blur_is_a_normalised_gaussian_of_that_sigma(sigma):
    # a white square on black: blurring keeps the total (a normalised kernel), and the profile across an edge
    # is the Gaussian's integral: 50 % on the edge, ~84 % one sigma inside
    a = np.zeros((64, 64, 3), np.uint8)
    a[16:48, 16:48] = 200
    out = as_array(gaussian_blur(Image.fromarray(a), sigma)).astype(float)
    assert out.sum() == pytest.approx(a.sum(), rel=1e-3)
    row = out[32, :, 1]
    assert (row[15] + row[16]) / 2 == pytest.approx(100, abs=2)  # the edge lies between pixels 15 and 16
    inside = 16 + round(sigma) - 0.5  # one sigma inside the edge, between two pixels
    assert np.interp(inside, np.arange(64), row) == pytest.approx(200 * 0.8413, abs=6)
