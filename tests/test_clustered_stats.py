"""Frames of one video are not independent images. A simulated Celeb-DF test set of 100 videos x 10 frames,
drawn 1000 times: the statistics that resample and test whole videos keep their promises (a 95 % interval
covers the truth in about 95 % of the test sets, a test at the 5 % level rejects a true "equally accurate" in
about 5 %), and the same statistics with every frame taken as an image do not."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from detector.evaluate.metrics import clusters, units
from detector.evaluate.paired import accuracy_difference, mcnemar
from detector.evaluate.statistics import bootstrap_metrics, resample_counts

VIDEOS, FRAMES, SIMULATIONS, RESAMPLES = 100, 10, 1000, 1000
# A frame is right when MU + video + model + noise > 0: the video's effect (a hard video is hard for every
# model), the model's own effect on that video, and the frame's noise, normal with standard deviations
# SIGMA_VIDEO, SIGMA_MODEL and 1. The first two make a video's frames agree, as real detectors' frames do.
MU, SIGMA_VIDEO, SIGMA_MODEL = 1.5, 1.5, 1.0
BETTER = 0.5  # the second model's MU is larger by this where the two differ
# Over all frames the sum is normal with mean MU and standard deviation SD, so a frame is right with
# probability Phi(MU / SD): the true accuracies and their difference follow exactly, with no sample to
# estimate them from. Two models with the same MU are equally accurate by symmetry.
SD = math.sqrt(1 + SIGMA_VIDEO**2 + SIGMA_MODEL**2)
TRUE_ACCURACY = NormalDist().cdf(MU / SD)  # 0.767
TRUE_DIFFERENCE = NormalDist().cdf((MU + BETTER) / SD) - TRUE_ACCURACY  # 0.067

# The predictions file of one simulated test set: videos 0-49 real, 50-99 fake, frames in video order.
LABELS = np.repeat(np.arange(VIDEOS) < VIDEOS // 2, FRAMES).astype(int)
BLOCK = {"labels": LABELS.tolist(), "source": ["celebdf"] * LABELS.size,
         "group": [f"video{v}" for v in range(VIDEOS) for _ in range(FRAMES)],
         "frame": [f for _ in range(VIDEOS) for f in range(FRAMES)]}


@pytest.fixture(scope="module")
def simulated() -> dict[str, np.ndarray]:
    """Per simulation (rows) and frame (columns): the latent score of model A, and whether A, a model B as
    accurate as A, and a model C better than A get each frame right. A, B and C see the same videos."""
    rng = np.random.default_rng(2024)
    video = rng.normal(0, SIGMA_VIDEO, (SIMULATIONS, VIDEOS, 1))

    def latent(mu: float) -> np.ndarray:
        model = rng.normal(0, SIGMA_MODEL, (SIMULATIONS, VIDEOS, 1))
        return (mu + video + model + rng.normal(0, 1, (SIMULATIONS, VIDEOS, FRAMES))).reshape(SIMULATIONS, -1)

    a = latent(MU)
    return {"latent_a": a, "a": a > 0, "b": latent(MU) > 0, "c": latent(MU + BETTER) > 0}


def bootstrap_accuracy(correct: np.ndarray, ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The 95 % percentile bootstrap interval of accuracy of every simulation at once (rows of ``correct``):
    ``bootstrap_metrics``' own arithmetic (the same draws, the same weighted counts), on all rows in one
    matrix product instead of one call per simulation."""
    ids = units(ids, correct.shape[1])
    draws = []
    for counts in resample_counts(int(ids.max()) + 1, RESAMPLES, seed=0):
        w = counts[:, ids]
        draws.append((w @ correct.T) / w.sum(axis=1, keepdims=True))
    low, high = np.percentile(np.concatenate(draws), [2.5, 97.5], axis=0)
    return low, high


def test_the_frames_of_a_video_are_one_cluster():
    ids = clusters(BLOCK)
    assert ids.max() + 1 == VIDEOS and np.array_equal(ids, np.repeat(np.arange(VIDEOS), FRAMES))


def test_the_vectorised_bootstrap_is_bootstrap_metrics_own(simulated):
    # Real frames are right when P(real) >= 0.5, fake ones when it is below: P(real) = sigmoid(latent) or
    # 1 - sigmoid(latent) turns A's latent score into the predictions that the report would read.
    first = slice(0, 2)
    low, high = bootstrap_accuracy(simulated["a"][first].astype(float), clusters(BLOCK))
    for s in range(2):
        right = 1 / (1 + np.exp(-simulated["latent_a"][s]))
        probs = np.where(LABELS == 1, right, 1 - right)
        r = bootstrap_metrics(LABELS, {"a": probs}, clusters=clusters(BLOCK), resamples=RESAMPLES)["a"]["accuracy"]
        assert r["estimate"] == simulated["a"][s].mean()
        assert (r["low"], r["high"]) == (low[s], high[s])


def coverage(low: np.ndarray, high: np.ndarray, truth: float) -> float:
    return float(np.mean((low <= truth) & (truth <= high)))


def test_resampling_videos_covers_the_true_accuracy_and_resampling_frames_does_not(simulated):
    correct = simulated["a"].astype(float)
    by_video = coverage(*bootstrap_accuracy(correct, clusters(BLOCK)), TRUE_ACCURACY)
    by_frame = coverage(*bootstrap_accuracy(correct, None), TRUE_ACCURACY)
    assert 0.92 <= by_video <= 0.97, by_video  # 0.948 with this seed; 0.936-0.959 with seeds 0-6
    assert by_frame < 0.75, by_frame  # 0.605: the frame-level interval is far too narrow


def test_the_paired_test_by_video_holds_its_level_and_mcnemar_by_frame_does_not(simulated):
    # A and B are equally accurate: every rejection at the 5 % level is a false one
    a, b, ids = simulated["a"], simulated["b"], clusters(BLOCK)
    by_video = np.mean([mcnemar(a[s], b[s], clusters=ids)["p_value"] < 0.05 for s in range(SIMULATIONS)])
    by_frame = np.mean([mcnemar(a[s], b[s])["p_value"] < 0.05 for s in range(SIMULATIONS)])
    assert by_video <= 0.07, by_video  # 0.059 with this seed; 0.038-0.053 with seeds 0-6
    assert by_frame > 0.2, by_frame  # 0.295


def test_the_interval_of_the_difference_by_video_covers_the_true_difference(simulated):
    a, c, ids = simulated["a"], simulated["c"], clusters(BLOCK)
    by_video = [accuracy_difference(a[s], c[s], clusters=ids)[1] for s in range(SIMULATIONS)]
    by_frame = [accuracy_difference(a[s], c[s])[1] for s in range(SIMULATIONS)]
    covered = {name: coverage(np.array([iv["low"] for iv in ivs]), np.array([iv["high"] for iv in ivs]),
                              TRUE_DIFFERENCE) for name, ivs in (("video", by_video), ("frame", by_frame))}
    assert 0.92 <= covered["video"] <= 0.97, covered  # 0.952 with this seed; 0.942-0.952 with seeds 0-6
    assert covered["frame"] < 0.8, covered  # 0.717: Tango's interval over frames
