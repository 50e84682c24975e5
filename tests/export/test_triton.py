"""`toolkit export --format triton`: the model repository, its config.pbtxt parsed by Triton's own
model-config protobuf (shipped in tritonclient), IR/opset options, and docs/export.md's tritonclient client
run against a stand-in that speaks Triton's HTTP/REST (KServe v2) protocol over the same ONNX file."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402

from test_export import LABELS, make_images, make_run  # noqa: E402
from toolkit.export import pipeline as export_mod  # noqa: E402
from toolkit.errors import UserError  # noqa: E402
from toolkit.runtime.onnx_eval import cpu_session  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TYPES = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8", "tensor(float16)": "TYPE_FP16"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    data = make_images(root / "data")
    return root, make_run(root / "runs", data, name="flowers", head="gap")


def parse_config(model_dir) -> "model_config_pb2.ModelConfig":
    with open(os.path.join(model_dir, "config.pbtxt")) as fh:
        return text_format.Parse(fh.read(), model_config_pb2.ModelConfig())  # raises on any unknown field


def check_against_onnx(model_dir, config, version=1):
    """The config's tensors, labels and batching say what the ONNX file itself says."""
    path = os.path.join(model_dir, str(version), "model.onnx")
    session = cpu_session(path)
    assert config.name == os.path.basename(model_dir)
    assert config.platform == "onnxruntime_onnx"
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [a.name for a in actual]
        for t, a in zip(declared, actual):
            assert isinstance(a.shape[0], str)  # a dynamic batch axis, which max_batch_size relies on
            assert list(t.dims) == [d if isinstance(d, int) else -1 for d in a.shape[1:]]
            assert model_config_pb2.DataType.Name(t.data_type) == TYPES[a.type]
    meta = session.get_modelmeta().custom_metadata_map
    labels = open(os.path.join(model_dir, "labels.txt")).read().splitlines()
    assert labels == json.loads(meta["labels"]) == LABELS
    for out in config.output:
        assert out.label_filename == "labels.txt" and list(out.dims) == [len(labels)]
    return session


def test_repository_layout_and_config_parse(runs, tmp_path):
    root, run = runs
    repo = tmp_path / "repo"
    report = export_mod.export_triton(run=run, repo=str(repo), fp16=True, int8=True, int8_budget=100, raw_input=True,
                                      max_batch_size=16, instances=2, instance_kind="gpu", queue_delay_us=250,
                                      exports_dir=str(tmp_path / "exports"), quiet=True)
    assert sorted(os.listdir(repo)) == ["flowers", "flowers_fp16", "flowers_int8", "flowers_raw"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # the staging folder is gone
    for name in os.listdir(repo):
        config = parse_config(repo / name)
        check_against_onnx(repo / name, config)
        assert config.max_batch_size == 16
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] \
            == [(2, "KIND_GPU")]
    raw = parse_config(repo / "flowers_raw").input[0]
    assert model_config_pb2.DataType.Name(raw.data_type) == "TYPE_UINT8" and list(raw.dims) == [32, 32, 3]
    assert model_config_pb2.ModelInput.Format.Name(raw.format) == "FORMAT_NHWC"
    assert {m["name"]: m["precision"] for m in report["triton"]}["flowers_int8"] == "int8"
    saved = json.load(open(repo / "flowers" / "export_report.json"))
    assert saved["parity"]["fp32"]["top1_agreement"] == 1.0 and saved["model"] == str(repo / "flowers/1/model.onnx")


def test_dynamic_hw_and_probabilities(runs, tmp_path):
    _, run = runs
    export_mod.export_triton(run=run, repo=str(tmp_path / "repo"), dynamic_hw=True, probabilities=True,
                             exports_dir=str(tmp_path / "exports"), quiet=True)
    config = parse_config(tmp_path / "repo" / "flowers")
    check_against_onnx(tmp_path / "repo" / "flowers", config)
    assert list(config.input[0].dims) == [3, -1, -1]
    assert [o.name for o in config.output] == ["logits", "probabilities"]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO


def test_older_opset_and_ir_version_for_older_servers(runs, tmp_path):
    _, run = runs
    report = export_mod.export_triton(run=run, repo=str(tmp_path / "repo"), opset=13, ir_version=7,
                                      exports_dir=str(tmp_path / "exports"), quiet=True)
    proto = onnx.load(str(tmp_path / "repo" / "flowers" / "1" / "model.onnx"))
    assert proto.ir_version == 7 == report["ir_version"]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]
    onnx.checker.check_model(proto, full_check=True)
    with pytest.raises(UserError, match=r"--ir-version 6: opset 17 needs IR version 8 or newer"):
        export_mod.export_run(run=run, out=str(tmp_path / "x.onnx"), ir_version=6, quiet=True)
    with pytest.raises(UserError, match="--ir-version 'eight': expected an integer"):
        export_mod.export_run(run=run, out=str(tmp_path / "x.onnx"), ir_version="eight", quiet=True)
    assert not (tmp_path / "x.onnx").exists()


def test_reexport_replaces_its_version_and_keeps_others(runs, tmp_path):
    _, run = runs
    repo = tmp_path / "repo"
    export_mod.export_triton(run=run, repo=str(repo), model_version=2, exports_dir=str(tmp_path / "e"), quiet=True)
    export_mod.export_triton(run=run, repo=str(repo), model_version=1, exports_dir=str(tmp_path / "e"), quiet=True)
    before = os.path.getmtime(repo / "flowers" / "2" / "model.onnx")
    export_mod.export_triton(run=run, repo=str(repo), model_version=1, exports_dir=str(tmp_path / "e"), quiet=True)
    assert sorted(os.listdir(repo / "flowers")) == ["1", "2", "config.pbtxt", "export_report.json", "labels.txt"]
    assert os.path.getmtime(repo / "flowers" / "2" / "model.onnx") == before


