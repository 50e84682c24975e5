"""OpenVINO as a second engine: selection and read-back, clear errors, agreement with ONNX Runtime, the BF16
gate in `toolkit evaluate`, and serve-local on OpenVINO. Tiny onnx.helper models: no torch here."""
import asyncio
import builtins
import json
import subprocess
import sys

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from conftest import ROOT, make_image_folder, tiny_graph, tiny_metadata, tiny_recipe, write_tiny_model  # noqa: E402

from toolkit import contract  # noqa: E402
from toolkit.errors import UserError  # noqa: E402
from toolkit.runtime import engines  # noqa: E402
from toolkit.runtime.engines import Engine, EngineOptions, OpenVinoOptions, open_engine  # noqa: E402
from toolkit.runtime.engines import openvino_adapter, openvino_core  # noqa: E402
from toolkit.runtime.bf16_gate import compare_centred  # noqa: E402
from toolkit.runtime.predictor import Predictor  # noqa: E402

HAS_BF16 = "BF16" in openvino_core.capabilities("CPU")
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no BF16 support in OpenVINO")


def batch(n=8, crop=32, seed=1):
    """Smooth random images, normalised like the eval transform would leave them."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 4, 4)).astype(np.float32)
    return np.ascontiguousarray(np.kron(coarse, np.ones((1, 1, crop // 4, crop // 4), np.float32)))


def offset_model(path, offset=1000.0):
    """tiny_graph with `offset` added to every weight of its final Gemm: in FP32 the class differences
    survive; in bfloat16 (8-bit mantissa: steps of 4 near 1000) they are rounded away, so top-1 flips."""
    from onnx import numpy_helper
    import onnx

    proto = tiny_graph()
    for init in proto.graph.initializer:
        if init.name == "w3":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(offset), "w3"))
    contract.write(proto, tiny_metadata())
    onnx.save(proto, str(path))
    return str(path)


# ------------------------------------------------------------------------------------------------
# Selection and read-back

def test_openvino_fp32_reads_back_and_agrees_with_onnxruntime(tiny_model):
    ort_p = Predictor(tiny_model)
    ov_p = Predictor(tiny_model, engine="openvino")
    assert (ov_p.engine, ov_p.engine_device, ov_p.inference_precision) == ("openvino", "CPU", "fp32")
    assert ov_p.provider == "OpenVINO:CPU" and ov_p.precision == "fp32"
    assert (ort_p.engine, ort_p.engine_device, ort_p.inference_precision) == ("onnxruntime", "CPU", "fp32")
    assert ov_p.engine_info.hint == "LATENCY" and ov_p.engine_info.load_s > 0
    described = ov_p.describe()
    assert described["engine"] == "openvino" and described["inference_precision"] == "fp32"
    x = batch()
    np.testing.assert_allclose(ov_p.logits(x), ort_p.logits(x), rtol=1e-4, atol=1e-4)
    assert [[p["index"] for p in r] for r in ov_p.predict_batch(x, 2)] == \
        [[p["index"] for p in r] for r in ort_p.predict_batch(x, 2)]


def test_raw_input_model_agrees_too(tmp_path):
    path = write_tiny_model(tmp_path / "raw.onnx", raw=True)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ort_logits = Predictor(path).logits(pixels)
    ov_logits = Predictor(path, engine="openvino").logits(pixels)
    np.testing.assert_allclose(ov_logits, ort_logits, rtol=1e-4, atol=1e-4)


@needs_bf16
def test_bf16_is_read_back(tiny_model):
    p = Predictor(tiny_model, engine="openvino", precision="bf16")
    assert p.inference_precision == "bf16" and p.precision == "fp32"
    assert "bf16" in p.runs_on
    ref = Predictor(tiny_model).logits(batch())
    assert not np.array_equal(p.logits(batch()), ref)   # really computed in bf16 ...
    assert compare_centred(ref, p.logits(batch()))["close"]   # ... and close on a normal model


def test_throughput_hint_gives_a_request_pool_and_run_is_thread_safe(tiny_model):
    from concurrent.futures import ThreadPoolExecutor

    session = open_engine(tiny_model, "openvino", EngineOptions(threads=2, openvino=OpenVinoOptions(hint="THROUGHPUT")))
    assert session.describe().hint == "THROUGHPUT" and session.describe().requests >= 1
    assert session.inputs[0].shape == (None, 3, 32, 32) and session.inputs[0].dtype == "float32"
    x = batch(16)
    want = session.run({"input": x}, ["logits"])[0]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: session.run({"input": x[i:i + 1]})[0], range(16)))
    np.testing.assert_allclose(np.concatenate(outs), want, rtol=1e-5, atol=1e-5)


def test_read_back_that_differs_from_the_request_is_an_error(tiny_model):
    info = open_engine(tiny_model, "openvino").describe()
    with pytest.raises(UserError, match="asked for bf16.*refusing"):
        openvino_adapter.check_read_back(info, tiny_model, "CPU", "bf16", "LATENCY")
    with pytest.raises(UserError, match="device CPU \\(asked for GPU\\)"):
        openvino_adapter.check_read_back(info, tiny_model, "GPU", "fp32", "LATENCY")


def test_model_cache_dir_is_filled(tiny_model, tmp_path):
    cache = tmp_path / "ov-cache"
    options = EngineOptions(openvino=OpenVinoOptions(cache_dir=str(cache)))
    first = open_engine(tiny_model, "openvino", options)
    assert first.describe().cache_dir == str(cache) and any(cache.iterdir())
    second = open_engine(tiny_model, "openvino", options)
    np.testing.assert_allclose(second.run({"input": batch()})[0], first.run({"input": batch()})[0])


# ------------------------------------------------------------------------------------------------
# OpenVINO's alternate signal stack (issue 18): one process-wide Core, so no session leaves it unmapped

_SIGNAL_STACK_SCRIPT = r"""
import ctypes, gc, os, signal, subprocess, sys
from toolkit.runtime.predictor import Predictor

