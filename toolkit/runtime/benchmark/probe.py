"""Cold start and peak RSS, measured in a fresh Python process per backend.

`python -m toolkit.runtime.benchmark --probe SPEC` runs the ONNX-file probe (this module: ONNX Runtime or
OpenVINO, spec["kind"], with spec["cache_dir"] as OpenVINO's model cache);
`python -m toolkit.train.torch_backend --probe SPEC` the PyTorch one, which reuses `first_runs`.
Each prints one JSON line; `run_probe` starts the right one and reads it back.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from toolkit.runtime.benchmark import engine_parts
from toolkit.runtime.benchmark.backends import INPUT_DTYPES
from toolkit.runtime.benchmark.machine import gpu_mem_of_pid, maxrss_mb


def first_runs(spec: dict, out: dict, make: Callable, call: Callable) -> dict:
    """After the session is made: the first inference per batch size (ascending) and the memory after it."""
    out["rss_session_mb"] = maxrss_mb()
    out["first_inference_s"], out["peak_rss_mb"] = {}, {}
    for b in sorted(spec["batch_sizes"]):
        x = make(b)
        t = time.perf_counter()
        call(x)
        out["first_inference_s"][str(b)] = time.perf_counter() - t
        call(x)
        out["peak_rss_mb"][str(b)] = maxrss_mb()
    if spec["device"] != "cpu":
        out["gpu_mem_mb"] = gpu_mem_of_pid(os.getpid())
    return out


def probe_ort(spec: dict) -> dict:
    """Runs in a fresh interpreter: create one session (ORT, or OpenVINO's compile), first inference per
    batch size, memory."""
    t0 = time.perf_counter()
    out: dict = {"rss_start_mb": maxrss_mb()}
    from toolkit.runtime.predictor import Predictor
    out["import_s"] = time.perf_counter() - t0
    out["rss_base_mb"] = maxrss_mb()
    t = time.perf_counter()
    engine = spec["kind"]
    pred = Predictor(spec["path"], device=spec["device"], threads=spec["threads"],
                     batch_size=max(spec["batch_sizes"]), engine=engine,
                     **engine_parts.predictor_options(engine, spec["inference_precision"], spec.get("cache_dir")))
    out["session_s"] = time.perf_counter() - t
    out["provider"] = pred.provider
    out.update(engine_parts.probe_extras(pred))
    sess = pred.session
    inp = sess.get_inputs()[0]
    dtype = INPUT_DTYPES.get(inp.type, np.float32)
    c = pred.preprocess.crop
    names = ["logits"] if "logits" in [o.name for o in sess.get_outputs()] else None

    def make(b):
        rng = np.random.default_rng(0)
        if pred.raw:
            return rng.integers(0, 256, (b, c, c, 3), dtype=np.uint8)
        return rng.standard_normal((b, 3, c, c)).astype(dtype)

    def call(x):
        sess.run(names, {inp.name: x})
    return first_runs(spec, out, make, call)


def run_probe(spec: dict, timeout: float = 3600) -> dict:
    """The probe's result for one backend spec, or {"error": why}."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cache = None
    if spec.get("compile"):  # a cold start compiles from nothing: inductor's on-disk cache starts empty
        cache = tempfile.mkdtemp(prefix="toolkit-inductor-")
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", spec.get("module", "toolkit.runtime.benchmark"), "--probe", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"cold-start probe timed out after {timeout:.0f}s"}
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"cold-start probe failed: {tail[:300]}"}
    out = json.loads(lines[-1])
    out["process_wall_s"] = round(time.perf_counter() - t, 3)
    out["isolated"] = True
    return out


def main(argv: list, probe: Callable[[dict], dict] = probe_ort) -> None:
    """The `--probe SPEC` entry point of a fresh process."""
    if len(argv) >= 2 and argv[0] == "--probe":
        print(json.dumps(probe(json.loads(argv[1]))))
        return
    print("usage: toolkit benchmark [MODEL] (this module's own entry point is for its cold-start probes)",
          file=sys.stderr)
    sys.exit(2)
