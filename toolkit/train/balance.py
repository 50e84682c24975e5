"""Class balance in training: `train.class_weights` (loss weights) and `train.sampler` (the epoch's draw).

Both come from the training split's class counts. "balanced" loss weights are scikit-learn's
compute_class_weight("balanced"): images / (classes x images of the class), so they average 1 over the
training images and the summed loss keeps its scale. The balanced sampler draws each epoch's images with
replacement, each image with weight 1 / (images of its class), so every class is drawn equally often;
the draw is seeded by (seed, epoch) and then cut into global batches like the uniform order, so under
torchrun every rank sees the same draw and takes its part of each batch (toolkit.train.sampling).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def class_counts(items: list, num_classes: int) -> np.ndarray:
    """Images per class in `items` [(source, label)]."""
    return np.bincount([int(label) for _, label in items], minlength=num_classes)


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """images / (classes present x images of the class); 0 for a class without images."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def loss_weights(t, items: list, num_classes: int) -> Optional[torch.Tensor]:
    """The cross-entropy's per-class weights for train.class_weights (None: unweighted)."""
    if t.class_weights == "none":
        return None
    return torch.tensor(balanced_class_weights(class_counts(items, num_classes)), dtype=torch.float32)


def sample_weights(t, items: list, num_classes: int) -> Optional[torch.Tensor]:
    """Each training image's draw weight for train.sampler (None: the uniform shuffle, each image once)."""
    if t.sampler == "uniform":
        return None
    counts = class_counts(items, num_classes)
    return torch.tensor([1.0 / counts[int(label)] for _, label in items], dtype=torch.float64)


def describe(t, items: list, labels: list) -> str:
    """One log line: the balance settings and the training split's largest:smallest class ratio."""
    counts = class_counts(items, len(labels))
    ratio = counts.max() / max(counts.min(), 1)
    return (f"class balance: train.class_weights {t.class_weights}, train.sampler {t.sampler}; "
            f"largest:smallest class {ratio:.1f}:1")
