"""The ``detector`` command: one subcommand per stage.

Each subcommand lives in its own module of ``detector.commands``, which provides ``add_arguments(parser)``
and ``main(args) -> int``. Modules import torch/Ray inside ``main`` so that ``detector --help`` stays fast.
A user error (bad config value, file, checkpoint, data) raised by any of them is reported here, one way:
``detector COMMAND: error: ...`` and exit status 2; a full disk the same way, with exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import textwrap

from detector.commands._common import USER_ERRORS, fail
from detector.io import NoSpaceError, no_space
from detector.job.stop import RunStopped, exit_promptly

log = logging.getLogger(__name__)

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("detector.commands.prepare", "import datasets into Parquet/WebDataset shards"),
    "pixels": ("detector.commands.pixels", "derive a dataset of decoded, resized pixels (decode once, not every epoch)"),
    "run": ("detector.commands.run", "run the whole experiment (or chosen stages) on a local or remote Ray"),
    "demo": ("detector.commands.demo", "the whole job on an embedded local Ray with the built-in demo data"),
    "report": ("detector.commands.report", "(re)write a run's report from its run folder"),
    "status": ("detector.commands.status", "a table of a run's trials, live or finished"),
    "repair": ("detector.commands.repair", "cut a run's damaged Optuna journal back to its last complete record"),
    "train": ("detector.commands.train", "train one model (the baseline, or a fine-tune of a checkpoint)"),
    "prune": ("detector.commands.prune", "prune a checkpoint to a sparsity (global L1, or L1 channels)"),
    "evaluate": ("detector.commands.evaluate", "metrics of checkpoints on every test set (Tables 3, 5)"),
    "efficiency": ("detector.commands.efficiency", "parameters, size, latency, throughput (Table 6)"),
    "export": ("detector.commands.export", "export a model as a compact sparse file, a dense checkpoint or ONNX"),
    "predict": ("detector.commands.predict", "probability that each image is real"),
}


def plain_text(text: str) -> str:
    """reStructuredText as a terminal shows it: roles (:mod:`x`) become their text, literals (``x``, `x`)
    quoted words, and a literal block's "::" a colon. The one place docstrings become help."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``|`([^`]+)`", lambda m: f"'{m.group(1) or m.group(2)}'", text)
    return re.sub(r"(\S)::$|\s*::$", lambda m: f"{m.group(1) or ''}:", text, flags=re.M)


class HelpFormatter(argparse.HelpFormatter):
    """Plain text; paragraphs re-wrapped to the terminal, indented lines (usage examples) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks, paragraph = [], []
        for line in plain_text(text).splitlines() + [""]:
            if line.strip() and not line[0].isspace():
                paragraph.append(line.strip())
                continue
            if paragraph:
                blocks.append(textwrap.fill(" ".join(paragraph), width, initial_indent=indent,
                                            subsequent_indent=indent))
                paragraph = []
            blocks.append(indent + line if line.strip() else "")
        return "\n".join(blocks).strip("\n")

    def _split_lines(self, text: str, width: int) -> list[str]:
        return super()._split_lines(plain_text(text), width)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detector",
        description="Train, prune, search and evaluate detectors of AI-generated images.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and Ray Tune's own status tables and messages (off by default)")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def configure_logging(verbose: bool) -> None:
    """The console of every subcommand: INFO lines, DEBUG with -v. -v also sets ``DETECTOR_VERBOSE=1``
    (``detector.job.tune.progress``): Tune's tables and the libraries' INFO chatter come back, in this process
    and, as Ray passes the environment on, in the trial processes of a Ray it starts."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if verbose:
        os.environ["DETECTOR_VERBOSE"] = "1"
    # Ray folds alike lines of different workers into one ("[repeated 2x across cluster]"), numbers ignored: the
    # trials' lines, which differ in numbers only ([search/s40-t1], [search/s40-t2]), would hide each other. A
    # line that names its trial (detector.job.tune.progress.log_as_trial) is never folded. Ray reads this when
    # it is imported, which no subcommand has done yet.
    os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", r"\] detector\.")
    if not sys.stderr.isatty():  # a log file, `ray job logs`, CI: Ray's prefixes without terminal colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def version_text() -> str:
    """``detector 0.1.0 (torch 2.x, ray 2.x)``: the installed distributions' versions, read from their
    metadata so that ``--version`` stays as fast as ``--help`` (neither torch nor Ray is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"detector {installed('detector')} (torch {installed('torch')}, ray {installed('ray')})"


def main(argv: list[str] | None = None) -> int:
    """The ``detector`` command; its exit status. A reader that stops reading early (``detector status RUN |
    head``) ends it quietly with status 141, as a shell reports a process ended by SIGPIPE."""
    try:
        status = run_command(argv)
        sys.stdout.flush()  # a closed pipe shows here, where it can be caught, not at interpreter exit
        return status
    except BrokenPipeError:
        # Python's recipe (docs of the signal module, "Note on SIGPIPE"): point stdout at devnull so that the
        # interpreter's own flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def run_command(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args._module.main(args) or 0)
    except RunStopped as e:
        print(f"detector {args.command}: {e}", file=sys.stderr)
        exit_promptly(e)  # the command's process only: a library caller of run() keeps its interpreter
        return e.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # A full disk is one line too, wherever it struck and whatever library wrapped it (-v: the traceback).
        full = no_space(e)
        if full is None and not isinstance(e, USER_ERRORS):
            raise
        log.debug("detector %s failed", args.command, exc_info=True)
        return fail(args.command, str(NoSpaceError.of(full)), status=1) if full else fail(args.command, str(e))


if __name__ == "__main__":
    sys.exit(main())
