"""The folder one training run writes (``detector.train.fit``'s ``out_dir``): the only code that names its files.

Everyone who reads or writes a run's checkpoints, history or start time asks ``TrialDir`` for the path: the
training loop, a search trial's workspace (``detector.job.tune``), the benches and the tests. It also keeps
the rules that make the folder resumable after a crash between two writes, and the random number
generators' state that a resume restores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from detector.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from detector.io import atomic_write_text
from detector.prune import PruningInfo
from detector.prune.channels import conform_to_state_dict


@dataclass(frozen=True)
class TrialDir:
    """A training run's folder::

        config.yaml          the TrainConfig
        history.jsonl        one metrics row per epoch
        .best.pt             while fitting: the best epoch's weights (see ``best``)
        checkpoint/          what Ray Tune stores every epoch, and what a resume reads
            state.pt         the whole state after the last epoch (weights, optimizer, early stopping, RNG, ...)
            best.pt          the best epoch's weights: while fitting, only while the best is an earlier
                             epoch than the state's; after fitting, always (what ``load_model`` reads)
            trial_start.txt  a search trial's start time, so that a restarted trial keeps it

    While fitting, ``best.pt`` is a hard link to ``.best.pt``, kept only while the best epoch's weights differ
    from ``state.pt``'s: so each trial's storage holds one copy of a model.
    """

    root: Path

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def state(self) -> Path:
        return self.checkpoint_dir / "state.pt"

    @property
    def best(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def best_weights(self) -> Path:
        return self.root / ".best.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def start_file(self) -> Path:
        return self.checkpoint_dir / "trial_start.txt"

    def start_time(self) -> float:
        """When the trial first started: read from the checkpoint folder (a restarted trial's checkpoint
        brings it along), or now, written there for the next restart."""
        if self.start_file.is_file():
            return float(self.start_file.read_text())
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        self.start_file.write_text(repr(start))
        return start

    def read_history(self) -> list[dict[str, float]]:
        return [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]

    def write_history(self, rows: list[dict[str, float]]) -> None:
        atomic_write_text(self.history, "".join(json.dumps(row) + "\n" for row in rows))

    def load_resume(self, model: nn.Module, arch: str, *, keep_best: bool) -> dict[str, Any] | None:
        """The saved state of an interrupted fit, its weights (and masks) loaded into ``model``; or None.
        ``keep_best`` (the rank that writes): also put its best weights where fitting keeps them."""
        if not self.state.exists():
            return None
        resume = load_checkpoint(self.state)
        saved_arch = resume["metadata"].get("arch")
        if saved_arch != arch:
            raise ValueError(f"{self.state}: resuming a {saved_arch} run with arch {arch}")
        if PruningInfo.from_metadata(resume["metadata"], where=str(self.state)).structured:
            # Channels may have been removed since the model was built (an iterative schedule's later steps).
            conform_to_state_dict(model, resume["model"])
        # Weights (and masks) before the optimizer is built: its parameter order must match the saved one.
        load_state_into(model, resume["model"], source=self.state)
        if keep_best:
            self._keep_resumed_best(model, resume)
        return resume

    def _keep_resumed_best(self, model: nn.Module, resume: Mapping[str, Any]) -> None:
        """Put a resumed run's best weights where fitting keeps them (``best_weights``); ``model`` holds the
        resumed state's weights."""
        train_state = resume["train_state"]
        best_epoch = train_state["early_stopping"]["best_epoch"]
        if _best_is_own(train_state):
            save_checkpoint(self.best_weights, model, metadata=resume["metadata"])
            self.best.unlink(missing_ok=True)  # a best.pt left by a crash before the state was written
        elif best_epoch:
            if not self.best.is_file():
                raise ValueError(f"{self.state}: its best epoch ({best_epoch}) is not its own, and {self.best} is "
                                 "missing; the checkpoint folder is incomplete")
            _link(self.best, self.best_weights)

    def save_epoch(self, model: nn.Module, *, optimizer: torch.optim.Optimizer, metadata: Mapping[str, Any],
                   train_state: Mapping[str, Any]) -> None:
        """An epoch's files: the best weights when this epoch is the best, the state (``train_state``, the
        loop's own, with ``epoch``, ``early_stopping`` and ``history``), the history.

        Ordered so that a crash between two writes leaves a folder that resumes: a state whose best is its own
        epoch ignores a best.pt beside it, and a best.pt is in place before a state that needs it."""
        new_best = _best_is_own(train_state)
        if new_best:
            save_checkpoint(self.best_weights, model, metadata=metadata)
        elif self.best_weights.exists() and not self.best.exists():
            _link(self.best_weights, self.best)
        save_checkpoint(self.state, model, metadata=metadata, optimizer=optimizer, extra={"train_state": train_state})
        if new_best:
            self.best.unlink(missing_ok=True)
        self.write_history(train_state["history"])

    def finish(self, model: nn.Module) -> Path:
        """After the last epoch's report: ``best.pt`` for the caller (no longer for the trial's storage), and
        its weights in ``model``. Returns its path."""
        _link(self.best_weights, self.best)
        self.best_weights.unlink()
        load_state_into(model, load_checkpoint(self.best)["model"], source=self.best)
        return self.best


def _best_is_own(train_state: Mapping[str, Any]) -> bool:
    """Whether a saved state's own weights are the best epoch's (then no best.pt is kept beside it)."""
    return train_state["early_stopping"]["best_epoch"] == train_state["epoch"]


def _link(source: Path, target: Path) -> None:
    """``target`` as the same file as ``source``: a hard link, so the bytes are on disk once (a copy on
    file systems without links), replacing ``target`` atomically."""
    if target.exists() and os.path.samefile(source, target):
        return  # (rename() between two links of one file does nothing and would leave the temporary one)
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def rng_state() -> dict[str, Any]:
    """Every random number generator the loop draws from (data order, augmentation, dropout), as plain
    data and tensors: what a resume needs to continue as an uninterrupted run would."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