def test_bad_options_fail_before_any_work(runs, tmp_path, capsys):
    """One bad command in a process of its own (exit status, no traceback), the others through the same entry
    point in-process."""
    from toolkit import cli as toolkit_cli

    def refused(argv) -> str:
        with pytest.raises(SystemExit) as stop:
            toolkit_cli.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    _, run = runs
    cli = [sys.executable, "-m", "toolkit", "export", run, "--format", "triton"]
    bad = subprocess.run(cli + ["--out", str(tmp_path / "r"), "--instances", "0", "--instance-kind", "tpu"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--instances 0: expected a whole number, at least 1" in bad.stderr
    assert "--instance-kind 'tpu': expected one of auto, gpu, cpu" in bad.stderr
    assert not (tmp_path / "r").exists()
    assert "expected a folder for the model repository" in refused(cli[3:] + ["--out", str(tmp_path / "m.onnx")])
    assert "--format 'coreml': expected onnx" in refused(["export", run, "--format", "coreml"])


# ------------------------------------------------------------------------------------------------
# docs/export.md's client, against a stand-in for Triton's HTTP endpoint

class FakeTriton(BaseHTTPRequestHandler):
    """POST /v2/models/<name>/infer with the binary-data extension, answered by ONNX Runtime over the
    repository's model.onnx, classification outputs formatted as Triton does ("score:index:label")."""

    repo = ""
    requests: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        match = re.fullmatch(r"/v2/models/([^/]+)/infer", self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header_size = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        request = json.loads(body[:header_size])
        config = parse_config(os.path.join(self.repo, match.group(1)))
        (declared,), (tensor,) = config.input, request["inputs"]
        FakeTriton.requests.append(request)
        # What real Triton checks: the input name, data type and dims the config declares.
        assert tensor["name"] == declared.name and "TYPE_" + tensor["datatype"] == \
            model_config_pb2.DataType.Name(declared.data_type)
        assert tensor["shape"][1:] == list(declared.dims) and tensor["shape"][0] <= config.max_batch_size
        data = np.frombuffer(body[header_size:header_size + tensor["parameters"]["binary_data_size"]], "<f4")
        batch = data.reshape(tensor["shape"])
        session = cpu_session(os.path.join(self.repo, match.group(1), "1", "model.onnx"))
        labels = open(os.path.join(self.repo, match.group(1), "labels.txt")).read().splitlines()
        outputs, blobs = [], []
        for wanted in request["outputs"]:
            scores = session.run([wanted["name"]], {declared.name: batch})[0]
            k = wanted["parameters"]["classification"]
            rows = [[f"{row[i]:f}:{i}:{labels[i]}".encode() for i in np.argsort(-row)[:k]] for row in scores]
            blob = b"".join(struct.pack("<I", len(e)) + e for row in rows for e in row)
            outputs.append({"name": wanted["name"], "datatype": "BYTES", "shape": [len(rows), k],
                            "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        header = json.dumps({"model_name": match.group(1), "outputs": outputs}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Inference-Header-Content-Length", str(len(header)))
        self.send_header("Content-Length", str(len(header) + sum(map(len, blobs))))
        self.end_headers()
        self.wfile.write(header + b"".join(blobs))


def readme_client() -> str:
    text = open(os.path.join(REPO_ROOT, "docs", "export.md"), encoding="utf-8").read()
    block = text.split("<!-- triton-client -->", 1)[1]
    return block.split("```python", 1)[1].split("```", 1)[0]


def test_readme_client_gets_named_classes(runs, tmp_path):
    from PIL import Image

    _, run = runs
    export_mod.export_triton(run=run, repo=str(tmp_path / "exports" / "triton"), exports_dir=str(tmp_path / "e"),
                             quiet=True)
    for name, colour in (("rose.jpg", (230, 40, 60)), ("daisy.jpg", (240, 240, 230))):
        Image.new("RGB", (60, 50), colour).save(tmp_path / name)
    FakeTriton.repo = str(tmp_path / "exports" / "triton")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTriton)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = readme_client().replace("localhost:8000", f"127.0.0.1:{server.server_address[1]}")
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    # The same answer as our own Predictor on the same file, names included.
    from toolkit.runtime.predictor import Predictor

    predictor = Predictor(str(tmp_path / "exports" / "triton" / "flowers" / "1" / "model.onnx"), device="cpu")
    lines = done.stdout.strip().splitlines()
    for line, image in zip(lines, ("rose.jpg", "daisy.jpg")):
        expected = [p["label"] for p in predictor.predict(str(tmp_path / image), top_k=3)]
        assert line == f"{image} {expected}"
    assert len(lines) == 2 and FakeTriton.requests[-1]["inputs"][0]["shape"] == [2, 3, 32, 32]


def test_triton_module_and_client_preprocessing_are_light(runs, tmp_path):
    """The repository writer and the client's preprocessing import neither torch nor albumentations."""
    _, run = runs
    path = export_mod.export_run(run=run, out=str(tmp_path / "m.onnx"), quiet=True)["model"]
    code = ("import sys, toolkit.export.triton; from toolkit.preprocess import Preprocess; "
            f"p = Preprocess.from_model({path!r}); assert p.crop == 32, p; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'albumentations', 'cv2')]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.raises(UserError, match="no such model file"):
        from toolkit.preprocess import Preprocess

        Preprocess.from_model(str(tmp_path / "missing.onnx"))
