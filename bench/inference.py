"""Inference cost of dense, unstructured-sparse, channel-pruned and (on a capable GPU) 2:4 models, in one run.

For each model: parameters (total, and prunable weights that are non-zero), MACs per image, the dense
file (torch.save of the state dict) and the compact sparse export, latency at batch 1 and at a large
batch (median), and throughput. Unstructured models run as deployed: an exported dense copy, zeros and all.

Models take turns, round after round, and each speed-up is the median over rounds of (dense time / model
time) measured in the same round, so a machine whose load drifts (a shared VM) biases every model alike.
On the CPU the times compared are the CPU time the process spent per forward pass, which other jobs on the
machine do not inflate (they do inflate wall time; the best wall time is shown beside it). ``--threads 1``
makes that CPU time the single-core latency.

    python bench/inference.py --threads 1                        # ResNet-50, 224 px, CPU (+ CUDA if present)
    python bench/inference.py --budgets 0.4 --rounds 5 --onnxruntime
    python bench/inference.py --smoke-test                       # seconds: resnet18, 32 px, one budget

Weights are freshly initialised (timing and size do not depend on training); the accuracy of pruned models
comes from the pipeline's report (``detector run ... --set search.method=structured``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.checkpoint import sparse_size_mb, state_dict_size_mb  # noqa: E402
from detector.evaluate.efficiency import _timed  # noqa: E402
from detector.model import build_model, count_parameters  # noqa: E402
from detector.prune.unstructured import exported_copy, prune_global_l1, sparsity_report  # noqa: E402
from detector.prune.semistructured import semistructured_benchmark, semistructured_unavailable  # noqa: E402
from detector.prune import prune  # noqa: E402
from detector.prune.channels import count_macs  # noqa: E402


def build_models(arch: str, budgets: list[float]) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """name -> (model ready to run, description): dense, unstructured-NN and structured-NN per budget."""
    models = {"dense": (build_model(arch, seed=0).eval(), {"method": "dense", "budget": 0.0})}
    for b in budgets:
        m = build_model(arch, seed=0)
        prune_global_l1(m, b)
        models[f"unstructured-{round(100 * b)}"] = (exported_copy(m).eval(), {"method": "unstructured", "budget": b})
        m = build_model(arch, seed=0)
        info = prune(m, b, method="structured", arch=arch)
        models[f"structured-{round(100 * b)} (x{info.channel_multiple})"] = (
            m.eval(), {"method": "structured", "budget": b, "channel_ratio": info.channel_ratio,
                       "channel_multiple": info.channel_multiple, "params_removed": info.achieved})
    return models


def describe(model: torch.nn.Module, image_size: int) -> dict[str, Any]:
    counts = count_parameters(model)
    return {
        "total_params": counts["total_params"],
        "nonzero_prunable": sparsity_report(model)["nonzero_params"],
        "macs": count_macs(model, image_size),
        "dense_file_mb": state_dict_size_mb(model),
        "sparse_file_mb": sparse_size_mb(model),
    }


def _measure(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    cpu0 = time.process_time()
    wall = _timed(fn, device)
    return wall, time.process_time() - cpu0


@torch.inference_mode()
def time_models(runners: dict[str, Callable[[torch.Tensor], Any]], *, device: torch.device, image_size: int,
                batch_sizes: list[int], repeats: dict[int, int], rounds: int,
                memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, dict[str, Any]]:
    """Latency per model and batch size over rounds of interleaved runs, and speed-ups against ``dense``.

    On a CPU shared with other jobs, wall time measures their load as much as the model, so a CPU run is
    judged by the CPU time this process spent (the work done; with one thread it is the latency an idle
    core would show) and by the best wall time; on CUDA by wall time (the CPU only waits there).
    ``speedup_b*`` is the median over rounds of dense time / model time within the same round.
    """
    inputs = {b: torch.randn(b, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
              for b in batch_sizes}
    for run in runners.values():  # warm-up: allocator, kernel choice, lazy init
        for b in batch_sizes:
            run(inputs[b])
    samples: dict[str, dict[int, list[list[tuple[float, float]]]]] = {n: {b: [] for b in batch_sizes} for n in runners}
    names = list(runners)
    for r in range(rounds):
        # Each round starts with another model, so no model always runs first (or right after a warm-up).
        for name in names[r % len(names):] + names[: r % len(names)]:
            for b in batch_sizes:
                samples[name][b].append([_measure(lambda: runners[name](inputs[b]), device) for _ in range(repeats[b])])
    basis = 1 if device.type == "cpu" else 0  # which of (wall, cpu) a speed-up is computed from
    out: dict[str, dict[str, Any]] = {}
    for name, by_batch in samples.items():
        out[name] = {}
        for b, rounds_ in by_batch.items():
            walls = [w for rnd in rounds_ for w, _ in rnd]
            cpus = [c for rnd in rounds_ for _, c in rnd]
            mine = [statistics.median(x[basis] for x in rnd) for rnd in rounds_]
            dense = [statistics.median(x[basis] for x in rnd) for rnd in samples["dense"][b]]
            out[name][f"latency_ms_b{b}"] = 1000 * statistics.median(walls)
            out[name][f"best_ms_b{b}"] = 1000 * min(walls)
            out[name][f"cpu_ms_b{b}"] = 1000 * statistics.median(cpus)
            out[name][f"throughput_b{b}"] = b / min(walls)
            out[name][f"speedup_b{b}"] = statistics.median(d / m for d, m in zip(dense, mine))
    return out


def onnxruntime_runners(models: dict[str, tuple[torch.nn.Module, dict]], image_size: int,
                        threads: int) -> dict[str, Callable[[torch.Tensor], Any]]:
    import onnxruntime as ort

    from detector.export import onnx_bytes

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle worker threads would spin and count as CPU time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    runners = {}
    for name, (model, info) in models.items():
        if info["method"] == "unstructured":
            continue  # the same graph as dense, zeros and all
        session = ort.InferenceSession(onnx_bytes(model, image_size=image_size), options,
                                       providers=["CPUExecutionProvider"])
        runners[name] = lambda x, s=session: s.run(["logits"], {"images": x.numpy()})
    return runners


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, load average "
            f"{load:.1f} at start; torch {torch.__version__}, Python {platform.python_version()}")


def markdown(rows: list[dict[str, Any]], batch_sizes: list[int], devices: list[str]) -> str:
    header = ["model", "params", "non-zero prunable", "GMACs", "dense file MB", "sparse file MB"]
    for dev in devices:
        for b in batch_sizes:
            header += [f"{dev} b{b}: {'CPU-ms' if dev != 'cuda' else 'ms'}, best wall ms", f"{dev} b{b} speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for r in rows:
        cells = [r["model"], f"{r['total_params'] / 1e6:.2f} M", f"{r['nonzero_prunable'] / 1e6:.2f} M",
                 f"{r['macs'] / 1e9:.2f}", f"{r['dense_file_mb']:.1f}", f"{r['sparse_file_mb']:.1f}"]
        for dev in devices:
            for b in batch_sizes:
                t = r.get(dev, {})
                main_ms = t.get(f"cpu_ms_b{b}" if dev != "cuda" else f"latency_ms_b{b}")
                cells += ([f"{main_ms:.1f}, {t[f'best_ms_b{b}']:.1f}", f"{t[f'speedup_b{b}']:.2f}x"]
                          if main_ms is not None else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--budgets", default="0.1,0.2,0.3,0.4", help="fractions of prunable weights, comma-separated")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--repeats", type=int, default=10, help="timed batch-1 runs per model per round")
    p.add_argument("--large-batch-repeats", type=int, default=2, help="timed runs per round at the larger batches")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-cuda", action="store_true", help="CPU only, even where CUDA is present")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs (PyTorch runs)")
    p.add_argument("--onnxruntime", action="store_true", help="also time dense and channel-pruned models in ONNX Runtime (CPU)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--smoke-test", action="store_true", help="resnet18, 32 px, budget 0.4, one round (seconds)")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.arch, args.budgets, args.image_size, args.batch_sizes = "resnet18", "0.4", 32, "1,4"
        args.repeats, args.large_batch_repeats, args.rounds = 2, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [float(b) for b in args.budgets.split(",") if b]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    repeats = {b: args.repeats if b == 1 else args.large_batch_repeats for b in batch_sizes}

    print(f"machine: {machine()}", flush=True)
    t0 = time.time()
    models = build_models(args.arch, budgets)
    rows = [{"model": name, **info, **describe(model, args.image_size)} for name, (model, info) in models.items()]
    print(f"built and described {len(models)} models in {time.time() - t0:.0f} s", flush=True)

    devices = ["cpu"]
    timing = dict(image_size=args.image_size, batch_sizes=batch_sizes, repeats=repeats, rounds=args.rounds)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    cpu = time_models({n: m.to(memory_format=fmt) for n, (m, _) in models.items()}, device=torch.device("cpu"),
                      memory_format=fmt, **timing)
    for r in rows:
        r["cpu"] = cpu[r["model"]]
    if args.onnxruntime:
        devices.append("ort")
        runners = onnxruntime_runners(models, args.image_size, torch.get_num_threads())
        ort = time_models(runners, device=torch.device("cpu"), **timing)
        for r in rows:
            if r["model"] in ort:
                r["ort"] = ort[r["model"]]
    cuda_ok = torch.cuda.is_available() and not args.no_cuda
    if cuda_ok:
        devices.append("cuda")
        dev = torch.device("cuda")
        gpu = time_models({n: m.to(dev) for n, (m, _) in models.items()}, device=dev, memory_format=fmt, **timing)
        for r in rows:
            r["cuda"] = gpu[r["model"]]
    reason = "--no-cuda given" if args.no_cuda else semistructured_unavailable()
    if reason:
        semi: dict[str, Any] = {"status": f"skipped: {reason}"}
    else:
        semi = semistructured_benchmark(models["dense"][0], image_size=args.image_size,
                                        batch_sizes=tuple(batch_sizes), repeats=args.repeats)

    print()
    print(markdown(rows, batch_sizes, devices))
    print()
    print(f"2:4 semi-structured: {json.dumps(semi)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)},
                                         "models": rows, "semistructured": semi}, indent=2, default=str))
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
