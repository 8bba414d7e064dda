"""Probability that each image is real, from a trained checkpoint.

  detector predict --checkpoint CKPT PATH [PATH ...]      (files or folders, searched recursively)

A finished run names its best model and sample images to try it on in its last lines and its report:
``detector predict --checkpoint RUN/models/NAME.pt RUN/samples``.

Images are preprocessed exactly as in evaluation, at the checkpoint's image size. The table (or --json
lines) goes to stdout; warnings and the closing count go to stderr, after the table. When images are far
from the model's size (more than 2x larger or smaller), a warning says so, once. Unreadable files (missing,
not an image, more pixels than --max-pixels) are reported once each, in their row of the table (or with an
"error" field in --json lines), and do not stop the run; the exit status is 1 only when no file could be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector.commands._common import fail
from detector.data.images import MAX_PIXELS, PILLOW_MAX_PIXELS


def max_pixels(text: str) -> int:
    """``--max-pixels``: a positive count, at most what Pillow decodes at all (a larger one would promise
    files that Pillow refuses anyway)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not 1 <= value <= PILLOW_MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"{value:,} is not between 1 and {PILLOW_MAX_PIXELS:,} "
                                         "(Pillow refuses larger images whatever this says)")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="trained model (e.g. RUN/models/prune-40.pt)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--json", action="store_true", help="print JSON lines {path, prob_real, label, error}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="processes decoding images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threshold", type=float, default=0.5, help="label real when P(real) >= this")
    p.add_argument("--max-pixels", type=max_pixels, default=MAX_PIXELS,
                   help=f"refuse images with more pixels, as decompression bombs (default {MAX_PIXELS:,}; "
                        f"at most {PILLOW_MAX_PIXELS:,})")


def size_warning(path: str, size: tuple[int, int], image_size: int) -> str:
    return (f"detector predict: warning: the model was trained at {image_size}x{image_size} px, but {path} is "
            f"{size[0]}x{size[1]} px; images are resized to {image_size}x{image_size} px before scoring, and a "
            "detector of generated images may not carry over to sizes so far from its training (said once, for "
            "the first such image)")


def main(args: argparse.Namespace) -> int:
    from detector.checkpoint import load_model
    from detector.device import resolve_device
    from detector.evaluate.predict import predict_images, size_mismatch

    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device=device)
    image_size = int(meta["image_size"])
    ok = bad = 0
    warning = None  # printed after the table, so that a terminal shows the table in one piece
    if not args.json:
        print(f"{'prob_real':>9}  {'label':<5}  path")
    for p in predict_images(model, args.paths, image_size=image_size, batch_size=args.batch_size, device=device,
                            threshold=args.threshold, num_workers=args.num_workers, max_pixels=args.max_pixels):
        ok, bad = (ok + 1, bad) if p.error is None else (ok, bad + 1)
        if p.size is not None and warning is None and size_mismatch(p.size, image_size):
            warning = size_warning(p.path, p.size, image_size)
        if args.json:
            print(json.dumps({"path": p.path, "prob_real": p.prob_real, "label": p.label, "error": p.error}))
        elif p.error is None:
            print(f"{p.prob_real:9.4f}  {p.label:<5}  {p.path}")
        else:
            print(f"{'-':>9}  {'ERROR':<5}  {p.error}")
    sys.stdout.flush()
    if ok + bad == 0:
        return fail("predict", f"no image files found in {' '.join(args.paths)}")
    if warning:
        print(warning, file=sys.stderr)
    print(f"{ok} image(s) scored, {bad} unreadable", file=sys.stderr)
    return 0 if ok else 1


def try_command(run_dir: Path) -> str | None:
    """The command that tries a finished run's model to use (``model_to_use``: the largest non-inferior
    sparsity, else the control, else the baseline) on its sample images, or on the user's; None before the
    run has a report and that model."""
    from detector.job.runfolder import RunFolder
    from detector.report.answer import model_to_use

    run = RunFolder(Path(run_dir))
    report = run.report / "report.json"
    if not report.is_file():
        return None
    name = model_to_use(json.loads(report.read_text()))
    if name is None or not run.model(name).is_file():
        return None
    images = run.samples if run.samples.is_dir() else "YOUR_IMAGES"
    return f"detector predict --checkpoint {run.model(name)} {images}"
