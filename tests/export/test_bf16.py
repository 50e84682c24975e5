"""`toolkit export --bf16-check`: the FP32 file on OpenVINO bf16 against PyTorch, recorded in the report; a model
built to break bf16 fails it with one clear error and nothing written. Tiny VGG11s at 32 px, no training."""
from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
ov = pytest.importorskip("openvino")

from test_export import data_root, make_run  # noqa: E402,F401 (data_root is a fixture)

from toolkit.errors import UserError  # noqa: E402
from toolkit.export import bf16 as bf16_mod  # noqa: E402
from toolkit.export import pipeline as export_mod  # noqa: E402
from toolkit.runtime.engines import openvino_core  # noqa: E402

if "BF16" not in openvino_core.capabilities("CPU"):
    pytest.skip("this CPU has no BF16 support in OpenVINO", allow_module_level=True)


def test_bf16_check_passes_and_is_recorded(tmp_path, data_root):  # noqa: F811
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = make_run(runs, data_root, name="ok")
    report = export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), bf16_check=True,
                                   parity_images=6, quiet=True)
    gate = report["parity"]["bf16_openvino"]
    assert gate["inference_precision"] == "bf16" and gate["device"] == "CPU"
    assert gate["close"] and gate["top1_agreement"] >= 0.99 and gate["real_inputs"] > 0
    with open(report["report"]) as f:
        assert json.load(f)["parity"]["bf16_openvino"]["top1_agreement"] == gate["top1_agreement"]


def test_model_built_to_break_bf16_fails_the_gate_and_writes_nothing(tmp_path, data_root):  # noqa: F811
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = make_run(runs, data_root, name="offset")
    ckpt = os.path.join(run_dir, "checkpoints", "best.pt")
    state = torch.load(ckpt, weights_only=True)
    last = [k for k in state["model"] if k.startswith("head") and k.endswith("weight")][-1]
    # A large common offset on every class's weights: FP32 keeps the class differences (the FP32 gate
    # passes), bfloat16's 8-bit mantissa rounds them away, so top-1 flips.
    state["model"][last] = state["model"][last] + 1000.0
    from toolkit.train.checkpoint import save_checkpoint

    save_checkpoint(ckpt, state)
    save_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"), state)
    with pytest.raises(UserError) as err:
        export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), bf16_check=True,
                              parity_images=6, quiet=True)
    msg = str(err.value)
    assert "bf16 gate failed" in msg and "offset.onnx" in msg and "PyTorch FP32" in msg and "\n" not in msg
    assert not os.path.isdir(exports) or not [f for f in os.listdir(exports) if not f.startswith(".")]
    assert not os.path.isdir(exports) or not [f for f in os.listdir(exports) if f.startswith(".tmp")]


def test_bf16_check_needs_a_bf16_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_core, "capabilities", lambda device="CPU": ["FP32"])
    with pytest.raises(UserError, match="--bf16-check: OpenVINO's CPU has no BF16 support"):
        bf16_mod.require_bf16()
