"""Per-class precision, recall, F1 and the most confused pairs, from a confusion matrix."""
import pytest

from toolkit.metrics import most_confused, precision_recall_f1

MATRIX = [[5, 1, 0],   # rows: true a, b, c; columns: predicted
          [3, 2, 0],
          [0, 0, 0]]


def test_precision_recall_f1_per_class():
    rows = precision_recall_f1(MATRIX, ["a", "b", "c"])
    a, b, c = rows
    assert a["precision"] == pytest.approx(100 * 5 / 8) and a["recall"] == pytest.approx(100 * 5 / 6)
    assert a["f1"] == pytest.approx(2 * (5 / 8) * (5 / 6) / ((5 / 8) + (5 / 6)) * 100)
    assert b["precision"] == pytest.approx(100 * 2 / 3) and b["recall"] == pytest.approx(40.0)
    assert [r["support"] for r in rows] == [6, 5, 0]
    assert c == {"label": "c", "precision": None, "recall": None, "f1": None, "support": 0}


def test_most_confused_pairs_largest_first():
    assert most_confused(MATRIX, ["a", "b", "c"]) == [{"true": "b", "predicted": "a", "count": 3},
                                                      {"true": "a", "predicted": "b", "count": 1}]
    assert most_confused(MATRIX, ["a", "b", "c"], top=1) == [{"true": "b", "predicted": "a", "count": 3}]
