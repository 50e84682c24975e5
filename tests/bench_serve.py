"""serve-local vs a direct Predictor, side by side in one run on this machine, for each engine (not a test).

    python tests/bench_serve.py exports/flowers.onnx [--engine onnxruntime,openvino] [--requests 64]
        [--latency-n 15] [--threads N] [--streams N] [--e2e-images 16] [--client httpx|stdlib] [--json PATH]

For each engine in turn (the same export), prints (and writes as JSON with --json PATH):
- cold start: `toolkit serve-local` process start -> /ready 200 (import + session + warm-up), and
  the Predictor's own cold start in a fresh interpreter (import + session + first prediction);
- throughput: the Predictor on a list of images (decode + preprocess + batched inference, batch
  16 and 32) vs serve-local under 16 concurrent HTTP clients (same work, plus HTTP), in alternating
  rounds; the ratio is served / the better of the two Predictor batch sizes; with the CPU seconds per
  image each side spent (the Predictor's process; the server's and its clients', from /proc);
- single-client latency p50: Predictor.predict(bytes) vs POST /v1/predict of the same bytes, interleaved
  (drift on a shared machine hits both alike) and in blocks (each side with the other idle; see latency());
- end to end on 12 MP JPEGs (4000x3000, the model's own decode: draft where its file says so), the
  `toolkit predict` pipeline (toolkit.runtime.predict.predict_stream: the decode pool on every core while
  the engine runs the previous batch) against its two bounds measured alone: decode-bound (the pool over
  every core, no model) and model-bound (the engine on prepared batches); with the seconds that went to
  decoding (summed over the pool's threads) and to the model.
Everything runs on CPU with the same thread settings; the server is idle while the Predictor runs.
The HTTP clients run on the same cores as the server: `--client stdlib` (http.client, keep-alive) costs
the load generator less CPU a request than httpx (the default), and `--client-nice 19` runs the
throughput clients in a process that yields the cores to the server, as clients on other machines would.
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
BLOCK = 6  # latency in blocks: calls per block, the first a warm-up
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


def photo_12mp(seed, folder):
    """A 4000x3000 photo-like JPEG (smooth colours plus grain), written to `folder`; its path."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((4000, 3000),
                                                                                  Image.Resampling.BICUBIC)
    grain = rng.normal(0, 6, (3000, 4000, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8))
    path = os.path.join(folder, f"photo_{seed}.jpg")
    img.save(path, "JPEG", quality=92)
    return path


class HttpxClient:
    """POST a JPEG to /v1/predict over one keep-alive httpx connection."""

    def __init__(self, url):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=600)

    def post_image(self, body: bytes) -> tuple:
        r = self.client.post("/v1/predict", content=body, headers={"Content-Type": "image/jpeg"})
        return r.status_code, r.text

    def close(self):
        self.client.close()


class StdlibClient:
    """The same over one keep-alive http.client connection: a fraction of httpx's CPU a request."""

    def __init__(self, url):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)

    def post_image(self, body: bytes) -> tuple:
        self.conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "image/jpeg"})
        r = self.conn.getresponse()
        return r.status, r.read().decode()

    def close(self):
        self.conn.close()


CLIENTS = {"httpx": HttpxClient, "stdlib": StdlibClient}


