"""The pre-flight scan decodes each file the way evaluation will (the recipe's eval transform: draft or
full decode, then the bounded resize and crop), so what it passes, evaluation can use (torch-free)."""
import io
import os

import numpy as np
from PIL import Image

from toolkit import datasets as D
from toolkit.preprocess import Preprocess

from data_helpers import make_folder, make_recipe


def _save(path, arr, fmt, **save):
    Image.fromarray(arr).save(path, fmt, **save)
    return str(path)


def test_the_scan_runs_the_eval_transform_and_its_bounds_hold(tmp_path):
    root = make_folder(tmp_path, ["a", "b"], n=3)
    # 1000000x1: resized whole it was a MemoryError after the scan had passed it
    thin = _save(os.path.join(root, "a", "thin.png"), np.full((1, 1_000_000, 3), 90, np.uint8), "PNG")
    buf = io.BytesIO()
    Image.fromarray(np.full((600, 800, 3), 120, np.uint8)).save(buf, "JPEG", quality=90)
    truncated = os.path.join(root, "b", "cut.jpg")
    with open(truncated, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    recipe = make_recipe({"root": root, "val_fraction": 0.0, "skip_corrupt": True})
    ds = D.load_dataset(recipe)
    assert [p for p, _ in ds.skipped] == [truncated]  # the draft decode still reads every byte
    assert "corrupt or truncated" in ds.skipped[0][1]
    assert thin in [p for p, _ in ds.train]
    assert Preprocess(resize=32, crop=32)(thin).shape == (3, 32, 32)


def test_scan_items_with_a_preprocess_reports_what_it_would_refuse(tmp_path):
    big = _save(tmp_path / "big.jpg", np.full((400, 500, 3), 30, np.uint8), "JPEG")
    pre = Preprocess(resize=32, crop=32)
    assert D.scan_items([(big, 0)], preprocess=pre) == []
    [(path, reason)] = D.scan_items([(big, 0)], max_pixels=1000, preprocess=pre)
    assert path == big and "over the limit" in reason
