"""Hostile model files: what toolkit export never writes is refused before an engine loads it, and
serve-local gives up on a warm-up that does not end (issue 18, item 5). Torch-free."""
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, tiny_graph, tiny_metadata

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from toolkit import contract  # noqa: E402
from toolkit.inference import Predictor  # noqa: E402


def _endless_loop_model(path, claim=True) -> str:
    """tiny_graph whose logits have a Loop's result added: the Loop runs 2**62 times (for ever)."""
    proto = tiny_graph()
    gemm = proto.graph.node[-1]
    gemm.output[0] = "pre_logits"
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["v"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])])
    proto.graph.initializer.extend([helper.make_tensor("trips", TensorProto.INT64, [], [2 ** 62]),
                                    helper.make_tensor("go", TensorProto.BOOL, [], [True]),
                                    helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])])
    proto.graph.node.extend([helper.make_node("Loop", ["trips", "go", "zero"], ["v_final"], name="spin", body=body),
                             helper.make_node("Add", ["pre_logits", "v_final"], ["logits"])])
    if claim:
        contract.write(proto, tiny_metadata())
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return str(path)


def test_control_flow_and_external_data_are_refused_before_loading(tmp_path):
    """A Loop with 2**62 trips loaded fine and hung the first prediction; a tensor stored as external data
    was read (a 2 GiB one took 4.3 GB) although exports are single files. Both are one ContractError now,
    raised before ONNX Runtime opens the file."""
    endless = _endless_loop_model(tmp_path / "endless.onnx")
    with pytest.raises(contract.ContractError, match=r"endless.onnx: has a Loop node \('spin'\); toolkit export "
                                                     r"never writes control flow"):
        Predictor(endless, device="cpu")

    proto = tiny_graph()
    contract.write(proto, tiny_metadata())
    split = str(tmp_path / "split.onnx")
    onnx.save(proto, split, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    os.unlink(tmp_path / "weights.bin")  # were it read, ONNX Runtime would fail with its own error
    with pytest.raises(contract.ContractError, match=r"split.onnx: tensor 'w1' is stored as external data "
                                                     r"\('weights.bin'\); expected one self-contained file"):
        Predictor(split, device="cpu")

    # A file that does not claim to be an export is not judged by the export's rules (the contract
    # check refuses it anyway, for its missing metadata); nothing is refused in what export writes.
    contract.check_model_file(_endless_loop_model(tmp_path / "foreign.onnx", claim=False))
    contract.check_model_file(tmp_path / "missing.onnx")


def test_serve_local_stops_when_the_warm_up_does_not_end(tmp_path):
    """serve-local's warm-up ran the endless Loop for ever, never ready and never exiting. With the graph
    check switched off (a graph too slow for the machine is the same case), it now gives up after
    --warmup-timeout with one error and exit code 2."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    model = _endless_loop_model(tmp_path / "endless.onnx")
    code = ("import sys, toolkit.contract as c; c.check_model_file = lambda path: None; "
            "from toolkit.cli import main; main(sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code, "serve-local", model, "--port", "0", "--device", "cpu",
                          "--warmup-timeout", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error: " in res.stderr and "the warm-up inference did not finish within 2 s" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "ready" not in res.stdout.replace("not ready", ""), res.stdout
    assert time.monotonic() - start < 60


def _varint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


@pytest.mark.parametrize("prefix", [
    _varint(100 << 3 | 3) + _varint(1 << 3) + _varint(5) + _varint(100 << 3 | 4),  # an unknown group field
    _varint(7 << 3) + _varint(5),  # the graph's field number with a varint: protobuf keeps it as unknown
])
def test_the_graph_check_reads_what_the_engine_reads(tmp_path, prefix):
    """The check skims the file (tensor data unread); bytes protobuf accepts but a skim can't follow
    fall back to the full parse, so they can't smuggle a Loop past it."""
    data = open(_endless_loop_model(tmp_path / "plain.onnx"), "rb").read()
    odd = tmp_path / "odd.onnx"
    odd.write_bytes(prefix + data)
    assert [n.op_type for n in onnx.load(str(odd)).graph.node][-2:] == ["Loop", "Add"]  # what an engine sees
    with pytest.raises(contract.ContractError, match=r"odd.onnx: has a Loop node"):
        contract.check_model_file(odd)
