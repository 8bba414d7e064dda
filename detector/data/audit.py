"""A shortcut audit of a prepared dataset: can the label be read off the files' metadata alone?

SynthBuster images and Celeb-DF frames are PNG while the 140k faces are JPEG, so in the paper's training set
almost every PNG is fake: a detector can score by file format (or size, or JPEG quality) instead of by
content. The audit lists, per split, source and class, the file formats, estimated JPEG qualities and
image sizes, and fits a shallow decision tree (scikit-learn, depth 3) on format, width, height and JPEG
quality only, on the train split, scored on the validation split. When it predicts the label far above
chance (``WARN_MARGIN`` over the validation split's majority share), the data has a shortcut and the audit
says so with the tree's accuracy; ``detector prepare`` prints it and the report shows it. The
format-equalisation perturbation (``detector.evaluate.robustness``) is the model-side half of the check.

``audit_dataset(DATA)`` reads the shards' metadata and each JPEG's quantisation tables (not its pixels);
the result is plain, deterministic data (stored in the manifest as ``audit``).
"""

from __future__ import annotations

import collections
import io
import logging
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from detector import FAKE, REAL

log = logging.getLogger(__name__)

WARN_MARGIN = 0.10  # accuracy above the majority share that counts as "far above chance"
TREE_DEPTH = 3
FEATURES = ("is_jpeg", "is_png", "width", "height", "jpeg_quality")
_JPEG = ("JPEG", "MPO")

# The IJG (libjpeg) base tables at quality 50, in natural (row-major) order, as Pillow reports them.
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32))


def _ijg_tables(quality: int) -> np.ndarray:
    """The luminance and chrominance tables (2, 64) libjpeg writes at ``quality`` (jcparam.c's scaling)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = np.asarray([_LUMA, _CHROMA], dtype=np.int64)
    return np.clip((base * scale + 50) // 100, 1, 255)


_ALL_TABLES = np.stack([_ijg_tables(q) for q in range(1, 101)])  # (100, 2, 64)


def jpeg_quality(data: bytes) -> int | None:
    """The IJG quality (1-100) whose tables are closest to this JPEG's (exact for files written by libjpeg,
    Pillow, OpenCV; an estimate for cameras' own tables); None if ``data`` is not a readable JPEG.

    >>> from PIL import Image; import io; buf = io.BytesIO()
    >>> Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=75); jpeg_quality(buf.getvalue())
    75
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            tables = getattr(img, "quantization", None) or {}
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    if 0 not in tables:
        return None
    own = [np.asarray(tables[i], dtype=np.int64) for i in (0, 1) if i in tables and len(tables[i]) == 64]
    if not own:
        return None
    error = sum(np.abs(_ALL_TABLES[:, i, :] - t).sum(axis=1) for i, t in enumerate(own))
    return int(np.argmin(error)) + 1


def _rows(data: str, manifest: Mapping[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Every row's split, source, label, format, size and (JPEG) quality, shard by shard."""
    from detector.data.loader import _resolve, read_manifest, shard_file
    from detector.data.shards import read_rows, shard_units

    manifest = manifest if manifest is not None else read_manifest(data)
    if "pixels" in manifest:
        raise ValueError(f"{data}: holds decoded pixels (format RAW); audit the dataset they were derived from, "
                         f"{manifest['pixels']['from']['data']}")
    filesystem, root = _resolve(data)
    columns = ["split", "source", "label", "format", "width", "height"]
    for index, shard in enumerate(manifest["shards"]):
        path = shard_file(data, root, shard, index)
        for unit in shard_units(filesystem, path, shard["path"], manifest["format"], shard["rows"]):
            for row in read_rows(filesystem, path, manifest["format"], unit, list(range(unit.rows)), columns):
                image = row.pop("image")
                row["jpeg_quality"] = jpeg_quality(image) if row["format"] in _JPEG else None
                yield row


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": float(min(values)), "median": float(np.median(values)), "max": float(max(values))}


def _groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[tuple[str, str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        by[(r["split"], r["source"], int(r["label"]))].append(r)
    order = {"train": 0, "val": 1, "test": 2}
    out = []
    for (split, source, label), rs in sorted(by.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1], -kv[0][2])):
        formats = collections.Counter(str(r["format"]) for r in rs)
        sizes = collections.Counter(f"{r['width']}x{r['height']}" for r in rs)
        qualities = [r["jpeg_quality"] for r in rs if r["jpeg_quality"] is not None]
        out.append({
            "split": split, "source": source, "class": "real" if label == REAL else "fake", "images": len(rs),
            "formats": dict(sorted(formats.items(), key=lambda kv: (-kv[1], kv[0]))),
            "jpeg_quality": _spread(qualities),
            "sizes": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:5]),  # the five commonest
            "distinct_sizes": len(sizes),
        })
    return out


