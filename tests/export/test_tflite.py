"""`toolkit export --format tflite`: the option checks and the missing-extra line (fast), and the real
conversion through litert-torch, judged by LiteRT with XNNPACK and the reference kernels (slow; skipped
where the [tflite] extra is missing)."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from toolkit import cli
from toolkit.errors import UserError
from toolkit.export import formats, tflite, tflite_pipeline
from toolkit.export.tflite import TfliteOptions, check_tflite_options

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert", "torch"))


def test_missing_extra_is_one_line_naming_it_before_any_work(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(tflite.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("litert_torch", "ai_edge_litert") else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:  # the run does not exist: the extra is named first
        cli.main(["export", str(tmp_path / "no-such-run"), "--format", "tflite"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --format tflite needs litert-torch and ai-edge-litert: pip install 'toolkit[tflite]'"
    assert list(tmp_path.iterdir()) == []


def test_onnx_only_flags_and_bad_values_are_each_one_line():
    with pytest.raises(UserError) as exc:
        check_tflite_options(TfliteOptions(mediapipe="maybe", agreement_images=0), {"fp16": True, "keep_fp32": "head",
                                                                                    "ood": "nonexist"})
    assert str(exc.value).splitlines() == [
        "--fp16 goes with --format onnx or triton, not tflite",
        "--keep-fp32 goes with --format onnx or triton, not tflite",
        # the file was written without a word, and can never answer "unknown"
        '--ood goes with --format onnx, triton or web: a .tflite file carries no temperature or "unknown" '
        'threshold (docs/targets.md)',
        "--mediapipe 'maybe': expected one of auto, require, skip",
        "--agreement-images 0: expected a whole number, at least 1"]
    check_tflite_options(TfliteOptions(mediapipe="skip"), {"parity_images": 4, "out": "x", "int8": True,
                                                           "int8_budget": 2.0})  # shared flags pass


def test_require_mediapipe_where_it_is_missing(monkeypatch):
    monkeypatch.setattr(tflite.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match="--mediapipe require: mediapipe is not installed"):
        check_tflite_options(TfliteOptions(mediapipe="require"), {})


def test_litert_chatter_is_held_back_unless_the_conversion_fails(capfd):
    """The converter's own progress lines and C++ log lines (stdout, and fd 2 directly) are not shown on
    success; on failure their last part goes to stderr, before the error propagates."""
    def chatter(text):
        print(f"(00:00) [START] {text}")
        os.write(2, f"I0000 flatbuffer_export.cc] {text}\n".encode())

    with tflite.quiet_litert():
        chatter("converted")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError, match="lowering failed"):
        with tflite.quiet_litert():
            chatter("the cause")
            raise RuntimeError("lowering failed")
    out, err = capfd.readouterr()
    assert out == "" and "[START] the cause" in err and "flatbuffer_export.cc] the cause" in err
    with pytest.raises(KeyboardInterrupt):   # Ctrl-C: 20 lines of converter chatter came before "interrupted"
        with tflite.quiet_litert():
            chatter("stopped")
            raise KeyboardInterrupt
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("fmt, given, message", [
    ("onnx", {"mediapipe": "skip"}, "--mediapipe goes with --format tflite"),
    ("tflite", {"instances": 2}, "--instances goes with --format triton"),
    ("coreml", {}, "--format 'coreml': expected onnx .*, triton .*, tflite"),
])
def test_formats_own_their_flags(fmt, given, message):
    with pytest.raises(UserError, match=message):
        formats.export_as(fmt, None, given)


# ------------------------------------------------------------------------------------------------
# The real conversion (slow)

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not HAVE_EXTRA:
        pytest.skip("the [tflite] extra is not installed (pip install 'toolkit[tflite]')")
    from test_export import make_images, make_run

    root = tmp_path_factory.mktemp("tflite")
    return root, make_run(root / "runs", make_images(root / "data"), name="tiny")


@pytest.mark.slow
def test_export_is_nhwc_with_labels_and_passes_both_kernels(tiny_run):
    from ai_edge_litert.interpreter import Interpreter

    from test_export import LABELS
    from toolkit.export.tflite_metadata import read_labels

    root, run = tiny_run
    report = tflite_pipeline.export_tflite(run, out=str(root / "out") + os.sep, mediapipe="skip", int8=True,
                                           int8_budget=100.0, calib_images=4, quiet=True)
    path = str(root / "out" / "tiny.tflite")
    assert read_labels(str(root / "out" / "tiny.int8.tflite")) == LABELS
    assert report["files"]["int8"]["bytes"] < report["files"]["fp32"]["bytes"] / 2
    assert report["checks"]["int8_budget"]["ok"] and report["checks"]["int8_budget"]["calib_images"] == 4
    assert report["model"] == path and read_labels(path) == LABELS
    interpreter = Interpreter(model_path=path)
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 32, 32, 3]
    checks = json.load(open(path + ".json"))["checks"]
    for kernels in ("litert_xnnpack", "litert_reference"):
        assert checks[kernels]["ok"] and checks[kernels]["top1_agreement"] == 1.0
        assert checks[kernels]["real_inputs"] > 0 and checks[kernels]["max_abs_diff"] < 1e-3
    assert checks["labels"]["ok"] and checks["mediapipe"]["ok"] is None
    # the INT8 file answers int8 codes (up to 127); read as logits (scale * (code - zero point)) they follow FP32's
    from toolkit.export.tflite import LiteRtSession
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    fp32, int8 = (LiteRtSession(p, "xnnpack").logits(pixels) for p in (path, path.replace(".tflite", ".int8.tflite")))
    assert Interpreter(model_path=path.replace(".tflite", ".int8.tflite")).get_output_details()[0]["dtype"] == np.int8
    assert np.abs(int8).max() < 2 * np.abs(fp32).max() and np.corrcoef(int8.ravel(), fp32.ravel())[0, 1] > 0.9


@pytest.mark.slow
def test_failed_verification_writes_nothing_and_lists_every_check(tiny_run, monkeypatch):
    from toolkit.export import tflite_checks

    root, run = tiny_run
    monkeypatch.setattr(tflite_checks, "FP32_RTOL", 0.0)
    monkeypatch.setattr(tflite_checks, "FP32_ATOL", 0.0)
    monkeypatch.setattr(tflite_checks, "read_labels", lambda path: ["cat", "dog"])
    # MediaPipe "installed" and naming a class the model lacks: its check runs, and fails
    real = importlib.util.find_spec
    monkeypatch.setattr(tflite_checks.importlib.util, "find_spec",
                        lambda name, *a: True if name == "mediapipe" else real(name, *a))
    monkeypatch.setattr(tflite_checks, "_mediapipe_top1", lambda path, pixels: ["wolf"] * len(pixels))
    out = root / "failed"
    with pytest.raises(UserError) as exc:
        tflite_pipeline.export_tflite(run, out=str(out) + os.sep, agreement_images=6, int8=True, int8_budget=-1,
                                      calib_images=4, quiet=True)
    message = str(exc.value)
    for name in ("litert_xnnpack: parity gate failed", "litert_reference: parity gate failed",
                 "labels: labels.txt differs", "mediapipe: ImageClassifier top-1 equals PyTorch's on",
                 "on 0.0% of 6 val images (expected 100%)", "int8_budget: top-1", "budget -1: over budget",
                 "nothing was written"):
        assert name in message
    assert [p.name for p in out.iterdir()] == []


def test_out_may_name_the_tflite_file(monkeypatch, tmp_path):
    """`--format tflite --out m.tflite` was refused, with advice to make a folder named m.tflite/."""
    seen = {}

    def plan(options, say):
        seen["out"] = options.out
        raise UserError("planned")

    monkeypatch.setattr(tflite_pipeline, "require_extra", lambda: None)
    monkeypatch.setattr(tflite_pipeline, "plan_export", plan)
    with pytest.raises(UserError, match="planned"):
        tflite_pipeline.export_tflite("runs/x", out=str(tmp_path / "m.tflite"), mediapipe="skip")
    assert seen["out"] == str(tmp_path / "m.onnx") and tflite.tflite_path(seen["out"]) == str(tmp_path / "m.tflite")


def test_an_int8_tflite_of_another_checkpoint_is_found_stale(tmp_path):
    """Exporting another run to the same .tflite without --int8 left the old model's .int8.tflite beside it."""
    path = str(tmp_path / "m.tflite")
    (tmp_path / "m.int8.tflite").write_bytes(b"TFL3")
    (tmp_path / "m.tflite.json").write_text(json.dumps({"checkpoint_sha256": "a" * 64}))
    assert tflite_pipeline._stale_int8(path, {"fp32": path}, "b" * 64) == str(tmp_path / "m.int8.tflite")
    assert tflite_pipeline._stale_int8(path, {"fp32": path}, "a" * 64) is None   # the same checkpoint's twin
    assert tflite_pipeline._stale_int8(path, {"fp32": path, "int8": "x"}, "b" * 64) is None   # replaced anyway
