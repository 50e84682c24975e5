"""Data set listing without torch: sources, splits and the pre-flight scan.

Training (toolkit.train.data) and ONNX evaluation (toolkit.runtime.onnx_eval) both list a recipe's data
through `load_dataset`, so the same split is seen on both sides of the torch line."""
from toolkit.datasets.load import load_dataset, scan_items  # noqa: F401
from toolkit.datasets.sources import render_digits  # noqa: F401
from toolkit.datasets.splits import IMAGE_EXTENSIONS, Dataset  # noqa: F401
