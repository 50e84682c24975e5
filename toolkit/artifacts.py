"""Finding the newest run and the newest export, for commands called without a path. No torch here."""
from __future__ import annotations

import glob
import os

from toolkit.errors import UserError

TWIN_SUFFIXES = (".fp16.onnx", ".int8.onnx", ".raw.onnx")


def newest_run(runs_dir: str = "runs") -> str:
    """The run directory whose last checkpoint was written most recently."""
    candidates = [d for d in glob.glob(os.path.join(runs_dir, "*")) if os.path.isdir(d)]
    if not candidates:
        raise UserError(f"{runs_dir}/: no runs yet; train one first with: toolkit train RECIPE.yaml")
    with_ckpt = [d for d in candidates if os.path.isfile(os.path.join(d, "checkpoints", "last.pt"))]
    if not with_ckpt:
        raise UserError(f"{runs_dir}/: no run has a checkpoint yet (looked in {', '.join(sorted(candidates))}); "
                        "expected runs/<name>/checkpoints/last.pt from toolkit train")
    return max(with_ckpt, key=lambda d: os.path.getmtime(os.path.join(d, "checkpoints", "last.pt")))


def run_checkpoint(run: str) -> str:
    """The checkpoint to use for a run directory (best.pt, else last.pt), or the file itself."""
    if os.path.isfile(run):
        return run
    if not os.path.isdir(run):
        raise UserError(f"{run}: no such run directory or checkpoint file")
    for name in ("best.pt", "last.pt"):
        path = os.path.join(run, "checkpoints", name)
        if os.path.isfile(path):
            return path
    raise UserError(f"{run}: has no checkpoint; expected {run}/checkpoints/best.pt or last.pt "
                    "(train it with toolkit train, or resume it with --resume)")


def newest_export(exports_dir: str = "exports") -> str:
    """The most recently written FP32 export (twins are chosen explicitly)."""
    files = [f for f in glob.glob(os.path.join(exports_dir, "*.onnx")) if not f.endswith(TWIN_SUFFIXES)]
    if not files:
        raise UserError(f"{exports_dir}/: no exported model yet; run toolkit export first")
    return max(files, key=os.path.getmtime)