first = Predictor(sys.argv[1], engine="openvino")
second = Predictor(sys.argv[1], engine="openvino")
del first   # oldest first: the order that left the thread's alternate stack unmapped
gc.collect()
del second
gc.collect()

class StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

libc = ctypes.CDLL(None, use_errno=True)
now = StackT()
assert libc.sigaltstack(None, ctypes.byref(now)) == 0, os.strerror(ctypes.get_errno())
SS_DISABLE = 2
if not now.ss_flags & SS_DISABLE:
    start, end = now.ss_sp, now.ss_sp + now.ss_size
    with open("/proc/self/maps") as maps:
        regions = [[int(x, 16) for x in line.split()[0].split("-")] + [line.split()[1]] for line in maps]
    mapped = any(lo <= start and end <= hi and perms.startswith("rw") for lo, hi, perms in regions)
    print(f"alternate stack {start:#x}+{now.ss_size}: {'mapped' if mapped else 'UNMAPPED'}", flush=True)
    assert mapped, "the thread's alternate signal stack is not mapped"
seen = []
signal.signal(signal.SIGUSR1, lambda *_: seen.append("usr1"))
os.kill(os.getpid(), signal.SIGUSR1)
signal.signal(signal.SIGCHLD, lambda *_: seen.append("chld"))
assert subprocess.run(["true"]).returncode == 0
print("handled", sorted(set(seen)), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_sessions_dropped_oldest_first_leave_the_signal_stack_mapped(tiny_model):
    """Two sessions opened and released oldest-first, then a handled signal and a subprocess, in a
    fresh process: with a Core per session the second release left an unmapped stack (exit -11)."""
    run = subprocess.run([sys.executable, "-c", _SIGNAL_STACK_SCRIPT, tiny_model], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr[-2000:])
    assert "UNMAPPED" not in run.stdout and "handled ['chld', 'usr1']" in run.stdout


# ------------------------------------------------------------------------------------------------
# Clear errors

def test_openvino_missing_is_one_clear_error(tiny_model, monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.setattr(openvino_core, "_core", None)   # as before the first use (the real one is kept)
    with pytest.raises(UserError, match=r"pip install 'toolkit\[openvino\]'"):
        Predictor(tiny_model, engine="openvino")


def test_bf16_where_the_cpu_has_none_is_one_clear_error(tiny_model, monkeypatch):
    monkeypatch.setattr(openvino_core, "capabilities", lambda device="CPU": ["FP32", "INT8"])
    with pytest.raises(UserError, match="no BF16 support on this machine.*--precision fp32"):
        Predictor(tiny_model, engine="openvino", precision="bf16")


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "bf16"}, "precision: bf16 needs engine openvino"),
    ({"engine": "openvino", "precision": "int4"}, "precision: 'int4'; expected one of fp32, bf16"),
    ({"engine": "tensorflow"}, "engine: 'tensorflow'; expected one of onnxruntime, openvino"),
    ({"engine": "openvino", "device": "cuda"}, "cuda and tensorrt are ONNX Runtime devices"),
    ({"engine": "openvino", "device": "npu"}, "OpenVINO sees CPU"),
    ({"threads": 2, "options": EngineOptions()}, "threads: given both as a keyword and in options="),
    ({"options": {"device": "cpu"}}, "options: dict; expected toolkit.runtime.engines.EngineOptions"),
])
def test_bad_engine_options(tiny_model, kwargs, match):
    with pytest.raises(UserError, match=match):
        Predictor(tiny_model, **kwargs)


