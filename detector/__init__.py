"""detector: how far can a detector of AI-generated images be pruned?

A library of plain functions and small dataclasses:

- ``detector.data``      import public datasets into shards, and read them back (``prepare``, loader)
- ``detector.model``     ResNet with a single-logit head (Real = 1, Fake = 0)
- ``detector.train``     the one training loop (baseline, every search trial, every fine-tune)
- ``detector.pruning``   global L1 unstructured pruning and sparsity accounting
- ``detector.metrics``   accuracy, precision, recall, F1, AUC, confusion matrices
- ``detector.tune``      the only module that talks to Ray Tune
"""

__version__ = "0.1.0"

REAL = 1
FAKE = 0
