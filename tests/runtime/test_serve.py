"""serve-local: a real server process on loopback, hostile inputs, concurrency, shutdown, the page.

Every server here is `python -m toolkit serve-local MODEL --port 0 ...` on 127.0.0.1 (port 0: the
server picks a free port and prints its URL). The model is conftest's tiny conv net (write_tiny_model:
onnx.helper and the ONNX file contract, 5 labels, 32 px), so nothing here needs torch but
test_serves_a_real_export.
"""
import base64
import functools
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip  # noqa: E402
from conftest import ROOT, write_tiny_model  # noqa: E402

from toolkit.errors import UserError  # noqa: E402

LABELS = ("daisy", "dandelion", "rose", "sunflower", "tulip")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", labels=LABELS)


@pytest.fixture(scope="module")
def predictor(model_path):
    from toolkit.runtime.predictor import Predictor
    return Predictor(model_path, device="cpu")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def encode(img, fmt, **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(seed, size=(64, 48)):
    """A smooth random colour picture (varied enough that images get different answers)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def png_bomb(width, height):
    """A 1-bit palette PNG of width x height that is all zeros: tens of KB on disk, gigabytes decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0))
            + chunk(b"PLTE", b"\x00\x00\x00\xff\xff\xff") + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def odd_images():
    base = photo(7, (40, 24))
    gray16 = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    assert gray16.mode == "I;16"
    exif = Image.Exif()
    exif[0x0112] = 6   # Orientation: rotate 90 CW on display
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    return {
        "grayscale_jpeg": (encode(base.convert("L"), "JPEG", quality=90), "image/jpeg"),
        "rgba_png": (encode(rgba, "PNG"), "image/png"),
        "palette_png": (encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"), "image/png"),
        "gray16_png": (encode(gray16, "PNG"), "image/png"),
        "cmyk_jpeg": (encode(base.convert("CMYK"), "JPEG", quality=90), "image/jpeg"),
        "exif_rotated_jpeg": (encode(base, "JPEG", quality=90, exif=exif.tobytes()), "image/jpeg"),
        "one_pixel_png": (encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG"), "image/png"),
        "webp": (encode(base, "WEBP", quality=90), "image/webp"),
        "big_jpeg_as_octet_stream": (encode(photo(8, (1600, 1200)), "JPEG", quality=85), "application/octet-stream"),
    }


# --------------------------------------------------------------------------------------------
# Real server processes
# --------------------------------------------------------------------------------------------

class Server:
    def __init__(self, model, tmp_path, *args):
        self.log_path = os.path.join(str(tmp_path), f"server-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "w+")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "toolkit", "serve-local", model, "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.url = self._wait_ready(timeout=90)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if url is None:
                m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.output())
                url = m.group(1) if m else None
            if url is not None:
                try:
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server not ready after {timeout}s:\n{self.output()}")

    def ready(self):
        r = self.client.get("/ready")
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self):
        if getattr(self, "client", None) is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    srv = Server(model_path, tmp_path_factory.mktemp("server"), "--max-body-mb", "1")
    yield srv
    srv.stop()


def raw_request(host, port, request: bytes) -> bytes:
    """Send bytes on a fresh socket; what comes back up to the end of the JSON body (or the close)."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def assert_json_error(response, status):
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"], body
    assert body["detail"] is None or isinstance(body["detail"], str), body   # docs/serve.md: one string
    text = response.text
    assert "Traceback" not in text and 'File "' not in text and ROOT not in text, text
    return body


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

def test_serve_module_is_light(model_path):
    """Importing toolkit.runtime.serve and building the app loads no torch / torchvision / albumentations / cv2."""
    code = ("import sys; import toolkit.runtime.serve as s; from toolkit.runtime.predictor import Predictor; "
            f"s.create_app(Predictor({model_path!r}, device='cpu')); "
            "heavy = [m for m in ('torch', 'torchvision', 'albumentations', 'cv2') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_serve_arguments_and_host_warning(model_path):
    from toolkit.runtime.serve import host_warning, serve

    with pytest.raises(UserError) as err:
        serve(model_path, port=-1, max_batch=0, max_wait_ms=-1, max_body_mb=0, top_k=0, max_concurrency=0)
    message = str(err.value)
    for name in ("port", "max-batch", "max-wait-ms", "max-body-mb", "top-k", "max-concurrency"):
        assert name in message, message
    with pytest.raises(UserError, match="no exported model"):
        serve(None, exports_dir=os.path.join(os.path.dirname(model_path), "nothing-here"))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(UserError, match="cannot listen"):
            serve(model_path, port=busy.getsockname()[1])
    finally:
        busy.close()
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert host_warning(host) is None, host
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        assert "warning" in host_warning(host), host


class _FakePredictor:
    provider = "CPUExecutionProvider"

    def __init__(self, warmup_s):
        self.warmup_s, self.calls = warmup_s, []

    def warmup(self, batch_size=1):
        return self.warmup_s

    def predict_batch(self, batch, top_k):
        self.calls.append(len(batch))
        return [[{"label": "a", "score": float(x.sum()), "index": 0}] for x in batch]


def test_batcher_waits_for_requests_being_decoded():
    """Past max_wait_ms, the worker still waits (briefly) for requests already being decoded, and
    each future gets its own row back."""
    import asyncio

    from toolkit.runtime.serve import Batcher

    async def scenario(decoding_second):
        fake = _FakePredictor(warmup_s=4.0)           # slow model: grace = min(1 s, 25% of 4 s)
        batcher = Batcher(fake, max_batch=8, max_wait_ms=1)
        batcher.start()
        while not batcher.ready.is_set():
            await asyncio.sleep(0.01)
        entry = batcher.preparing()
        if decoding_second:
            other = batcher.preparing()
        first = asyncio.ensure_future(batcher.submit(entry, np.full(3, 1.0), 1))
        await asyncio.sleep(0.1)                       # the second image is still being decoded
        if decoding_second:
            second = await batcher.submit(other, np.full(3, 2.0), 1)
        else:
            second = await batcher.submit(batcher.preparing(), np.full(3, 2.0), 1)
        result = (await first, second, fake.calls)
        await asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        assert not batcher.thread.is_alive()
        return result

    first, second, calls = asyncio.run(scenario(decoding_second=True))
    assert calls == [2] and first[0]["score"] == 3.0 and second[0]["score"] == 6.0
    first, second, calls = asyncio.run(scenario(decoding_second=False))
    assert calls == [1, 1] and first[0]["score"] == 3.0 and second[0]["score"] == 6.0


def test_a_lone_request_runs_without_the_batch_wait_and_streams_are_checked():
    """Nothing else queued or being decoded: the batch runs at once, not after max_wait_ms (here 30 s).
    serve-local's --streams is a whole number >= 1."""
    import asyncio

    from toolkit.runtime.serve import Batcher, ServeOptions

    async def scenario():
        fake = _FakePredictor(warmup_s=0.001)
        batcher = Batcher(fake, max_batch=8, max_wait_ms=30_000)
        batcher.start()
        while not batcher.ready.is_set():
            await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(batcher.submit(batcher.preparing(), np.full(3, 1.0), 1), 10)
        await asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        return answer, fake.calls

    answer, calls = asyncio.run(scenario())
    assert answer[0]["score"] == 3.0 and calls == [1]
    assert ServeOptions(streams=2, engine="openvino").problems() == []
    assert ServeOptions(streams=0, engine="openvino").problems() == [
        "streams: 0; expected a whole number >= 1 (or leave it unset)"]
    # on ONNX Runtime --streams did nothing, without a word
    assert ServeOptions(streams=2).problems() == ["streams: 2 is for OpenVINO (--engine openvino); ONNX Runtime "
                                                  "serves from one session: leave --streams out"]


def test_a_lone_request_runs_in_its_decoding_thread_and_counts_once():
    """run_alone: alone in the server (ready, nothing else decoding, queued or running) the image runs in
    the calling thread as a batch of one; otherwise None and the request still counts as decoding. An
    entry leaves the count once, whatever the order (a client that leaves mid-run is not subtracted
    twice). A failing model is a 500 ApiError."""
    import threading

    from toolkit.runtime.serve import Batcher
    from toolkit.runtime.serve.errors import ApiError

    class Recording(_FakePredictor):
        def predict_batch(self, batch, top_k):
            self.threads = getattr(self, "threads", []) + [threading.current_thread().name]
            return super().predict_batch(batch, top_k)

    fake = Recording(warmup_s=0.001)
    batcher = Batcher(fake, max_batch=8, max_wait_ms=30_000)
    entry = batcher.preparing()
    assert batcher.run_alone(entry, np.full(3, 1.0), 1) is None       # not warmed up yet
    batcher.start()
    assert batcher.ready.wait(10)
    other = batcher.preparing()
    assert batcher.run_alone(entry, np.full(3, 1.0), 1) is None and batcher.decoding == 2   # not alone
    batcher.abandon(other)
    result = {}
    runner = threading.Thread(target=lambda: result.update(answer=batcher.run_alone(entry, np.full(3, 1.0), 1)),
                              name="toolkit-decode-test")
    runner.start()
    runner.join(10)
    assert result["answer"] == [{"label": "a", "score": 3.0, "index": 0}]
    assert fake.threads == ["toolkit-decode-test"] and fake.calls == [1]
    assert batcher.decoding == 0 and batcher.running == 0 and batcher.batches == 1
    batcher.abandon(entry)                  # the client left while it ran: counted once
    assert batcher.decoding == 0
    batcher.running = 1                     # a worker's batch in inference: queue behind it
    assert batcher.run_alone(batcher.preparing(), np.full(3, 1.0), 1) is None
    batcher.running, batcher.decoding = 0, 0

    def broken(batch, top_k):
        raise RuntimeError("boom")
    fake.predict_batch = broken
    with pytest.raises(ApiError) as caught:
        batcher.run_alone(batcher.preparing(), np.full(3, 1.0), 1)
    assert caught.value.status == 500 and batcher.running == 0 and batcher.decoding == 0
    batcher.stop()


def test_endpoints(server, model_path):
    c = server.client
    assert c.get("/health").json() == {"status": "ok"}
    ready = server.ready()
    assert ready["ready"] is True and ready["provider"] == "CPUExecutionProvider"
    assert ready["labels"] == len(LABELS) and len(ready["model_sha256"]) == 64
    # The serve extra brings uvloop (not on Windows); the start-up line says which loop runs.
    expected_loop = "asyncio" if sys.platform == "win32" else "uvloop"
    assert f"event loop {expected_loop}" in server.output(), server.output()

    model = c.get("/v1/model").json()
    assert model["labels"] == list(LABELS)
    assert model["preprocess"]["crop"] == 32 and model["preprocess"]["resize"] == 36
    assert model["input"]["shape"] == ["batch", 3, 32, 32] and model["precision"] == "fp32"
    assert model["source_run"] == "tiny" and model["sha256"] == ready["model_sha256"]
    assert model["path"] == "tiny.onnx" and os.path.dirname(model_path) not in json.dumps(model)

    # No endpoint that loads a model: the API is exactly these four paths.
    paths = c.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/health", "/ready", "/v1/model", "/v1/predict"}
    assert set(paths["/v1/predict"]) == {"post"}
    assert c.get("/docs").status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/predict" in page.text and "http://" not in page.text.replace("http://www.w3.org", "")
    assert_json_error(c.get("/nope"), 404)
    assert_json_error(c.post("/v1/model"), 405)
    assert_json_error(c.get("/v1/predict"), 405)
    # DNS-rebinding guard: a loopback server only answers requests addressed to this machine.
    assert_json_error(c.get("/ready", headers={"Host": "attacker.example"}), 400)


def test_predict_raw_and_multipart_match_predictor(server, predictor):
    jpeg = encode(photo(1), "JPEG", quality=90)
    expected = predictor.predict(jpeg, top_k=5)
    raw = server.client.post("/v1/predict", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["model"] == predictor.sha256[:12] and body["provider"] == "CPUExecutionProvider"
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected]
    assert [p["index"] for p in body["predictions"]] == [p["index"] for p in expected]
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], [p["score"] for p in expected],
                               rtol=1e-5, atol=1e-6)
    multi = server.client.post("/v1/predict", params={"top_k": 2}, files={"file": ("a.jpg", jpeg, "image/jpeg")})
    assert multi.status_code == 200, multi.text
    assert multi.json()["predictions"] == body["predictions"][:2]
    one = server.client.post("/v1/predict?top_k=1", content=jpeg, headers={"Content-Type": "application/octet-stream"})
    assert one.json()["predictions"] == body["predictions"][:1]