def test_engine_names_and_lists():
    assert engines.ENGINES == ("onnxruntime", "openvino") and engines.INFERENCE_PRECISIONS == ("fp32", "bf16")
    assert engines.parse_engines("onnxruntime,ov,openvino") == ["onnxruntime", "openvino"]
    assert engines.parse_precision(None, "openvino") == "fp32"
    assert openvino_adapter.openvino_device("gpu:1") == "GPU.1" and openvino_adapter.openvino_device("auto") == "CPU"
    assert engines.adapter_for("ov").name == "openvino" and engines.engines_with("bf16") == ["openvino"]
    assert engines.reference_engine() == "onnxruntime"


def test_one_options_object_for_every_engine(tiny_model):
    """OpenVINO's settings travel in the same object to every engine; ONNX Runtime ignores them (no
    special case), OpenVINO applies them and reads them back; the simple keywords and options= don't mix."""
    options = EngineOptions(threads=2, openvino=OpenVinoOptions(hint="THROUGHPUT", streams=2))
    ort_p = Predictor(tiny_model, options=options)
    assert ort_p.engine_info.threads == 2 and ort_p.engine_info.hint is None
    ov_p = Predictor(tiny_model, engine="openvino", options=options)
    info = ov_p.engine_info
    assert (info.engine, info.hint, info.streams, info.threads) == ("openvino", "THROUGHPUT", 2, 2)
    assert (info.device_asked, info.device, info.precision_asked, info.precision) == ("auto", "CPU", "fp32", "fp32")
    assert info.version == ov.__version__.split("-")[0] and ov_p.session.optimal_requests == info.requests
    assert isinstance(ov_p.session, Engine) and isinstance(ort_p.session, Engine)
    np.testing.assert_allclose(ov_p.logits(batch()), ort_p.logits(batch()), rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="hint: 'FAST'; expected one of LATENCY, THROUGHPUT"):
        OpenVinoOptions(hint="FAST")


