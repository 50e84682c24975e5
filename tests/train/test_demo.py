"""The offline demo's wiring, on a small budget: source, transfer and scratch runs, the report, and the
newcomer's next step (the commands the demo prints work with no path)."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def _toolkit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "PYTHONPATH": ROOT})


def test_demo_end_to_end_small_then_the_next_commands(tmp_path):
    proc = _toolkit("demo", "model.arch=vgg11", "model.hidden=32", "train.epochs=1",
                    "--seeds", "0", "--labels-per-class", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "runs" / "demo"
    record = json.loads((out / "demo.json").read_text())
    assert [r["arm"] for r in record["runs"]] == ["scratch", "transfer"]  # transfer last: it is the newest run
    assert record["rows"][0]["labels_per_class"] == 2
    for arm in ("transfer", "scratch"):
        assert 0 <= record["rows"][0][arm]["mean"] <= 100
    assert "| labels per class | transfer | scratch | transfer gain |" in proc.stdout
    # transfer started from the source run's checkpoint; scratch from random weights
    transfer = (out / "transfer-k2-s0" / "recipe.yaml").read_text()
    assert os.path.join("runs", "demo", "digits-source", "checkpoints", "best.pt") in transfer
    assert "weights: none" in (out / "scratch-k2-s0" / "recipe.yaml").read_text()

    # The demo ends with the next commands; each works with no path, from the same folder.
    assert "\n  toolkit export " in proc.stdout and "\n  toolkit export --int8" in proc.stdout
    sample = os.path.join("runs", "demo", "samples", "5.png")
    assert f"toolkit predict {sample}" in proc.stdout
    assert sorted(os.listdir(out / "samples")) == [f"{d}.png" for d in range(5, 10)]
    exported = _toolkit("export", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "exports" / "transfer-k2-s0.onnx").is_file()  # the newest run, one level down
    predicted = _toolkit("predict", sample, "--format", "json", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout)["results"][0]["predictions"][0]["label"] in [str(d) for d in range(5, 10)]
