"""toolkit benchmark A.onnx B.onnx ...: several tiny exports side by side, top-1 against img/s, Pareto marks.
Torch-free (conftest.write_tiny_model); a few iterations; no timing assertions."""
import json
import os

import numpy as np
import pytest

from conftest import write_recipe, write_tiny_model
from toolkit.errors import UserError
from toolkit.runtime import benchmark as bench
from toolkit.runtime.benchmark import peak as peak_mod

LABELS = ["ant", "bee", "cat"]
CROPS = {"small": 16, "mid": 24, "large": 32}  # the same net at three input sizes: three costs
FAST = dict(batch_sizes=(1, 2), iterations=2, rounds=2, warmup=1, threads=1, quiet=True, isolate=False,
            end_to_end=False)


@pytest.fixture(autouse=True)
def small_peak(monkeypatch):
    monkeypatch.setattr(peak_mod, "PEAK_MATRIX", {"cpu": 128, "cuda": 1024})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    out = []
    for name, crop in CROPS.items():
        base = write_tiny_model(folder / f"{name}.onnx", crop=crop, labels=LABELS)
        write_tiny_model(bench.twin_path(base, "int8"), crop=crop, labels=LABELS, precision="int8")
        out.append(base)
    return out


def _recipe(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in LABELS:
        os.makedirs(tmp_path / "images" / name)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png")
    return write_recipe(tmp_path / "r.yaml", {
        "name": "tiny", "data": {"source": "folder", "root": str(tmp_path / "images"), "val_fraction": 0.5,
                                 "workers": 0},
        "preprocess": {"resize": 36, "crop": 32}, "model": {"arch": "vgg11", "weights": "none"},
        "train": {"strategy": "scratch"}})


# ------------------------------------------------------------------------------------------------
# The Pareto marks on hand-made points

def test_pareto_flags_on_hand_made_points():
    points = [(100.0, 70.0),   # fastest, least accurate: on the front
              (50.0, 80.0),    # on the front
              (10.0, 90.0),    # most accurate: on the front
              (40.0, 75.0),    # (50, 80) is faster and more accurate
              (50.0, 79.0),    # as fast as (50, 80) but less accurate
              (10.0, 90.0),    # an exact twin of a front point: both stay on it
              (200.0, None),   # no accuracy: not judged
              (5.0, 95.0)]     # slowest, most accurate: on the front
    assert bench.pareto_flags(points) == [True, True, True, False, False, True, None, True]
    assert bench.pareto_flags([]) == []
    assert bench.pareto_flags([(1.0, 1.0)]) == [True]


# ------------------------------------------------------------------------------------------------
# A run without accuracy: every model, interleaved, outputs written

@pytest.fixture(scope="module")
def compared(models, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cmp"))
    mp = pytest.MonkeyPatch()
    mp.setattr(peak_mod, "PEAK_MATRIX", {"cpu": 128, "cuda": 1024})
    try:
        return bench.compare_models(models, precision="fp32,int8", out_dir=out, **FAST)
    finally:
        mp.undo()


def test_a_row_for_every_model_backend_and_batch(compared):
    assert bench.validate_record(compared) == []
    got = {(r["model"], r["key"], r["batch"]) for r in compared["rows"]}
    assert got == {(m, f"onnxruntime/cpu/{p}", b) for m in CROPS for p in ("fp32", "int8") for b in (1, 2)}
    assert [m["name"] for m in compared["models"]] == list(CROPS)
    flops = {m["name"]: m["flops_per_image"] for m in compared["models"]}
    assert flops["small"] < flops["mid"] < flops["large"]
    for r in compared["rows"]:
        assert r["ips_min"] <= r["ips"] <= r["ips_max"] and r["ips"] > 0
        assert r["flops_per_image"] == flops[r["model"]]
        assert r["top1"] is None and r["pareto"] is None  # no --data: nothing to trade speed against
    assert compared["settings"]["pareto_batch"] == 2  # the largest batch size by default


def test_all_models_share_the_same_rounds(compared):
    for batch in (1, 2):
        for r in range(2):
            in_round = [(b["model"], b["key"]) for b in compared["schedule"] if b["batch"] == batch and b["round"] == r]
            assert sorted(in_round) == sorted((m, f"onnxruntime/cpu/{p}") for m in CROPS for p in ("fp32", "int8"))
        rounds_in_order = [b["round"] for b in compared["schedule"] if b["batch"] == batch]
        assert rounds_in_order == sorted(rounds_in_order)  # round 0 of every model before any round 1
    first = [b["model"] for b in compared["schedule"] if b["batch"] == 1 and b["round"] == 0]
    second = [b["model"] for b in compared["schedule"] if b["batch"] == 1 and b["round"] == 1]
    assert first != second  # the order rotates from round to round
    assert compared["settings"]["interleaved"] is True


def test_outputs_are_written(compared):
    files = compared["files"]
    with open(files["json"]) as fh:
        on_disk = json.load(fh)
    assert bench.validate_record(on_disk) == [] and on_disk["rows"] == compared["rows"]
    md = open(files["markdown"]).read()
    assert all(name in md for name in CROPS) and "img/s b2" in md
    from toolkit.runtime.benchmark.report import format_compare_table

    table = format_compare_table(compared)
    assert len([line for line in table.splitlines() if "onnxruntime/cpu/" in line]) == 6
    for m in compared["models"]:  # each model keeps its full record in its own folder
        with open(m["record"]) as fh:
            rec = json.load(fh)
        assert bench.validate_record(rec) == [] and rec["model"]["path"] == m["path"]
        assert {r["key"] for r in rec["results"]} == {"onnxruntime/cpu/fp32", "onnxruntime/cpu/int8"}


# ------------------------------------------------------------------------------------------------
# With --data: top-1 per model x precision, and the Pareto marks from it

def test_accuracy_and_pareto_with_data(models, tmp_path):
    pytest.importorskip("toolkit.train.data")
    recipe = _recipe(tmp_path)
    rec = bench.compare_models(models[:2], precision="fp32,int8", data=recipe, pareto_batch=1,
                               out_dir=str(tmp_path / "o"), **FAST)
    assert bench.validate_record(rec) == []
    assert rec["settings"]["pareto_batch"] == 1 and rec["settings"]["split"] == "val"
    for r in rec["rows"]:
        assert 0 <= r["top1"] <= 100
    for b in (1, 2):
        group = [r for r in rec["rows"] if r["batch"] == b]
        assert [r["pareto"] for r in group] == bench.pareto_flags([(r["ips"], r["top1"]) for r in group])
        assert any(r["pareto"] for r in group)
        fastest = max(group, key=lambda r: (r["ips"], r["top1"]))
        assert fastest["pareto"] is True  # nothing is faster than the fastest row
    for m in rec["models"]:
        with open(m["record"]) as fh:
            backends = json.load(fh)["backends"]
        assert all(b["accuracy"]["n"] == 6 for b in backends)


def test_mismatched_labels_are_one_clear_error_before_timing(models, tmp_path):
    pytest.importorskip("toolkit.train.data")
    other = write_tiny_model(tmp_path / "dogs.onnx", crop=16, labels=["ant", "bee", "dog"])
    out = tmp_path / "o"
    with pytest.raises(UserError, match=r"dogs.onnx: its labels differ from .*small.onnx's: it has dog .*; "
                                        r"it lacks cat"):
        bench.compare_models([models[0], other], data=_recipe(tmp_path), out_dir=str(out), **FAST)
    assert not out.exists()  # nothing half-written
    # Without --data the labels don't matter: speed alone compares.
    rec = bench.compare_models([models[0], other], out_dir=str(out), **{**FAST, "batch_sizes": (1,)})
    assert {r["model"] for r in rec["rows"]} == {"small", "dogs"}


def test_every_peak_is_measured_once_for_all_models(models, tmp_path, monkeypatch):
    measured = []
    real = peak_mod.measure_peak
    monkeypatch.setattr(peak_mod, "measure_peak", lambda *a, **k: measured.append(a[:3]) or real(*a, **k))
    rec = bench.compare_models(models[:2], precision="fp32,int8", out_dir=str(tmp_path / "o"),
                               **{**FAST, "batch_sizes": (1,)})
    assert sorted(measured) == [("cpu", 1, "fp32"), ("cpu", 1, "int8")]
    peaks = []
    for m in rec["models"]:
        with open(m["record"]) as fh:
            peaks.append(json.load(fh)["peaks"])
    assert peaks[0] == peaks[1] and [p["precision"] for p in peaks[0]] == ["fp32", "int8"]  # the same, in both


def test_bad_requests_are_user_errors(models, tmp_path):
    with pytest.raises(UserError, match="at least two models"):
        bench.compare_models(models[:1], **FAST)
    with pytest.raises(UserError, match="pareto_batch: 4 is not one of the batch sizes timed"):
        bench.compare_models(models, pareto_batch=4, **FAST)
    with pytest.raises(UserError, match="no such model file"):
        bench.compare_models([models[0], str(tmp_path / "missing.onnx")], **FAST)


def test_cli_takes_extra_onnx_files_as_models(models, tmp_path):
    from toolkit import cli

    out = tmp_path / "cli"
    cli.benchmark(models[0], models[1], batch_sizes="1", iterations=1, rounds=1, warmup=1, threads=1,
                  model_only=True, isolate=False, out_dir=str(out))
    with open(out / "compare.json") as fh:
        rec = json.load(fh)
    assert [m["name"] for m in rec["models"]] == ["small", "mid"]
    assert (out / "small" / "benchmark.json").is_file() and (out / "mid" / "benchmark.json").is_file()
    with pytest.raises(UserError, match=r"unexpected arguments .*model.arch=vgg11.*expected more .onnx exports"):
        cli.benchmark(models[0], "model.arch=vgg11")
    with pytest.raises(UserError, match="--pareto-batch goes with several models"):
        cli.benchmark(models[0], pareto_batch=1)


def test_an_export_and_its_twin_are_named_by_their_files(models, tmp_path):
    """`benchmark d.onnx d.int8.onnx` named the rows d and d-2: both were named by the fp32 base."""
    rec = bench.compare_models([models[0], bench.twin_path(models[0], "int8")], out_dir=str(tmp_path), **FAST)
    assert [m["name"] for m in rec["models"]] == ["small", "small.int8"]
    assert {r["key"] for r in rec["rows"] if r["model"] == "small.int8"} == {"onnxruntime/cpu/int8"}
    assert (tmp_path / "small.int8" / "benchmark.json").is_file()


def test_a_twin_with_another_precision_is_refused(models, tmp_path):
    """`benchmark d.fp16.onnx --precision int8` timed the int8 twin and never ran the file given; a raw twin's
    --precision int8 advised an export that never makes the file it looked for."""
    int8 = bench.twin_path(models[0], "int8")
    with pytest.raises(UserError, match=r"is the int8 twin; --precision fp16 would time other files: expected the "
                                        r"FP32 file \(.*small.onnx\) with --precision fp16"):
        bench.run_benchmark(int8, bench.BenchmarkOptions(precision="fp16", out_dir=str(tmp_path), **FAST))
    raw = models[0][:-len(".onnx")] + ".raw.onnx"
    write_tiny_model(raw, crop=16, labels=LABELS)
    with pytest.raises(UserError, match=r"is the raw-input twin, which has no precision twins; expected --precision "
                                        r"int8 with the FP32 file \(.*small.onnx\)"):
        bench.run_benchmark(raw, bench.BenchmarkOptions(precision="int8", out_dir=str(tmp_path), **FAST))
    record = bench.run_benchmark(int8, bench.BenchmarkOptions(out_dir=str(tmp_path / "own"), **FAST))
    assert {r["precision"] for r in record["results"]} == {"int8"}   # alone: the file given
