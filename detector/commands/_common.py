"""What every subcommand shares: how a user error is reported."""

from __future__ import annotations

import sys

# Errors caused by input (a bad file, config value, checkpoint, data folder): every such error in the
# library is a ValueError (ConfigError, CheckpointError, SourceError, ...) or a missing file. They are
# reported in one line, not as a traceback (`detector -v` shows the traceback too).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def fail(command: str, message: str, *, status: int = 2) -> int:
    """Report a user error the way every subcommand does; returns the exit status (2 unless given)."""
    print(f"detector {command}: error: {message}", file=sys.stderr)
    return status
