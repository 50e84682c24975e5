"""Cold start and peak RSS, measured in a fresh Python process per backend.

run_probe starts `python -m <spec["module"]> --probe SPEC` (default this package: backends.probe_onnx, ONNX
Runtime or OpenVINO; the PyTorch one: toolkit.train.torch_backend). The probe builds its backend,
calls first_runs and prints one JSON line (main); run_probe reads it back.
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

from toolkit.runtime.benchmark.machine import gpu_mem_of_pid, maxrss_mb


def first_runs(spec: dict, out: dict, make: Callable, call: Callable) -> dict:
    """After the session is made: the first inference per batch size (ascending) and the memory after it."""
    out.update(rss_session_mb=maxrss_mb(), first_inference_s={}, peak_rss_mb={})
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


def run_probe(spec: dict, timeout: float = 3600) -> dict:
    """The probe's result for one backend spec, or {"error": why}."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cache = None
    if spec.get("compile"):  # a cold start compiles from nothing: inductor's on-disk cache starts empty
        cache = env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="toolkit-inductor-")
    module = spec.get("module", "toolkit.runtime.benchmark")
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", module, "--probe", json.dumps(spec)], capture_output=True,
                              text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"cold-start probe timed out after {timeout:.0f}s"}
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"cold-start probe failed: {tail[:300]}"}
    return {**json.loads(lines[-1]), "process_wall_s": round(time.perf_counter() - t, 3), "isolated": True}


def _rounded(value):
    """Seconds and MB to 4 decimals, in nested dicts too."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def main(argv: list, probe: Callable[[dict], dict]) -> None:
    """The `--probe SPEC` entry point of a fresh process."""
    if len(argv) >= 2 and argv[0] == "--probe":
        print(json.dumps(_rounded(probe(json.loads(argv[1])))))
        return
    print("usage: toolkit benchmark [MODEL] (this module's own entry point is for its cold-start probes)",
          file=sys.stderr)
    sys.exit(2)
