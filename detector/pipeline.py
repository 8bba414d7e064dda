"""The whole job: prepare -> baseline -> search -> finetune -> evaluate -> report, on a local or remote Ray.

Each stage checks for its outputs in the run folder first and reuses them, so ``detector run`` after a
crash (or with ``--resume``) picks up where the run stopped: finished trials are never run again, Tune
experiments that were cut off are restored from their own state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from detector.config import ConfigError, load_yaml, save_yaml, to_dict
from detector.experiment import STAGES, ExperimentConfig
from detector.io import atomic_write_json

log = logging.getLogger(__name__)

CONFIG_FILE = "experiment.yaml"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def search_results(self) -> Path:
        return self.root / "search" / "results.json"

    @property
    def finetune_results(self) -> Path:
        return self.root / "finetune" / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


def data_path(exp: ExperimentConfig, run_dir: Path) -> str:
    """The shards' location: a URI or absolute path as given, a relative path inside the run folder."""
    p = exp.data.path
    if "://" in p or Path(p).is_absolute():
        return p
    return str((run_dir / p).resolve())


def check_run_config(exp: ExperimentConfig, run_dir: Path) -> None:
    """A run folder belongs to one experiment: refuse to mix a different config into finished results."""
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        return
    saved = load_yaml(paths.config)
    if saved != to_dict(exp):
        changed = sorted(k for k in set(saved) | set(to_dict(exp)) if saved.get(k) != to_dict(exp).get(k))
        raise ConfigError(
            f"{paths.config}: this run folder was started with a different config "
            f"(sections that differ: {', '.join(changed)}); use a new --out folder, or the saved config"
        )


def prepare_data(exp: ExperimentConfig, data: str) -> None:
    """Import the raw datasets named in ``data`` unless the shards are already there."""
    from detector.data.loader import read_manifest
    from detector.data.prepare import prepare

    try:
        read_manifest(data)
        log.info("data: using the shards in %s", data)
        return
    except FileNotFoundError:
        pass
    d = exp.data
    sources = {k: v for k, v in {"faces140k": d.faces140k, "celebdf": d.celebdf, "synthbuster": d.synthbuster,
                                 "folder": d.folder}.items() if v}
    if not sources and not d.demo:
        raise ConfigError(f"data.path: {data} has no manifest.json and the config names no dataset to import")
    if "://" in data:
        raise ConfigError(f"data.path: {data}: import writes to a local or mounted path; prepare it there first")
    log.info("data: importing %s into %s", ", ".join([*sources, *(["demo"] if d.demo else [])]), data)
    prepare(Path(data), sources=sources, demo=d.demo, fmt=d.format, seed=d.seed)


def run(
    exp: ExperimentConfig,
    run_dir: str | Path,
    *,
    address: str | None = None,
    stages: Sequence[str] = STAGES,
) -> dict[str, Any]:
    """Run the chosen stages of the experiment into ``run_dir``; returns where the results are."""
    from detector import stages as stage_fns
    from detector import tune as dtune

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    run_dir = Path(run_dir).resolve()
    paths = RunPaths(run_dir)
    check_run_config(exp, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(exp, paths.config)
    data = data_path(exp, run_dir)
    t0 = time.time()

    if "prepare" in stages:
        prepare_data(exp, data)

    needs_ray = any(s in stages for s in ("baseline", "search", "finetune", "evaluate"))
    info = dtune.connect(address, exp) if needs_ray else None
    if info is not None:
        log.info("Ray: %s; resources %s", info.address, info.resources)
        if info.dashboard_url:
            log.info("Ray dashboard: %s", info.dashboard_url)
        log.info("TensorBoard:   tensorboard --logdir %s", run_dir)
    ctx = dtune.StageContext(run_dir=str(run_dir), experiment=exp, data=data)
    sparsities = list(exp.search.sparsities)
    try:
        if "baseline" in stages:
            if stage_fns.model_path(run_dir, 0.0).exists():
                log.info("baseline: reusing %s", stage_fns.model_path(run_dir, 0.0))
            else:
                dtune.run_baseline(ctx)

        if "search" in stages:
            if paths.search_results.exists():
                log.info("search: reusing %s", paths.search_results)
            else:
                _require(stage_fns.model_path(run_dir, 0.0), "search", "baseline")
                atomic_write_json(paths.search_results, dtune.run_search(ctx))

        if "finetune" in stages:
            todo = [s for s in sparsities if not stage_fns.model_path(run_dir, s).exists()]
            if todo:
                _require(paths.search_results, "finetune", "search")
                best = {float(v["sparsity"]): v for v in _read_json(paths.search_results)["best"].values()}
                missing = [s for s in todo if s not in best]
                if missing:
                    raise ConfigError(f"finetune: {paths.search_results} has no best parameters for {missing}")
                rows = dtune.run_finetune(
                    dtune.StageContext(run_dir=str(run_dir), experiment=exp, data=data, best_params=best), todo
                )
                atomic_write_json(paths.finetune_results, {"trials": rows})
            else:
                log.info("finetune: reusing the models in %s", run_dir / "models")

        if "evaluate" in stages:
            todo = [s for s in [0.0, *sparsities] if not stage_fns.eval_path(run_dir, s).exists()]
            for s in todo:
                _require(stage_fns.model_path(run_dir, s), "evaluate", "baseline" if s == 0 else "finetune")
            if todo:
                dtune.run_evaluate(ctx, todo)
    finally:
        if info is not None and info.embedded:
            dtune.shutdown()

    if "report" in stages:
        from detector.report import write_report

        write_report(run_dir)
    log.info("done in %.0f s: %s", time.time() - t0, run_dir)
    return {
        "run_dir": str(run_dir),
        "report": str(paths.report / "report.md"),
        "tensorboard": str(run_dir),
        "dashboard": info.dashboard_url if info else None,
    }


def _require(path: Path, stage: str, needs: str) -> None:
    if not path.exists():
        raise ConfigError(f"{stage}: needs {path}, which the {needs} stage writes; run it first (--stages {needs})")


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())
