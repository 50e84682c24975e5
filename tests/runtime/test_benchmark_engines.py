"""`toolkit benchmark --engine onnxruntime,openvino --precision fp32,bf16,int8` on a tiny model: the engines
interleaved, rows labelled with what runs, per-precision peaks, the ISA and OpenVINO's cold start with a
model cache. Torch-free; the OpenVINO parts skip without openvino. No timing assertions anywhere."""
import os
import sys

import pytest

from toolkit.errors import UserError
from toolkit.runtime import benchmark as bench
from toolkit.runtime.benchmark import peak as peak_mod
from toolkit.runtime.benchmark.options import why_not
from toolkit.runtime.benchmark.machine import isa_of
from toolkit.runtime.benchmark.options import file_precision, plan_combos
from toolkit.runtime.benchmark.run import own_peak_precision
from conftest import write_tiny_model

CROP = 32
LABELS = ["ant", "bee", "cat"]
FAST = dict(batch_sizes=(1,), iterations=2, rounds=2, warmup=1, threads=1, quiet=True)


def make_export(folder):
    os.makedirs(folder, exist_ok=True)
    base = write_tiny_model(os.path.join(folder, "tiny.onnx"), crop=CROP, labels=LABELS)
    write_tiny_model(bench.twin_path(base, "int8"), crop=CROP, labels=LABELS, precision="int8")
    return base


@pytest.fixture(autouse=True)
def small_peak(monkeypatch):
    monkeypatch.setattr(peak_mod, "PEAK_MATRIX", {"cpu": 256, "cuda": 1024})


def _cpu_has_bf16() -> bool:
    pytest.importorskip("openvino")
    from toolkit.runtime.engines import openvino_core

    return "BF16" in openvino_core.capabilities("CPU")


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """Both engines x fp32, bf16, int8, model only, cold starts in fresh processes."""
    pytest.importorskip("openvino")
    mp = pytest.MonkeyPatch()
    mp.setattr(peak_mod, "PEAK_MATRIX", {"cpu": 256, "cuda": 1024})
    try:
        base = make_export(str(tmp_path_factory.mktemp("exports")))
        return bench.run_benchmark(base, engine="onnxruntime,openvino", precision="fp32,bf16,int8",
                                   end_to_end=False, isolate=True, out_dir=str(tmp_path_factory.mktemp("o")), **FAST)
    finally:
        mp.undo()


# ------------------------------------------------------------------------------------------------
# The plan: which combinations run (no openvino needed)

def test_plan_skips_what_an_engine_cannot_run():
    run, skipped = plan_combos(("onnxruntime", "openvino"), ("cpu", "cuda"), ("fp32", "bf16", "int8"))
    assert [c.key for c in run] == ["onnxruntime/cpu/fp32", "onnxruntime/cpu/int8", "openvino/cpu/fp32",
                                    "openvino/cpu/bf16", "openvino/cpu/int8", "onnxruntime/cuda/fp32",
                                    "onnxruntime/cuda/int8"]
    bf16 = next(c for c in run if c.precision == "bf16")
    assert (file_precision(bf16.precision), bf16.inference_precision) == ("fp32", "bf16")  # the FP32 file at bf16
    assert {(s.engine, s.device, s.precision) for s in skipped} == {
        ("onnxruntime", "cpu", "bf16"), ("onnxruntime", "cuda", "bf16"),
        ("openvino", "cuda", "fp32"), ("openvino", "cuda", "bf16"), ("openvino", "cuda", "int8")}
    assert all(s.reason for s in skipped)


def test_only_an_impossible_combination_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="nothing to run: onnxruntime bf16 on cpu: onnxruntime has no bf16"):
        plan_combos(("onnxruntime",), ("cpu",), ("bf16",))
    base = make_export(str(tmp_path / "exports"))
    with pytest.raises(UserError, match="--engine openvino"):
        bench.run_benchmark(base, precision="bf16", out_dir=str(tmp_path / "o"), **FAST)
    assert not os.path.exists(tmp_path / "o")


