"""Finding the newest run and the newest export, for commands called without a path; the names of an
export's twin files; atomic writes. No torch here."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import stat
import tempfile

from toolkit.errors import UserError

# The twins export writes beside <stem>.onnx (the FP32 file): kind -> file suffix. The one place these
# names live; use the helpers below.
CALIBRATION_FILE = "calibration.json"   # in a run folder: the T and threshold training fitted on best.pt
TWINS = {"fp16": ".fp16.onnx", "int8": ".int8.onnx", "raw": ".raw.onnx"}
TWIN_SUFFIXES = tuple(TWINS.values())
PRECISION_TWINS = ("fp16", "int8")  # the twins that change the precision (raw changes the input layout)


def twin_path(model: str, kind: str) -> str:
    """exports/x.onnx, 'int8' -> exports/x.int8.onnx; kind 'fp32' is the FP32 file itself."""
    if kind == "fp32":
        return model
    return (model[:-len(".onnx")] if model.endswith(".onnx") else model) + TWINS[kind]


def base_of(path: str) -> tuple[str, str | None]:
    """(FP32 file, precision) of a precision twin: exports/x.int8.onnx -> (exports/x.onnx, 'int8').
    Any other file (a .raw.onnx twin included: its weights are FP32) -> (path, None)."""
    for kind in PRECISION_TWINS:
        if path.endswith(TWINS[kind]):
            return path[:-len(TWINS[kind])] + ".onnx", kind
    return path, None


def precision_of(path: str) -> str:
    """The precision a model file's name says: fp16 or int8 for those twins, else fp32."""
    return base_of(path)[1] or "fp32"


def _regular_mtime(path: str) -> float | None:
    """The modification time of a regular file (a symlink to one counts), else None: a dangling symlink,
    a FIFO (opening it would block), a folder, or a file that vanished since it was listed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None


def _regular_files(paths) -> dict[str, float]:
    """path -> mtime for those of `paths` that are regular files."""
    times = {path: _regular_mtime(path) for path in paths}
    return {path: t for path, t in times.items() if t is not None}


def find_runs(runs_dir: str = "runs") -> list[str]:
    """Every run folder at any depth under `runs_dir`: a folder holding checkpoints/last.pt (a regular
    file). The demo's runs sit one level down (runs/demo/<run>/), so a fixed depth would miss them."""
    return sorted(_run_checkpoints(runs_dir))


def _run_checkpoints(runs_dir: str) -> dict[str, float]:
    """run folder -> mtime of its checkpoints/last.pt, for every run under `runs_dir`."""
    marker = os.path.join("checkpoints", "last.pt")
    found = _regular_files(glob.glob(os.path.join(glob.escape(runs_dir), "**", marker), recursive=True))
    return {os.path.dirname(os.path.dirname(path)): t for path, t in found.items()}


def newest_run(runs_dir: str = "runs") -> str:
    """The run folder (at any depth under `runs_dir`) whose last checkpoint was written most recently."""
    if not os.path.isdir(runs_dir) or not os.listdir(runs_dir):
        raise UserError(f"{runs_dir}/: no runs yet; train one first with: toolkit train RECIPE.yaml")
    runs = _run_checkpoints(runs_dir)
    if not runs:
        looked = sorted(d for d in glob.glob(os.path.join(glob.escape(runs_dir), "*")) if os.path.isdir(d))
        raise UserError(f"{runs_dir}/: no run has a checkpoint yet (looked in {', '.join(looked) or runs_dir}); "
                        "expected runs/<name>/checkpoints/last.pt from toolkit train")
    return max(runs, key=runs.get)


def mark_newest(run: str) -> None:
    """Make `run` the one newest_run picks (its last.pt's mtime, now): runs trained side by side finish
    in any order, and a demo's showcase must be what `toolkit export` with no path takes."""
    os.utime(os.path.join(run, "checkpoints", "last.pt"))


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
    """The most recently written FP32 export (twins are chosen explicitly). Only regular files count: a
    dangling symlink or a FIFO named *.onnx is skipped, not crashed on or opened."""
    names = [f for f in glob.glob(os.path.join(glob.escape(exports_dir), "*.onnx")) if not f.endswith(TWIN_SUFFIXES)]
    files = _regular_files(names)
    if not files:
        raise UserError(f"{exports_dir}/: no exported model yet; run toolkit export first")
    return max(files, key=files.get)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # it exists, under another user
    return True


def from_here(path: str) -> str:
    """`path` quoted, with the folder a relative one was looked for in: a run's recipe names its data
    relative to the folder it was trained in, so a command run elsewhere should say where it looked."""
    return repr(path) if os.path.isabs(path) else f"{path!r} (looked for in the current folder, {os.getcwd()})"


def folder_problem(path: str) -> str | None:
    """Why folders cannot be made at `path`, or None: it, or the nearest folder above it that exists, must be
    a folder one can make folders in. Probed with a temporary folder (removed again), because permission
    bits don't tell (root may write anywhere by them, and still not in /proc). Nothing is made."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is not a folder"
    longest = max(os.path.relpath(os.path.abspath(path), probe).split(os.sep), key=len)
    with contextlib.suppress(OSError, ValueError):
        if len(os.fsencode(longest)) > os.pathconf(probe, "PC_NAME_MAX"):
            return f"a folder name there is longer than the file system takes ({len(os.fsencode(longest))} bytes)"
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".toolkit-probe-").cleanup()
    except OSError as exc:
        return f"cannot make folders in {probe} ({exc.strerror})"
    return None


def write_failure(path: str, exc: OSError, then: str = "") -> UserError:
    """One clear error for a write that failed: the path, the reason, and what to do (`then` overrides it)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        advice = "the disk is full (or over quota): free some space and run the command again"
    elif exc.errno == errno.EFBIG:
        advice = "the file is larger than the file system or a limit on this process allows (ulimit -f)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "the folder is not writable: choose a writable place for it"
    else:
        advice = "check the disk and the folder, then run the command again"
    return UserError(f"{path}: could not write it ({reason}); {then or advice}")


@contextlib.contextmanager
def atomic_path(path: str, then: str = ""):
    """Yield a temp path beside `path`; on success it is fsynced and renamed over `path` with ordinary
    permissions, on failure removed. A crash at any moment leaves the old file or the new one, never half.
    A failed write (disk full, read-only, ...) is one UserError naming `path`; `then` says what to do next."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
        os.close(fd)
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
    except OSError as exc:
        raise write_failure(path, exc, then) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str, data: bytes | str, then: str = "") -> None:
    """Write `data` to `path` all at once (see atomic_path)."""
    with atomic_path(path, then) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def sha256_file(path: str) -> str:
    """The file's SHA-256, hex: which checkpoint an export or a calibration.json was made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