def _stream(total, piece=64 * 1024):
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        sent += n
        yield b"\xff" * n


HOSTILE = {
    # name: (request kwargs, expected status)
    "body_over_limit_content_length": (dict(content=b"\x00" * (1024 * 1024 + 1)), 413),
    "body_over_limit_streamed": (dict(content=_stream(3 * 1024 * 1024)), 413),
    "multipart_over_limit": (dict(files={"file": ("big.jpg", b"\xff" * (1536 * 1024), "image/jpeg")}), 413),
    "png_bomb_20000x20000": (dict(content=png_bomb(20000, 20000), headers={"Content-Type": "image/png"}), 413),
    "png_over_pixel_cap_8000x6000": (dict(content=png_bomb(8000, 6000), headers={"Content-Type": "image/png"}), 413),
    "gif": (dict(content=encode(photo(2), "GIF"), headers={"Content-Type": "image/gif"}), 415),
    "bmp": (dict(content=encode(photo(2), "BMP"), headers={"Content-Type": "image/bmp"}), 415),
    "tiff_as_octet_stream": (dict(content=encode(photo(2), "TIFF")), 415),
    "text": (dict(content=b"hello, not an image", headers={"Content-Type": "text/plain"}), 415),
    "json": (dict(json={"url": "http://example.invalid/model.onnx"}), 415),
    "empty": (dict(content=b"", headers={"Content-Type": "image/jpeg"}), 400),
    "truncated_jpeg": (dict(content=encode(photo(3, (256, 256)), "JPEG")[:1500],
                            headers={"Content-Type": "image/jpeg"}), 400),
    "truncated_png": (dict(content=encode(photo(3, (256, 256)), "PNG")[:900],
                           headers={"Content-Type": "image/png"}), 400),
    "random_bytes": (dict(content=np.random.default_rng(0).bytes(4096),
                          headers={"Content-Type": "application/octet-stream"}), 400),
    "jpeg_header_then_garbage": (dict(content=b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(2048),
                                      headers={"Content-Type": "image/jpeg"}), 400),
    "multipart_without_file": (dict(files={"image": ("a.jpg", b"\xff\xd8", "image/jpeg")}), 400),
    "multipart_file_as_text_field": (dict(data={"file": "not a file"}, files={"x": ("x", b"x")}), 400),
    "multipart_broken": (dict(content=b"--xyz\r\nContent-Disposition: form-data\r\n\r\nabc",
                              headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400),
    "top_k_zero": (dict(params={"top_k": 0}, content=b"x"), 422),
    "top_k_too_big": (dict(params={"top_k": 6}, content=b"x"), 422),
    "top_k_not_a_number": (dict(params={"top_k": "five"}, content=b"x"), 422),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_battery(server, case):
    kwargs, status = HOSTILE[case]
    response = server.client.post("/v1/predict", **kwargs)
    assert_json_error(response, status)
    # ... and the server is still healthy and ready, and still answers a good request.
    assert server.ready()["ready"] is True
    good = server.client.post("/v1/predict", content=encode(photo(4), "PNG"), headers={"Content-Type": "image/png"})
    assert good.status_code == 200, good.text


def test_content_length_refused_before_the_body_is_sent(server):
    """A declared Content-Length over the limit is answered without reading the body."""
    host, port = server.url.rsplit("/", 1)[1].split(":")
    data = raw_request(host, int(port), b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: image/jpeg\r\nContent-Length: 500000000\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"] == "body too large"
    assert server.ready()["ready"] is True


@pytest.mark.parametrize("name", list(odd_images()))
def test_odd_valid_images_match_predictor(server, predictor, name):
    data, ctype = odd_images()[name]
    response = server.client.post("/v1/predict", content=data, headers={"Content-Type": ctype})
    assert response.status_code == 200, (name, response.text)
    got = response.json()["predictions"]
    want = predictor.predict(data, top_k=5)
    assert [p["index"] for p in got] == [p["index"] for p in want], name
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], rtol=1e-5, atol=1e-6)


def test_sixteen_concurrent_clients(server, predictor):
    images = [encode(photo(10 + i), "JPEG" if i % 2 else "PNG") for i in range(3)]
    expected = [predictor.predict(img, top_k=3) for img in images]
    results, errors = [], []
    deadline = time.monotonic() + 4.0
    start = threading.Barrier(16)

    def client(n):
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                start.wait()
                i = n
                while time.monotonic() < deadline and i < n + 400:
                    which = i % len(images)
                    r = c.post("/v1/predict?top_k=3", content=images[which],
                               headers={"Content-Type": "application/octet-stream"})
                    results.append((which, r.status_code, r.json() if r.status_code == 200 else r.text))
                    i += 1
        except Exception as exc:  # surfaced below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(results) >= 16
    statuses = {status for _, status, _ in results}
    assert statuses == {200}, [r for r in results if r[1] != 200][:3]
    for which, _, body in results:
        got = body["predictions"]
        assert [p["index"] for p in got] == [p["index"] for p in expected[which]]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in expected[which]],
                                   rtol=1e-5, atol=1e-6)
    stats = server.ready()
    print(f"\n16 clients: {len(results)} requests in 4 s, batches {stats['batches']}, "
          f"mean batch {stats['mean_batch']}, largest {stats['largest_batch']}")


