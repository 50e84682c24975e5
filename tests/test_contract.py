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
    assert props["toolkit_format"] == contract.format_for(contract.decode(props)["preprocess"]) == "1"
    assert props["labels"] == json.dumps(["a", "b"]) and props["precision"] == "int8"  # strings stay raw
    model = contract.read_file(path)
    assert model.labels == ["a", "b"] and model.precision == "int8" and model.outputs == ["logits"]
    assert isinstance(model.preprocess, contract.PreprocessSpec)  # parsed and checked once, here
    assert Preprocess.from_spec(model.preprocess) == Preprocess(resize=36, crop=32)
    assert model.preprocess.to_dict() == Preprocess(resize=36, crop=32).to_dict()
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
    ({"toolkit_format": "3"}, r"m.onnx: toolkit_format '3' is not supported.*upgrade toolkit"),
    ({"toolkit_format": "one"}, r"m.onnx: 'toolkit_format' metadata is 'one'; expected '2'"),
    ({"labels": []}, r"m.onnx: 'labels' metadata is '\[\]'; expected a JSON list of class names"),
    ({"labels": "daisy"}, "m.onnx: 'labels' metadata is 'daisy'"),
    ({"labels": [1, 2]}, "m.onnx: 'labels' metadata"),
    ({"preprocess": None}, "m.onnx: not a toolkit export: no 'preprocess' metadata"),
    ({"preprocess": {"resize": 36}}, r"m.onnx: 'preprocess' metadata is incomplete \(no crop, interpolation, mean"),
    ({"preprocess": [1]}, r"m.onnx: 'preprocess' metadata is '\[1\]', not a JSON object"),
    ({"preprocess": "{not json"}, r"m.onnx: 'preprocess' metadata is '\{not json', not a JSON object"),
    ({"labels": ["a", "b", "a"]}, "m.onnx: 'labels' metadata names 'a' twice; expected distinct class names"),
    ({"precision": "fp64"}, "m.onnx: 'precision' metadata is 'fp64'; expected fp32, fp16, int8"),
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


# ------------------------------------------------------------------------------------------------
# Values out of range: one ContractError at load, naming the file and the key

