"""The yardstick of bench/cluster_schedule.py: the ideal schedule it compares the real one with, and how it
reads start latencies from the trials' own clocks. (The benchmark itself runs Ray and is not a test.)"""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import cluster_schedule  # noqa: E402
from cluster_schedule import node_gpus, stage_lower_bound, start_latencies  # noqa: E402


def test_the_module_examples_hold():
    assert doctest.testmod(cluster_schedule).failed == 0


@pytest.mark.parametrize("durations, gpus, ideal", [
    ([10.0] * 20, 4, 50.0),      # the paper's search on 4 GPUs: 5 rounds of 10 epochs
    ([10.0] * 20, 8, 30.0),      # 3 rounds, not the 25 that total / GPUs would say
    ([10.0] * 20, 20, 10.0),
    ([10.0] * 20, 32, 10.0),     # more GPUs than trials: the longest trial
    ([20.0], 8, 20.0),           # the baseline
    ([1.0] * 5, 1, 5.0),         # evaluations one at a time
    ([], 4, 0.0),
])
def test_the_ideal_of_equal_trials_is_whole_rounds(durations, gpus, ideal):
    assert stage_lower_bound(durations, gpus) == ideal


def test_a_stage_needs_a_gpu():
    with pytest.raises(ValueError, match="gpus must be >= 1"):
        stage_lower_bound([1.0], 0)


def test_the_ideal_of_unequal_trials_is_a_bound_no_schedule_beats():
    # ASHA-like: 4 trials ran 10 epochs, 4 ran 4, 12 ran 2, on 8 GPUs
    durations = [10.0] * 4 + [4.0] * 4 + [2.0] * 12
    bound = stage_lower_bound(durations, 8)
    assert bound == pytest.approx(10.0)  # the long trials, each on a GPU of its own; the rest fit beside them
    # a schedule that meets it: one long trial per GPU on 4 GPUs, the 40 s of short ones on the other 4
    assert sum(durations[4:]) / 4 <= bound
    assert stage_lower_bound([3.0, 3.0, 2.0, 2.0, 2.0], 2) == pytest.approx(6.0)  # met by 3+3 | 2+2+2
    assert stage_lower_bound([3.0, 3.0, 3.0], 2) == pytest.approx(6.0)  # two of three share a GPU


def test_start_latency_is_how_long_a_free_gpu_waited():
    # 2 GPUs free at 0; actors 1 and 2 start their trials at 1 and 1.5; actor 1 runs a second trial 0.25 s
    # after its first; actor 3 takes actor 2's GPU, free since 5, at 6
    trials = [(1.0, 5.0, 1), (1.5, 5.0, 2), (5.25, 9.0, 1), (6.0, 7.0, 3)]
    assert start_latencies(trials, 2, stage_start=0.0) == [(1.0, False), (1.5, False), (0.25, True), (1.0, False)]
    # in order of start, whatever the order of the input
    assert start_latencies(trials[::-1], 2, stage_start=0.0) == start_latencies(trials, 2, stage_start=0.0)
    # a reused actor's trial is timed from its own actor's previous trial, even when another GPU was free earlier
    assert start_latencies([(0.0, 1.0, 1), (0.0, 9.0, 2), (9.5, 10.0, 2)], 3, 0.0)[2] == (0.5, True)


def test_nodes_are_full_nodes_and_one_for_the_rest():
    assert node_gpus(4, 8) == [4]
    assert node_gpus(8, 8) == [8]
    assert node_gpus(20, 8) == [8, 8, 4]
