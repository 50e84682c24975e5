"""Finding the newest run and the newest export, for commands called without a path. No torch here."""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile

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


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temp path beside `path`; on success it is fsynced and renamed over `path` with ordinary
    permissions, on failure removed. A crash at any moment leaves the old file or the new one, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files 0600
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str, data: bytes | str) -> None:
    """Write `data` to `path` all at once (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
