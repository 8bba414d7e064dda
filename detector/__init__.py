"""detector: how far can a detector of AI-generated images be pruned?

A library of plain functions and small dataclasses, one folder per stage:

- ``detector.data``      import public datasets into shards, decode once, read them back (the loader)
- ``detector.model``     ResNet with a single-logit head (Real = 1, Fake = 0)
- ``detector.prune``     ``prune()`` and ``PruningInfo``: global L1 unstructured, channels, 2:4
- ``detector.train``     the one training loop (baseline, every search trial, every fine-tune); its pieces:
                         ``passes`` (one pass over a loader), ``trial_dir`` (the run's folder),
                         ``tensorboard_log``
- ``detector.evaluate``  metrics, statistics, efficiency (Table 6), predict
- ``detector.report``    the run's report, from the run folder alone
- ``detector.job``       the experiment: config, run folder, stages, pipeline; ``job.tune`` is the only
                         package that talks to Ray
- ``detector.commands``  the ``detector`` command, one module per subcommand
"""

__version__ = "0.1.0"

REAL = 1
FAKE = 0
