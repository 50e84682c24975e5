"""Classification metrics from logits and labels, in numpy: shared by training, evaluate and export."""
from __future__ import annotations

import numpy as np


def topk_correct(logits: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Boolean per sample: is the target among the k highest logits?"""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == targets[:, None]).any(axis=1)


def classification_report(logits: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict:
    """top1, top5 (in %), per-class accuracy, mean per-class accuracy and the confusion matrix."""
    targets = np.asarray(targets, dtype=np.int64)
    n_classes = len(labels)
    predictions = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (targets, predictions), 1)
    support = confusion.sum(axis=1)
    per_class = {labels[i]: (float(confusion[i, i] / support[i] * 100) if support[i] else None)
                 for i in range(n_classes)}
    present = [v for v in per_class.values() if v is not None]
    n = len(targets)
    return {
        "n": int(n),
        "top1": float((predictions == targets).mean() * 100) if n else 0.0,
        "top5": float(topk_correct(logits, targets, 5).mean() * 100) if n else 0.0,
        "mean_per_class": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "labels": list(labels),
    }


def precision_recall_f1(confusion, labels: list) -> list[dict]:
    """Per class (rows of `confusion` are true classes, columns predicted): precision, recall and F1 in %
    (None where undefined: nothing predicted as, or no image of, that class) and support (true images)."""
    matrix = np.asarray(confusion, dtype=np.int64)
    hits, true, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    rows = []
    for i, label in enumerate(labels):
        precision = float(hits[i] / predicted[i] * 100) if predicted[i] else None
        recall = float(hits[i] / true[i] * 100) if true[i] else None
        f1 = (2 * precision * recall / (precision + recall) if precision + recall else 0.0) \
            if precision is not None and recall is not None else None
        rows.append({"label": label, "precision": precision, "recall": recall, "f1": f1, "support": int(true[i])})
    return rows


def most_confused(confusion, labels: list, top: int = 10) -> list[dict]:
    """The off-diagonal cells with the most images, largest first: {true, predicted, count}."""
    matrix = np.asarray(confusion, dtype=np.int64).copy()
    np.fill_diagonal(matrix, 0)
    cells = [(int(matrix[i, j]), i, j) for i, j in zip(*np.nonzero(matrix))]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": labels[i], "predicted": labels[j], "count": n} for n, i, j in cells[:top]]


def format_report(report: dict, title: str = "") -> str:
    """Human-readable summary: headline numbers, per-class accuracy, confusion matrix."""
    labels = report["labels"]
    lines = [title] if title else []
    lines.append(f"images {report['n']}  top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  "
                 f"mean per-class {report['mean_per_class']:.2f}%")
    width = max([len(str(lbl)) for lbl in labels] + [5])
    lines.append("per-class accuracy:")
    for label, acc in report["per_class"].items():
        lines.append(f"  {label:<{width}}  {'-' if acc is None else f'{acc:6.2f}%'}")
    if len(labels) <= 20:
        lines.append("confusion matrix (rows: true, columns: predicted):")
        cell = max(4, max(len(str(v)) for row in report["confusion"] for v in row) + 1)
        lines.append(" " * (width + 2) + "".join(f"{str(lbl)[:cell - 1]:>{cell}}" for lbl in labels))
        for label, row in zip(labels, report["confusion"]):
            lines.append(f"  {label:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    else:
        lines.append("confusion matrix: too many classes to print; see the JSON output (--json)")
    return "\n".join(lines)
