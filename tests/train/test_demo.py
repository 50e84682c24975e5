"""The offline demo's wiring, on a small budget: source, transfer and scratch runs, and the report."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", "demo", "model.arch=vgg11", "model.hidden=32", "train.epochs=1",
         "--seeds", "0", "--labels-per-class", "2", "--out-dir", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "demo.json").read_text())
    assert [r["arm"] for r in record["runs"]] == ["transfer", "scratch"]
    assert record["rows"][0]["labels_per_class"] == 2
    for arm in ("transfer", "scratch"):
        assert 0 <= record["rows"][0][arm]["mean"] <= 100
    assert "| labels per class | transfer | scratch | transfer gain |" in proc.stdout
    # transfer started from the source run's checkpoint; scratch from random weights
    transfer = (out / "transfer-k2-s0" / "recipe.yaml").read_text()
    assert os.path.join(str(out), "digits-source", "checkpoints", "best.pt") in transfer
    assert "weights: none" in (out / "scratch-k2-s0" / "recipe.yaml").read_text()