def test_concurrency_limit_answers_503_with_retry_after(model_path, tmp_path):
    # Two predictions in flight at most, and each batch waits 1.5 s for company: a slow server.
    srv = Server(model_path, tmp_path, "--max-concurrency", "2", "--max-wait-ms", "1500")
    try:
        image = encode(photo(5), "PNG")
        go = threading.Barrier(7)
        answers = []

        def client():
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                go.wait()
                answers.append(c.post("/v1/predict", content=image, headers={"Content-Type": "image/png"}))

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        go.wait()
        # While predictions are held up, the status endpoints bypass the limit.
        seen_in_flight = 0
        for _ in range(8):
            r = srv.client.get("/ready")
            assert r.status_code == 200
            seen_in_flight = max(seen_in_flight, r.json()["in_flight"])
            assert srv.client.get("/health").status_code == 200
            assert srv.client.get("/v1/model").status_code == 200
            time.sleep(0.05)
        for t in threads:
            t.join(60)
        codes = sorted(a.status_code for a in answers)
        assert len(codes) == 6 and set(codes) <= {200, 503}, codes
        assert 1 <= codes.count(200) <= 2 and codes.count(503) >= 4, codes
        for a in answers:
            if a.status_code == 503:
                assert_json_error(a, 503)
                assert a.headers["Retry-After"] == "1"
        assert seen_in_flight >= 1
        stats = srv.ready()
        assert stats["rejected_busy"] == codes.count(503)
        # The accepted requests were answered by one micro-batch.
        assert stats["largest_batch"] == codes.count(200)
    finally:
        srv.stop()


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_then_exits_0(model_path, tmp_path):
    srv = Server(model_path, tmp_path, "--max-wait-ms", "1500")
    # A lone request skips the batcher's wait, so a tiny image was in flight for a few ms and the poll below
    # could miss it. A 12 MP PNG (no draft decode) keeps it inside the server ~0.15 s or more.
    image = encode(photo(6, (4000, 3000)), "PNG")
    answer = {}

    def client():
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            answer["response"] = c.post("/v1/predict", content=image, headers={"Content-Type": "image/jpeg"})

    t = threading.Thread(target=client)
    try:
        t.start()
        deadline = time.monotonic() + 20
        while srv.ready()["in_flight"] < 1:   # wait until the request is really inside the server
            assert time.monotonic() < deadline, "request never reached the server"
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        t.join(30)
        code = srv.proc.wait(timeout=30)
    finally:
        srv.stop()
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == len(LABELS)
    assert code == 0, srv.output()
    assert "stopped after 1 prediction in 1 batch\n" in srv.output(), srv.output()
    assert "Traceback" not in srv.output(), srv.output()


