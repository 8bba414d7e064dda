"""The run's report, written from the run folder alone."""

from detector.report.write import write_report

__all__ = ["write_report"]
