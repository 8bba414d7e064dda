"""Pruning schedules (detector.prune.schedule) in the one training loop: gradual (Zhu & Gupta's cubic ramp),
iterative (steps, optionally rewinding), their checkpoints and resume, their config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from test_train import SMALL, loaders, _Interrupt

from detector.checkpoint import load_checkpoint, load_model
from detector.config import ConfigError
from detector.model import build_model
from detector.prune import PruningInfo, measured_sparsity
from detector.prune.channels import dense_prunable_params, removed_fraction
from detector.prune.schedule import PruningSchedule, gradual_sparsity, iterative_sparsities
from detector.prune.unstructured import dense_state_dict, effective_weight, prunable_weights
from detector.train import TrainConfig, fit

ARCH = "resnet18"
N = dense_prunable_params(ARCH)
STEPS = 2  # optimisation steps per epoch in these runs (max_train_batches)


def tiny_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**SMALL, "max_epochs": 3, "patience": None, "max_train_batches": STEPS, **kw})


class Recorder:
    """A hook around a schedule's hook that records what it did, as fit drives it."""

    def __init__(self, hook, before_step=None):
        self.hook, self.before_step = hook, before_step
        self.after_steps: list[tuple[int, float]] = []  # (step, measured sparsity after it)
        self.epochs: list[tuple[int, float, dict]] = []  # (epoch, sparsity, state) right after before_epoch

    def __getattr__(self, name):
        return getattr(self.hook, name)

    @property
    def at_target(self):
        return self.hook.at_target

    def before_epoch(self, model, epoch):
        changed = self.hook.before_epoch(model, epoch)
        self.epochs.append((epoch, measured_sparsity(model, ARCH),
                            {k: v.detach().clone() for k, v in dense_state_dict(model).items()}))
        return changed

    def after_step(self, model):
        if self.before_step is not None:
            self.before_step(self.hook, model)
        self.hook.after_step(model)
        self.after_steps.append((getattr(self.hook, "step", None), measured_sparsity(model, ARCH)))


