"""The trainables' registry: what each stage's trials run, and swapping them for a while (as
bench/cluster_schedule.py does with trials that model the work)."""

from __future__ import annotations

import pytest

from detector.job.tune import replaced_trainables, trainable
from detector.job.tune.trainables import detector_evaluate, detector_search


def modelled(config, ctx):
    pass


def test_a_replacement_lasts_the_block_and_leaves_the_other_stages_alone():
    with replaced_trainables({"evaluate": modelled}):
        assert trainable("evaluate") is modelled
        assert trainable("search") is detector_search
    assert trainable("evaluate") is detector_evaluate


def test_the_real_trainables_come_back_when_the_block_fails():
    with pytest.raises(RuntimeError, match="boom"), replaced_trainables({"search": modelled}):
        raise RuntimeError("boom")
    assert trainable("search") is detector_search


def test_a_stage_without_trainable_is_refused_by_name():
    with pytest.raises(ValueError, match="no trainable for stage.*report"), replaced_trainables({"report": modelled}):
        pass
