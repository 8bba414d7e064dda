"""Small helpers shared by the model commands (train, prune, evaluate, efficiency, predict)."""

from __future__ import annotations

import sys
from typing import Any, Iterable, Mapping, Sequence


def fail(command: str, message: str) -> int:
    """Report a user error the way every subcommand does, and return the exit status 2."""
    print(f"detector {command}: error: {message}", file=sys.stderr)
    return 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (bad file, config, value): reported in one line, not as a traceback."""
    from detector.checkpoint import CheckpointError
    from detector.config import ConfigError

    return (CheckpointError, ConfigError, ValueError, FileNotFoundError)


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table (readable as plain text too); floats to 4 decimals, None as an em dash."""

    def cell(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines) + "\n"