def global_l1_masks(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Independently of torch.nn.utils.prune: 0 at the round(sparsity * N) smallest |w| of all layers together."""
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[: round(sparsity * flat.numel())]] = False
    return list(torch.split(keep, [w.numel() for w in weights]))


def masks(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight_mask.bool().reshape(-1) for m, _ in prunable_weights(model)]


# --- gradual ---------------------------------------------------------------------------------------


# every step; and every 3rd step from 0.3, where the ramp (4 steps) ends with a shorter interval
@pytest.mark.parametrize("every, initial", [(1, 0.0), (3, 0.3)])
def test_gradual_sparsity_at_each_step_is_the_cubic_formula(tmp_path, every, initial):
    target, epochs = 0.9, 2
    schedule = PruningSchedule("gradual", gradual_epochs=epochs, prune_every_steps=every,
                               gradual_initial_sparsity=initial)
    rec = Recorder(schedule.hook(target, method="unstructured", arch=ARCH))
    fit(build_model(ARCH, seed=0), *loaders(), tiny_cfg(max_epochs=3), out_dir=tmp_path, schedule=rec)

    ramp = epochs * STEPS  # n * dt
    pruned_at = [t for t in range(ramp + 1) if t % every == 0 or t == ramp]
    assert [t for t, _ in rec.after_steps] == list(range(1, 3 * STEPS + 1))
    for t, measured in rec.after_steps:
        last = max(p for p in pruned_at if p <= t)  # the masks in force come from the last pruning step
        s_t = target + (initial - target) * (1 - last / ramp) ** 3
        assert measured == pytest.approx(s_t, abs=1 / N), t
    assert rec.epochs[0][1] == pytest.approx(initial, abs=1 / N)  # t = 0, before any training
    assert gradual_sparsity(ramp + 5, target=target, initial=initial, ramp_steps=ramp, every=every) == target


def test_masks_after_a_gradual_run_are_the_global_l1_masks_of_the_weights_at_the_target(tmp_path):
    schedule = PruningSchedule("gradual", gradual_epochs=2, prune_every_steps=1)
    hook = schedule.hook(0.8, method="unstructured", arch=ARCH)
    before_last = {}

    def snapshot(hook, model):
        if hook.step + 1 == hook.ramp_steps:  # the step that brings the target
            before_last["weights"] = [effective_weight(m).detach().clone() for m, _ in prunable_weights(model)]

    model = build_model(ARCH, seed=0)
    result = fit(model, *loaders(), tiny_cfg(), out_dir=tmp_path, schedule=Recorder(hook, snapshot))
    assert result.best_epoch >= 2  # an epoch at the target
    # The masks are global L1 of the weights as they were when the target was set ...
    want = global_l1_masks(before_last["weights"], 0.8)
    assert all(torch.equal(w, m) for w, m in zip(want, masks(model)))
    # ... and, since pruned weights are zero, of the final weights too.
    final = [effective_weight(m) for m, _ in prunable_weights(model)]
    assert all(torch.equal(w, m) for w, m in zip(global_l1_masks(final, 0.8), masks(model)))
    assert measured_sparsity(model, ARCH) == pytest.approx(0.8, abs=1 / N)


def test_only_epochs_at_the_target_can_be_the_best_or_stop_early(tmp_path):
    schedule = PruningSchedule("gradual", gradual_epochs=2, prune_every_steps=1)
    result = fit(build_model(ARCH, seed=0), *loaders(), tiny_cfg(max_epochs=3, patience=1), out_dir=tmp_path,
                 schedule=schedule.hook(0.9, method="unstructured", arch=ARCH))
    first, *rest = result.history
    assert "best_val_accuracy" not in first and first["current_sparsity"] < 0.9
    assert all(row["current_sparsity"] == pytest.approx(0.9, abs=1 / N) for row in rest)
    assert result.best_epoch in (2, 3)
    meta = load_checkpoint(result.best_checkpoint)["metadata"]
    info = PruningInfo.from_metadata(meta)
    assert (info.method, info.sparsity, info.schedule) == ("unstructured", 0.9, "gradual")
    assert info.schedule_params == {"gradual_epochs": 2, "prune_every_steps": 1, "gradual_initial_sparsity": 0.0,
                                    "steps_per_epoch": STEPS, "ramp_steps": 2 * STEPS}


# --- iterative -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, tolerance", [("unstructured", 1 / N), ("structured", 0.01)])
def test_iterative_pruning_reaches_each_step_s_target(tmp_path, method, tolerance):
    schedule = PruningSchedule("iterative", iterative_steps=3, iterative_epochs=1)
    targets = iterative_sparsities(0.9, 3)
    assert targets[-1] == 0.9 and [round(1 - s, 4) for s in targets] == [round(0.1 ** (j / 3), 4) for j in (1, 2, 3)]
    model = build_model(ARCH, seed=0)
    result = fit(model, *loaders(), tiny_cfg(max_epochs=4), out_dir=tmp_path,
                 schedule=schedule.hook(0.9, method=method, arch=ARCH))
    got = [row["current_sparsity"] for row in result.history]
    assert got == pytest.approx([*targets, 0.9], abs=tolerance)
    assert result.best_epoch >= 3
    loaded, meta = load_model(result.best_checkpoint)
    info = PruningInfo.from_metadata(meta)
    assert (info.method, info.schedule, info.schedule_params["steps_done"]) == (method, "iterative", 3)
    assert measured_sparsity(loaded, ARCH) == pytest.approx(0.9, abs=tolerance)
    if method == "structured":  # the channels are gone, not zeroed
        assert removed_fraction(loaded, ARCH) == pytest.approx(0.9, abs=0.01)
        assert loaded.layer1[0].conv1.out_channels < 64


def test_rewinding_sets_the_surviving_weights_back_to_the_rewind_epoch(tmp_path):
    schedule = PruningSchedule("iterative", iterative_steps=3, iterative_epochs=1, rewind_epoch=1)
    after_epoch = {}

    def keep(metrics, ckpt_dir):
        after_epoch[metrics["epoch"]] = {k: v.detach().clone() for k, v in dense_state_dict(model).items()}

    model = build_model(ARCH, seed=0)
    rec = Recorder(schedule.hook(0.8, method="unstructured", arch=ARCH))
    fit(model, *loaders(), tiny_cfg(), out_dir=tmp_path, schedule=rec, on_epoch=keep)
    epoch, _, at_step_3 = rec.epochs[2]  # epoch 3 begins with step 3, then rewinds
    assert epoch == 3
    rewound_to, trained = after_epoch[1], after_epoch[2]
    for key, value in at_step_3.items():
        if key.endswith(".weight") and value.dim() > 1:  # a pruned weight: survivors rewound, the rest zero
            survivors = value != 0
            assert torch.equal(value[survivors], rewound_to[key][survivors]), key
        else:  # BatchNorm and biases: the rewind epoch's values
            assert torch.equal(value, rewound_to[key]), key
    assert not torch.equal(at_step_3["fc.weight"], trained["fc.weight"] * (at_step_3["fc.weight"] != 0))


# --- resume ----------------------------------------------------------------------------------------

SCHEDULES = {
    "gradual": (PruningSchedule("gradual", gradual_epochs=2, prune_every_steps=1), "unstructured", 1),
    "iterative-rewind": (PruningSchedule("iterative", iterative_steps=3, iterative_epochs=1, rewind_epoch=0),
                         "unstructured", 2),
    "iterative-channels": (PruningSchedule("iterative", iterative_steps=2, iterative_epochs=1), "structured", 1),
}


@pytest.mark.slow  # three fits each (straight, interrupted, resumed)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_resume_mid_schedule_gives_the_identical_result(tmp_path, name):
    schedule, method, stop_after = SCHEDULES[name]
    cfg = tiny_cfg()

    def run(out, **kw):
        model = build_model(ARCH, seed=kw.pop("seed", 0))
        result = fit(model, *loaders(), cfg, out_dir=out, schedule=schedule.hook(0.8, method=method, arch=ARCH),
                     **kw)
        return model, result

    straight, straight_result = run(tmp_path / "straight")

    def interrupt(metrics, ckpt_dir):
        if metrics["epoch"] == stop_after:  # mid-ramp: the schedule has not reached its target yet
            assert metrics["current_sparsity"] < 0.8 - 1e-3
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(tmp_path / "resumed", on_epoch=interrupt)
    resumed, resumed_result = run(tmp_path / "resumed", seed=99)  # the weights come from state.pt

    timing = ("images_per_s", "data_wait_s")
    strip = [{k: v for k, v in row.items() if k not in timing} for row in straight_result.history]
    assert [{k: v for k, v in row.items() if k not in timing} for row in resumed_result.history] == strip
    a, b = straight.state_dict(), resumed.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = [load_checkpoint(r.best_checkpoint)["metadata"]["pruning"] for r in (straight_result, resumed_result)]
    assert meta[0] == meta[1]


def test_resuming_with_another_schedule_is_refused(tmp_path):
    gradual = PruningSchedule("gradual", gradual_epochs=1, prune_every_steps=1)
    fit(build_model(ARCH), *loaders(), tiny_cfg(max_epochs=1), out_dir=tmp_path,
        schedule=gradual.hook(0.5, method="unstructured", arch=ARCH))
    iterative = PruningSchedule("iterative", iterative_steps=2, iterative_epochs=1)
    with pytest.raises(ValueError, match="state.pt.*same schedule"):
        fit(build_model(ARCH), *loaders(), tiny_cfg(), out_dir=tmp_path,
            schedule=iterative.hook(0.5, method="unstructured", arch=ARCH))
    with pytest.raises(ValueError, match="state.pt.*with a pruning schedule"):
        fit(build_model(ARCH), *loaders(), tiny_cfg(), out_dir=tmp_path)


def test_a_run_too_short_for_its_schedule_is_refused_before_training(tmp_path):
    schedule = PruningSchedule("iterative", iterative_steps=3, iterative_epochs=2)  # target in epoch 5
    with pytest.raises(ValueError, match="max_epochs: 4 epochs end before schedule iterative"):
        fit(build_model(ARCH), *loaders(), tiny_cfg(max_epochs=4), out_dir=tmp_path,
            schedule=schedule.hook(0.5, method="unstructured", arch=ARCH))
    assert not (tmp_path / "checkpoint").exists()


# --- the stage function and the config ------------------------------------------------------------


def test_train_stage_fine_tunes_along_the_experiment_s_schedule(tmp_path):
    from pipeline_helpers import make_tiny_data, tiny_experiment, write_untrained_baseline

    from detector.job.stages import train_stage

    data = make_tiny_data(tmp_path / "data")
    exp = tiny_experiment(data, search={"schedule": "gradual", "gradual_epochs": 1, "prune_every_steps": 1,
                                        "sparsities": [0.95]}, finetune={"max_epochs": 2})
    baseline = write_untrained_baseline(tmp_path / "run", exp)
    out = tmp_path / "run" / "models" / "prune-95.pt"
    summary = train_stage(exp.stage_train("finetune"), data=str(data), out_dir=tmp_path / "trial", tb_dir=None,
                          init=baseline, sparsity=0.95, method=exp.search.method,
                          schedule=exp.search.pruning_schedule(), model_path=out)
    assert summary["epochs_run"] == 2
    model, meta = load_model(out)
    info = PruningInfo.from_metadata(meta)
    assert (info.method, info.sparsity, info.schedule) == ("unstructured", 0.95, "gradual")
    assert info.achieved == pytest.approx(0.95, abs=1 / N) and info.schedule_params["ramp_steps"] >= 1
    assert measured_sparsity(model, ARCH) == pytest.approx(0.95, abs=1 / N)
    best = load_checkpoint(summary["best_checkpoint"])["metadata"]
    assert PruningInfo.from_metadata(best) == info and best["hparams"]["method"] == "unstructured/gradual"


def test_the_default_schedule_is_the_paper_s_one_shot(tmp_path):
    from pipeline_helpers import tiny_experiment

    exp = tiny_experiment(tmp_path)
    assert exp.search.schedule == "oneshot" and exp.search.pruning_schedule() == PruningSchedule()
    assert PruningSchedule().hook(0.4, method="unstructured", arch=ARCH) is None  # pruned once, before training


@pytest.mark.parametrize("search, key, reason", [
    ({"schedule": "gradual", "method": "structured"}, "search.schedule", "gradual is for unstructured pruning"),
    ({"schedule": "iterative", "method": "structured", "rewind_epoch": 0}, "search.rewind_epoch",
     "rewinding is for unstructured pruning"),
    ({"schedule": "oneshot", "rewind_epoch": 1}, "search.rewind_epoch", "belongs to schedule iterative"),
    ({"schedule": "iterative", "iterative_epochs": 1, "rewind_epoch": 2}, "search.rewind_epoch", "not in"),
    ({"schedule": "iterative", "iterative_steps": 1}, "search.iterative_steps",
     "1 is not in [2, inf) (one step is schedule oneshot)"),
    ({"schedule": "gradual", "prune_every_steps": 0}, "search.prune_every_steps", "0 is not in [1, inf)"),
    ({"schedule": "gradual", "gradual_initial_sparsity": 0.2}, "search.gradual_initial_sparsity",
     "below the target sparsity 0.1"),
    ({"schedule": "gradual", "gradual_epochs": 2}, "search_train.max_epochs", "reaches its target"),
    ({"schedule": "staircase"}, "search.schedule", "not one of"),
    ({"sparsities": [0.5, 0.96], "method": "structured"}, "search.sparsities", "up to 0.95"),
    ({"sparsities": [0.1234561, 0.1234562]}, "search.sparsities", "model name prune-12.3456 twice"),
])
def test_bad_schedule_settings_name_the_key_and_the_reason(tmp_path, search, key, reason):
    from pipeline_helpers import tiny_experiment

    with pytest.raises(ConfigError, match=key) as e:
        tiny_experiment(tmp_path, search={"sparsities": [0.1, 0.2], **search})
    assert reason in str(e.value)


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_sparsities_up_to_95_percent_are_accepted(tmp_path, method):
    from pipeline_helpers import tiny_experiment

    exp = tiny_experiment(tmp_path, search={"sparsities": [0.5, 0.8, 0.9, 0.95], "method": method,
                                            "schedule": "iterative", "iterative_epochs": 1, "iterative_steps": 2},
                          search_train={"max_epochs": 2}, finetune={"max_epochs": 2})
    assert exp.search.sparsities == (0.5, 0.8, 0.9, 0.95)
