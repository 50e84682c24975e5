"""serve-local vs a direct Predictor, side by side in one run on this machine (not a test).

    python tests/bench_serve.py exports/flowers.onnx [--requests 64] [--latency-n 15] [--threads N] [--engine openvino]

Prints (and writes as JSON with --json PATH):
- cold start: `toolkit serve-local` process start -> /ready 200 (import + session + warm-up), and
  the Predictor's own cold start in a fresh interpreter (import + session + first prediction);
- throughput: the Predictor on a list of images (decode + preprocess + batched inference, batch
  16 and 32) vs serve-local under 16 concurrent HTTP clients (same work, plus HTTP), in alternating
  rounds; the ratio is served / the better of the two Predictor batch sizes;
- single-client latency p50: Predictor.predict(bytes) vs POST /v1/predict of the same bytes,
  interleaved so that drift on a shared machine hits both alike.
Everything runs on CPU with the same thread settings; the server is idle while the Predictor runs.
"""
import argparse
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def photo_jpeg(seed, size=(640, 480)):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    img = Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def start_server(model, extra, log_path):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    log = open(log_path, "w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "serve-local", model, "--port", "0", *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    import httpx
    url = None
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {open(log_path).read()}")
        if url is None:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", open(log_path).read())
            url = m.group(1) if m else None
        if url:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    return proc, url, time.perf_counter() - t0
            except httpx.TransportError:
                pass
        time.sleep(0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=64, help="images per throughput run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency-n", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (both sides)")
    ap.add_argument("--engine", default="onnxruntime", help="onnxruntime | openvino (both sides)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import httpx
    from toolkit.runtime.cold_start import time_cold_start
    from toolkit.runtime.predictor import Predictor

    images = [photo_jpeg(i) for i in range(8)]
    out = {"model": os.path.basename(args.model), "clients": args.clients, "requests": args.requests,
           "image": "640x480 JPEG", "cpu_count": os.cpu_count()}
    extra = ["--device", "cpu", "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    extra += ["--engine", args.engine]

    # 1. cold starts ---------------------------------------------------------------------------
    proc, url, server_cold = start_server(args.model, extra, "/tmp/bench_serve_server.log")
    out["server_cold_start_s"] = round(server_cold, 2)
    try:
        cold = time_cold_start(args.model, device="cpu")
        out["predictor_cold_start"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cold.items()}

        # 2+3. throughput, in alternating rounds so that load from others on a shared machine hits
        # both sides alike: the Predictor on a list (server idle), then the server under N clients.
        pred = Predictor(args.model, device="cpu", threads=args.threads, engine=args.engine)
        pred.predict(images[0], top_k=5)
        work = [images[i % len(images)] for i in range(args.requests)]
        direct = {16: [], 32: []}
        served, statuses = [], []

        def server_round():
            lock = threading.Lock()
            counter = iter(range(args.requests))
            go = threading.Barrier(args.clients + 1)

            def client():
                with httpx.Client(base_url=url, timeout=600) as c:
                    c.get("/health")
                    go.wait()
                    while True:
                        with lock:
                            i = next(counter, None)
                        if i is None:
                            return
                        r = c.post("/v1/predict", content=work[i], headers={"Content-Type": "image/jpeg"})
                        statuses.append(r.status_code)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for th in threads:
                th.start()
            go.wait()
            t = time.perf_counter()
            for th in threads:
                th.join()
            return args.requests / (time.perf_counter() - t)

        for _ in range(args.rounds):
            for bs in (16, 32):
                pred.batch_size = bs
                t = time.perf_counter()
                pred.predict(work, top_k=5)
                direct[bs].append(args.requests / (time.perf_counter() - t))
            served.append(server_round())
        pred.batch_size = 32
        stats = httpx.get(url + "/ready").json()
        for bs in (16, 32):
            out[f"predictor_img_s_batch{bs}"] = [round(x, 3) for x in direct[bs]]
        out["server_img_s"] = [round(x, 3) for x in served]
        out["server_statuses"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
        out["server_batches"] = {k: stats[k] for k in ("batches", "images", "mean_batch", "largest_batch")}
        best_direct = [max(a, b) for a, b in zip(direct[16], direct[32])]
        out["throughput_ratio_per_round"] = [round(s_ / d, 3) for s_, d in zip(served, best_direct)]
        out["throughput_ratio"] = round(sum(served) / sum(best_direct), 3)

        # 4. single-client latency, interleaved ------------------------------------------------------
        direct, served = [], []
        with httpx.Client(base_url=url, timeout=600) as c:
            c.post("/v1/predict", content=images[0], headers={"Content-Type": "image/jpeg"})
            for i in range(args.latency_n):
                img = images[i % len(images)]
                t = time.perf_counter()
                pred.predict(img, top_k=5)
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = c.post("/v1/predict", content=img, headers={"Content-Type": "image/jpeg"})
                served.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        p50_direct, p50_served = statistics.median(direct), statistics.median(served)
        out["latency_p50_direct_ms"] = round(1000 * p50_direct, 1)
        out["latency_p50_server_ms"] = round(1000 * p50_served, 1)
        out["latency_overhead"] = round(p50_served / p50_direct - 1, 4)
    finally:
        proc.send_signal(signal.SIGTERM)
        out["server_exit_code"] = proc.wait(timeout=120)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
