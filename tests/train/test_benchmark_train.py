"""toolkit benchmark --train (toolkit.train.benchmark) on a tiny recipe. No timing assertions."""
import os

import pytest

from toolkit.runtime import benchmark as report  # validate_record
from toolkit.runtime.benchmark.report import format_train_table
from toolkit.train import benchmark as train_bench


def test_train_benchmark_names_the_limit(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("toolkit.train.data")
    from conftest import write_recipe
    torch = pytest.importorskip("torch")
    from toolkit.train.model import build_model

    # finetune needs pretrained weights: a local state dict stands in for ImageNet (no network).
    weights = str(tmp_path / "vgg11.pth")
    torch.save(build_model("vgg11", 3, head="gap", input_size=32).state_dict(), weights)
    raw = {"name": "tinytrain", "out_dir": str(tmp_path / "runs"),
           "data": {"source": "digits", "workers": 0, "image_size": 32, "classes": [0, 1, 2]},
           "preprocess": {"resize": 32, "crop": 32},
           "model": {"arch": "vgg11", "weights": weights, "head": "gap"},
           "train": {"strategy": "finetune", "freeze_epochs": 1, "epochs": 2, "batch_size": 4, "device": "cpu",
                     "amp": "off"}}
    path = write_recipe(tmp_path / "r.yaml", raw)
    torch.set_num_threads(2)
    rec = train_bench.run_train_benchmark(path, iterations=2, rounds=2, warmup=1, threads=1, loader_batches=3,
                                    out_dir=str(tmp_path / "o"), quiet=True)
    assert torch.get_num_threads() == 2  # threads=1 applied to the benchmark only, then given back
    assert report.validate_record(rec) == [], report.validate_record(rec)
    # fp32 and bf16 side by side in each phase (train.amp: off trains in fp32, so no third precision)
    assert [(p["phase"], p["precision"]) for p in rec["phases"]] == [
        ("frozen (first epochs)", "fp32"), ("frozen (first epochs)", "bf16"), ("main", "fp32"), ("main", "bf16")]
    assert rec["phases"][0]["trainable_params"] < rec["phases"][2]["trainable_params"]
    assert rec["notes"][0].startswith("training step bf16 / fp32: ")
    assert rec["loader"]["batches"] == 3 and rec["loader"]["images"] == 12
    assert rec["limiter"]["bound_by"] in ("data loader", "training step")
    limit = next(line for line in format_train_table(rec).splitlines() if line.startswith("limited by"))
    assert limit.count(rec["limiter"]["bound_by"]) == 1, limit  # the limit is named once, then the advice
    assert os.path.exists(rec["files"]["json"]) and os.path.exists(rec["files"]["markdown"])
