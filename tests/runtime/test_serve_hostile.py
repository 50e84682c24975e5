"""serve-local under slow and hostile clients: deadlines, the connection cap, JSON protocol errors, HEAD, Host.

Each test runs serve-local's own stack in this process (create_app + `server.uvicorn_config`, so the
deadline protocol is the one `toolkit serve-local` runs) on a real loopback socket, with timeouts of
about a second so that every test stays short. The model is conftest's tiny conv net (no torch).
"""
import contextlib
import io
import json
import select
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import write_tiny_model  # noqa: E402

from toolkit.errors import UserError  # noqa: E402

LABELS = ("daisy", "dandelion", "rose", "sunflower", "tulip")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from toolkit.runtime.predictor import Predictor
    path = write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", labels=LABELS)
    return Predictor(path, device="cpu")


def encode(img, fmt, **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(seed, size=(64, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)


class LiveServer:
    """serve-local's app and protocol in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, predictor, **limits):
        import uvicorn

        from toolkit.runtime.serve import Limits, create_app
        from toolkit.runtime.serve.server import _allowed_hosts, uvicorn_config

        self.limits = Limits(**limits)
        app = create_app(predictor, self.limits, allowed_hosts=_allowed_hosts("127.0.0.1"))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, self.limits))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline and self.thread.is_alive(), "in-process server did not start"
            try:
                if self.server.started and httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.02)

    def ready(self):
        return httpx.get(self.url + "/ready", timeout=5).json()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextlib.contextmanager
def live(predictor, **limits):
    srv = LiveServer(predictor, **limits)
    try:
        yield srv
    finally:
        srv.stop()


def read_response(sock, timeout=5.0, head=False, pending=None):
    """(status, headers, body) of one response on `sock` (no body for a HEAD request, whatever its
    Content-Length says); (None, {}, b"") if it closes without one. `pending`: a list holding bytes
    already read past the previous response (kept up to date for the next call)."""
    sock.settimeout(timeout)
    data = pending.pop() if pending else b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, {}, data
        data += chunk
    head_bytes, rest = data.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head else int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    if pending is not None:
        pending.append(rest[length:])
    return int(lines[0].split()[1]), headers, rest[:length]


def exchange(port, request: bytes, timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return read_response(s, timeout)


def assert_json(status, headers, body, want_status):
    assert status == want_status, (status, headers, body[:300])
    assert headers["content-type"].startswith("application/json"), headers
    payload = json.loads(body)
    assert set(payload) == {"error", "detail"} and payload["error"], payload
    return payload


def closed_within(sock, seconds) -> float | None:
    """Seconds until the server closed `sock` (reading and dropping anything it sends), None if it did not."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


# ------------------------------------------------------------------------------------------------
# Options


def test_timeout_and_connection_options_are_checked():
    from toolkit.runtime.serve import serve

    with pytest.raises(UserError) as err:
        serve("unused.onnx", header_timeout=0, body_timeout=float("nan"), keep_alive=-1, max_connections=0,
              write_timeout=0)
    message = str(err.value)
    for name in ("header-timeout", "body-timeout", "keep-alive", "max-connections", "write-timeout"):
        assert name in message, message
    with pytest.raises(UserError, match="body-timeout"):
        serve("unused.onnx", body_timeout=float("inf"))


def test_host_header_syntax():
    from toolkit.runtime.serve.guard import host_name

    good = {b"127.0.0.1": "127.0.0.1", b"LocalHost:8000": "localhost", b"[::1]:80": "[::1]", b"[::1]": "[::1]",
            b"example.com.": "example.com.", b"my_host-1.lan:65535": "my_host-1.lan"}
    for value, name in good.items():
        assert host_name(value) == name, value
    for value in (b"", b":80", b"127.0.0.1:", b"127.0.0.1:abc", b"127.0.0.1:99999", b"exa mple", b"a/b", b"[::1",
                  b"[::1]x", b"[nothost]:80", b"a..b", b"h\xe9te", b"a:1:2", b"-" * 300, b"user@host"):
        assert host_name(value) is None, value


# ------------------------------------------------------------------------------------------------
# Slow clients


def _trickle(port, head: bytes, drip: bytes, every: float, results: list, give_up: float):
    """Send `head`, then one byte of `drip` every `every` s; record when (and how) the server ended it."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as s:
        s.sendall(head)
        for i in range(10 ** 6):
            if time.monotonic() - t0 > give_up:
                results.append(("still open", time.monotonic() - t0, None))
                return
            readable, _, _ = select.select([s], [], [], every)
            if readable:
                break
            try:
                s.sendall(drip[i % len(drip):i % len(drip) + 1])
            except OSError:
                break
        try:
            status, headers, body = read_response(s, 2)
        except OSError:
            status, headers, body = None, {}, b""
        results.append((status, time.monotonic() - t0, (headers, body)))


def test_slow_clients_hold_no_slot_and_are_cut_off_by_the_total_deadline(predictor):
    """max_concurrency tricklers on the body, two on the head: a valid client is still answered at once,
    and every trickler gets 408 JSON at its total deadline, though it sends a byte every 50 ms."""
    with live(predictor, max_concurrency=2, header_timeout=1.0, body_timeout=1.5, max_connections=16) as srv:
        results, threads = [], []
        body_head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n\x89PNG")
        for _ in range(3):   # more than max_concurrency
            threads.append(threading.Thread(target=_trickle, args=(srv.port, body_head, b"\x00", 0.05, results, 8)))
        for _ in range(2):
            threads.append(threading.Thread(target=_trickle, args=(
                srv.port, b"POST /v1/predict HTTP/1.1\r\n", b"X-Slow: aaaaaaaa\r\n", 0.05, results, 8)))
        for t in threads:
            t.start()
        time.sleep(0.5)   # every trickler is inside the server now
        image = encode(photo(1), "PNG")
        t0 = time.monotonic()
        good = httpx.post(srv.url + "/v1/predict", content=image, headers={"Content-Type": "image/png"}, timeout=10)
        valid_s = time.monotonic() - t0
        assert good.status_code == 200, good.text
        assert valid_s < 2.0, f"a valid request waited {valid_s:.2f}s behind slow clients"
        want = predictor.predict(image, top_k=5)
        assert [p["index"] for p in good.json()["predictions"]] == [p["index"] for p in want]
        for t in threads:
            t.join(15)
        assert len(results) == 5, results
        for status, seconds, (headers, body) in results:
            assert_json(status, headers, body, 408)
            assert 0.9 <= seconds <= 3.0, (seconds, body)
        assert srv.ready()["rejected_busy"] == 0


def test_silent_and_idle_connections_are_closed(predictor):
    """A connection that sends nothing is closed at the head deadline (no answer: nothing was asked),
    and a kept-alive connection at the idle timeout."""
    with live(predictor, header_timeout=0.8, keep_alive=0.5) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as silent:
            took = closed_within(silent, 5)
            assert took is not None and 0.6 <= took <= 2.5, took
        with socket.create_connection(("127.0.0.1", srv.port)) as kept:
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, headers, body = read_response(kept)
            assert status == 200 and json.loads(body) == {"status": "ok"}
            took = closed_within(kept, 5)
            assert took is not None and 0.3 <= took <= 2.0, took


def test_a_body_trickling_after_the_answer_is_still_cut_off(predictor):
    """GET /health with a body that never ends: the answer comes, then the body deadline ends the connection."""
    with live(predictor, body_timeout=0.8) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\nab")
            status, _, _ = read_response(s)
            assert status == 200
            t0, closed = time.monotonic(), False
            while not closed and time.monotonic() - t0 < 5:
                try:
                    s.sendall(b"x")
                    if select.select([s], [], [], 0.05)[0]:
                        closed = not s.recv(1024)
                except OSError:
                    closed = True
            assert closed and time.monotonic() - t0 < 3, time.monotonic() - t0


# ------------------------------------------------------------------------------------------------
# The connection cap


def test_connection_cap_closes_idle_connections_first_then_answers_503(predictor):
    with live(predictor, max_connections=2, header_timeout=3.0, keep_alive=30) as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port))
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(idle)[0] == 200          # now an idle kept-alive connection
        silent = socket.create_connection(("127.0.0.1", srv.port))   # the second: in its head phase
        try:
            time.sleep(0.2)
            # The third connection: the idle one makes room, the new request is served.
            status, _, body = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == 200, body
            assert closed_within(idle, 2) is not None
            # Two slow connections hold the cap: a new one is told 503 busy, in JSON, and closed.
            other = socket.create_connection(("127.0.0.1", srv.port))
            try:
                time.sleep(0.2)
                status, headers, body = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                payload = assert_json(status, headers, body, 503)
                assert payload["error"] == "busy" and headers["retry-after"] == "1"
            finally:
                other.close()
        finally:
            idle.close()
            silent.close()
        time.sleep(0.3)
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200


# ------------------------------------------------------------------------------------------------
# HTTP details: JSON protocol errors, HEAD, Host


PROTOCOL_ERRORS = {
    "garbage_request_line": (b"GARBAGE\r\n\r\n", 400),
    "binary_noise": (bytes(range(256)) + b"\r\n\r\n", 400),
    "http_1_1_without_host": (b"GET /health HTTP/1.1\r\n\r\n", 400),
    "two_host_headers": (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    "bad_content_length": (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", 400),
    "header_over_16kb": (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    "unknown_transfer_encoding": (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip"
                                  b"\r\n\r\n", 501),
    "bad_chunk_size": (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nabc\r\n", 400),
}


def test_protocol_errors_answer_json(predictor):
    with live(predictor) as srv:
        for name, (request, want) in PROTOCOL_ERRORS.items():
            status, headers, body = exchange(srv.port, request)
            payload = assert_json(status, headers, body, want)
            assert "Traceback" not in payload["detail"], (name, payload)
        assert httpx.get(srv.url + "/ready", timeout=5).status_code == 200


def test_head_works_where_get_does(predictor):
    with live(predictor) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        for path in ("/health", "/ready", "/", "/v1/model", "/openapi.json", "/docs"):
            get, head = c.get(path), c.head(path)
            assert get.status_code == 200 and head.status_code == 200, (path, head.status_code)
            assert head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
            if path not in ("/ready",):   # /ready's counters may move between the two
                assert head.headers["content-length"] == get.headers["content-length"], path
        assert c.head("/v1/predict").status_code == 405
        assert c.head("/nope").status_code == 404
        # HEAD on a raw socket: the headers, then the connection is ready for the next request.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            pending = []
            status, headers, body = read_response(s, head=True, pending=pending)
            assert status == 200 and int(headers["content-length"]) > 0 and body == b""
            status, _, body = read_response(s, pending=pending)
            assert status == 200 and json.loads(body) == {"status": "ok"}


HOST_REFUSALS = {
    "empty_host": (b"GET /health HTTP/1.1\r\nHost: \r\n\r\n", "missing host"),
    "http_1_0_without_host": (b"GET /health HTTP/1.0\r\n\r\n", "missing host"),
    "non_numeric_port": (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:abc\r\n\r\n", "bad host"),
    "port_out_of_range": (b"GET /ready HTTP/1.1\r\nHost: localhost:99999\r\n\r\n", "bad host"),
    "unclosed_ipv6": (b"GET /health HTTP/1.1\r\nHost: [::1\r\n\r\n", "bad host"),
    "userinfo": (b"GET /v1/model HTTP/1.1\r\nHost: user@127.0.0.1\r\n\r\n", "bad host"),
    "another_machine": (b"GET /health HTTP/1.1\r\nHost: attacker.example\r\n\r\n", "host not allowed"),
    "predict_to_another_machine": (b"POST /v1/predict HTTP/1.1\r\nHost: evil.example:8000\r\nContent-Length: 0"
                                   b"\r\n\r\n", "host not allowed"),
}


def test_requests_without_a_proper_host_are_refused(predictor):
    with live(predictor) as srv:
        for name, (request, error) in HOST_REFUSALS.items():
            payload = assert_json(*exchange(srv.port, request), 400)
            assert payload["error"] == error, (name, payload)
        port = str(srv.port).encode()
        for host in (b"127.0.0.1", b"localhost:" + port, b"LOCALHOST", b"[::1]:" + port):
            status, _, body = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert status == 200, (host, body)
        status, _, body = exchange(srv.port, b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 200, body


# ------------------------------------------------------------------------------------------------
# Hostile neighbours in one micro-batch


def _hostile_batch_inputs():
    gray16 = Image.fromarray((np.arange(40 * 24, dtype=np.uint16).reshape(24, 40) * 60))
    decodable = {   # odd but valid: they join the micro-batch
        "one_pixel": encode(Image.new("RGB", (1, 1), (250, 0, 0)), "PNG"),
        "thin_2000x1": encode(Image.new("RGB", (2000, 1), (0, 255, 0)), "PNG"),
        "tall_1x1500": encode(Image.new("L", (1, 1500), 255), "PNG"),
        "gray16": encode(gray16, "PNG"),
        "cmyk": encode(photo(3, (30, 20)).convert("CMYK"), "JPEG"),
        "rgba_transparent": encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG"),
    }
    refused = {     # never reach the model
        "truncated_jpeg": encode(photo(4, (200, 200)), "JPEG")[:700],
        "garbage": np.random.default_rng(2).bytes(3000),
        "gif": encode(photo(5), "GIF"),
        "empty": b"",
    }
    return decodable, refused


def test_hostile_neighbours_in_one_micro_batch_change_no_answer(predictor):
    """Valid images, odd-but-valid ones and refused ones sent together into one batch window: every
    valid answer equals a direct Predictor call, odd ones are answered, refused ones get 4xx, no 5xx."""
    valid = {f"photo_{i}": encode(photo(100 + i), "JPEG" if i % 2 else "PNG") for i in range(6)}
    decodable, refused = _hostile_batch_inputs()
    everything = {**valid, **decodable, **refused}
    expected = {name: predictor.predict(data, top_k=5) for name, data in {**valid, **decodable}.items()}
    with live(predictor, max_batch=32, max_wait_ms=1500) as srv:
        answers, go = {}, threading.Barrier(len(everything))

        def client(name, data):
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                c.get("/health")
                go.wait()
                answers[name] = c.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})

        threads = [threading.Thread(target=client, args=item) for item in everything.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = srv.ready()
    for name in expected:
        response = answers[name]
        assert response.status_code == 200, (name, response.text)
        got = response.json()["predictions"]
        assert [p["index"] for p in got] == [p["index"] for p in expected[name]], name
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in expected[name]],
                                   rtol=1e-5, atol=1e-6)
    for name in refused:
        assert 400 <= answers[name].status_code < 500, (name, answers[name].text)
        assert answers[name].headers["content-type"].startswith("application/json")
    # They really shared micro-batches: every decodable image was batched with others.
    assert stats["images"] == len(expected), stats
    assert stats["largest_batch"] >= len(expected) // 2, stats


# ------------------------------------------------------------------------------------------------
# Decoder-level attacks, as serve answers them (the decoder itself is bounded in toolkit.preprocess)

# An EXIF block (found by mutating a valid one) whose ImageWidth tag has the wrong type: rotating by
# its Orientation and writing it back raised struct.error, which the server answered with 500.
BROKEN_EXIF = (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x03\x01\x00\x00\x02\x00\x00\x00\x07\x00\x00\x002\x01\x12"
               b"\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x87i\x00\x04\x00\x00\x00\x01\x00\x00\x00:\x00\x00\x00\x00"
               b"Camera\x00\x00\x00\x01\x90\x03\x00\x02\x00\x00\xa1\x14\x00\x00\x00L\x00\x00\x00\x002020:01:01 "
               b"00:00:00\x00")


def test_broken_exif_and_very_thin_images_get_no_5xx(predictor):
    """A JPEG/WebP with a broken EXIF block, and a 1 KB PNG of 1000000x1: an answer (200, equal to the
    Predictor's) or a 4xx, quickly, and the server stays ready."""
    base = photo(8, (40, 30))
    cases = {"broken_exif_jpeg": encode(base, "JPEG", exif=BROKEN_EXIF),
             "broken_exif_webp": encode(base, "WEBP", exif=BROKEN_EXIF),
             "thin_1000000x1": encode(Image.new("L", (1000000, 1), 128), "PNG", optimize=True),
             "thin_1x1000000": encode(Image.new("L", (1, 1000000), 128), "PNG", optimize=True)}
    assert len(cases["thin_1000000x1"]) < 4096
    with live(predictor) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for name, data in cases.items():
            t0 = time.monotonic()
            response = c.post("/v1/predict", content=data, headers={"Content-Type": "application/octet-stream"})
            took = time.monotonic() - t0
            assert response.status_code == 200 or 400 <= response.status_code < 500, (name, response.text)
            assert took < 5, (name, took)
            if response.status_code == 200:
                want = predictor.predict(data, top_k=5)
                assert [p["index"] for p in response.json()["predictions"]] == [p["index"] for p in want], name
            else:
                assert_json(response.status_code, response.headers, response.content, response.status_code)
        assert c.get("/ready").status_code == 200


# ------------------------------------------------------------------------------------------------
# Round 2 (issue 18): scan bombs, truncated JPEGs, clients that never read, smuggling, HTTP details


def test_a_scan_bomb_is_413_at_once_and_a_valid_request_does_not_wait(predictor):
    """A 700 KB progressive JPEG of 10,000 scans took ~35 s to decode and stalled every prediction."""
    from hostile_images import scan_bomb, truncated_jpeg

    bomb, image = scan_bomb(), encode(photo(1), "PNG")
    with live(predictor) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        t0 = time.monotonic()
        response = c.post("/v1/predict", content=bomb, headers={"Content-Type": "image/jpeg"})
        payload = assert_json(response.status_code, response.headers, response.content, 413)
        assert "scans" in payload["detail"] and time.monotonic() - t0 < 5
        response = c.post("/v1/predict", content=truncated_jpeg(), headers={"Content-Type": "image/jpeg"})
        payload = assert_json(response.status_code, response.headers, response.content, 400)
        assert "truncated JPEG" in payload["detail"]
        assert c.post("/v1/predict", content=image, headers={"Content-Type": "image/png"}).status_code == 200


def _non_reader(port, requests=2000) -> socket.socket:
    """A connection with a tiny receive buffer that pipelines GETs and never reads an answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    data = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * requests   # the page: ~10 KB an answer
    deadline = time.monotonic() + 2
    while data and time.monotonic() < deadline:
        try:
            data = data[s.send(data):]
        except BlockingIOError:
            time.sleep(0.01)
    return s


def _server_connections(srv):
    return list(srv.server.server_state.connections)


def _wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_clients_that_never_read_are_closed_at_the_write_deadline(predictor):
    with live(predictor, write_timeout=1.0, keep_alive=30) as srv:
        readers_not = [_non_reader(srv.port) for _ in range(3)]
        try:
            assert _wait_until(lambda: sum(c.not_reading for c in _server_connections(srv)) == 3, 10), \
                "the non-readers never filled their buffers"
            t0 = time.monotonic()
            assert _wait_until(lambda: not _server_connections(srv), 5), "non-readers outlived the write deadline"
            assert 0.5 <= time.monotonic() - t0 <= 3.0
            for s in readers_not:
                assert closed_within(s, 2) is not None
        finally:
            for s in readers_not:
                s.close()
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200


def test_clients_that_never_read_make_room_for_new_connections(predictor):
    """At the connection cap held by non-readers, a new connection (/health) is served, not 503."""
    with live(predictor, max_connections=3, write_timeout=60, keep_alive=30) as srv:
        readers_not = [_non_reader(srv.port) for _ in range(3)]
        try:
            assert _wait_until(lambda: sum(c.not_reading for c in _server_connections(srv)) == 3, 10)
            for _ in range(2):
                status, _, body = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert status == 200, body
        finally:
            for s in readers_not:
                s.close()


SMUGGLING = {
    # A second request hidden in a chunked body that Content-Length would end early (RFC 9112 section 6.1).
    "content_length_and_chunked": b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "chunked_then_content_length": b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                                   b"Content-Length: 40\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "chunked_in_http_1_0": b"POST /v1/predict HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"0\r\n\r\n",
}


def test_smuggling_framings_are_400_and_the_connection_closes(predictor):
    with live(predictor) as srv:
        for name, request in SMUGGLING.items():
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(request)
                pending = []
                payload = assert_json(*read_response(s, pending=pending), 400)
                assert "Transfer-Encoding" in payload["detail"], (name, payload)
                assert closed_within(s, 2) is not None, f"{name}: the connection stayed open"
                assert pending == [b""], f"{name}: the hidden request was answered"


def _head(size: int) -> bytes:
    """A GET /health head of exactly `size` bytes, its blank line included."""
    start = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def test_http_details(predictor):
    from toolkit.runtime.serve.protocol import H11_HEAD_LIMIT

    gif_bombs = (b"GIF89a\xff\xff\xff\xff",   # a 65535x65535 header, nothing after it (was 400)
                 b"GIF89a\xff\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;")  # (413)
    with live(predictor, header_timeout=5) as srv:
        for version in (b"3.0", b"2.0", b"0.9"):
            payload = assert_json(*exchange(srv.port, b"GET /health HTTP/" + version + b"\r\nHost: 127.0.0.1\r\n\r\n"),
                                  505)
            assert "HTTP/1.1" in payload["detail"]
        assert len(_head(H11_HEAD_LIMIT)) == H11_HEAD_LIMIT
        assert exchange(srv.port, _head(H11_HEAD_LIMIT))[0] == 200
        assert_json(*exchange(srv.port, _head(H11_HEAD_LIMIT + 1)), 431)
        # Bare LF line ends (h11 takes them) and a body longer than the head limit: not a 431.
        bare = b"POST /v1/predict HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/png\nContent-Length: %d\n\n"
        image = encode(photo(2, (300, 200)), "PNG")
        assert len(image) > H11_HEAD_LIMIT
        status, _, body = exchange(srv.port, bare % len(image) + image)
        assert status == 200, body
        for gif in gif_bombs:   # a format serve refuses is refused as such (415), its header never parsed
            response = httpx.post(srv.url + "/v1/predict", content=gif, headers={"Content-Type": "image/gif"})
            payload = assert_json(response.status_code, response.headers, response.content, 415)
            assert "GIF images are not accepted" in payload["detail"]
        for garbage in (np.random.default_rng(3).integers(33, 127, 4096, dtype=np.uint8).tobytes(),
                        b"\x16\x03\x01\x02\x00\x01" + bytes(4090), b"hello\nworld\n" * 300):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                t0 = time.monotonic()
                s.sendall(garbage)
                assert_json(*read_response(s), 400)
                assert time.monotonic() - t0 < 2, "garbage waited for the head deadline"
