"""Cold start of a Predictor, measured in a fresh interpreter (what an edge app pays on its first request),
and run_fresh, the fresh interpreter itself (the benchmark's cold-start probes run there too).

Light module: standard library only at import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

from toolkit.errors import UserError

__all__ = ["time_cold_start", "run_fresh"]

_RUN = ("import importlib, json, sys; spec = json.loads(sys.argv[1]); module, _, name = spec['probe'].partition(':'); "
        "print(json.dumps(getattr(importlib.import_module(module), name)(spec)))")


def run_fresh(spec: dict, timeout: float = 600, env: Optional[dict] = None) -> dict:
    """The function spec["probe"] ("module:function") names, called with `spec` in a fresh interpreter that
    imports this toolkit: the dict it returns (floats to 4 decimals). RuntimeError (stderr's last line) when
    it fails or runs past `timeout` seconds."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above toolkit/
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run([sys.executable, "-c", _RUN, json.dumps(spec)], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f}s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(lines[-1], parse_float=lambda v: round(float(v), 4))


def first_predict(spec: dict) -> dict:
    """In the fresh interpreter: import the Predictor, open it, predict one image; each step timed."""
    t0 = time.perf_counter()
    from toolkit.runtime.predictor import Predictor
    import numpy as np

    t1 = time.perf_counter()
    p = Predictor(spec["path"], device=spec["device"], allow_fallback=spec["allow_fallback"])
    t2 = time.perf_counter()
    p.predict(spec["image"] or np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), top_k=1)
    t3 = time.perf_counter()
    heavy = sorted(m for m in ("torch", "torchvision", "albumentations", "cv2") if m in sys.modules)
    return {"import_s": t1 - t0, "session_s": t2 - t1, "first_predict_s": t3 - t2, "total_s": t3 - t0,
            "provider": p.provider, "heavy_modules": heavy}


def time_cold_start(path: str, device: str = "cpu", image: str | None = None, allow_fallback: bool = False,
                    timeout: float = 600) -> dict:
    """Cold start measured in a fresh interpreter: import_s (import toolkit.runtime.predictor), session_s
    (Predictor(...), i.e. metadata + ORT session), first_predict_s (decode + preprocess + first run of a
    640x480 image, or `image`), total_s, provider. Interpreter start-up itself is not included."""
    spec = {"probe": f"{__name__}:first_predict", "path": os.fspath(path), "device": device,
            "allow_fallback": bool(allow_fallback), "image": os.fspath(image) if image else None}
    try:
        return run_fresh(spec, timeout)
    except RuntimeError as exc:
        raise UserError(f"cold start of {path} on {device} failed: {exc}") from None
