"""What a run ran on, for the report's header: architecture, image size, each stage's epochs and batch size,
the search, the pruning, and the data (sources, counts per split and class).

Read from ``RUN/experiment.yaml`` (as data: ``detector.config.from_dict``, nothing executed) and from the
data summary the evaluate stage writes into every ``eval/<model>.json``.
"""

from __future__ import annotations

import logging
from typing import Any

from detector.data.sources import SOURCE_NAMES
from detector.job.runfolder import RunFolder

log = logging.getLogger(__name__)

DEFAULT_RESAMPLES = 1000  # bootstrap resamples when the run folder has no config


def load_experiment_config(run: RunFolder) -> Any:
    """The run's saved config as an ``ExperimentConfig``, or None when the folder has none."""
    from detector.config import ConfigError
    from detector.job.experiment import load_saved_experiment

    if not run.config.is_file():
        return None
    try:
        return load_saved_experiment(run.config)
    except ConfigError as e:
        message = str(e)
        raise ConfigError(message if str(run.config) in message else f"{run.config}: {message}") from None
    except ValueError as e:  # a dataclass's own check (__post_init__)
        raise ConfigError(f"{run.config}: {e}") from None


def _stage(cfg: Any, *, optimizer: str, lr: str, patience: str) -> dict[str, Any]:
    return {"max_epochs": cfg.max_epochs, "patience": patience, "batch_size": cfg.batch_size,
            "optimizer": optimizer, "lr": lr}


def _patience(cfg: Any) -> str:
    return "none (its epochs are its budget)" if cfg.patience is None else f"{cfg.patience} epochs"


def _data_counts(splits: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for split in ("train", "val", "test"):
        for source, counts in sorted((splits.get(split) or {}).items()):
            if isinstance(counts, dict):
                rows.append({"split": split, "source": source, "real": counts.get("real", 0),
                             "fake": counts.get("fake", 0)})
    return rows


def _describe_space(search: Any) -> str:
    from detector.job.search_space import Categorical, LogUniform, search_space

    parts = []
    for name, domain in search_space(search).items():
        if isinstance(domain, Categorical):
            parts.append(f"{name} in {{{', '.join(map(str, domain.choices))}}}")
        elif isinstance(domain, LogUniform):
            parts.append(f"{name} log-uniform in [{domain.low:.0e}, {domain.high:.0e}]")
        else:
            raise TypeError(f"no description for {domain!r}")
    return ", ".join(parts)


def _manifest_summary(path: str) -> dict[str, Any] | None:
    """The evaluate stage's data summary read from the dataset itself, for runs evaluated before it wrote
    one; None where the data cannot be read from here (another machine's volume, an unreachable bucket)."""
    from detector.data.loader import manifest_sha256, read_manifest

    try:
        manifest = read_manifest(path)
        return {"path": path, "manifest_sha256": manifest_sha256(path),
                **{k: manifest.get(k) for k in ("format", "splits", "generators", "pixels", "audit", "options")}}
    except (OSError, ValueError) as e:
        log.info("data summary: %s not readable here: %s", path, e)
        return None


def run_summary(run: RunFolder, evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """The header's facts as plain data (``report.json``'s ``run``); what is unknown says so."""
    exp = load_experiment_config(run)
    data = next((e["data"] for e in evaluations if e.get("data")), None)
    out: dict[str, Any] = {"config": str(run.config) if exp is not None else None}
    if exp is None:
        from detector.job.experiment import EvaluateSection

        # a run without its config is judged at the config's default margin, and the report says which
        out.update(bootstrap_resamples=DEFAULT_RESAMPLES, margin=EvaluateSection().margin, stages=None, search=None,
                   pruning=None)
    else:
        base, trial, tune = (exp.stage_train(s) for s in ("baseline", "search_train", "finetune"))
        out.update(
            name=exp.name, arch=base.arch, image_size=base.image_size, bootstrap_resamples=exp.evaluate.bootstrap,
            margin=exp.evaluate.margin,
            stages={
                "baseline": _stage(base, optimizer=base.optimizer, lr=f"{base.lr:g}", patience=_patience(base)),
                "search trial": _stage(trial, optimizer="searched", lr="searched", patience=_patience(trial)),
                "fine-tune": _stage(tune, optimizer="best of its search", lr="best of its search",
                                    patience=_patience(tune)),
            },
            search={"space": _describe_space(exp.search), "trials_per_sparsity": exp.search.trials_per_sparsity,
                    "tpe_startup_trials": exp.search.tpe_startup_trials,
                    "sampler": (f"Optuna TPE after {exp.search.tpe_startup_trials} random start-up "
                                f"trial{'s' if exp.search.tpe_startup_trials != 1 else ''}"),
                    "scheduler": exp.search.scheduler, "metric": exp.search.metric, "direction": exp.search.direction,
                    "objective": exp.search.objective, "control": exp.search.control},
            pruning={"method": exp.search.method, "sparsities": list(exp.search.sparsities)},
            evaluate={"batch_size": exp.evaluate.batch_size, "latency_repeats": exp.evaluate.latency_repeats,
                      "throughput_batch": exp.evaluate.throughput_batch,
                      "threshold_calibration": exp.evaluate.threshold_calibration,
                      "robustness": exp.evaluate.robustness.enabled},
            primary_set=exp.evaluate.primary_set,
            data_config={"path": exp.data.path, "pixels": exp.data.pixels,
                         "sources": [f"{k} (built in)" if k == "demo" else k for k in SOURCE_NAMES
                                     if getattr(exp.data, k)]},
        )
    if out.get("bootstrap_resamples", 1) < 1:
        raise ValueError(f"{run.config}: evaluate.bootstrap must be a positive integer, "
                         f"got {out['bootstrap_resamples']!r}")
    if data is None and exp is not None:
        data = _manifest_summary(run.resolve(exp.data.path))
    if data is None:
        out["data"] = None
    else:
        pixels = data.get("pixels") or {}
        out["data"] = {"path": data.get("path"), "format": data.get("format"),
                       "manifest_sha256": data.get("manifest_sha256"),
                       "pixels_size": pixels.get("size"), "decoded_from": (pixels.get("from") or {}).get("data"),
                       "counts": _data_counts(data.get("splits") or {}), "audit": data.get("audit"),
                       "import_options": data.get("import_options") or data.get("options")}
    return out