def client_round(url: str, work: list, clients: int, kind: str) -> tuple:
    """One throughput round: `clients` threads POST `work` to the server, each its next image as soon as its
    last answer came; -> (img/s, the answers' status codes)."""
    counter, lock, go, statuses = iter(range(len(work))), threading.Lock(), threading.Barrier(clients + 1), []

    def client():
        c = CLIENTS[kind](url)
        try:
            c.post_image(work[0])  # connect (and warm) before the clock starts
            go.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                statuses.append(c.post_image(work[i])[0])
        finally:
            c.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    go.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    return len(work) / (time.perf_counter() - t), statuses


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (Linux /proc; NaN elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(pred, url, work, args, out, server_pid):
    """The Predictor on a list (server idle) vs the server under N clients, in alternating rounds. With
    --client-nice N the clients run in a process of their own at that niceness: they then yield the cores
    to the server, as clients on other machines would, instead of competing with it for the same two.
    Beside the rates, the CPU each side spends per image (on 2 busy cores the ratio of the rates is about
    the inverse ratio of these): the Predictor's process, the server's, the clients'."""
    import httpx

    direct, served, statuses = {16: [], 32: []}, [], []
    cpu = {"predictor": 0.0, "server": 0.0, "clients": 0.0}
    clients_process = None
    if args.client_nice is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        clients_process = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=os.nice, initargs=(args.client_nice,))

    def server_round():
        server_cpu, own_cpu = cpu_seconds(server_pid), time.process_time()
        if clients_process:
            clients_pid = clients_process.submit(os.getpid).result()
            clients_cpu = cpu_seconds(clients_pid)
            rate, codes = clients_process.submit(client_round, url, work, args.clients, args.client).result()
            cpu["clients"] += cpu_seconds(clients_pid) - clients_cpu
        else:
            rate, codes = client_round(url, work, args.clients, args.client)
            cpu["clients"] += time.process_time() - own_cpu
        cpu["server"] += cpu_seconds(server_pid) - server_cpu
        statuses.extend(codes)
        return rate

    for _ in range(args.rounds):
        for bs in (16, 32):
            pred.batch_size = bs
            t, own_cpu = time.perf_counter(), time.process_time()
            pred.predict(work, top_k=5)
            direct[bs].append(len(work) / (time.perf_counter() - t))
            cpu["predictor"] += (time.process_time() - own_cpu) / 2   # the two batch sizes: their mean
        served.append(server_round())
    pred.batch_size = 32
    if clients_process:
        clients_process.shutdown()
    images = args.rounds * len(work)
    out["cpu_ms_per_image"] = {side: round(1000 * seconds / images, 2) for side, seconds in cpu.items()}
    stats = httpx.get(url + "/ready").json()
    for bs in (16, 32):
        out[f"predictor_img_s_batch{bs}"] = [round(x, 3) for x in direct[bs]]
    out["server_img_s"] = [round(x, 3) for x in served]
    out["server_statuses"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    out["server_batches"] = {k: stats[k] for k in ("batches", "images", "mean_batch", "largest_batch", "workers")}
    best_direct = [max(a, b) for a, b in zip(direct[16], direct[32])]
    out["throughput_ratio_per_round"] = [round(s_ / d, 3) for s_, d in zip(served, best_direct)]
    out["throughput_ratio"] = round(sum(served) / sum(best_direct), 3)
    # on a shared machine a round's load swings both sides: the median round and best vs best say it too
    out["throughput_ratio_median_round"] = round(statistics.median(s_ / d for s_, d in zip(served, best_direct)), 3)
    out["throughput_ratio_best"] = round(max(served) / max(best_direct), 3)


def latency(pred, url, images, n, out, client="httpx"):
    """Single-client p50, two ways. Interleaved (one Predictor call, one request, ...): drift on a shared
    machine hits both alike, but on 2 cores each side runs while the other's idle engine threads still spin
    (ONNX Runtime spins after a run), which slows both. In blocks (BLOCK calls of one side, then BLOCK of the
    other, the first call of each block not counted): each side runs with the other idle, as a deployed
    server or app does."""
    direct, served, blocked = [], [], {"direct": [], "served": []}
    c = CLIENTS[client](url)
    try:
        def post(img):
            status, text = c.post_image(img)
            assert status == 200, text

        post(images[0])
        for i in range(n):
            img = images[i % len(images)]
            direct.append(_timed(pred.predict, img, top_k=5))
            served.append(_timed(post, img))
        for i in range(0, n, BLOCK - 1):
            for side, call in (("direct", lambda img: pred.predict(img, top_k=5)), ("served", post)):
                times = [_timed(call, images[(i + j) % len(images)]) for j in range(BLOCK)]
                blocked[side] += times[1:]
    finally:
        c.close()
    p50 = {k: statistics.median(v) for k, v in (("direct", direct), ("served", served),
                                                   ("direct_blocks", blocked["direct"]),
                                                   ("served_blocks", blocked["served"]))}
    out["latency_p50_direct_ms"] = round(1000 * p50["direct"], 1)
    out["latency_p50_server_ms"] = round(1000 * p50["served"], 1)
    out["latency_overhead"] = round(p50["served"] / p50["direct"] - 1, 4)
    out["latency_p50_direct_blocks_ms"] = round(1000 * p50["direct_blocks"], 1)
    out["latency_p50_server_blocks_ms"] = round(1000 * p50["served_blocks"], 1)
    out["latency_overhead_blocks"] = round(p50["served_blocks"] / p50["direct_blocks"] - 1, 4)


def _timed(call, *args, **kwargs) -> float:
    t = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - t


def end_to_end(pred, paths, batch_size, rounds):
    """img/s of predict_stream on `paths`, against decode-bound and model-bound rates measured alone."""
    from toolkit.runtime.decode_pool import DecodePool
    from toolkit.runtime.predict import predict_stream

    n = len(paths)
    best = {"decode_bound": 0.0, "model_bound": 0.0, "end_to_end": 0.0}
    split = {}
    with DecodePool() as pool:
        arrays = [value for _, value, _ in pool.ordered(pred.prepare_one, paths, ahead=batch_size)]
        batch = np.stack(arrays)
        pred.logits(batch[:batch_size])   # warm the batch shape
        for _ in range(rounds):
            t = time.perf_counter()
            for _, _, error in pool.ordered(pred.prepare_one, paths, ahead=batch_size):
                assert error is None, error
            best["decode_bound"] = max(best["decode_bound"], n / (time.perf_counter() - t))
            t = time.perf_counter()
            for start in range(0, n, batch_size):
                pred.predict_batch(batch[start:start + batch_size], 5)
            best["model_bound"] = max(best["model_bound"], n / (time.perf_counter() - t))
            timings, decode_before = {}, pool.decode_s
            t = time.perf_counter()
            for _, _, error in predict_stream(pred, paths, 5, batch_size, pool, timings):
                assert error is None, error
            wall = time.perf_counter() - t
            if n / wall > best["end_to_end"]:
                best["end_to_end"] = n / wall
                split = {"wall_s": round(wall, 3), "model_s": round(timings["model_s"], 3),
                         "decode_thread_s": round(pool.decode_s - decode_before, 3), "decode_threads": pool.workers}
    bound = min(best["decode_bound"], best["model_bound"])
    shared = 1 / (1 / best["decode_bound"] + 1 / best["model_bound"])   # both on the same cores, no idle time
    return {"images": n, "batch_size": batch_size, **{f"{k}_img_s": round(v, 2) for k, v in best.items()},
            "ratio_to_min_bound": round(best["end_to_end"] / bound, 3),
            "shared_cores_bound_img_s": round(shared, 2),
            "ratio_to_shared_bound": round(best["end_to_end"] / shared, 3),
            "split": split, "decode": pred.preprocess.decode}


def bench_engine(engine, args, images, e2e_paths):
    """Every measurement for one engine; the server runs for this engine only."""
    from toolkit.runtime.cold_start import time_cold_start
    from toolkit.runtime.engines import DEFAULT_ENGINE
    from toolkit.runtime.predictor import Predictor

    out = {"engine": engine}
    extra = ["--device", "cpu", "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
             "--engine", engine]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.streams and engine == "openvino":   # serve-local refuses --streams on ONNX Runtime
        extra += ["--streams", str(args.streams)]
    log_path = f"/tmp/bench_serve_server_{engine}.log"
    proc, url, server_cold = start_server(args.model, extra, log_path)
    out["server_cold_start_s"] = round(server_cold, 2)
    try:
        out["server_engine_line"] = next((line.strip() for line in open(log_path) if "read back:" in line), None)
        out["server_engine_settings"] = __import__("httpx").get(url + "/v1/model").json().get("engine_settings")
        if engine == DEFAULT_ENGINE:   # time_cold_start opens the Predictor on the default engine
            cold = time_cold_start(args.model, device="cpu")
            out["predictor_cold_start"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cold.items()}
        pred = Predictor(args.model, device="cpu", threads=args.threads, engine=engine)
        out["predictor_engine_settings"] = pred.engine_info.settings()
        pred.predict(images[0], top_k=5)
        throughput(pred, url, [images[i % len(images)] for i in range(args.requests)], args, out, proc.pid)
        latency(pred, url, images, args.latency_n, out, args.client)
    finally:
        proc.send_signal(signal.SIGTERM)
        out["server_exit_code"] = proc.wait(timeout=120)
    if e2e_paths:
        out["end_to_end_12mp"] = end_to_end(pred, e2e_paths, args.e2e_batch, args.rounds)
    return out


def summary(results):
    lines = ["engine       served/Predictor (sum, median round, best)  p50 Predictor -> served: interleaved; "
             "in blocks    12MP e2e img/s (decode-, model-bound)"]
    for r in results:
        e2e = r.get("end_to_end_12mp")
        e2e_text = (f"{e2e['end_to_end_img_s']:.1f} ({e2e['decode_bound_img_s']:.1f}, "
                    f"{e2e['model_bound_img_s']:.1f}) = {e2e['ratio_to_min_bound']:.2f} of min") if e2e else "-"
        ratios = ", ".join(f"{r[k]:.2f}" for k in ("throughput_ratio", "throughput_ratio_median_round",
                                                    "throughput_ratio_best"))
        lines.append(f"{r['engine']:<12} {ratios:>38}  {r['latency_p50_direct_ms']:>6.1f} -> "
                     f"{r['latency_p50_server_ms']:.1f} ms ({100 * r['latency_overhead']:+.0f}%); "
                     f"{r['latency_p50_direct_blocks_ms']:.1f} -> {r['latency_p50_server_blocks_ms']:.1f} ms "
                     f"({100 * r['latency_overhead_blocks']:+.0f}%)    {e2e_text}")
    for r in results:
        cpu = r["cpu_ms_per_image"]
        lines.append(f"{r['engine']}: CPU ms an image, Predictor {cpu['predictor']:.2f}; serve-local {cpu['server']:.2f} "
                     f"+ its clients {cpu['clients']:.2f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=64, help="images per throughput run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency-n", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (both sides)")
    ap.add_argument("--engine", default="onnxruntime", help="comma list: onnxruntime,openvino (both sides each)")
    ap.add_argument("--streams", type=int, default=None, help="serve-local --streams (OpenVINO)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5)
    ap.add_argument("--e2e-images", type=int, default=16, help="12 MP JPEGs for the end-to-end rows (0: skip)")
    ap.add_argument("--e2e-batch", type=int, default=8, help="batch size of the end-to-end rows")
    ap.add_argument("--client", default="httpx", choices=sorted(CLIENTS), help="the HTTP client library")
    ap.add_argument("--client-nice", type=int, default=None,
                    help="throughput clients in their own process at this niceness (19: they yield the cores)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import tempfile

    from toolkit.runtime.engines import parse_engines

    engines = parse_engines(args.engine)
    images = [photo_jpeg(i) for i in range(8)]
    out = {"model": os.path.basename(args.model), "clients": args.clients, "client": args.client,
           "client_nice": args.client_nice, "requests": args.requests,
           "image": "640x480 JPEG", "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as folder:
        e2e_paths = [photo_12mp(i, folder) for i in range(args.e2e_images)]
        if e2e_paths:
            out["e2e_image"] = f"4000x3000 JPEG q92, {os.path.getsize(e2e_paths[0]) / 1e6:.1f} MB"
        out["engines"] = [bench_engine(engine, args, images, e2e_paths) for engine in engines]
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    print(summary(out["engines"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
