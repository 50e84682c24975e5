"""serve-local under hostile load (a measurement script, not a test).

    python tests/bench_serve_hostile.py [MODEL.onnx] [--clients 24] [--hostile 0.4] [--seconds 60]
                                        [--thin-seconds 15] [--json PATH]

No MODEL: conftest's tiny conv net (5 labels, 32 px) is written to a temp folder and served.
0. The valid clients alone (no hostile traffic) for `--seconds`: the baseline p50/p99.
1. `--clients` clients for `--seconds`; a `--hostile` share of them send hostile traffic in turns
   (very thin PNGs, JPEGs with a broken EXIF block, progressive-JPEG scan bombs, JPEGs cut short
   with an end marker, GIF header bombs, slow bodies, slow heads, clients that pipeline and never
   read, request smuggling (Content-Length + chunked), HTTP/3.0 request lines, garbage, truncated and
   oversized bodies, protocol garbage), the others valid JPEGs. Reports the 5xx count (all clients),
   valid p50/p99 and their ratio to the baseline, whether every valid answer equals a direct Predictor
   call, and the server's RSS before and after.
2. One valid client alone for `--thin-seconds`, then with two clients sending a 1000000x1 PNG
   non-stop: valid p50 without and with them.
"""
import argparse
import io
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "runtime")]
from bench_serve import photo_jpeg, start_server  # noqa: E402
from hostile_images import scan_bomb, truncated_jpeg  # noqa: E402
from test_serve_hostile import BROKEN_EXIF, SMUGGLING  # noqa: E402  (the tests' broken EXIF block, smuggling)


def rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def encode(img, fmt, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def hostile_payloads() -> dict:
    base = Image.open(io.BytesIO(photo_jpeg(99, (320, 240)))).convert("RGB")
    return {
        "thin_png": encode(Image.new("L", (1000000, 1), 128), "PNG", optimize=True),
        "broken_exif_jpeg": encode(base, "JPEG", exif=BROKEN_EXIF),
        "broken_exif_webp": encode(base, "WEBP", exif=BROKEN_EXIF),
        "garbage": np.random.default_rng(0).bytes(20000),
        "truncated_jpeg": photo_jpeg(98)[:5000],
        "oversized": b"\xff" * (11 * 1024 * 1024),
        "scan_bomb": scan_bomb(10_000),
        "truncated_jpeg_with_eoi": truncated_jpeg(),
        "gif_header_bomb": b"GIF89a\xff\xff\xff\xff",
    }


def slow_request(port, head_only: bool, seconds: float) -> int | None:
    """Trickle a prediction's head (or its body) a byte every 50 ms; the status the server ends it with."""
    head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as s:
        s.sendall(head if head_only else head + b"Content-Length: 1000000\r\n\r\n")
        t0 = time.monotonic()
        s.settimeout(0.05)
        while time.monotonic() - t0 < seconds:
            try:
                data = s.recv(4096)
                return int(data.split()[1]) if data.startswith(b"HTTP/") else None
            except socket.timeout:
                pass
            try:
                s.sendall(b"X-Slow: 1\r\n" if head_only else b"\x00")
            except OSError:
                return None
    return None


def non_reader(port, hold_s: float) -> str:
    """Pipeline page GETs over a tiny receive buffer and never read; after `hold_s`, whether the server
    dropped the connection (the write deadline, or room made for others) or still holds it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    try:
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        data, t0 = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2000, time.monotonic()
        while time.monotonic() - t0 < hold_s:
            try:
                data = data[s.send(data):] if data else data
            except BlockingIOError:
                pass
            except OSError:
                return "dropped"
            time.sleep(0.05)
        # The TCP state, not recv: answers already in the receive buffer would hide a reset behind them.
        established = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1   # Linux: TCP_ESTABLISHED
        return "still open" if established else "dropped"
    finally:
        s.close()


def smuggle(port, request: bytes) -> str:
    """The status of a smuggling request, and whether the hidden request was answered too."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    status = data.split()[1].decode() if data.startswith(b"HTTP/") else "none"
    return status + (" +hidden answered" if data.count(b"HTTP/1.1 ") > 1 else "")


def http30(port) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/3.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = s.recv(4096)
    return int(data.split()[1]) if data.startswith(b"HTTP/") else None


def protocol_garbage(port) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01 NOT HTTP\r\n\r\n")
        data = s.recv(4096)
    return int(data.split()[1]) if data.startswith(b"HTTP/") else None


def run_load(url, port, args, valid_images, expected, payloads) -> dict:
    import httpx

    stop_at = time.monotonic() + args.seconds
    lock = threading.Lock()
    out = {"valid_latency": [], "valid_status": {}, "hostile_status": {}, "mismatches": 0}
    kinds = list(payloads) + ["slow_body", "slow_head", "protocol_garbage", "non_reader", "smuggling", "http30"]

    def count(key, status):
        with lock:
            out[key][str(status)] = out[key].get(str(status), 0) + 1

    def valid_client(n):
        with httpx.Client(base_url=url, timeout=120) as c:
            i = n
            while time.monotonic() < stop_at:
                which = i % len(valid_images)
                t = time.perf_counter()
                r = c.post("/v1/predict", content=valid_images[which], headers={"Content-Type": "image/jpeg"})
                elapsed = time.perf_counter() - t
                count("valid_status", r.status_code)
                if r.status_code == 200:
                    with lock:
                        out["valid_latency"].append(elapsed)
                        if [p["index"] for p in r.json()["predictions"]] != expected[which]:
                            out["mismatches"] += 1
                i += 1

    def hostile_client(n):
        with httpx.Client(base_url=url, timeout=120) as c:
            i = n
            while time.monotonic() < stop_at:
                kind = kinds[i % len(kinds)]
                try:
                    if kind in payloads:
                        status = c.post("/v1/predict", content=payloads[kind],
                                        headers={"Content-Type": "application/octet-stream"}).status_code
                    elif kind == "protocol_garbage":
                        status = protocol_garbage(port)
                    elif kind == "non_reader":
                        status = non_reader(port, min(15.0, max(0.0, stop_at - time.monotonic())))
                    elif kind == "smuggling":
                        status = smuggle(port, SMUGGLING["content_length_and_chunked"])
                    elif kind == "http30":
                        status = http30(port)
                    else:
                        status = slow_request(port, kind == "slow_head", min(45.0, stop_at - time.monotonic()))
                except (httpx.TransportError, OSError) as exc:
                    status = f"closed ({type(exc).__name__})"
                count("hostile_status", f"{kind}:{status}")
                i += 1

    hostile = round(args.clients * args.hostile) if args.hostile else 0
    threads = [threading.Thread(target=hostile_client, args=(n,)) for n in range(hostile)]
    threads += [threading.Thread(target=valid_client, args=(n,)) for n in range(args.clients - hostile)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(out.pop("valid_latency"))
    out["clients"] = {"hostile": hostile, "valid": args.clients - hostile}
    out["valid_answers"] = len(lat)
    out["valid_p50_ms"] = round(1000 * statistics.median(lat), 1) if lat else None
    out["valid_p99_ms"] = round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None
    statuses = list(out["valid_status"].items()) + [(k.rsplit(":", 1)[1], v) for k, v in out["hostile_status"].items()]
    # 505 is the answer asked for by an HTTP/3.0 request line, not a server failure.
    out["5xx"] = sum(v for k, v in statuses if k.startswith("5") and k != "505")
    return out


def thin_image_p50(url, seconds, image, thin) -> dict:
    """Valid p50 alone, then beside two clients that send a very thin image non-stop."""
    import httpx

    def valid_p50(duration):
        lat = []
        with httpx.Client(base_url=url, timeout=120) as c:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                t = time.perf_counter()
                assert c.post("/v1/predict", content=image, headers={"Content-Type": "image/jpeg"}).status_code == 200
                lat.append(time.perf_counter() - t)
        return round(1000 * statistics.median(lat), 1), len(lat)

    alone, n_alone = valid_p50(seconds)
    stop = threading.Event()
    thin_statuses = []

    def thin_client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                thin_statuses.append(c.post("/v1/predict", content=thin,
                                            headers={"Content-Type": "image/png"}).status_code)

    threads = [threading.Thread(target=thin_client) for _ in range(2)]
    for t in threads:
        t.start()
    beside, n_beside = valid_p50(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {"valid_p50_ms_alone": alone, "valid_p50_ms_beside_2_thin_clients": beside,
            "ratio": round(beside / alone, 2), "requests": [n_alone, n_beside],
            "thin_statuses": {str(s): thin_statuses.count(s) for s in sorted(set(thin_statuses))}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--hostile", type=float, default=0.4, help="share of the clients that are hostile")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--thin-seconds", type=float, default=15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from toolkit.runtime.predictor import Predictor

    model = args.model
    if model is None:
        from conftest import write_tiny_model
        model = write_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny.onnx"),
                                 labels=("daisy", "dandelion", "rose", "sunflower", "tulip"))
    valid_images = [photo_jpeg(i) for i in range(8)]
    predictor = Predictor(model, device="cpu")
    expected = [[p["index"] for p in predictor.predict(img, top_k=5)] for img in valid_images]
    payloads = hostile_payloads()
    proc, url, cold = start_server(model, ["--device", "cpu"], "/tmp/bench_serve_hostile_server.log")
    port = int(url.rsplit(":", 1)[1])
    out = {"model": os.path.basename(model), "cpu_count": os.cpu_count(), "seconds": args.seconds}
    try:
        out["rss_mb_before"] = rss_mb(proc.pid)
        valid_only = argparse.Namespace(**{**vars(args), "clients": args.clients - round(args.clients * args.hostile),
                                           "hostile": 0.0})
        out["baseline"] = run_load(url, port, valid_only, valid_images, expected, payloads)
        out["rss_mb_after_baseline"] = rss_mb(proc.pid)
        out["load"] = run_load(url, port, args, valid_images, expected, payloads)
        out["rss_mb_after"] = rss_mb(proc.pid)
        for q in ("p50", "p99"):
            base, load = out["baseline"][f"valid_{q}_ms"], out["load"][f"valid_{q}_ms"]
            out[f"valid_{q}_ratio_to_baseline"] = round(load / base, 2) if base and load else None
        out["thin"] = thin_image_p50(url, args.thin_seconds, valid_images[0], payloads["thin_png"])
        out["rss_mb_end"] = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        out["server_exit_code"] = proc.wait(timeout=120)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
