"""Splits: the Dataset of (source, label) items, and stratified splitting seeded per class.

Seeding per class keeps a class's split independent of which other classes were chosen, and label
subsampling happens after the split, so the val/test sets stay put."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

SPLITS = ("train", "val", "test")  # a Dataset's splits, the names evaluate and benchmark accept
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

Item = tuple  # (source: str | np.ndarray, label: int)


@dataclass
class Dataset:
    labels: list  # class names; label index i is labels[i]
    train: list = field(default_factory=list)  # [(source, label)]
    val: list = field(default_factory=list)
    test: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # [(path, reason)] dropped by skip_corrupt
    health: Optional[dict] = None  # the scan's data health (toolkit.datasets.health.data_health); None unscanned


def class_rng(seed: int, name: str, stream: int) -> np.random.Generator:
    """The seeded generator of one class and one use (stream 0: the split, 1: the label subsampling), so a
    class's draw does not depend on which other classes there are."""
    return np.random.default_rng([seed, zlib.crc32(str(name).encode()), stream])


def split_class(paths: list, name: str, val_fraction: float, test_fraction: float, seed: int):
    """One class's items -> (train, val, test); each fraction > 0 gets at least one when possible. Too few
    items for all three: training keeps one, then validation (training needs it) before test."""
    n = len(paths)
    counts = []
    for frac in (test_fraction, val_fraction):
        k = int(round(n * frac))
        counts.append(max(k, 1) if frac > 0 else 0)
    n_test, n_val = counts
    while n_test + n_val >= n and (n_test or n_val):  # keep at least one training image
        if n_val > n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = class_rng(seed, name, 0).permutation(n)
    picked = [paths[i] for i in order]
    return picked[n_test + n_val:], picked[n_test:n_test + n_val], picked[:n_test]


def keep_per_class(train: list, labels: list, per_class: Optional[int], seed: int) -> list:
    """At most `per_class` training items per class. Nested: the N kept are a subset of the N+1 kept."""
    if per_class is None:
        return train
    out = []
    for label, name in enumerate(labels):
        items = [it for it in train if it[1] == label]
        order = class_rng(seed, name, 1).permutation(len(items))[:per_class]
        out += [items[i] for i in sorted(order)]
    return out


def locate_split(split: str, name: str) -> Optional[str]:
    """Where an empty class of a source without class folders is, for its error line: 'val split, class 3'."""
    return f"{split} split, class {name}"
