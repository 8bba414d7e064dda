"""Import datasets into shards.

  detector prepare --out DATA [--faces140k DIR] [--celebdf DIR] [--synthbuster DIR] [--folder DIR] [--demo]
                   [--workers N] [--seed S] [--strict] [--follow-outside-links]

Writes DATA/shards/<split>/<split>-NNNNN.parquet (or .tar with --format webdataset) and, last,
DATA/manifest.json; a folder without manifest.json is an unfinished import, which the same command finishes.
Labels: Real = 1, Fake = 0. Every file that cannot be used is listed in the manifest's `rejected` with its
reason; --strict turns any rejection into a failure (exit 1, no manifest written). Symbolic links are
followed only out of a source folder and only with --follow-outside-links (docs/data.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detector.commands._common import fail
from detector.data.audit import format_audit
from detector.data.demo import DEMO_COUNTS, DEMO_IMAGE_SIZE, DemoConfig
from detector.data.images import MAX_PIXELS
from detector.data.prepare import MANIFEST, ImportOptions, StrictImportError, format_summary, prepare
from detector.data.sources import CelebDFSource, DemoSource, Faces140kSource, FolderSource, Source, SynthBusterSource
from detector.system import usable_cpus


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _counts(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST counts like 600,100,200, got {text!r}")
    return values  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="DATA", help="output dataset folder")
    src = parser.add_argument_group("sources (any combination, at least one)")
    src.add_argument("--faces140k", type=Path, metavar="DIR", help="Kaggle 140k Real and Fake Faces (official split)")
    src.add_argument("--celebdf", type=Path, metavar="DIR", help="Celeb-DF v2 videos (80/10/10 by video)")
    src.add_argument("--synthbuster", type=Path, metavar="DIR", help="SynthBuster (fake-only, 80/10/10 per generator)")
    src.add_argument("--folder", type=Path, metavar="DIR", help="DIR/{real,fake}/ or DIR/{train,val,test}/{real,fake}/")
    src.add_argument("--demo", action="store_true", help="the built-in generated demo dataset (no download)")
    parser.add_argument("--workers", type=_positive, default=usable_cpus(),
                        help="import processes (default: the CPUs this process may use)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every split and shuffle (default 0)")
    parser.add_argument("--strict", action="store_true", help="fail (exit 1) if any input is rejected")
    parser.add_argument("--format", dest="fmt", choices=("parquet", "webdataset"), default="parquet",
                        help="shard format (default parquet)")
    parser.add_argument("--frames-per-video", type=_positive, default=1,
                        help="Celeb-DF frames per video, evenly spaced (default 1: the middle frame)")
    parser.add_argument("--celebdf-split", choices=("paper", "official"), default="paper",
                        help="paper: 80/10/10 by video; official: List_of_testing_videos.txt is the test set")
    parser.add_argument("--celebdf-youtube", action="store_true", help="also import YouTube-real as real")
    parser.add_argument("--synthbuster-raise", action="store_true", help="also import real_RAISE_1k as real")
    parser.add_argument("--max-size", type=int, default=0, metavar="PX",
                        help="shrink images larger than PX on their long side, stored as lossless PNG "
                             "(default 0: keep original bytes)")
    parser.add_argument("--max-pixels", type=_positive, default=MAX_PIXELS,
                        help=f"reject images with more pixels (decompression bombs; default {MAX_PIXELS:,})")
    parser.add_argument("--shard-rows", type=_positive, default=2048, help="rows per shard (default 2048)")
    parser.add_argument("--demo-size", type=_positive, default=DEMO_IMAGE_SIZE,
                        help=f"demo image size (default {DEMO_IMAGE_SIZE})")
    parser.add_argument("--demo-counts", type=_counts, metavar="TRAIN,VAL,TEST",
                        default=(DEMO_COUNTS["train"], DEMO_COUNTS["val"], DEMO_COUNTS["test"]),
                        help="demo images per split (default %(default)s)")
    parser.add_argument("--no-resume", action="store_true", help="rewrite every shard even if a finished one matches")
    parser.add_argument("--follow-outside-links", action="store_true",
                        help="follow symbolic links that lead outside a source folder (default: such links are "
                             "rejected and not read; links to elsewhere inside a source are always rejected, "
                             "their targets are imported under their own paths)")


def sources_from_args(args: argparse.Namespace) -> list[Source]:
    sources: list[Source] = []
    links = args.follow_outside_links
    if args.faces140k is not None:
        sources.append(Faces140kSource(args.faces140k, follow_outside_links=links))
    if args.celebdf is not None:
        sources.append(CelebDFSource(args.celebdf, frames_per_video=args.frames_per_video,
                                     split=args.celebdf_split, include_youtube=args.celebdf_youtube,
                                     follow_outside_links=links))
    if args.synthbuster is not None:
        sources.append(SynthBusterSource(args.synthbuster, include_raise=args.synthbuster_raise,
                                         follow_outside_links=links))
    if args.folder is not None:
        sources.append(FolderSource(args.folder, follow_outside_links=links))
    if args.demo:
        train, val, test = args.demo_counts
        sources.append(DemoSource(DemoConfig(image_size=args.demo_size, train=train, val=val, test=test)))
    return sources


def main(args: argparse.Namespace) -> int:
    try:
        sources = sources_from_args(args)
        options = ImportOptions(fmt=args.fmt, shard_rows=args.shard_rows, max_size=args.max_size,
                                max_pixels=args.max_pixels)
        manifest = prepare(args.out, sources=sources, options=options, workers=args.workers, seed=args.seed,
                           strict=args.strict, resume=not args.no_resume)
    except StrictImportError as e:
        print(format_summary(e.manifest))
        return fail("prepare", str(e), status=1)
    print(format_summary(manifest))
    print("shortcut audit:\n" + format_audit(manifest["audit"]))
    print(f"wrote {args.out / MANIFEST}")
    return 0

