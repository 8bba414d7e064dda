"""Scoring a model on a split of the shards: its probability of Real for every image, in loader order,
checked against the counts the manifest promises (``score_split``), and that score's metrics and
predictions file (``Scored``, ``evaluate_split``).

This is the input/output side of evaluation; the arithmetic on the scores is ``detector.evaluate.metrics``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from detector.evaluate.metrics import breakdown_metrics

log = logging.getLogger(__name__)


def expected_counts(manifest: Mapping[str, Any], split: str) -> dict[str, int]:
    """Samples per source that the manifest promises for ``split`` (``splits.<split>.<source>.{real,fake}``)."""
    by_source = manifest.get("splits", {}).get(split, {})
    counts = {}
    for source, classes in by_source.items():
        if isinstance(classes, Mapping):
            counts[source] = int(classes.get("real", 0)) + int(classes.get("fake", 0))
    return counts


# The metadata a predictions file's readers need: paired tests match images by sha256, video scores group
# frames by group and frame, the per-source and per-generator views read source and generator.
PREDICTION_KEYS = ("source", "generator", "sha256", "group", "frame")


@dataclass(frozen=True)
class Scored:
    """One model's outputs on one split, in loader order."""

    split: str
    data_manifest_sha256: str
    labels: np.ndarray
    probs_real: np.ndarray
    metas: dict[str, list[str]]

    def metrics(self, *, threshold: float = 0.5, calibrated: float | None = None) -> dict[str, Any]:
        return breakdown_metrics(self.labels, self.probs_real, self.metas, threshold=threshold,
                                 calibrated=calibrated)

    def predictions(self) -> dict[str, list]:
        """What ``eval/<model>.predictions.json`` keeps per image (for ROC curves, paired tests, videos).

        Each probability is kept whole (a float32 is exactly a float, and JSON writes a float so that it reads
        back the same): the statistics recomputed from this file then see the scores the metrics saw, where
        rounding would move a score just below the threshold onto it."""
        return {
            "labels": self.labels.tolist(),
            "probs_real": [float(x) for x in self.probs_real],
            **{k: [str(v) for v in self.metas[k]] for k in PREDICTION_KEYS if k in self.metas},
        }


def check_counts(data: str, split: str, metas: Mapping[str, Sequence[Any]], expected: Mapping[str, int]) -> None:
    """Warn where the loader gave another number of samples per source than the manifest lists."""
    seen: dict[str, int] = {}
    for s in metas["source"]:
        seen[str(s)] = seen.get(str(s), 0) + 1
    for source, n in expected.items():
        if n and seen.get(source, 0) != n:
            log.warning("%s %s/%s: scored %d samples, the manifest lists %d", data, split, source,
                        seen.get(source, 0), n)


def score_split(
    model: Any,
    data: str,
    split: str,
    *,
    image_size: int,
    batch_size: int = 128,
    device: Any = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
) -> Scored:
    """``model``'s probability of Real for every image of ``split`` in the shards at ``data``."""
    import torch

    from detector.data.loader import ReadSpec, build_loader, manifest_sha256, read_manifest
    from detector.passes import collect_predictions

    device = torch.device(device)
    manifest = read_manifest(data)
    expected = expected_counts(manifest, split)
    if not any(expected.values()):
        raise ValueError(f"{data}: the manifest lists no {split} samples")
    loader = build_loader(data, split, ReadSpec(image_size=image_size, with_meta=True), batch_size=batch_size,
                          num_workers=num_workers, pin_memory=device.type == "cuda", normalize=False)
    labels, probs, metas = collect_predictions(model, loader, device=device, precision=precision)
    if metas is None or "source" not in metas:
        raise ValueError(f"{data}: the {split} loader returned no per-sample source (with_meta=True)")
    check_counts(data, split, metas, expected)
    return Scored(split, manifest_sha256(data), labels, probs, dict(metas))


def evaluate_split(model: Any, data: str, split: str, *, threshold: float = 0.5, calibrated: float | None = None,
                   **scoring: Any) -> dict[str, Any]:
    """Score ``model`` on every source of ``split`` in the shards at ``data`` (``scoring``: ``image_size``,
    ``batch_size``, ``device``, ``num_workers``, ``precision``, as ``score_split`` takes them).

    Returns ``{"split", "data_manifest_sha256", "metrics": breakdown_metrics(...), "predictions":
    {"labels", "probs_real", "source", "generator", "sha256", "group", "frame"}}`` (predictions in loader
    order, for ROC curves, paired comparisons between models and video-level scores).
    """
    scored = score_split(model, data, split, **scoring)
    return {
        "split": split,
        "data_manifest_sha256": scored.data_manifest_sha256,
        "metrics": scored.metrics(threshold=threshold, calibrated=calibrated),
        "predictions": scored.predictions(),
    }
