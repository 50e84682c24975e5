"""The FP16 twin's block list: op types kept in float32, chosen by measurement or pinned by --fp16-keep-fp32."""
from __future__ import annotations

import onnx
import pytest

torch = pytest.importorskip("torch")

from test_export import make_images, make_run  # noqa: E402
from toolkit.errors import UserError  # noqa: E402
from toolkit.export import pipeline as export_mod  # noqa: E402
from toolkit.export import twins  # noqa: E402
from toolkit.export.options import ExportOptions, check_options  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    return root, make_run(root / "runs", make_images(root / "data"), name="half")


def _export(root, run_dir, **kwargs):
    return export_mod.export_run(run_dir, exports_dir=str(root / "exports"), runs_dir=str(root / "runs"),
                                 fp16=True, parity_images=2, quiet=True, **kwargs)


def _float32_ops(path):
    """Op types of the FP16 twin whose first input is float32 (the converter casts around blocked ops)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    return {n.op_type for n in model.graph.node if types.get(n.input[0]) == onnx.TensorProto.FLOAT}


def test_block_lists_in_order():
    assert twins.block_lists({"Conv", "Relu", "Gemm"}, None) == [[]]
    assert twins.block_lists({"Conv", "HardSigmoid", "Softmax", "GlobalAveragePool"}, None) == \
        [[], ["HardSigmoid", "Softmax", "GlobalAveragePool"]]
    assert twins.block_lists({"Conv", "Sigmoid"}, ["Conv"]) == [["Conv"]]


def test_option_is_checked():
    assert check_options(ExportOptions(fp16=True, fp16_keep_fp32="Sigmoid, Softmax")).fp16_keep_fp32 == \
        ["Sigmoid", "Softmax"]
    assert check_options(ExportOptions(fp16=True, fp16_keep_fp32="none")).fp16_keep_fp32 == []
    assert check_options(ExportOptions(fp16=True)).fp16_keep_fp32 is None
    with pytest.raises(UserError, match=r"--fp16-keep-fp32: Sigmod is not an ONNX operator type"):
        check_options(ExportOptions(fp16=True, fp16_keep_fp32="Sigmod"))
    with pytest.raises(UserError, match=r"--fp16-keep-fp32 only applies with --fp16"):
        check_options(ExportOptions(fp16_keep_fp32="Sigmoid"))


def test_measured_list_is_reported_and_pinned_list_is_kept_in_float32(tiny):
    root, run_dir = tiny
    measured = _export(root, run_dir)
    fp16 = measured["parity"]["fp16"]
    assert "GlobalAveragePool" not in _float32_ops(measured["files"]["fp16"]["path"])
    assert fp16["keep_fp32_ops"] == [] and fp16["keep_fp32_chosen_by"] == "measurement"
    assert [t["keep_fp32_ops"] for t in fp16["keep_fp32_tried"]] == [[]] and fp16["close"]
    report = _export(root, run_dir, fp16_keep_fp32=("GlobalAveragePool",))
    assert report["parity"]["fp16"]["keep_fp32_ops"] == ["GlobalAveragePool"]
    assert report["parity"]["fp16"]["keep_fp32_chosen_by"] == "--fp16-keep-fp32"
    assert "GlobalAveragePool" in _float32_ops(report["files"]["fp16"]["path"])


def test_a_list_that_misses_the_gate_moves_on_to_the_next(tiny, monkeypatch):
    root, run_dir = tiny
    real = twins._attempt

    def first_list_fails(job, staging, gate, blocked):
        parity = real(job, staging, gate, blocked)
        return {**parity, "close": False} if not blocked else parity

    monkeypatch.setattr(twins, "_attempt", first_list_fails)
    fp16 = _export(root, run_dir)["parity"]["fp16"]
    assert [t["keep_fp32_ops"] for t in fp16["keep_fp32_tried"]] == [[], ["GlobalAveragePool"]]
    assert fp16["keep_fp32_ops"] == ["GlobalAveragePool"] and fp16["keep_fp32_tried"][0]["close"] is False
    with pytest.raises(UserError, match=r"fp16 block lists tried, with their max abs diff: none: .*; "
                                        r"GlobalAveragePool: .*nothing was written|nothing was written.*none: "):
        monkeypatch.setattr(twins, "_attempt", lambda *a: {**real(*a), "close": False})
        _export(root, run_dir, out=str(root / "never" / "x.onnx"))
    assert not (root / "never").exists() or not any((root / "never").iterdir())


def test_export_run_reads_switches_and_names_a_misspelt_option():
    """export_run(int8="false") wrote the INT8 twin (the string 'false' is true); a misspelt keyword was
    Python's TypeError from ExportOptions.__init__."""
    opts = check_options(ExportOptions(int8="false", fp16="no", int8_search="true"))
    assert opts.int8 is False and opts.fp16 is False and opts.int8_search is True
    with pytest.raises(UserError, match="--int8 'maybe': expected true or false"):
        check_options(ExportOptions(int8="maybe"))
    with pytest.raises(UserError, match="export: no option 'int8_budjet'; did you mean 'int8_budget'"):
        ExportOptions.of("runs/x", int8_budjet=2)