def _features(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray([[r["format"] in _JPEG, r["format"] == "PNG", r["width"], r["height"],
                        r["jpeg_quality"] if r["jpeg_quality"] is not None else 0] for r in rows], dtype=np.float64)


def _classifier(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The shallow tree on metadata, fit on train and scored on val, and whether it warns."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.tree import DecisionTreeClassifier, export_text

    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    labels = {split: {int(r["label"]) for r in rs} for split, rs in (("train", train), ("val", val))}
    if labels["train"] != {FAKE, REAL} or labels["val"] != {FAKE, REAL}:
        return {"status": "not fit: the train and val splits need real and fake images", "warn": False}
    tree = DecisionTreeClassifier(max_depth=TREE_DEPTH, random_state=0)
    tree.fit(_features(train), [int(r["label"]) for r in train])
    y = np.asarray([int(r["label"]) for r in val])
    pred = tree.predict(_features(val))
    accuracy = float(np.mean(pred == y))
    chance = float(max(np.mean(y == REAL), np.mean(y == FAKE)))
    return {
        "status": "fit", "model": f"DecisionTreeClassifier(max_depth={TREE_DEPTH}, random_state=0)",
        "features": list(FEATURES), "fit_on": "train", "scored_on": "val", "train_images": len(train),
        "val_images": len(val), "accuracy": accuracy, "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "chance": chance, "warn_margin": WARN_MARGIN, "warn": accuracy >= chance + WARN_MARGIN,
        "rules": export_text(tree, feature_names=list(FEATURES), class_names=["fake", "real"], decimals=0),
    }


def audit_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The audit of rows with ``split``, ``source``, ``label``, ``format``, ``width``, ``height`` and
    ``jpeg_quality`` (None for non-JPEG)."""
    tree = _classifier(rows)
    warning = None
    if tree["warn"]:
        warning = (f"shortcut: file metadata alone (format, width, height, JPEG quality) predicts the validation "
                   f"labels with {100 * tree['accuracy']:.1f} % accuracy (chance: {100 * tree['chance']:.1f} %, the "
                   "majority class); a detector may score by file format or size instead of content. Compare the "
                   "format-equalised robustness results (evaluate.robustness) before trusting its accuracy")
    return {"groups": _groups(rows), "classifier": tree, "warning": warning}


def audit_dataset(data: str, *, manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Audit the dataset ``detector prepare`` wrote at ``data`` (a local path or a URI); ``manifest``: its
    manifest when it is not written yet (``prepare`` audits before it publishes the manifest)."""
    rows = list(_rows(data, manifest))
    if not rows:
        raise ValueError(f"{data}: no rows to audit")
    audit = audit_rows(rows)
    if audit["warning"]:
        log.warning("%s: %s", data, audit["warning"])
    return audit


def format_audit(audit: Mapping[str, Any]) -> str:
    """Plain text for ``detector prepare``: formats, qualities and sizes per split, source and class, then
    the tree's verdict."""
    lines = [f"{'split':<6} {'source':<12} {'class':<5} {'images':>7}  formats; JPEG quality; commonest size"]
    for g in audit["groups"]:
        formats = ", ".join(f"{k} {100 * v / g['images']:.0f}%" for k, v in g["formats"].items())
        q = g["jpeg_quality"]
        quality = f"q{q['median']:g} [{q['min']:g}-{q['max']:g}]" if q else "-"
        size, n = next(iter(g["sizes"].items()))
        lines.append(f"{g['split']:<6} {g['source']:<12} {g['class']:<5} {g['images']:>7}  {formats}; {quality}; "
                     f"{size} ({100 * n / g['images']:.0f}%, {g['distinct_sizes']} sizes)")
    tree = audit["classifier"]
    if tree["status"] != "fit":
        lines.append(f"metadata classifier: {tree['status']}")
    else:
        lines.append(f"metadata classifier (depth-{TREE_DEPTH} tree on format, size, JPEG quality; train -> val): "
                     f"accuracy {100 * tree['accuracy']:.1f} %, chance {100 * tree['chance']:.1f} %")
    if audit.get("warning"):
        lines.append(f"WARNING: {audit['warning']}")
    return "\n".join(lines)
