"""Data set listing without torch: sources, splits and the pre-flight scan.

Training (toolkit.train.data) and ONNX evaluation (toolkit.runtime.onnx_eval) both list a recipe's data
through `load_dataset`, so the same split is seen on both sides of the torch line."""
from toolkit.datasets.load import load_dataset, scan_items
from toolkit.datasets.samples import write_samples
from toolkit.datasets.sources import render_digits
from toolkit.datasets.splits import SPLITS, Dataset
from toolkit.preprocess import IMAGE_EXTENSIONS  # the one list lives in core

__all__ = [
    "load_dataset", "scan_items", "render_digits", "write_samples", "SPLITS", "Dataset", "IMAGE_EXTENSIONS",
]
