"""Tables: a list of flat dict rows and the columns to show, written as Markdown and as CSV by one writer;
and the report's sections, which show tables and say what they mean.

A column exists once, by name: the row's key is the CSV header and holds the raw value (a number stays a
number in the CSV), and the column's ``fmt`` turns it into the Markdown cell. Every table of the report,
``detector evaluate``, ``detector efficiency`` and ``detector status`` goes through here.

>>> rows = [{"model": "baseline", "accuracy": 0.955}]
>>> print(markdown(rows, [Column("model", "Model"), Column("accuracy", "Accuracy", pct)]), end="")
| Model    | Accuracy |
|----------|----------|
| baseline | 95.50%   |
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence


def cell(value: Any) -> str:
    """The default cell: None (undefined) as "n/a", floats to 4 decimals, the rest as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def pct(value: Any) -> str:
    """A fraction as a percentage with two decimals (n/a when undefined)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.2f}%"


def fixed(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    """A number with ``digits`` decimals after multiplying by ``scale`` (n/a when undefined)."""
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{scale * value:.{digits}f}"
    return fmt


def thousands(value: Any) -> str:
    return "n/a" if value is None else f"{value:,}"


@dataclass(frozen=True)
class Column:
    key: str  # the row's key, and the CSV header
    title: str | None = None  # the Markdown header (default: the key)
    fmt: Callable[[Any], str] = cell  # the Markdown cell

    @property
    def header(self) -> str:
        return self.title if self.title is not None else self.key


@dataclass(frozen=True)
class Table:
    """One table of the report: its rows, its columns, and the CSV file it is written to."""

    csv: str  # file name of its CSV in RUN/report/
    rows: list[dict[str, Any]]
    columns: list[Column]
    extra_csv: tuple[str, ...] = ()  # keys the CSV keeps that the Markdown puts in a title or note

    @property
    def csv_columns(self) -> list[Column]:
        return self.columns + [Column(k) for k in self.extra_csv if k not in {c.key for c in self.columns}]

    def markdown(self) -> str:
        return markdown(self.rows, self.columns)


@dataclass(frozen=True)
class Section:
    """One part of report.md: its heading, its Markdown lines (a table shown as ``Table.markdown()`` in
    place), and the tables whose CSV it puts beside report.md, shown or not: a table with no rows still
    gets its header row, so scripts find the same files in every report. ``Section()`` shows nothing.

    >>> Section("Results", ["No model yet.", ""]).markdown()
    ['## Results', '', 'No model yet.', '']
    """

    title: str | None = None  # None: lines that go on under the heading before them
    lines: Sequence[str] = ()
    tables: Sequence[Table] = ()

    def markdown(self) -> list[str]:
        return [f"## {self.title}", "", *self.lines] if self.title is not None else list(self.lines)


def _columns(columns: Sequence[Column | str]) -> list[Column]:
    return [c if isinstance(c, Column) else Column(c) for c in columns]


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str]) -> str:
    """A Markdown table, padded so that it reads as plain text too."""
    cols = _columns(columns)
    body = [[c.fmt(row.get(c.key)) for c in cols] for row in rows]
    widths = [max([len(c.header)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.header.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str]) -> str:
    """The same rows as CSV: raw values under the column keys (empty where a value is None)."""
    cols = _columns(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.key for c in cols])
    for row in rows:
        writer.writerow(["" if row.get(c.key) is None else row.get(c.key) for c in cols])
    return buf.getvalue()