_GOOD = Preprocess(resize=36, crop=32).to_dict()
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("preprocess, message", [
    ({**_GOOD, "std": [0.2, NAN, 0.2]}, r"preprocess\.std: .*expected three finite positive numbers"),
    ({**_GOOD, "std": [0.2, INF, 0.2]}, r"preprocess\.std"),
    ({**_GOOD, "std": [0.2, -0.1, 0.2]}, r"preprocess\.std"),
    ({**_GOOD, "std": [0.2, 0, 0.2]}, r"preprocess\.std"),
    ({**_GOOD, "std": [0.2, 0.2]}, r"preprocess\.std"),
    ({**_GOOD, "mean": [NAN, 0.4, 0.4]}, r"preprocess\.mean: .*expected three finite numbers"),
    ({**_GOOD, "mean": ["a", 0.4, 0.4]}, r"preprocess\.mean"),
    ({**_GOOD, "resize": 10**9}, r"preprocess\.resize: 1000000000; expected a whole number of pixels from 1 to 8192"),
    ({**_GOOD, "resize": 1e9}, r"preprocess\.resize"),
    ({**_GOOD, "resize": 36.5}, r"preprocess\.resize"),
    ({**_GOOD, "resize": "36"}, r"preprocess\.resize"),
    ({**_GOOD, "crop": 0}, r"preprocess\.crop"),
    ({**_GOOD, "crop": True}, r"preprocess\.crop"),
    ({**_GOOD, "crop": 40}, r"preprocess\.crop: 40 with resize 36; expected crop <= resize"),
    ({**_GOOD, "interpolation": ["bilinear"]}, r"preprocess\.interpolation"),
    ({**_GOOD, "decode": "fast"}, r"preprocess\.decode: 'fast'; expected one of draft, full"),
    ({**_GOOD, "fit": "pad"}, r"preprocess\.fit: 'pad'; expected one of crop, letterbox, squash"),
    ({**_GOOD, "fit": ["letterbox"]}, r"preprocess\.fit"),
])
def test_out_of_range_preprocessing_is_refused_at_load(tmp_path, preprocess, message):
    path = write_tiny_model(tmp_path / "bad.onnx", meta={"preprocess": preprocess})
    with pytest.raises(contract.ContractError, match=f"bad.onnx: {message}") as e:
        contract.read_file(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("labels, message", [
    ("[" * 100_000 + "]" * 100_000, r"'labels' metadata nests deeper than 64 levels"),
    ('[["a"], ["b"], ["c"]]', r"'labels' metadata is .*expected a JSON list of class names"),
    (json.dumps([f"c{i}" for i in range(100_001)]), r"'labels' metadata has 100001 class names; expected at most"),
    (json.dumps(["a" * 1001, "b", "c"]), r"'labels' metadata has a class name of 1001 characters"),
])
def test_hostile_labels_are_refused_before_they_are_used(tmp_path, labels, message):
    path = write_tiny_model(tmp_path / "bad.onnx", meta={"labels": labels})
    with pytest.raises(contract.ContractError, match=f"bad.onnx: {message}"):
        contract.read_file(path)


def test_deep_nesting_in_any_key_never_reaches_json():
    deep = "{\"a\": " * 50_000 + "1" + "}" * 50_000
    with pytest.raises(contract.ContractError, match=r"m.onnx: 'recipe' metadata nests deeper than 64"):
        contract.from_props({**_props(), "recipe": deep}, "m.onnx")
    with pytest.raises(contract.ContractError, match="model: 'x' metadata nests deeper"):
        contract.decode({"x": "[" * 5000})  # not even valid JSON: still refused, never a RecursionError
    # brackets inside strings don't count, and an ordinary recipe-like value passes
    assert contract.decode({"x": json.dumps(["[" * 500, {"a": [[1, 2]]}])})["x"][1] == {"a": [[1, 2]]}


def test_an_oversized_value_is_refused_before_decoding():
    big = json.dumps(["x" * (16 * 2**20)])
    with pytest.raises(contract.ContractError, match=r"m.onnx: 'metrics' metadata is 16 MB; expected at most 1 MB"):
        contract.from_props({**_props(), "metrics": big}, "m.onnx")


def test_every_metadata_value_is_bounded_by_its_key(tmp_path):
    """A 10 MB `precision` was accepted (and /v1/model answered 20 MB): each key has its own bound, checked
    before decoding and before the engine loads the file; a long label list is still fine."""
    pytest.importorskip("onnxruntime")
    from toolkit.inference import Predictor

    path = write_tiny_model(tmp_path / "big.onnx", meta={"precision": "fp32" + " " * (10 * 2**20)})
    with pytest.raises(contract.ContractError, match=r"big.onnx: 'precision' metadata is 10 MB; expected at "
                                                     r"most 16 characters for this key"):
        contract.check_model_file(path)
    with pytest.raises(contract.ContractError, match="'precision' metadata is 10 MB"):
        Predictor(path, device="cpu")
    for key, value, shown in [("arch", "a" * 257, "257 characters"), ("toolkit_version", "1" * 65, "65 characters"),
                              ("someone_elses_note", "n" * (64 * 1024 + 1), "64 KB"),
                              ("recipe", json.dumps({"notes": "r" * (3 * 2**20)}), "3 MB")]:
        with pytest.raises(contract.ContractError, match=f"'{key}' metadata is {shown}"):
            contract.from_props({**_props(), key: value}, "m.onnx")
    with pytest.raises(contract.ContractError, match=r"the metadata is 41 MB in all \(700 keys\); expected at most 40"):
        contract.decode({f"note{i}": "x" * (60 * 1024) for i in range(700)}, "m.onnx")
    many = [f"class {i} " + "x" * 90 for i in range(20_000)]  # 2 MB of labels: a large, legitimate list
    assert len(contract.from_props({**_props(), "labels": json.dumps(many)}, "m.onnx").labels) == 20_000


def test_files_without_a_decode_key_keep_the_full_decode(tmp_path):
    old = {k: v for k, v in _GOOD.items() if k != "decode"}  # written before draft decoding existed
    assert Preprocess.from_model(write_tiny_model(tmp_path / "old.onnx", meta={"preprocess": old})).decode == "full"
    assert Preprocess.from_model(write_tiny_model(tmp_path / "new.onnx")).decode == "draft"


@pytest.mark.parametrize("fit", ["crop", "letterbox", "squash"])
def test_the_fit_mode_round_trips_through_the_file(tmp_path, fit):
    spec = Preprocess(resize=36, crop=32, fit=fit)
    path = write_tiny_model(tmp_path / f"{fit}.onnx", meta={"preprocess": spec.to_dict()})
    model = contract.read_file(path)
    assert model.preprocess.fit == fit and model.meta["preprocess"]["fit"] == fit
    assert Preprocess.from_model(path) == spec


def test_files_without_a_fit_key_centre_crop_as_before(tmp_path):
    old = {k: v for k, v in _GOOD.items() if k != "fit"}  # written before fit modes existed
    assert Preprocess.from_model(write_tiny_model(tmp_path / "old.onnx", meta={"preprocess": old})).fit == "crop"


def test_predictor_refuses_a_tampered_file_at_load(tmp_path):
    pytest.importorskip("onnxruntime")
    from toolkit.inference import Predictor

    path = write_tiny_model(tmp_path / "nan.onnx", meta={"preprocess": {**_GOOD, "std": [NAN, 0.2, 0.2]}})
    with pytest.raises(contract.ContractError, match=r"nan.onnx: preprocess\.std"):
        Predictor(path, device="cpu")
    path = write_tiny_model(tmp_path / "deep.onnx", meta={"labels": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(contract.ContractError, match="deep.onnx: 'labels' metadata nests deeper"):
        Predictor(path, device="cpu")


def test_a_file_that_does_not_crop_is_format_2(tmp_path):
    """A reader from before fit modes would centre-crop a letterbox file without a word: such a file is
    format "2", which that reader refuses ("upgrade toolkit"); a cropping file stays "1"; both load here."""
    assert contract.format_for({"crop": 32}) == contract.format_for({"fit": "crop"}) == "1"
    assert contract.format_for({"fit": "letterbox"}) == contract.format_for({"fit": "squash"}) == "2"
    for fit, fmt in (("crop", "1"), ("letterbox", "2")):
        path = write_tiny_model(tmp_path / f"{fit}.onnx", labels=["a", "b"],
                                meta={"toolkit_format": fmt,
                                      "preprocess": dict(Preprocess(resize=36, crop=32).to_dict(), fit=fit)})
        assert contract.read_file(path).preprocess.fit == fit
