"""toolkit.contract: the ONNX metadata written, read and checked in one place (no torch needed)."""
import json

import pytest

from conftest import tiny_metadata, write_tiny_model
from toolkit import contract
from toolkit.errors import UserError
from toolkit.preprocess import Preprocess

onnx = pytest.importorskip("onnx")


def test_write_then_read_round_trips(tmp_path):
    path = write_tiny_model(tmp_path / "m.onnx", labels=["a", "b"], precision="int8",
                            meta={"quantization": {"method": "static"}})
    props = contract.raw_props(path)
    assert props["toolkit_format"] == contract.FORMAT_VERSION == "1"
    assert props["labels"] == json.dumps(["a", "b"]) and props["precision"] == "int8"  # strings stay raw
    model = contract.read_file(path)
    assert model.labels == ["a", "b"] and model.precision == "int8" and model.outputs == ["logits"]
    assert Preprocess.from_dict(model.preprocess) == Preprocess(resize=36, crop=32)
    assert model.input["raw"] is False and model.get("quantization") == {"method": "static"}
    assert model.get("missing", 7) == 7 and model.meta["checkpoint_sha256"] == "0" * 64
    assert Preprocess.from_model(path) == Preprocess(resize=36, crop=32)
    assert onnx.load(path).producer_name == "toolkit"


def test_encode_keeps_strings_and_json_encodes_the_rest():
    assert contract.encode({"a": "x", "b": [1], "c": {"d": None}, "e": 2}) == \
        {"a": "x", "b": "[1]", "c": '{"d": null}', "e": "2"}
    assert contract.decode({"a": "x", "b": "[1]", "c": '{"d": null}', "e": "2", "f": "{oops"}) == \
        {"a": "x", "b": [1], "c": {"d": None}, "e": "2", "f": "{oops"}


def _props(**changes):
    """The stored metadata of a tiny export with `changes` (None drops a key)."""
    meta = {**tiny_metadata(), **changes}
    return contract.encode({k: v for k, v in meta.items() if v is not None})


@pytest.mark.parametrize("changes, message", [
    ({"labels": None}, "m.onnx: not a toolkit export: no 'labels' metadata"),
    ({"toolkit_format": None}, "m.onnx: not a toolkit export: no 'toolkit_format' metadata"),
    ({"toolkit_format": "2"}, r"m.onnx: toolkit_format '2' is not supported.*upgrade toolkit"),
    ({"toolkit_format": "one"}, r"m.onnx: 'toolkit_format' metadata is 'one'; expected '1'"),
    ({"labels": []}, r"m.onnx: 'labels' metadata is '\[\]'; expected a JSON list of class names"),
    ({"labels": "daisy"}, "m.onnx: 'labels' metadata is 'daisy'"),
    ({"labels": [1, 2]}, "m.onnx: 'labels' metadata"),
    ({"preprocess": None}, "m.onnx: not a toolkit export: no 'preprocess' metadata"),
    ({"preprocess": {"resize": 36}}, r"m.onnx: 'preprocess' metadata is incomplete \(no crop, interpolation, mean"),
    ({"preprocess": [1]}, "m.onnx: 'preprocess' metadata is incomplete"),
    ({"preprocess": {**Preprocess().to_dict(), "interpolation": "cubic"}}, "m.onnx: preprocess.interpolation"),
    ({"input": ["batch"]}, "m.onnx: 'input' metadata is .*expected a JSON object"),
    ({"outputs": {"a": 1}}, "m.onnx: 'outputs' metadata is .*expected a JSON list"),
])
def test_a_broken_contract_names_the_file_and_the_key(changes, message):
    with pytest.raises(contract.ContractError, match=message) as e:
        contract.from_props(_props(**changes), "m.onnx")
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_optional_keys_may_be_missing():
    model = contract.from_props(_props(input=None, outputs=None, precision=None, names=None), "m.onnx")
    assert model.input is None and model.outputs is None and model.precision == "fp32"


def test_read_file_errors(tmp_path):
    with pytest.raises(contract.ContractError, match="no such model file"):
        contract.read_file(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not protobuf \x00\x01")
    with pytest.raises(contract.ContractError, match="not a readable ONNX file"):
        contract.read_file(junk)
    foreign = write_tiny_model(tmp_path / "foreign.onnx", meta=dict.fromkeys(tiny_metadata()))
    assert contract.raw_props(foreign) == {}
    with pytest.raises(contract.ContractError, match="no 'labels' metadata"):
        Preprocess.from_model(foreign)


def test_from_session_reads_what_write_wrote(tiny_model):
    import onnxruntime as ort

    session = ort.InferenceSession(tiny_model, providers=["CPUExecutionProvider"])
    assert contract.from_session(session, tiny_model).meta == contract.read_file(tiny_model).meta