def test_bad_engine_and_missing_openvino_are_clear_errors(tmp_path, monkeypatch):
    base = make_export(str(tmp_path / "exports"))
    with pytest.raises(UserError, match="engine: 'tensorflow'"):
        bench.run_benchmark(base, engine="tensorflow", **FAST)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"openvino package is not installed.*toolkit\[openvino\]"):
        bench.run_benchmark(base, engine="openvino", isolate=False, end_to_end=False,
                            out_dir=str(tmp_path / "o"), **FAST)


def test_bf16_on_ort_alone_is_skipped_with_a_note(tmp_path):
    base = make_export(str(tmp_path / "exports"))
    imported_before = "openvino" in sys.modules  # another test may have imported it already
    rec = bench.run_benchmark(base, precision="fp32,bf16", isolate=False, end_to_end=False,
                              out_dir=str(tmp_path / "o"), **FAST)
    assert bench.validate_record(rec) == []
    assert [b["key"] for b in rec["backends"]] == ["onnxruntime/cpu/fp32"]
    assert rec["settings"]["skipped"] == [{"engine": "onnxruntime", "device": "cpu", "precision": "bf16",
                                           "reason": why_not("onnxruntime", "cpu", "bf16")}]
    assert any(n.startswith("skipped onnxruntime/cpu/bf16: onnxruntime has no bf16") for n in rec["notes"])
    assert imported_before or "openvino" not in sys.modules  # not asked for, not imported


def test_own_peak_precision():
    assert [own_peak_precision(p, "cpu") for p in ("fp32", "fp16", "bf16", "int8")] == ["fp32", "fp32", "bf16",
                                                                                          "int8"]
    assert own_peak_precision("fp16-amp", "cuda") == "fp16" and own_peak_precision("fp32", "cuda") == "fp32"


def test_isa_summary_names_what_is_there():
    zen4 = isa_of(["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni"])
    assert zen4["avx512_bf16"] and not zen4["amx_bf16"] and zen4["summary"] == "AVX-512 BF16 + VNNI, no AMX"
    spr = isa_of(["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"])
    assert spr["summary"] == "AVX-512 BF16 + VNNI, AMX BF16 + INT8"
    assert isa_of(["avx2", "avx_vnni"])["summary"] == "AVX2 AVX-VNNI, no AMX"


# ------------------------------------------------------------------------------------------------
# Both engines in one run (openvino)

def test_engines_are_interleaved_and_rows_say_what_runs(record):
    assert bench.validate_record(record) == []
    assert record["schema_version"] == bench.SCHEMA_VERSION == 5
    assert record["settings"]["engines"] == ["onnxruntime", "openvino"]
    want = ["onnxruntime/cpu/fp32", "onnxruntime/cpu/int8", "openvino/cpu/fp32", "openvino/cpu/int8"]
    if _cpu_has_bf16():
        want.insert(3, "openvino/cpu/bf16")
    assert [b["key"] for b in record["backends"]] == want
    for r in record["results"]:
        ov = r["engine"] == "openvino"
        assert r["backend"] == r["engine"] and r["key"].startswith(r["engine"] + "/")
        assert r["engine_device"] == "CPU" and r["provider"] == ("OpenVINO:CPU" if ov else "CPUExecutionProvider")
        assert r["inference_precision"] == ("bf16" if r["precision"] == "bf16" else
                                            ("fp32" if ov else r["precision"]))
    ov_fp32 = next(b for b in record["backends"] if b["key"] == "openvino/cpu/fp32")
    assert ov_fp32["session_options"]["performance_hint"] == "LATENCY"
    assert ov_fp32["session_options"]["inference_num_threads"] == 1
    # Every round holds every backend once, in a rotated order.
    rounds = {}
    for s in record["schedule"]:
        rounds.setdefault(s["round"], []).append(s["key"])
    assert set(rounds[0]) == set(want) and rounds[1] == rounds[0][1:] + rounds[0][:1]
    assert any(n.startswith("skipped onnxruntime/cpu/bf16") for n in record["notes"])
    assert "--engine onnxruntime,openvino" in record["command"]


