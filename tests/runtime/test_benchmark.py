"""toolkit.runtime.benchmark on tiny models (32 px, a few iterations). No timing assertions anywhere."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from toolkit.runtime import benchmark as bench
from toolkit.runtime import benchmark as report  # validate_record, SCHEMA_VERSION, format_table
from toolkit.runtime.benchmark import peak as peak_mod
from conftest import tiny_graph, tiny_metadata, write_tiny_model
from toolkit.errors import UserError

CROP = 32
LABELS = ["ant", "bee", "cat"]


# ------------------------------------------------------------------------------------------------
# Fixtures: a tiny export per the ONNX file contract (conftest.write_tiny_model, onnx.helper, no torch)

# Multiply-accumulates of conftest.tiny_graph at 32 px and 3 classes (its docstring gives the formula).
TINY_MACS = CROP * CROP * 8 * 3 * 9 + (CROP // 2) ** 2 * 8 * 8 * 9 + 8 * 3


def make_export(folder, name="tiny", twins=("fp16", "int8")):
    """exports/<name>.onnx (+ twins: copies of the same graph labelled with their precision)."""
    os.makedirs(folder, exist_ok=True)
    base = write_tiny_model(os.path.join(folder, f"{name}.onnx"), crop=CROP, labels=LABELS)
    for p in twins:
        write_tiny_model(bench.twin_path(base, p), crop=CROP, labels=LABELS, precision=p)
    return base


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    return make_export(str(tmp_path_factory.mktemp("exports")))


@pytest.fixture(autouse=True)
def small_peak(monkeypatch):
    # A 256x256 GEMM keeps the peak measurement quick in tests.
    monkeypatch.setattr(peak_mod, "PEAK_MATRIX", {"cpu": 256, "cuda": 1024})


FAST = dict(batch_sizes=(1, 2), iterations=2, rounds=2, warmup=1, threads=1, quiet=True)


# ------------------------------------------------------------------------------------------------
# The record

@pytest.fixture(scope="module")
def record(tiny_export, tmp_path_factory):
    """One full run: two precisions, model + end to end, cold start in fresh processes."""
    out = str(tmp_path_factory.mktemp("bench"))
    mp = pytest.MonkeyPatch()
    mp.setattr(peak_mod, "PEAK_MATRIX", {"cpu": 256, "cuda": 1024})
    try:
        return bench.run_benchmark(tiny_export, precision=("fp32", "int8"), out_dir=out, isolate=True, **FAST)
    finally:
        mp.undo()


def test_record_is_schema_valid_with_every_field(record):
    assert report.validate_record(record) == []
    assert record["schema_version"] == report.SCHEMA_VERSION
    # The file on disk is the same record, and valid too.
    with open(record["files"]["json"]) as fh:
        on_disk = json.load(fh)
    assert report.validate_record(on_disk) == []
    assert on_disk["results"] == json.loads(json.dumps(record["results"]))


def test_validator_catches_missing_and_mistyped_fields(record):
    broken = json.loads(json.dumps(record))
    del broken["results"][0]["latency_ms"]["p99"]
    broken["settings"]["threads"] = "two"
    problems = report.validate_record(broken)
    assert any("results[0].latency_ms.p99: missing" in p for p in problems)
    assert any("settings.threads" in p for p in problems)
    assert report.validate_record({"kind": "other"})


def test_every_backend_mode_and_batch_is_measured(record):
    combos = {(r["key"], r["mode"], r["batch"]) for r in record["results"]}
    assert combos == {(f"onnxruntime/cpu/{p}", m, b) for p in ("fp32", "int8")
                      for m in ("model", "end_to_end", "end_to_end_12mp") for b in (1, 2)}
    for r in record["results"]:
        assert r["provider"] == "CPUExecutionProvider"
        assert r["engine"] == "onnxruntime" and r["engine_device"] == "CPU"
        assert r["inference_precision"] == r["precision"]
        assert r["e2e_image"] == {"model": None, "end_to_end": "500x375", "end_to_end_12mp": "4032x3024"}[r["mode"]]
        assert r["iterations"] == 2  # ceil(2 / 2 rounds) = 1 per round x 2 rounds
        assert r["gflops"] > 0 and r["fraction_of_peak"] > 0
        assert r["cold_start_s"] > 0 and r["peak_rss_mb"] > 0  # from the fresh-process probe
        assert r["baseline"] == "onnxruntime/cpu/fp32"
        # end-to-end rows split their time: decoding (on every core) vs the model; the tiny model is
        # next to free, so a 12 MP JPEG's decode is most of the call
        if r["mode"] == "model":
            assert r["decode_share"] is None
        else:
            assert 0 < r["decode_share"] < 1
        if r["mode"] == "end_to_end_12mp":
            assert r["decode_share"] > 0.5
    assert {b["status"] for b in record["backends"]} == {"ok"}
    for b in record["backends"]:
        assert b["cold_start"]["isolated"] is True
        assert set(b["cold_start"]["first_inference_s"]) == {"1", "2"}
        assert b["session_options"]["intra_op_num_threads"] == 1
        assert b["flops_per_image"] == 2 * TINY_MACS


def test_percentiles_are_ordered(record):
    for r in record["results"]:
        lat, t = r["latency_ms"], r["throughput_ips"]
        assert lat["min"] <= lat["q25"] <= lat["p50"] <= lat["q75"] <= lat["p90"] <= lat["p95"] <= lat["p99"] \
            <= lat["max"]
        assert t["min"] <= t["q25"] <= t["median"] <= t["q75"] <= t["max"]
        per = r["latency_per_image_ms"]
        assert per["p50"] <= per["p90"] <= per["p95"] <= per["p99"]
        assert per["p50"] == pytest.approx(lat["p50"] / r["batch"], rel=1e-3, abs=1e-4)


def test_the_record_says_what_was_timed_and_on_what(record):
    assert set(record["timed"]) >= {"model", "end_to_end", "cold_start", "peak_rss", "throughput", "latency",
                                    "gflops"}
    assert record["settings"]["threads"] == 1 and record["settings"]["batch_sizes"] == [1, 2]
    assert record["versions"]["onnxruntime"] and record["machine"]["cpu"]
    assert "torch" not in sys.modules or record["versions"]["torch"]
    peak = next(p for p in record["peaks"] if p["precision"] == "fp32")
    assert peak["gflops"] > 0 and peak["engine"] and peak["threads"] == 1
    assert any(p["precision"] == "int8" for p in record["peaks"])
    assert record["model"]["flops_per_image"] == 2 * TINY_MACS


def test_markdown_and_table_are_written(record):
    md = open(record["files"]["markdown"]).read()
    assert "| backend |" in md and "onnxruntime" in md and "## What was timed" in md
    assert md.count("\n| onnxruntime ") == len(record["results"])
    table = report.format_table(record)
    assert "img/s" in table and "e2e" in table


def test_each_peak_is_measured_once(tiny_export, tmp_path, monkeypatch):
    measured = []
    real = peak_mod.measure_peak
    monkeypatch.setattr(peak_mod, "measure_peak", lambda *a, **k: measured.append(a[:3]) or real(*a, **k))
    rec = bench.run_benchmark(tiny_export, precision="fp32,int8", isolate=False, end_to_end=False,
                              out_dir=str(tmp_path / "o"), **FAST)
    assert sorted(measured) == [("cpu", 1, "fp32"), ("cpu", 1, "int8")]
    assert [(p["device"], p["precision"]) for p in rec["peaks"]] == [("cpu", "fp32"), ("cpu", "int8")]


# ------------------------------------------------------------------------------------------------
# Interleaving

def test_interleaved_rounds_rotate_the_order():
    calls = []
    entries = {name: ((lambda name=name: calls.append(name)), k) for name, k in zip("abc", (2, 1, 1))}
    lat, blocks, order = bench.interleaved_rounds(entries, rounds=3)
    assert calls == ["a", "a", "b", "c", "b", "c", "a", "a", "c", "a", "a", "b"]
    assert [(r, n) for r, n, _ in order] == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
                                            (2, "c"), (2, "a"), (2, "b")]
    assert len(lat["a"]) == 6 and len(blocks["a"]) == 3 and len(lat["b"]) == 3


def test_benchmark_interleaves_backends(record):
    for batch in (1, 2):
        sched = [s for s in record["schedule"] if s["batch"] == batch]
        names = [(s["key"], s["mode"]) for s in sched]
        entries = list(dict.fromkeys(names))
        # 2 precisions x 3 modes (model, 500x375 and 12 MP end to end), 2 rounds
        assert len(entries) == 6 and len(sched) == 6 * 2
        first_round = [n for s, n in zip(sched, names) if s["round"] == 0]
        second_round = [n for s, n in zip(sched, names) if s["round"] == 1]
        assert first_round == entries
        assert second_round == entries[1:] + entries[:1]  # rotated by one
        # Each round holds every backend once: no backend runs all its iterations back to back.
        assert sorted(first_round) == sorted(second_round)
        # the loop is compare_models' with one model: every block names it
        assert {s["model"] for s in sched} == {"tiny"}


# ------------------------------------------------------------------------------------------------
# Clear errors

def test_missing_precision_twin_is_one_clear_error(tmp_path):
    base = make_export(str(tmp_path / "exports"), twins=("fp16",))
    with pytest.raises(UserError) as err:
        bench.run_benchmark(base, precision="fp32,int8", out_dir=str(tmp_path / "out"), **FAST)
    msg = str(err.value)
    assert "tiny.int8.onnx" in msg and "toolkit export runs/tiny --int8" in msg
    assert "fp16" not in msg.split(";")[0].replace("tiny.int8.onnx", "")
    assert not os.path.exists(tmp_path / "out")


def _cuda_really_works() -> bool:
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        from toolkit.runtime.predictor import Predictor
        return Predictor.__init__ is not None and peak_mod.measure_peak("cuda", 1, n=64).gflops is not None
    except Exception:
        return False


def test_missing_device_is_one_clear_error(tiny_export, tmp_path):
    if _cuda_really_works():
        pytest.skip("CUDA works on this machine")
    with pytest.raises(UserError) as err:
        bench.run_benchmark(tiny_export, device="cpu,cuda", out_dir=str(tmp_path / "out"), **FAST)
    msg = str(err.value)
    assert "CUDA" in msg and "\n" not in msg
    with pytest.raises(UserError, match="device: 'tpu'"):
        bench.run_benchmark(tiny_export, device="tpu", **FAST)


def test_bad_arguments_are_user_errors(tiny_export, tmp_path):
    with pytest.raises(UserError, match="precision"):
        bench.run_benchmark(tiny_export, precision="fp8", **FAST)
    with pytest.raises(UserError, match="not both"):
        bench.run_benchmark(tiny_export, duration=1.0, **FAST)
    with pytest.raises(UserError, match="batch_sizes"):
        bench.run_benchmark(tiny_export, **{**FAST, "batch_sizes": "0,2"})
    with pytest.raises(UserError, match="no exported model"):
        bench.run_benchmark(None, exports_dir=str(tmp_path / "empty"), **FAST)
    with pytest.raises(UserError, match="no such model file"):
        bench.run_benchmark(str(tmp_path / "nope.onnx"), **FAST)
    with pytest.raises(UserError, match="split: 'test' goes with --data RECIPE"):
        bench.run_benchmark(tiny_export, split="test", **FAST)
    # an --out-dir that cannot be made fails before the timing, not after it (the results were lost)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match=r"out_dir: .*a-file is not a folder; expected a writable folder"):
        bench.run_benchmark(tiny_export, out_dir=str(tmp_path / "a-file" / "b"), **FAST)


def test_fixed_batch_axis_is_refused(tmp_path):
    path = write_tiny_model(tmp_path / "fixed.onnx", crop=CROP, labels=LABELS, batch=1)
    with pytest.raises(UserError, match="batch axis is fixed at 1"):
        bench.run_benchmark(path, **FAST)


# ------------------------------------------------------------------------------------------------
# Newest export, twin given directly, no isolation, no end to end

def test_newest_export_twin_selection_and_no_cold_start_without_isolation(tmp_path, capsys):
    folder = str(tmp_path / "exports")
    make_export(folder, name="older", twins=())
    newest = make_export(folder, name="newer", twins=("int8",))
    os.utime(newest, None)
    rec = bench.run_benchmark(None, exports_dir=folder, out_dir=str(tmp_path / "o1"), isolate=False,
                              end_to_end=False, **{**FAST, "quiet": False, "batch_sizes": (2,)})
    captured = capsys.readouterr()
    assert f"using the newest export {newest}" in captured.err
    assert "img/s" in captured.out  # the table goes to stdout
    assert rec["model"]["path"] == newest
    assert {r["mode"] for r in rec["results"]} == {"model"}
    assert rec["backends"][0]["cold_start"] is None  # measured only in a fresh process
    assert rec["results"][0]["cold_start_s"] is None and rec["results"][0]["first_run_s"] > 0
    assert report.validate_record(rec) == []
    # A twin given directly benchmarks that precision.
    rec2 = bench.run_benchmark(bench.twin_path(newest, "int8"), isolate=False, end_to_end=False,
                               out_dir=str(tmp_path / "o2"), **{**FAST, "batch_sizes": (1,)})
    assert [b["precision"] for b in rec2["backends"]] == ["int8"]


# ------------------------------------------------------------------------------------------------
# FLOPs

def test_flop_counter_on_the_tiny_graph_and_its_int8_twin(tmp_path):
    flops = bench.count_flops(tiny_graph(CROP))
    assert flops["flops"] == 2 * TINY_MACS and flops["uncounted"] == []
    assert set(flops["by_op"]) == {"Conv", "Gemm"}
    # A static QDQ INT8 model does the same multiply-accumulates.
    quant = pytest.importorskip("onnxruntime.quantization")
    import onnx
    fp32, int8 = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    onnx.save(tiny_graph(CROP), fp32)

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.left = 2

        def get_next(self):
            self.left -= 1
            return {"input": np.random.default_rng(self.left).standard_normal((1, 3, CROP, CROP)).astype(
                np.float32)} if self.left >= 0 else None

    quant.quantize_static(fp32, int8, Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True)
    assert bench.count_flops(int8)["flops"] == 2 * TINY_MACS


def test_flop_counter_fills_in_dynamic_height_and_width():
    from onnx import TensorProto, helper
    proto = tiny_graph(CROP)
    proto.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                ["batch", 3, "height", "width"]))
    assert bench.count_flops(proto, image_size=CROP)["flops"] == 2 * TINY_MACS


# ------------------------------------------------------------------------------------------------
# Light import

def test_import_is_light():
    code = ("import sys, toolkit.runtime.benchmark; "
            "print([m for m in ('torch', 'torchvision', 'albumentations', 'cv2', 'onnxruntime', 'matplotlib') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------
# --torch on a tiny checkpoint (--train: tests/train/test_benchmark_train.py)

def _tiny_checkpoint(tmp_path):
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.onnx's legacy exporter is fine here
    torch = pytest.importorskip("torch")
    model_mod = pytest.importorskip("toolkit.train.model")
    from toolkit import recipe as recipe_mod
    from toolkit.train.checkpoint import save_checkpoint

    raw = {"name": "tiny", "model": {"arch": "vgg11", "weights": "none", "head": "gap"},
           "preprocess": {"resize": CROP, "crop": CROP}, "data": {"source": "digits", "workers": 0},
           "train": {"strategy": "scratch"}}
    recipe = recipe_mod.from_dict(raw, check_paths=False)
    model = model_mod.build_from_recipe(recipe, num_classes=len(LABELS)).eval()
    path = str(tmp_path / "runs" / "tiny" / "checkpoints" / "best.pt")
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "epoch": 1, "step": 1,
                           "labels": LABELS, "recipe": recipe_mod.to_dict(recipe), "metrics": {}, "rng": {},
                           "best_top1": 0.0})
    onnx_path = str(tmp_path / "exports" / "tiny.onnx")
    os.makedirs(os.path.dirname(onnx_path))
    torch.onnx.export(model, (torch.zeros(1, 3, CROP, CROP),), onnx_path, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    import onnx

    from toolkit import contract
    proto = onnx.load(onnx_path)
    meta = {**tiny_metadata(CROP, LABELS), "checkpoint": path, "source_run": str(tmp_path / "runs" / "tiny")}
    del meta["checkpoint_sha256"]  # the export's own checkpoint: no sha256 to compare against
    contract.write(proto, meta)
    onnx.save(proto, onnx_path)
    return onnx_path, path


def test_torch_baseline_on_a_tiny_checkpoint(tmp_path):
    onnx_path, ckpt = _tiny_checkpoint(tmp_path)
    from toolkit.train.torch_backend import load_torch_backends

    with pytest.raises(UserError, match="torch_backends=toolkit.train.torch_backend.load_torch_backends"):
        bench.run_benchmark(onnx_path, torch=True, **FAST)  # the runtime never reaches for the torch side itself
    rec = bench.run_benchmark(onnx_path, torch=True, isolate=False, out_dir=str(tmp_path / "o"),
                              torch_backends=load_torch_backends, **{**FAST, "batch_sizes": (2,)})
    assert report.validate_record(rec) == []
    keys = {b["key"]: b for b in rec["backends"]}
    assert set(keys) == {"onnxruntime/cpu/fp32", "torch-eager/cpu/fp32"}
    assert keys["torch-eager/cpu/fp32"]["file"] == ckpt
    for r in rec["results"]:
        # PyTorch has no 12 MP end-to-end rows: there ORT FP32 is the baseline
        want = "onnxruntime/cpu/fp32" if r["mode"] == "end_to_end_12mp" else "torch-eager/cpu/fp32"
        assert r["baseline"] == want and r["speedup"] > 0
    assert {r["mode"] for r in rec["results"] if r["backend"] == "torch-eager"} == {"model", "end_to_end"}
    torch_row = next(r for r in rec["results"] if r["backend"] == "torch-eager" and r["mode"] == "end_to_end")
    assert torch_row["gflops"] > 0  # the FP32 graph's FLOPs
    assert 0 < torch_row["decode_share"] < 1   # PyTorch rows decode on the same pool, timed the same way
    assert rec["versions"]["torch"]
    # Interleaving across engines: ORT and PyTorch alternate within each round.
    rounds = {}
    for s in rec["schedule"]:
        rounds.setdefault(s["round"], []).append(s["key"])
    assert all(set(v) == set(keys) for v in rounds.values())


def test_torch_baseline_without_its_checkpoint_is_a_clear_error(tmp_path):
    onnx_path, ckpt = _tiny_checkpoint(tmp_path)
    shutil.rmtree(os.path.dirname(os.path.dirname(ckpt)))
    from toolkit.train.torch_backend import load_torch_backends

    with pytest.raises(UserError, match="PyTorch checkpoint .* is not here"):
        bench.run_benchmark(onnx_path, torch=True, torch_backends=load_torch_backends, **FAST)


def test_accuracy_sits_beside_speed_with_data(tiny_export, tmp_path):
    pytest.importorskip("toolkit.train.data")
    from PIL import Image
    from conftest import write_recipe

    rng = np.random.default_rng(0)
    for name in LABELS:
        os.makedirs(tmp_path / "images" / name)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png")
    recipe = write_recipe(tmp_path / "r.yaml", {
        "name": "tiny", "data": {"source": "folder", "root": str(tmp_path / "images"), "val_fraction": 0.5,
                                 "workers": 0},
        "preprocess": {"resize": CROP + 4, "crop": CROP}, "model": {"arch": "vgg11", "weights": "none"},
        "train": {"strategy": "scratch"}})
    rec = bench.run_benchmark(tiny_export, precision="fp32,int8", data=recipe, isolate=False, end_to_end=False,
                              out_dir=str(tmp_path / "o"), **{**FAST, "batch_sizes": (1,)})
    assert report.validate_record(rec) == []
    for b in rec["backends"]:
        assert b["accuracy"]["split"] == "val" and b["accuracy"]["n"] == 6
        assert 0 <= b["accuracy"]["top1"] <= 100
    assert all(r["top1"] == next(b for b in rec["backends"] if b["key"] == r["key"])["accuracy"]["top1"]
               for r in rec["results"])
    with pytest.raises(UserError, match="no such recipe"):
        bench.run_benchmark(tiny_export, data=str(tmp_path / "missing.yaml"), **FAST)