def test_serving_takes_one_stream_with_every_core_unless_streams_are_asked_for(tiny_model):
    """serve-local's options come from the adapter: OpenVINO's LATENCY hint (one stream, one request, so one
    batch worker whose batches grow under load); streams > 1 gives THROUGHPUT with that many streams,
    read back; ONNX Runtime's options pass through unchanged."""
    from toolkit.runtime.engines import adapter_for

    asked = EngineOptions(threads=2)
    assert adapter_for("onnxruntime").serving_options(asked) is asked
    one = open_engine(tiny_model, "openvino", adapter_for("openvino").serving_options(asked)).describe()
    assert (one.hint, one.streams, one.threads, one.requests) == ("LATENCY", 1, 2, 1)
    assert one.settings() == {"hint": "LATENCY", "streams": 1, "threads": 2, "requests": 1}
    assert one.settings_line() == "LATENCY hint, 1 stream, 2 threads, 1 request at once"
    two = adapter_for("openvino").serving_options(EngineOptions(openvino=OpenVinoOptions(streams=2)))
    info = open_engine(tiny_model, "openvino", two).describe()
    assert (info.hint, info.streams) == ("THROUGHPUT", 2) and info.requests >= 2


# ------------------------------------------------------------------------------------------------
# evaluate on OpenVINO: the accuracy change and the BF16 gate

