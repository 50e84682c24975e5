"""`toolkit benchmark --web FOLDER --tflite FILE`: the browser and LiteRT rows beside ONNX Runtime (fast: the
plumbing, missing runtimes, bad paths; slow: a tiny run exported to both targets, timed end to end)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from conftest import write_tiny_model
from toolkit import cli
from toolkit.errors import UserError
from toolkit.export import tflite_bench
from toolkit.export.bench_targets import TargetOptions, check_targets, split_options, target_backends
from toolkit.runtime import benchmark as bench
from toolkit.runtime.benchmark import peak as peak_mod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = dict(batch_sizes=(1, 2), iterations=2, rounds=2, warmup=1, threads=1, quiet=True, end_to_end=False,
            isolate=False)


@pytest.fixture(autouse=True)
def small_peak(monkeypatch):
    monkeypatch.setattr(peak_mod, "PEAK_MATRIX", {"cpu": 256, "cuda": 1024})


def _targets(tmp_path) -> tuple[str, str, str]:
    """(a web folder's model.onnx, the folder, a .tflite path): files enough to pass check_targets."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html>")
    model = write_tiny_model(site / "model.onnx")
    tflite = tmp_path / "tiny.tflite"
    tflite.write_bytes(b"TFL3")
    return model, str(site), str(tflite)


def test_missing_runtimes_give_no_row_and_one_note_naming_what_to_install(tmp_path, monkeypatch):
    model, site, tflite = _targets(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(tflite_bench.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ai_edge_litert" else real(name, *a))
    targets = TargetOptions(web=site, tflite=tflite, chromium=str(tmp_path / "no-chromium"))
    with target_backends(targets) as loader:
        rec = bench.run_benchmark(model, out_dir=str(tmp_path / "o"), torch_backends=loader, **FAST)
    assert bench.validate_record(rec) == []
    assert [b["key"] for b in rec["backends"]] == ["onnxruntime/cpu/fp32"]
    assert {r["backend"] for r in rec["results"]} == {"onnxruntime"}
    assert f"no onnxruntime-web rows: no browser at {tmp_path / 'no-chromium'} (apt-get install chromium, or " \
           "--chromium PATH)" in rec["notes"]
    assert "no LiteRT rows: ai-edge-litert is not installed (pip install 'toolkit[tflite]')" in rec["notes"]
    if real("ai_edge_litert"):  # installed, and given a file that is no .tflite: one line, no traceback
        monkeypatch.undo()
        with pytest.raises(UserError, match=r"--tflite .*tiny.tflite: LiteRT cannot load it \(.*\); expected a file"):
            with target_backends(TargetOptions(tflite=tflite)) as loader:
                bench.run_benchmark(model, out_dir=str(tmp_path / "o2"), torch_backends=loader, **FAST)


def test_target_paths_are_checked_before_any_work(tmp_path):
    model, site, tflite = _targets(tmp_path)
    with pytest.raises(UserError) as bad:
        check_targets(TargetOptions(web=str(tmp_path), tflite=model))
    assert str(bad.value).splitlines() == [
        f"--web {tmp_path}: expected a folder written by toolkit export --format web (index.html, model.onnx)",
        f"--tflite {model}: expected a .tflite file written by toolkit export --format tflite"]
    check_targets(TargetOptions(web=site, tflite=tflite))
    with pytest.raises(UserError, match="--web and --tflite go with one model"):
        cli.benchmark(model, model, web=site, quiet=True)


def test_targets_of_another_checkpoint_are_refused(tmp_path):
    """`benchmark A.onnx --tflite <B's .tflite>` printed B's LiteRT rows beside A, with A's FLOPs and x base."""
    import json

    model, site, tflite = _targets(tmp_path)   # the site's model.onnx: checkpoint 000...
    other = write_tiny_model(tmp_path / "other.onnx", meta={"checkpoint_sha256": "1" * 64})
    (tmp_path / "tiny.tflite.json").write_text(json.dumps({"checkpoint_sha256": "1" * 64}))
    with pytest.raises(UserError) as info:
        with target_backends(TargetOptions(web=site, tflite=tflite)) as loader:
            bench.run_benchmark(other, out_dir=str(tmp_path / "o"), torch_backends=loader, **FAST)
    assert str(info.value) == (f"--web {site}: exported from another checkpoint than the model benchmarked; expected "
                               "the web folder and .tflite file exported from the same run as MODEL")


def test_the_targets_load_without_torch():
    """The CLI reads TargetOptions for benchmark's flags on the edge install: no torch behind them."""
    code = ("import sys, toolkit.export.bench_targets; print(sorted(m for m in ('torch', 'torchvision', 'playwright', "
            "'ai_edge_litert') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_without_targets_the_loader_is_the_one_given():
    targets, rest = split_options({"web": None, "tflite": None, "threads": 2})
    assert rest == {"threads": 2}

    def torch_loader(*args):
        return None
    with target_backends(targets, torch_loader) as loader:
        assert loader is torch_loader


# ------------------------------------------------------------------------------------------------
# A tiny run exported to both targets, timed with ORT in the same rounds (slow)

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from browser_helpers import browser_or_skip

    from toolkit.export import web as web_mod

    browser_or_skip()
    if not all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert")):
        pytest.skip("the [tflite] extra is not installed (pip install 'toolkit[tflite]')")
    if not (os.path.isdir(os.path.join(web_mod.cache_dir(), f"onnxruntime-web-{web_mod.ORT_WEB_VERSION}"))
            or shutil.which("npm")):
        pytest.skip("npm not installed (apt-get install npm)")
    from test_export import make_images, make_run
    from toolkit.export.tflite_pipeline import export_tflite

    root = tmp_path_factory.mktemp("targets")
    run = make_run(root / "runs", make_images(root / "data"), name="tiny", head="gap")
    web_mod.export_web(run=run, out=str(root / "site"), exports_dir=str(root / "e"), quiet=True, bench_runs=1,
                       check_images=4)
    export_tflite(run, out=str(root / "e") + os.sep, mediapipe="skip", quiet=True)
    return root


@pytest.mark.slow
def test_browser_and_litert_rows_in_the_same_rounds_as_ort(exported, tmp_path):
    site, tflite = str(exported / "site"), str(exported / "e" / "tiny.tflite")
    with target_backends(TargetOptions(web=site, tflite=tflite)) as loader:
        rec = bench.run_benchmark(os.path.join(site, "model.onnx"), out_dir=str(tmp_path), torch_backends=loader,
                                  **{**FAST, "threads": 2, "isolate": True, "iterations": 4})
    assert bench.validate_record(rec) == []
    backends = {b["key"]: b for b in rec["backends"]}
    assert set(backends) == {"onnxruntime/cpu/fp32", "onnxruntime-web-1t/cpu/fp32", "onnxruntime-web-2t/cpu/fp32",
                             "litert/cpu/fp32"}
    for threads in (1, 2):  # the page read back the threads it got: served with COOP/COEP, it got them
        options = backends[f"onnxruntime-web-{threads}t/cpu/fp32"]["session_options"]
        assert options["threads"] == threads and options["cross_origin_isolated"] is True
        assert set(options["in_page_p50_ms"]) == {"1", "2"} and min(options["in_page_p50_ms"].values()) > 0
    assert backends["litert/cpu/fp32"]["session_options"]["num_threads"] == 2
    rows = {(r["key"], r["batch"]): r for r in rec["results"]}
    assert rows["onnxruntime-web-2t/cpu/fp32", 1]["provider"] == "wasm, 2 threads"
    assert rows["litert/cpu/fp32", 2]["provider"] == "xnnpack, 2 threads"
    for key in backends:
        for batch in (1, 2):
            row = rows[key, batch]
            assert row["throughput_ips"]["median"] > 0 and row["baseline"] == "onnxruntime/cpu/fp32"
            assert row["cold_start_s"] > 0
    # one set of rounds: every backend runs in every round of each batch size
    for batch in (1, 2):
        for r in range(2):
            assert {s["key"] for s in rec["schedule"] if s["batch"] == batch and s["round"] == r} >= set(backends)
    assert any(n.startswith("onnxruntime-web rows: round trip from Python through playwright") for n in rec["notes"])