def test_each_row_is_read_against_its_own_precisions_peak(record):
    peaks = {p["precision"]: p for p in record["peaks"]}
    assert set(peaks) == ({"fp32", "bf16", "int8"} if _cpu_has_bf16() else {"fp32", "int8"})
    for p, pk in peaks.items():
        engines = [c["engine"] for c in pk["candidates"]]
        assert any(e.startswith("openvino") for e in engines), engines
        assert pk["engine"] in engines and pk["gflops"] == max(c["gflops"] for c in pk["candidates"] if c["gflops"])
    for r in record["results"]:
        own = peaks[own_peak_precision(r["precision"], "cpu")]
        assert r["peak_precision"] == own["precision"] and r["precision_peak_engine"] == own["engine"]
        assert r["fraction_of_precision_peak"] == pytest.approx(r["gflops"] / own["gflops"], rel=1e-3)
        assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / peaks["fp32"]["gflops"], rel=1e-3)
    table = bench.format_table(record)
    assert "% own" in table and "peak int8 GEMM on cpu" in table


def test_the_isa_is_recorded_and_printed(record):
    with open("/proc/cpuinfo") as fh:
        flags = set(next(line for line in fh if line.startswith("flags")).split(":")[1].split())
    isa = record["machine"]["isa"]
    for name in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile"):
        assert isa[name] == (name in flags)
    assert f"ISA {isa['summary']}" in bench.format_table(record)
    broken = {**record, "machine": {k: v for k, v in record["machine"].items() if k != "isa"}}
    assert "$.machine.isa: missing" in bench.validate_record(broken)


def test_openvino_cold_start_in_a_fresh_process(record):
    for b in record["backends"]:
        cold = b["cold_start"]
        assert cold["isolated"] is True and set(cold["first_inference_s"]) == {"1"}
        if b["engine"] == "openvino":
            assert cold["provider"] == "OpenVINO:CPU" and cold["compile_s"] > 0 and cold["session_s"] > 0


def test_bf16_the_cpu_cannot_run_is_skipped_beside_others(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from toolkit.runtime.engines import openvino_core

    monkeypatch.setattr(openvino_core, "capabilities", lambda device="CPU": ["FP32", "INT8"])
    base = make_export(str(tmp_path / "exports"))
    rec = bench.run_benchmark(base, engine="openvino", precision="fp32,bf16", isolate=False, end_to_end=False,
                              out_dir=str(tmp_path / "o"), **FAST)
    assert [b["key"] for b in rec["backends"]] == ["openvino/cpu/fp32"]
    assert any("openvino/cpu/bf16" in n and "no BF16 support" in n for n in rec["notes"])
    with pytest.raises(UserError, match="no BF16 support"):  # alone, it is the error
        bench.run_benchmark(base, engine="openvino", precision="bf16", isolate=False, end_to_end=False, **FAST)


def test_the_12mp_case_runs_on_openvino_too(tmp_path):
    pytest.importorskip("openvino")
    base = make_export(str(tmp_path / "exports"))
    rec = bench.run_benchmark(base, engine="openvino", isolate=False, out_dir=str(tmp_path / "o"),
                              **{**FAST, "rounds": 1})
    assert bench.validate_record(rec) == []
    assert {(r["mode"], r["e2e_image"]) for r in rec["results"]} == {
        ("model", None), ("end_to_end", "500x375"), ("end_to_end_12mp", "4032x3024")}
    assert rec["settings"]["modes"] == ["model", "end_to_end", "end_to_end_12mp"]
    assert "e2e 12MP" in bench.format_table(rec)
