"""The INT8 ladder's last rung, the quantization-aware fine-tune (--int8-qat-steps), and the accept/reject
agreement gate every rung is judged by. Tiny VGG11s at 32 px built to break quantisation (test_int8)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_export import LABELS, make_images  # noqa: E402
from test_int8 import (_assert_nothing_written, _export, crafted_run, huge_last_layer_weight,  # noqa: E402
                       huge_mid_layer_channels)
from toolkit import recipe as recipe_mod  # noqa: E402
from toolkit.errors import UserError  # noqa: E402
from toolkit.export import int8 as int8_mod  # noqa: E402
from toolkit.export import qat  # noqa: E402
from toolkit.export.calibrate import decision_agreement  # noqa: E402
from toolkit.export.options import ExportOptions, check_options  # noqa: E402
from toolkit.export.pipeline import export_run  # noqa: E402
from toolkit.export.plan import load_data  # noqa: E402
from toolkit.preprocess import Preprocess  # noqa: E402
from toolkit.runtime.onnx_eval import load_pixels, read_metadata  # noqa: E402
from toolkit.train.checkpoint import load_checkpoint  # noqa: E402
from toolkit.train.model import build_from_recipe  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    return root, make_images(root / "data")


def test_qat_steps_option_is_checked():
    assert check_options(ExportOptions(int8=True)).int8_qat_steps == 0  # off unless asked
    with pytest.raises(UserError, match=r"--int8-qat-steps -3: expected a whole number of steps, 0 \(off\) or more"):
        check_options(ExportOptions(int8=True, int8_qat_steps=-3))
    with pytest.raises(UserError, match="--int8-qat-steps only applies with --int8"):
        check_options(ExportOptions(int8_qat_steps=10))


def test_the_simulation_is_what_onnxruntime_computes(base):
    """The fake-quantized model's logits sit much closer to the ORT INT8 file's (per-channel minmax, the QAT
    rung's setting) than the float model's do, on average: the fine-tune trains against the rounding ORT will apply."""
    root, data_root = base
    report = _export(root, crafted_run(root / "runs", data_root, "sim"), int8_search=False)
    state = load_checkpoint(report["checkpoint"])
    rec = recipe_mod.from_dict(state["recipe"], check_paths=False)
    model = build_from_recipe(rec, len(LABELS)).eval()
    model.load_state_dict(state["model"])
    data, _ = load_data(rec)
    pre = Preprocess(**recipe_mod.to_dict(rec)["preprocess"])
    job = SimpleNamespace(options=SimpleNamespace(calib_images=8), preprocess=pre, recipe=rec)
    calib = int8_mod.calibration_images(job, data)  # the images the export calibrated on
    pixels, _, _ = load_pixels(data.val, pre)
    x = torch.from_numpy(pre.normalize(pixels))
    from toolkit.runtime.onnx_eval import engine_session, run_logits

    ort = run_logits(engine_session(report["files"]["int8"]["path"], None, "cpu", None), pixels, pre, False)
    with torch.no_grad():
        fp32 = model(x).numpy()
        sim = qat.Simulated(model, per_channel=True)
        sim.observe_only()
        model(torch.from_numpy(pre.normalize(calib)))
        sim.simulate()
        simulated = model(x).numpy()
        sim.detach()
        assert np.array_equal(model(x).numpy(), fp32)  # detached: the float model as it was
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert np.abs(simulated - ort).mean() < 0.25 * np.abs(fp32 - ort).mean()


def test_qat_rung_runs_and_is_reported_when_no_setting_fits(base, monkeypatch):
    """The first setting misses (the last layer's huge weight rounds the rest of each row to 0); the QAT rung
    fine-tunes a copy, and the fine-tuned weights pass the same budget. The fine-tune here is the real one
    (3 steps) followed by the repair a long fine-tune would have to find (removing the huge weight), so the
    test is about the ladder: the rung runs, is judged by the same gates, is staged and reported."""
    root, data_root = base
    run_dir = crafted_run(root / "runs", data_root, "qat-ok", huge_last_layer_weight)
    real, calls = qat.fine_tune, []

    def fine_tune_then_repair(model, *args, **kwargs):
        tuned, info = real(model, *args, **kwargs)
        calls.append(info)
        with torch.no_grad():  # the huge column moves every logit alike: zeroing it changes no FP32 decision
            last = list(tuned.head.modules())[-1]
            last.weight[:, int(last.weight.abs().mean(0).argmax())] = 0.0
        return tuned, info

    monkeypatch.setattr(int8_mod, "fine_tune", fine_tune_then_repair)
    report = _export(root, run_dir, int8_search=False, int8_qat_steps=3)
    info = report["int8"]
    assert [t.get("qat") is not None for t in info["tried"]] == [False, True]
    assert info["tried"][0]["top1_drop"] > 1.0 and info["top1_drop"] <= 1.0
    assert info["setting"] == "per-channel minmax, after 3 QAT steps" and info["attempt"] == 2
    assert info["attempts_planned"] == 2 and info["qat"]["steps"] == 3 and calls[0]["steps"] == 3
    assert info["qat"]["seconds"] > 0 and info["tried"][1]["seconds"] >= info["qat"]["seconds"]
    assert report["timings"]["int8_qat_s"] == info["tried"][1]["seconds"]
    meta = read_metadata(report["files"]["int8"]["path"])["quantization"]
    assert meta["qat"]["steps"] == 3 and meta["setting"] == info["setting"]
    assert not [f for f in os.listdir(root / "exports") if f.startswith(".tmp")]  # the QAT work folder is gone


def test_qat_rung_that_misses_is_refused_like_any_setting(base):
    """A model no rounding-aware fine-tune of a few steps can save: the QAT attempt is listed with its drop in
    the one error, and nothing is written."""
    root, data_root = base
    run_dir = crafted_run(root / "runs", data_root, "qat-miss", huge_mid_layer_channels)
    exports = root / "qat-miss-out"
    with pytest.raises(UserError) as err:
        export_run(run_dir, exports_dir=str(exports), runs_dir=str(root / "runs"), int8=True, calib_images=8,
                   parity_images=2, quiet=True, int8_search=False, int8_qat_steps=2)
    msg = str(err.value)
    assert "top-1 drop of each setting tried: per-channel minmax " in msg
    assert "; per-channel minmax, after 2 QAT steps " in msg and "more --int8-qat-steps (used 2)" in msg
    assert "\n" not in msg
    _assert_nothing_written(exports)


def test_agreement_gate_is_checked_on_each_rung():
    """decision_agreement is calibrate_files' gate, per candidate: a twin that flips many accept/reject
    decisions is refused even with the same top-1, so the ladder goes on to its next rung."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 400)
    logits = rng.normal(0, 1, (400, 3)).astype(np.float32)
    logits[np.arange(400), targets] += rng.uniform(0, 6, 400).astype(np.float32)
    assert decision_agreement(logits, logits.copy(), targets, 0.95) == (1.0, False)
    shaken = logits + rng.normal(0, 1.5, logits.shape).astype(np.float32)
    agree, refused = decision_agreement(logits, shaken, targets, 0.95)
    assert agree < 0.97 and refused
    assert decision_agreement(logits[:10], shaken[:10], targets[:10], 0.95) == (None, False)  # too few to judge
    assert int8_mod._fits({"top1_drop": 0.0, "agreement_refused": True}, 1.0) is False
    assert int8_mod._fits({"top1_drop": 0.5, "agreement_refused": False}, 1.0) is True
