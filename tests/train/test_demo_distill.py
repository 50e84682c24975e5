"""`toolkit demo --distill` on a tiny budget and tiny Fashion-MNIST files; its options and CLI wiring."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from fashion_helpers import tiny_demo_fashion
from toolkit.errors import UserError
from toolkit.train import demo_distill as demo
from toolkit.train.demo import demo_command


@pytest.mark.slow
def test_tiny_demo_writes_the_table_and_the_timing(tmp_path, monkeypatch, capsys):
    tiny_demo_fashion(tmp_path, monkeypatch)
    out = tmp_path / "demo"
    opts = demo.DistillDemoOptions(seeds=[0], labels_per_class=2, unlabeled=20, steps=1, teacher_steps=1,
                                   out_dir=str(out), overrides=["data.val_fraction=0.1"], workers=2)
    monkeypatch.chdir(tmp_path)  # the fashion_mnist source reads data/ of the working directory
    record = demo.run_distill_demo(opts)
    printed = capsys.readouterr().out
    assert "| model | input | params | fp32 MB | img/s | plain | distilled | distilled + pool |" in printed
    saved = json.loads((out / "demo.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["data"]["train"] == 20 and saved["data"]["test"] == 30 and saved["data"]["unlabeled"] == 20
    assert len(os.listdir(out / "data" / "unlabeled")) == 20
    assert [row["arch"] for row in saved["rows"]] == ["mobilenet_v3_small", "efficientnet_lite0"]
    assert {(r["arch"], r["arm"]) for r in saved["runs"]} == {(a, m) for a in demo.STUDENTS for m in demo.ARMS}
    for r in saved["runs"]:  # the arms differ only by the teacher and the pool
        assert (r["distill"] is None) == (r["arm"] == "plain")
        if r["arm"] == "distilled+pool":
            assert r["distill"]["unlabeled_images"] == 20 and r["distill"]["teacher_logits"] == "per_batch"
            assert "augmented view rendered at 64 px" in r["distill"]["teacher_input"]  # consistent teaching
        assert 0 <= r["val_top1"] <= 100
    assert saved["timing"]["per_batch"]["epoch_s"] > 0 and saved["timing"]["cached"]["images"] == 40
    mbv3 = next(r for r in saved["runs"] if r["arch"] == "mobilenet_v3_small" and r["arm"] == "distilled")
    assert "its own eval view of each photo, 64 px" in mbv3["distill"]["teacher_input"]  # not the student's 32 px
    assert saved["facts"]["teacher"]["px"] == 64 and saved["facts"]["efficientnet_lite0"]["px"] == 32
    assert "gap closed" in (out / "demo.md").read_text()
    assert f"validation top-1 ({saved['data']['val']} photos of the training file)" in (out / "demo.md").read_text()
    assert "every run on one torch thread" in saved["machine"]  # the workers' threads, not this process's


def test_options_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="at least one seed"):
        demo.run_distill_demo(demo.DistillDemoOptions(seeds=[], out_dir=str(tmp_path)))
    with pytest.raises(UserError, match="must be positive"):
        demo.run_distill_demo(demo.DistillDemoOptions(steps=0, out_dir=str(tmp_path)))
    with pytest.raises(UserError, match="expected one value"):
        demo_command([], labels_per_class="5,20", distill=True)
    with pytest.raises(UserError, match="--imagenet or --distill, not both"):
        demo_command([], imagenet=True, distill=True)
    with pytest.raises(UserError, match="workers -1; expected 0"):
        demo_command([], distill=True, workers="-1", out_dir=str(tmp_path))
    with pytest.raises(UserError, match="--workers goes with --imagenet or --distill"):
        demo_command([], workers="2")
    for flag in ("distill", "imagenet"):   # --quick's 4 steps replaced --steps 50 without a word
        with pytest.raises(UserError, match="--quick runs 4 steps a run; expected --steps 50 or --quick, not both"):
            demo_command([], steps="50", quick=True, out_dir=str(tmp_path), **{flag: True})
    assert not os.listdir(tmp_path)


def test_a_second_demo_rewrites_its_photo_folders(tmp_path, monkeypatch):
    """A rerun into the same out_dir kept the first run's photos beside the new ones (files were only added):
    with another labels-per-class, every run trained on a mix the demo never chose."""
    tiny_demo_fashion(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    recipe = demo.recipe_mod.load(demo.recipe_path("fashion-distill-teacher.yaml"), ["data.val_fraction=0.1"])
    folder = str(tmp_path / "demo" / "data")
    for k, pool in ((5, 30), (2, 10)):
        recipe.data.labels_per_class = k
        info = demo.write_data(recipe, pool, folder)
        train = [f for _, _, files in os.walk(os.path.join(folder, "labelled", "train")) for f in files]
        assert len(train) == info["train"] == 10 * k
        assert len(os.listdir(os.path.join(folder, "unlabeled"))) == info["unlabeled"] == pool


def test_cli_flag_reaches_the_distill_demo():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "demo", "--distill", "--steps", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "demo --distill: labels per class" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
