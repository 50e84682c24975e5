"""Cold start of a Predictor, measured in a fresh interpreter (what an edge app pays on its first request).

Light module: it runs `toolkit.runtime.predictor` in a subprocess and reads back one JSON line.
"""
from __future__ import annotations

import json
import os
import sys

from toolkit.errors import UserError

__all__ = ["time_cold_start"]

_COLD_START_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from toolkit.runtime.predictor import Predictor
import numpy as np
t1 = time.perf_counter()
p = Predictor(sys.argv[1], device=sys.argv[2], allow_fallback=sys.argv[3] == "1")
t2 = time.perf_counter()
img = sys.argv[4] if len(sys.argv) > 4 else (np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
p.predict(img, top_k=1)
t3 = time.perf_counter()
heavy = sorted(m for m in ("torch", "torchvision", "albumentations", "cv2") if m in sys.modules)
print(json.dumps({"import_s": t1 - t0, "session_s": t2 - t1, "first_predict_s": t3 - t2, "total_s": t3 - t0,
                  "provider": p.provider, "heavy_modules": heavy}))
"""


def time_cold_start(path: str, device: str = "cpu", image: str | None = None, allow_fallback: bool = False,
                    timeout: float = 600) -> dict:
    """Cold start measured in a fresh interpreter: import_s (import toolkit.runtime.predictor), session_s
    (Predictor(...), i.e. metadata + ORT session), first_predict_s (decode + preprocess + first run of a
    640x480 image, or `image`), total_s, provider. Interpreter start-up itself is not included."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above toolkit/
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-c", _COLD_START_SCRIPT, os.fspath(path), device, "1" if allow_fallback else "0"]
    if image:
        cmd.append(os.fspath(image))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"cold start of {path} on {device} failed: {tail}")
    return json.loads(lines[-1])