@pytest.mark.slow
def test_page_in_headless_browser(server, predictor, tmp_path):
    browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    first = encode(photo(21, (80, 60)), "JPEG", quality=90)
    second = encode(photo(22, (60, 80)), "PNG")
    (tmp_path / "flower.jpg").write_bytes(first)
    want_first = [p["label"] for p in predictor.predict(first, top_k=5)]
    want_second = [p["label"] for p in predictor.predict(second, top_k=3)]
    requests_outside = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith((server.url, "blob:", "data:"))
                    else requests_outside.append(r.url))
            page.goto(server.url + "/")
            # (waits go through locators: the page's CSP forbids the eval that wait_for_function needs)
            expect(page.locator("#model")).to_contain_text("5 labels", timeout=15000)
            # 1. choose a file with the file input.
            page.set_input_files("#file", str(tmp_path / "flower.jpg"))
            expect(page.locator("#predictions li")).to_have_count(5, timeout=15000)
            labels = page.locator("#predictions .label").all_text_contents()
            assert labels == want_first
            widths = page.eval_on_selector_all("#predictions .bar", "els => els.map(e => parseFloat(e.style.width))")
            assert widths == sorted(widths, reverse=True) and widths[0] > 0
            # 2. drop an image onto the drop zone, with top-k 3.
            page.fill("#topk", "3")
            page.evaluate(
                """([b64, name]) => {
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], name, {type: 'image/png'}));
                    const zone = document.getElementById('drop');
                    zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
                    zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
                }""", [base64.b64encode(second).decode(), "dropped.png"])
            expect(page.locator("#status")).to_contain_text("dropped.png ·", timeout=15000)
            assert page.locator("#predictions .label").all_text_contents() == want_second
            # 3. a bad file shows the server's error, not a crash.
            page.evaluate(
                """() => {
                    const dt = new DataTransfer();
                    dt.items.add(new File([new Uint8Array([1, 2, 3])], 'junk.png', {type: 'image/png'}));
                    document.getElementById('drop').dispatchEvent(
                        new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
                }""")
            expect(page.locator("#status")).to_have_class("error", timeout=15000)
            expect(page.locator("#status")).to_contain_text("error 400")
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert not requests_outside, requests_outside