@pytest.fixture(scope="module")
def folder_recipe(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    return tiny_recipe(base, make_image_folder(base / "images", per_class=6, size=(40, 36)))


def test_evaluate_on_openvino_reports_the_change_against_onnxruntime(tiny_model, folder_recipe):
    from toolkit.runtime.onnx_eval import evaluate_onnx

    ort_report = evaluate_onnx(tiny_model, folder_recipe)
    ov_report = evaluate_onnx(tiny_model, folder_recipe, engine="openvino")
    assert ov_report["engine"] == "openvino" and ov_report["provider"] == "OpenVINO:CPU"
    vs = ov_report["vs_onnxruntime"]
    assert vs["reference"]["top1"] == pytest.approx(ort_report["top1"], abs=1e-3)
    assert vs["top1_agreement"] == 1.0 and vs["max_abs_logit_diff"] < 1e-3 and "bf16_gate" not in vs


@needs_bf16
def test_bf16_gate_passes_a_normal_model_and_fails_one_built_to_break_it(tiny_model, folder_recipe, tmp_path):
    from toolkit.runtime.onnx_eval import evaluate_onnx

    ok = evaluate_onnx(tiny_model, folder_recipe, engine="openvino", precision="bf16")
    assert ok["inference_precision"] == "bf16" and ok["vs_onnxruntime"]["bf16_gate"]["close"]
    broken = offset_model(tmp_path / "offset.onnx")
    assert Predictor(broken).predict_batch(batch(), 1) != \
        Predictor(broken, engine="openvino", precision="bf16").predict_batch(batch(), 1)
    with pytest.raises(UserError) as err:
        evaluate_onnx(broken, folder_recipe, engine="openvino", precision="bf16")
    msg = str(err.value)
    assert "bf16 gate failed" in msg and "offset.onnx" in msg and "centred logits differ" in msg
    assert "use precision fp32" in msg and "\n" not in msg


def test_cli_predict_and_evaluate_take_engine(tiny_model, tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(img)
    run = subprocess.run([sys.executable, "-m", "toolkit", "predict", tiny_model, str(img), "--engine", "openvino",
                          "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["engine"] == "openvino" and out["provider"] == "OpenVINO:CPU" and out["inference_precision"] == "fp32"
    assert "on OpenVINO:CPU fp32" in run.stderr
    bad = subprocess.run([sys.executable, "-m", "toolkit", "predict", tiny_model, str(img), "--precision", "bf16"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "needs engine openvino" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------------------------
# serve-local on OpenVINO

class FakeSession:
    optimal_requests = 3


class SlowPredictor:
    """Stands in for a Predictor: records which threads ran batches."""

    provider = "CPUExecutionProvider"
    session = FakeSession()

    def __init__(self):
        import threading
        self.threads, self.lock = set(), threading.Lock()

    def warmup(self, n):
        return 0.001

    def predict_batch(self, arrays, k):
        import threading
        import time
        with self.lock:
            self.threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return [[{"label": "x", "score": float(a.sum()), "index": 0}] for a in arrays]


def test_batcher_runs_one_worker_per_infer_request():
    from toolkit.runtime.serve.batcher import Batcher

    async def scenario():
        fake = SlowPredictor()
        batcher = Batcher(fake, max_batch=2, max_wait_ms=1)
        assert batcher.workers == 3
        batcher.start()
        while not batcher.ready.is_set():
            await asyncio.sleep(0.01)

        async def one(i):
            return await batcher.submit(batcher.preparing(), np.full(3, float(i)), 1)

        results = await asyncio.gather(*(one(i) for i in range(12)))
        await asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        assert [r[0]["score"] for r in results] == [3.0 * i for i in range(12)]
        assert len(fake.threads) > 1 and not any(t.is_alive() for t in batcher.threads)
        assert batcher.images == 12

    asyncio.run(scenario())


def test_serve_local_on_openvino_answers_like_the_predictor(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from test_serve import Server, encode, photo

    model = write_tiny_model(tmp_path / "tiny.onnx", labels=("a", "b", "c", "d", "e"))
    predictor = Predictor(model, engine="openvino")
    srv = Server(model, tmp_path, "--engine", "openvino")
    try:
        assert "on OpenVINO:CPU fp32; read back: LATENCY hint, 1 stream, " in srv.output()
        assert "1 request at once, 1 batch worker(s)" in srv.output()
        info = srv.client.get("/v1/model").json()
        assert info["engine"] == "openvino" and info["inference_precision"] == "fp32"
        settings = info["engine_settings"]
        assert (settings["hint"], settings["streams"], settings["requests"]) == ("LATENCY", 1, 1)
        assert settings["threads"] >= 1 and info["serving"]["batch_workers"] == 1
        for seed in range(3):
            data = encode(photo(seed), "PNG")
            got = srv.client.post("/v1/predict?top_k=3", content=data, headers={"content-type": "image/png"}).json()
            want = predictor.predict(data, top_k=3)
            assert [p["index"] for p in got["predictions"]] == [p["index"] for p in want]
            assert [p["score"] for p in got["predictions"]] == pytest.approx([p["score"] for p in want], abs=1e-4)
        assert srv.ready()["workers"] >= 1
    finally:
        srv.stop()


def test_bf16_check_without_openvino_names_its_own_way_out(monkeypatch):
    """export --bf16-check without openvino said "or use the default engine onnxruntime": export has no --engine."""
    monkeypatch.setitem(sys.modules, "openvino", None)   # import openvino raises ImportError
    with pytest.raises(UserError) as info:
        openvino_core.require_bf16("CPU", "--bf16-check", "drop --bf16-check")
    assert "openvino package is not installed" in str(info.value) and str(info.value).endswith("or drop --bf16-check")
    with pytest.raises(UserError, match="or use the default engine onnxruntime$"):
        openvino_core.import_openvino()


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_wrong_input_or_output_names_are_the_same_error_on_every_engine(tiny_model, engine):
    """engine.run with a name the model lacks: ONNX Runtime raised its own InvalidArgument / Fail, OpenVINO a
    UserError for an output and a raw error for an input. Now one UserError, worded alike, on both."""
    session = open_engine(tiny_model, engine)
    x = batch(2)
    for inputs, outputs, message in [({"pixels": x}, None, r"given inputs \['pixels'\]; expected \['input'\] "
                                                             r"\(no input 'pixels'\)"),
                                     ({}, None, r"given inputs \[\]; expected \['input'\]$"),
                                     ({"input": x}, ["probs"], "no output 'probs'; expected one of logits")]:
        with pytest.raises(UserError, match=message):
            session.run(inputs, outputs)
    assert session.run({"input": x}, ["logits"])[0].shape == (2, 3)
