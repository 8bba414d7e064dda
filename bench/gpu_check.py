"""Every GPU path of the project in one command, without Ray or Optuna: what a GPU machine proves in ~8 minutes.

    python bench/gpu_check.py --device cuda --budget-s 480 --out DIR       # on a GPU machine (DIR: default $OUT)
    python bench/gpu_check.py --device cpu --tiny --out DIR                # the CPU dry run CI runs

It generates a small dataset (``detector prepare --demo``, in a temporary folder) and runs, each step in its
own process under its own time limit: ``bench/train_step.py`` (synthetic tensors, the shard loader and the
decode-once pixels; bf16 autocast and channels_last, then with ``torch.compile``), a 1-epoch baseline and a
2-epoch fine-tune pruned to 40 % (``detector train --init ... --sparsity 0.4``), ``detector evaluate``,
``detector efficiency`` (batch-1 latency with CUDA synchronisation: the goal is <= 3 ms for ResNet-50 on an
H100, against the paper's 29.94 ms), the 2:4 sparse kernels, ``detector predict``, a torch.distributed
all-reduce (NCCL on a GPU, gloo on the CPU), and the data-parallel fine-tune (``train_stage`` under DDP on a
process group that ``detector.distributed.spawn`` starts: the job's ``resources.workers_per_trial`` without
Ray). Everything lands in DIR/gpu_check.json and DIR/gpu_check.md
(rewritten after every step, ``"complete": false`` until the last), with each step's output in
DIR/gpu_check.log.

A step that fails, times out or cannot run on this machine is recorded with its reason and the next step
runs; a step whose input failed is not run, with that reason. Nothing here imports Ray or Optuna (each step
checks ``sys.modules`` afterwards and fails if either got imported): the parts of the project that need them
are listed as not run. The steps run in order of importance, the slow ``torch.compile`` last, and each gets
at most what is left of ``--budget-s``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "optuna")
# What the detector package imports (beside the standard library), by import name -> pip name.
PROJECT_MODULES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow",
                   "pyarrow": "pyarrow", "yaml": "pyyaml", "tensorboard": "tensorboard", "sklearn": "scikit-learn",
                   "tqdm": "tqdm", "torch_pruning": "torch-pruning", "matplotlib": "matplotlib"}
PAPER_LATENCY_MS = 29.94  # Table 6, ResNet-50, batch 1
LATENCY_GOAL_MS = 3.0  # issue 15: batch-1 ResNet-50 on an H100


class NotRun(Exception):
    """A step that cannot run on this machine or in this mode; the message says why."""


@dataclass(frozen=True)
class Sizes:
    arch: str
    image_size: int
    batch_size: int
    demo_size: int
    demo_counts: tuple[int, int, int]  # train, val, test
    num_workers: int
    steps: int  # timed train_step steps
    warmup: int
    latency_repeats: int
    latency_warmup: int
    throughput_batch: int
    throughput_repeats: int
    predict_images: int


# ResNet-50 at 224 px, batch 64 (the search's), on 2,048 demo images: an epoch is a few seconds on an H100.
GPU_SIZES = Sizes(arch="resnet50", image_size=224, batch_size=64, demo_size=64, demo_counts=(2048, 256, 256),
                  num_workers=8, steps=50, warmup=10, latency_repeats=100, latency_warmup=20, throughput_batch=64,
                  throughput_repeats=20, predict_images=64)
TINY_SIZES = Sizes(arch="resnet18", image_size=32, batch_size=8, demo_size=32, demo_counts=(32, 16, 16),
                   num_workers=0, steps=2, warmup=1, latency_repeats=3, latency_warmup=1, throughput_batch=4,
                   throughput_repeats=1, predict_images=4)


@dataclass(frozen=True)
class Context:
    """What every step knows: the device, the sizes, and the work folder the steps share."""

    device: str  # "cuda" or "cpu"
    tiny: bool
    work: str
    sizes: Sizes

    def path(self, *parts: str) -> Path:
        return Path(self.work, *parts)

    @property
    def data(self) -> Path:
        return self.path("data")

    @property
    def precision(self) -> str:
        return "bf16" if self.device == "cuda" else "fp32"

    def train_overrides(self, **extra: Any) -> list[str]:
        s = self.sizes
        values = {"arch": s.arch, "image_size": s.image_size, "batch_size": s.batch_size, "num_workers": s.num_workers,
                  "device": self.device, "precision": self.precision, "patience": "null", **extra}
        return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


# --------------------------------------------------------------------------------------------------
# Steps. Each runs in a child process: returns a dict of results (with a one-line "summary"), raises
# NotRun with the reason it cannot run here, or raises anything else to fail.


def detector_cli(argv: list[str]) -> str:
    """Run a ``detector`` subcommand in this process; its standard output, or an error with its exit status."""
    from detector.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    sys.stdout.write(out.getvalue())
    if status != 0:
        raise RuntimeError(f"`detector {' '.join(argv)}` exited with status {status}")
    return out.getvalue()


def step_environment(ctx: Context) -> dict[str, Any]:
    import importlib.util

    import torch

    missing = {}
    for module, package in PROJECT_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing[module] = package
    forbidden = {}
    for module in FORBIDDEN:
        try:
            forbidden[module] = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            forbidden[module] = False
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(), "missing_modules": missing,
        "installed_but_not_used": [m for m, present in forbidden.items() if present],
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
        with contextlib.suppress(Exception):
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    if ctx.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    gpu = info.get("gpu", "no GPU")
    info["summary"] = (f"torch {torch.__version__}, {gpu}" +
                       (f"; missing: {', '.join(sorted(missing.values()))}" if missing else ""))
    return info


def step_prepare(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    t0 = time.perf_counter()
    detector_cli(["prepare", "--demo", "--out", str(ctx.data), "--demo-size", str(s.demo_size),
                  "--demo-counts", ",".join(map(str, s.demo_counts)), "--workers", str(max(1, min(8, os.cpu_count() or 1)))])
    totals = json.loads((ctx.data / "manifest.json").read_text())["totals"]
    counts = {split: t["real"] + t["fake"] for split, t in totals.items()}
    return {"seconds": time.perf_counter() - t0, "images": counts,
            "summary": ", ".join(f"{split} {n}" for split, n in counts.items()) + f" demo images at {s.demo_size} px"}


def step_pixels(ctx: Context) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = detector_cli(["pixels", str(ctx.data), "--out", str(ctx.path("pixels")), "--size", str(ctx.sizes.image_size),
                        "--workers", str(max(1, min(8, os.cpu_count() or 1)))])
    last = out.strip().splitlines()[-1]  # "N images as SxS pixels in K shards, M MB: PATH"
    return {"seconds": time.perf_counter() - t0, "summary": last.rpartition(":")[0] or last}


def _train_step_rows(ctx: Context, *, data: Path | None, compile: bool) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO / "bench"))
    import train_step

    s = ctx.sizes
    argv = ["--device", ctx.device, "--arch", s.arch, "--batch-size", str(s.batch_size),
            "--image-size", str(s.image_size), "--steps", str(s.steps), "--warmup", str(s.warmup),
            "--precision", ctx.precision, "--json"]
    if data is not None:
        argv += ["--data", str(data), "--num-workers", str(s.num_workers)]
    if compile:
        argv.append("--compile")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = train_step.main(argv)
    if status != 0:
        raise RuntimeError(f"bench/train_step.py {' '.join(argv)} exited with status {status}")
    return json.loads(out.getvalue())


def _rows_summary(rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        extra = f" ({r['vs_synthetic']:.0%} of synthetic, waiting {r['data_wait_share']:.0%})" if "vs_synthetic" in r else ""
        parts.append(f"{r['input']}: {r['images_per_s']:,.0f} img/s{extra}")
    return "; ".join(parts)


def step_train_step(ctx: Context) -> dict[str, Any]:
    rows = _train_step_rows(ctx, data=ctx.data, compile=False)
    return {"rows": rows, "summary": _rows_summary(rows)}


def step_train_step_pixels(ctx: Context) -> dict[str, Any]:
    rows = _train_step_rows(ctx, data=ctx.path("pixels"), compile=False)
    return {"rows": rows, "summary": _rows_summary(rows)}


def step_train_step_compile(ctx: Context) -> dict[str, Any]:
    if ctx.tiny:
        raise NotRun("--tiny: torch.compile of a training step takes minutes on a CPU; it runs on the GPU run")
    rows = _train_step_rows(ctx, data=None, compile=True)
    return {"rows": rows, "summary": _rows_summary(rows)}


def _trial(ctx: Context, name: str) -> Any:
    """The folder ``detector train --out`` wrote for step ``name`` (a ``detector.trial_dir.TrialDir``)."""
    from detector.trial_dir import TrialDir

    return TrialDir(ctx.path(name))


def _fit_results(ctx: Context, name: str) -> dict[str, Any]:
    result = json.loads((ctx.path(name) / "result.json").read_text())  # `detector train`'s own summary
    history = _trial(ctx, name).read_history()
    keep = ("epoch", "train_loss", "val_accuracy", "images_per_s", "data_wait_s")
    return {"result": result, "history": [{k: row[k] for k in keep if k in row} for row in history]}


def step_train_baseline(ctx: Context) -> dict[str, Any]:
    out = ctx.path("baseline")
    detector_cli(["train", "--data", str(ctx.data), "--out", str(out), *ctx.train_overrides(max_epochs=1)])
    r = _fit_results(ctx, "baseline")
    last = r["history"][-1]
    return {**r, "summary": f"1 epoch, {last.get('images_per_s', 0):,.0f} img/s, val accuracy {last['val_accuracy']:.3f}"}


def step_train_pruned(ctx: Context) -> dict[str, Any]:
    out = ctx.path("pruned")
    detector_cli(["train", "--data", str(ctx.data), "--out", str(out), "--init", str(_trial(ctx, "baseline").best),
                  "--sparsity", "0.4", *ctx.train_overrides(max_epochs=2)])
    r = _fit_results(ctx, "pruned")
    from detector.checkpoint import load_model
    from detector.prune.unstructured import sparsity_report

    model, meta = load_model(_trial(ctx, "pruned").best)
    report = sparsity_report(model)
    if abs(report["sparsity"] - 0.4) > 0.01:
        raise RuntimeError(f"the fine-tuned model has sparsity {report['sparsity']:.4f}, not 0.4: its masks did not hold")
    speeds = ", ".join(f"{h.get('images_per_s', 0):,.0f}" for h in r["history"])
    return {**r, "sparsity": report["sparsity"], "pruning": meta.get("pruning"),
            "summary": f"{len(r['history'])} epochs at sparsity {report['sparsity']:.3f}, img/s per epoch {speeds}"}


def _pruned_checkpoint(ctx: Context) -> Path:
    return _trial(ctx, "pruned").best


def step_evaluate(ctx: Context) -> dict[str, Any]:
    out = ctx.path("evaluate")
    t0 = time.perf_counter()
    detector_cli(["evaluate", "--data", str(ctx.data), "--checkpoint", str(_pruned_checkpoint(ctx)), "--out", str(out),
                  "--device", ctx.device, "--num-workers", str(ctx.sizes.num_workers)])
    metrics = json.loads((out / "metrics.json").read_text())["models"][0]["metrics"]["all"]
    keep = {k: metrics[k] for k in ("samples", "accuracy", "f1", "auc") if k in metrics}
    return {**keep, "seconds": time.perf_counter() - t0,
            "summary": f"{keep.get('samples')} test images, accuracy {keep.get('accuracy', float('nan')):.3f}"}


def step_efficiency(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    rows = []
    for precision in (["fp32", "bf16"] if ctx.device == "cuda" else ["fp32"]):
        out = detector_cli(["efficiency", "--arch", s.arch, "--sparsities", "0,0.4", "--image-size", str(s.image_size),
                            "--device", ctx.device, "--precision", precision, "--repeats", str(s.latency_repeats),
                            "--warmup", str(s.latency_warmup), "--throughput-batch", str(s.throughput_batch),
                            "--throughput-repeats", str(s.throughput_repeats), "--json"])
        rows += json.loads(out[out.index("["):])
    best = min(r["latency_ms"] for r in rows)
    result: dict[str, Any] = {"rows": rows, "best_latency_ms": best}
    text = ", ".join(f"{r['model']} {r['precision']} {r['latency_ms']:.2f} ms" for r in rows)
    if ctx.device == "cuda" and s.arch == "resnet50" and s.image_size == 224:
        result["goal_ms"] = LATENCY_GOAL_MS
        result["goal_met"] = best <= LATENCY_GOAL_MS
        text += (f"; best {best:.2f} ms vs goal {LATENCY_GOAL_MS:g} ms on an H100 "
                 f"({'met' if best <= LATENCY_GOAL_MS else 'missed'}; paper {PAPER_LATENCY_MS} ms)")
    return {**result, "summary": f"batch-1 latency: {text}"}


def step_semistructured(ctx: Context) -> dict[str, Any]:
    from detector.model import build_model
    from detector.prune.semistructured import semistructured_benchmark

    s = ctx.sizes
    result = semistructured_benchmark(build_model(s.arch, seed=0), image_size=s.image_size,
                                      repeats=s.latency_repeats, warmup=s.latency_warmup,
                                      device="cuda" if ctx.device == "cuda" else "cpu")
    if result["status"] != "measured":
        raise NotRun(result["status"].removeprefix("skipped: "))
    speed = ", ".join(f"batch {b}: {x:.2f}x" for b, x in result["speedup"].items())
    return {**result, "summary": f"2:4 vs dense ({result['dtype']}): {speed}; "
                                 f"max |diff| vs masked dense {result['max_abs_diff_vs_masked_dense']:.3g}"}


def step_predict(ctx: Context) -> dict[str, Any]:
    from detector.data.demo import demo_png

    folder = ctx.path("images")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(ctx.sizes.predict_images):
        png, _, _ = demo_png(split="test", index=i, image_size=ctx.sizes.demo_size)
        (folder / f"{i:04d}.png").write_bytes(png)
    # One unreadable file: it must be reported in its row, and must not stop the others.
    (folder / "not-an-image.png").write_bytes(b"this is not a PNG")
    t0 = time.perf_counter()
    out = detector_cli(["predict", "--checkpoint", str(_pruned_checkpoint(ctx)), "--json", "--device", ctx.device,
                        "--num-workers", str(min(ctx.sizes.num_workers, 4)), str(folder)])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    scored = [r for r in rows if r["error"] is None]
    errors = [r for r in rows if r["error"] is not None]
    if len(scored) != ctx.sizes.predict_images or len(errors) != 1:
        raise RuntimeError(f"expected {ctx.sizes.predict_images} scored images and 1 unreadable file, "
                           f"got {len(scored)} scored and {len(errors)} errors")
    return {"scored": len(scored), "unreadable_reported": errors[0]["error"], "seconds": time.perf_counter() - t0,
            "summary": f"{len(scored)} images scored, the unreadable file reported"}


def step_allreduce(ctx: Context) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise NotRun("this torch build has no torch.distributed")
    if ctx.device == "cuda":
        if not dist.is_nccl_available():
            raise NotRun("this torch build has no NCCL backend")
        backend, device = "nccl", torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")  # the CPU stand-in, so that CI runs this step's code
    init = ctx.path("dist-init")
    dist.init_process_group(backend, init_method=f"file://{init}", rank=0, world_size=1)
    try:
        x = torch.full((1 << 20,), 3.0, device=device)
        t0 = time.perf_counter()
        dist.all_reduce(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if not torch.all(x == 3.0):
            raise RuntimeError(f"all_reduce over 1 rank changed the tensor: {x[:4].tolist()}")
    finally:
        dist.destroy_process_group()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if backend == "nccl" else None
    return {"backend": backend, "world_size": 1, "nccl": nccl, "first_all_reduce_s": seconds,
            "summary": f"{backend} all_reduce of 4 MiB, world size 1: correct" + (f" (NCCL {nccl})" if nccl else "")}


def step_ddp_fit(ctx: Context) -> dict[str, Any]:
    """The job's data-parallel path without Ray: ``train_stage`` (so ``fit`` under DDP) on every rank of a
    torch.distributed group that ``detector.distributed.spawn`` starts: NCCL with one rank per GPU (up to 2),
    gloo with 2 ranks on the CPU. One epoch of the 40 % fine-tune from the baseline, global batch as above."""
    import functools

    import torch
    import torch.distributed as dist

    from detector import distributed
    from detector.checkpoint import load_model
    from detector.job.stages import train_stage
    from detector.prune.unstructured import sparsity_report
    from detector.train import TrainConfig

    if not dist.is_available():
        raise NotRun("this torch build has no torch.distributed")
    if ctx.device == "cuda" and not dist.is_nccl_available():
        raise NotRun("this torch build has no NCCL backend")
    world = min(2, torch.cuda.device_count()) if ctx.device == "cuda" else 2
    s = ctx.sizes
    cfg = TrainConfig(arch=s.arch, image_size=s.image_size, batch_size=s.batch_size, num_workers=s.num_workers,
                      device=ctx.device, precision=ctx.precision, max_epochs=1, patience=None)
    out = ctx.path("ddp")
    train = functools.partial(train_stage, cfg, data=str(ctx.data), out_dir=out / "run", tb_dir=None,
                              init=_trial(ctx, "baseline").best, sparsity=0.4,
                              model_path=out / "model.pt")
    t0 = time.perf_counter()
    summaries = distributed.spawn(train, world, device=ctx.device)
    seconds = time.perf_counter() - t0
    ranks = [(x["epochs_run"], x["best_val_accuracy"]) for x in summaries]
    if len(set(ranks)) != 1:
        raise RuntimeError(f"the ranks disagree on the run (epochs, best val accuracy): {ranks}")
    model, meta = load_model(out / "model.pt")
    sparsity = sparsity_report(model)["sparsity"]
    if abs(sparsity - 0.4) > 0.01 or meta["world_size"] != world:
        raise RuntimeError(f"the data-parallel fine-tune saved a model of sparsity {sparsity:.4f} trained by "
                           f"{meta['world_size']} ranks, not 0.4 by {world}")
    row = summaries[0]["history"][0]
    backend = distributed.backend_for(ctx.device)
    return {"backend": backend, "world_size": world, "seconds": seconds, "sparsity": sparsity,
            "history": [{k: r[k] for k in ("epoch", "train_loss", "val_accuracy", "images_per_s") if k in r}
                        for r in summaries[0]["history"]],
            "summary": f"{backend}, {world} rank(s): 1 epoch at sparsity {sparsity:.3f} (masks held), "
                       f"{row['images_per_s']:,.0f} img/s over all ranks, train loss {row['train_loss']:.3f}"}


def step_tune_job(ctx: Context) -> dict[str, Any]:
    raise NotRun("needs Ray and Optuna: the job's stages run as Ray Tune trials with Optuna searches (`detector run`); "
                 "this check is Ray-free. CPU coverage: the test suite; schedule at scale: bench/cluster_schedule.py")


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Context], dict[str, Any]]
    timeout_s: float  # on a GPU machine; --tiny runs take at most this too
    needs: tuple[str, ...] = ()


# In order of importance; each gets at most what is left of --budget-s.
STEPS = (
    Step("environment", "torch, CUDA, and the modules the project needs", step_environment, 60),
    Step("prepare", "`detector prepare --demo`", step_prepare, 90, ("environment",)),
    Step("train_baseline", "`detector train`, 1 epoch from scratch", step_train_baseline, 120, ("prepare",)),
    Step("train_pruned", "`detector train --init baseline --sparsity 0.4`, 2 epochs", step_train_pruned, 150,
         ("train_baseline",)),
    Step("evaluate", "`detector evaluate` of the pruned model", step_evaluate, 90, ("train_pruned",)),
    Step("efficiency", "`detector efficiency`: batch-1 latency (synchronised), throughput", step_efficiency, 120,
         ("environment",)),
    Step("semistructured", "2:4 sparse kernels against dense", step_semistructured, 120, ("environment",)),
    Step("predict", "`detector predict` on image files", step_predict, 60, ("train_pruned",)),
    Step("allreduce", "torch.distributed all-reduce, world size 1", step_allreduce, 60, ("environment",)),
    Step("ddp_fit", "the data-parallel training loop (DDP: NCCL on up to 2 GPUs, gloo on the CPU)", step_ddp_fit, 180,
         ("allreduce", "train_baseline")),
    Step("train_step", "bench/train_step.py: synthetic and the shard loader", step_train_step, 120, ("prepare",)),
    Step("pixels", "`detector pixels` (decode once)", step_pixels, 90, ("prepare",)),
    Step("train_step_pixels", "bench/train_step.py: synthetic and the pixels loader", step_train_step_pixels, 120,
         ("pixels",)),
    Step("tune_job", "the job on Ray Tune + Optuna", step_tune_job, 10),
    Step("train_step_compile", "bench/train_step.py with torch.compile (synthetic)", step_train_step_compile, 240,
         ("environment",)),
)
BY_NAME = {s.name: s for s in STEPS}


# --------------------------------------------------------------------------------------------------
# The child side: one step, its result as JSON in a file.


def child(step_name: str, context_file: Path, result_file: Path) -> int:
    spec = json.loads(context_file.read_text())
    ctx = Context(device=spec["device"], tiny=spec["tiny"], work=spec["work"],
                  sizes=Sizes(**{**spec["sizes"], "demo_counts": tuple(spec["sizes"]["demo_counts"])}))
    t0 = time.perf_counter()
    try:
        result: dict[str, Any] = {"status": "ok", "results": BY_NAME[step_name].run(ctx)}
    except NotRun as e:
        result = {"status": "not run", "reason": str(e)}
    except BaseException as e:  # noqa: BLE001 - every failure is a result of this check, with its reason
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e}".strip()}
        if isinstance(e, ModuleNotFoundError) and e.name:
            pip = PROJECT_MODULES.get(e.name.split(".")[0], e.name)
            result["reason"] += f" (pip install {pip}; see docs/benchmarks.md, 'Every GPU path')"
    loaded = [m for m in FORBIDDEN if m in sys.modules]
    if loaded and result["status"] == "ok":
        result = {"status": "failed", "reason": f"imported {', '.join(loaded)}: this check must stay Ray- and Optuna-free"}
    result["seconds"] = time.perf_counter() - t0
    result_file.write_text(json.dumps(result, default=str))
    return 0


# --------------------------------------------------------------------------------------------------
# The parent side: the steps in order, each in a child process with a time limit.


@dataclass
class Run:
    out: Path
    command: str
    device: str
    tiny: bool
    budget_s: float
    started: float = field(default_factory=time.time)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def document(self, complete: bool) -> dict[str, Any]:
        env = self.steps.get("environment", {}).get("results", {})
        return {
            "complete": complete, "command": self.command, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started)),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "device": self.device, "tiny": self.tiny,
            "gpu": env.get("gpu"), "torch": env.get("torch"), "budget_s": self.budget_s,
            "elapsed_s": time.time() - self.started,
            "steps": [{"name": s.name, "title": s.title, **self.steps.get(s.name, {"status": "pending"})} for s in STEPS],
        }

    def write(self, complete: bool) -> None:
        from detector.io import atomic_write_json, atomic_write_text

        doc = self.document(complete)
        atomic_write_json(self.out / "gpu_check.json", doc)
        atomic_write_text(self.out / "gpu_check.md", markdown(doc))


def markdown(doc: dict[str, Any]) -> str:
    from detector.report.tables import Column, fixed
    from detector.report.tables import markdown as table

    rows = [{"step": s["name"], "what": s["title"], "status": s["status"],
             "seconds": s.get("seconds"),
             "figures": s.get("results", {}).get("summary") if s["status"] == "ok" else s.get("reason", "")}
            for s in doc["steps"]]
    head = (f"# GPU check{'' if doc['complete'] else ' (INCOMPLETE: the run stopped before its last step)'}\n\n"
            f"- command: `{doc['command']}`\n- date: {doc['date']}\n- machine: {doc['machine']}; device: {doc['device']}"
            f" ({doc['gpu'] or 'no GPU'}); torch {doc['torch']}\n- tiny: {doc['tiny']}; budget {doc['budget_s']:g} s, "
            f"elapsed {doc['elapsed_s']:.0f} s\n\n")
    return head + table(rows, [Column("step"), Column("what"), Column("status"), Column("seconds", fmt=fixed(1)),
                               Column("figures", "figures, or why not")])


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_step(step: Step, run: Run, context_file: Path, log: Any) -> dict[str, Any]:
    remaining = run.budget_s - (time.time() - run.started)
    failed = [n for n in step.needs if run.steps.get(n, {}).get("status") != "ok"]
    if failed:
        return {"status": "not run", "reason": f"needs {', '.join(failed)}, which did not succeed"}
    if remaining < 5:
        return {"status": "not run", "reason": f"the time budget (--budget-s {run.budget_s:g}) was spent"}
    timeout = min(step.timeout_s, remaining)
    result_file = context_file.with_name(f"{step.name}.result.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if run.tiny:
        # Tiny CPU steps on a shared machine: one thread each, so spinning threads do not fight for the cores.
        env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    # A session of its own: on a timeout the step's whole process group (loader workers too) is killed.
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--context",
                             str(context_file), "--result", str(result_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    seconds = time.perf_counter() - t0
    log.write(f"\n===== {step.name} ({seconds:.1f} s) =====\n{output}")
    log.flush()
    if timed_out:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s", "seconds": seconds,
                "log_tail": _tail(output)}
    if not result_file.exists():
        return {"status": "failed", "reason": f"the step's process exited with status {proc.returncode} "
                                              "without a result", "seconds": seconds, "log_tail": _tail(output)}
    result = json.loads(result_file.read_text())
    result["seconds"] = seconds
    if result["status"] == "failed":
        result["log_tail"] = _tail(output)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (resnet18, 32 px, a few images): the CPU dry run")
    p.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                   help="folder for gpu_check.json, .md and .log (default: $OUT)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for all steps together")
    p.add_argument("--only", nargs="+", choices=list(BY_NAME), help="run these steps (and mark the rest not run)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (data, models) and print its path")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--context", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        return child(args.step, args.context, args.result)
    if args.out is None:
        p.error("--out is required when $OUT is not set")
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "bench/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    run = Run(out=args.out, command=command, device=args.device, tiny=args.tiny, budget_s=args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    ctx = Context(device=args.device, tiny=args.tiny, work=str(work), sizes=TINY_SIZES if args.tiny else GPU_SIZES)
    context_file = work / "context.json"
    context_file.write_text(json.dumps(asdict(ctx)))
    try:
        with open(args.out / "gpu_check.log", "w") as log:
            for step in STEPS:
                if args.only and step.name not in args.only:
                    run.steps[step.name] = {"status": "not run", "reason": "not in --only"}
                    continue
                print(f"{step.name}: {step.title} ...", flush=True)
                run.steps[step.name] = run_step(step, run, context_file, log)
                r = run.steps[step.name]
                detail = r.get("results", {}).get("summary") if r["status"] == "ok" else r.get("reason")
                print(f"  {r['status']} ({r.get('seconds', 0):.1f} s): {detail}", flush=True)
                run.write(complete=False)
        run.write(complete=True)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    counts = {s: sum(1 for r in run.steps.values() if r["status"] == s) for s in ("ok", "failed", "not run")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
