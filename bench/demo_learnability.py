"""Is the demo dataset learnable, and not trivially? A resnet18 from scratch, torch only, through the real
data path (``detector prepare --demo`` shards, ``build_loader``), plus a linear probe on global statistics.

    python bench/demo_learnability.py                      # demo.yaml's settings: Adam 1e-3, batch 32, 6 epochs
    python bench/demo_learnability.py --lr 1e-4 --seeds 0 1 2

Prints test accuracy per epoch and per generator. Results are recorded in docs/data.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="demo shards (default: import them into a temp dir)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    return p.parse_args(argv)


def evaluate(model: torch.nn.Module, loader) -> tuple[float, dict[str, float]]:
    model.eval()
    hits, gens = [], []
    with torch.no_grad():
        for images, labels, meta in loader:
            hits += ((model(images)[:, 0] >= 0).long() == labels).tolist()
            gens += [g or "real" for g in meta["generator"]]
    per = {g: float(np.mean([h for h, gg in zip(hits, gens) if gg == g])) for g in sorted(set(gens))}
    return float(np.mean(hits)), per


def global_stats_probe(data: str) -> float:
    """Test accuracy of logistic regression on per-image colour mean/std and gradient std (a trivial cue check)."""
    from sklearn.linear_model import LogisticRegression

    from detector.data.demo import DEMO_IMAGE_SIZE
    from detector.data.loader import ReadSpec, ShardDataset

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for x, y in ShardDataset(data, split, ReadSpec(image_size=DEMO_IMAGE_SIZE)):
            grad = x[..., 1:] - x[..., :-1]
            xs.append(torch.cat([x.mean((1, 2)), x.std((1, 2)), grad.std((1, 2))]).numpy())
            ys.append(y)
        return np.stack(xs), np.array(ys)

    clf = LogisticRegression(max_iter=5000).fit(*features("train"))
    return float(clf.score(*features("test")))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from detector.data.demo import DEMO_IMAGE_SIZE
    from detector.data.loader import ReadSpec, build_loader
    from detector.data.prepare import prepare

    torch.set_num_threads(2)
    data = args.data or Path(tempfile.mkdtemp(prefix="demo-")) / "data"
    if not (data / "manifest.json").exists():
        prepare(data, demo=True, progress=False)
    print(f"global-statistics linear probe, test accuracy: {global_stats_probe(str(data)):.3f}")
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(num_classes=1)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        train = build_loader(str(data), "train", ReadSpec(image_size=DEMO_IMAGE_SIZE, train=True, seed=seed),
                             batch_size=args.batch_size, num_workers=0)
        test = build_loader(str(data), "test", ReadSpec(image_size=DEMO_IMAGE_SIZE, with_meta=True), batch_size=100,
                            num_workers=0)
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            model.train()
            for images, labels in train:
                opt.zero_grad(set_to_none=True)
                loss_fn(model(images)[:, 0], labels.float()).backward()
                opt.step()
            acc, per = evaluate(model, test)
            print(f"seed {seed} epoch {epoch + 1}: test accuracy {acc:.3f} "
                  f"({', '.join(f'{g} {a:.2f}' for g, a in per.items())}) [{time.perf_counter() - t0:.0f}s]",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