def test_serves_a_real_export(tmp_path):
    """serve-local on what `toolkit export` writes (a random-weight vgg11 at 32 px, raw uint8 input twin)."""
    torch = pytest.importorskip("torch")
    from conftest import make_image_folder

    from toolkit import recipe as recipe_mod
    from toolkit.train.checkpoint import save_checkpoint
    from toolkit.export.pipeline import export_run
    from toolkit.runtime.predictor import Predictor
    from toolkit.train.model import build_from_recipe

    images = make_image_folder(tmp_path / "images", classes=3, per_class=4)
    raw = {"name": "real", "out_dir": str(tmp_path / "runs"),
           "data": {"root": images, "val_fraction": 0.5, "workers": 0},
           "preprocess": {"resize": 36, "crop": 32},
           "model": {"arch": "vgg11", "weights": "none", "head": "gap", "dropout": 0.0},
           "train": {"strategy": "scratch", "epochs": 1, "device": "cpu"}}
    rec = recipe_mod.from_dict(raw, check_paths=False)
    torch.manual_seed(0)
    model = build_from_recipe(rec, 3)
    with torch.no_grad():   # spread the logits of the untrained head
        list(model.head.modules())[-1].weight.mul_(30)
    state = {"model": model.state_dict(), "labels": ["class_0", "class_1", "class_2"],
             "recipe": recipe_mod.to_dict(rec), "metrics": {"val_top1": 33.3}, "epoch": 1, "step": 1,
             "best_top1": 33.3}
    run_dir = tmp_path / "runs" / "real"
    save_checkpoint(str(run_dir / "checkpoints" / "best.pt"), state)
    save_checkpoint(str(run_dir / "checkpoints" / "last.pt"), state)
    report = export_run(str(run_dir), exports_dir=str(tmp_path / "exports"), runs_dir=str(tmp_path / "runs"),
                        raw_input=True, parity_images=4, quiet=True)
    exported = sorted(str(p) for p in (tmp_path / "exports").glob("*.onnx"))
    model_file = next((p for p in exported if p.endswith(".raw.onnx")), exported[0])
    predictor = Predictor(model_file, device="cpu")
    assert predictor.raw == model_file.endswith(".raw.onnx"), exported   # uint8 NHWC input, normalised in-graph
    srv = Server(model_file, tmp_path)
    try:
        image = encode(photo(30, (50, 40)), "JPEG", quality=90)
        r = srv.client.post("/v1/predict?top_k=3", content=image, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        want = predictor.predict(image, top_k=3)
        assert [p["index"] for p in r.json()["predictions"]] == [p["index"] for p in want], report
        info = srv.client.get("/v1/model").json()
        assert info["labels"] == ["class_0", "class_1", "class_2"] and info["input"]["raw"] == predictor.raw
    finally:
        srv.stop()


def test_stalled_body_gets_408_and_frees_its_slot(predictor):
    """create_app inside a plain in-process uvicorn (the guard alone, not serve-local's protocol): a client
    that stops sending its body is cut off by the total body deadline."""
    import uvicorn

    from toolkit.runtime.serve import create_app

    app = create_app(predictor, max_concurrency=1, body_timeout=0.5)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not srv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "in-process server did not start"
            time.sleep(0.02)
        data = raw_request("127.0.0.1", port, b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + b"\x89PNG" + b"\x00" * 60)
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        # The single concurrency slot is free again.
        good = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=encode(photo(9), "PNG"), timeout=10)
        assert good.status_code == 200, good.text
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()
