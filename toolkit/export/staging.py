"""Files of an export: staged as temp files in the output folder, renamed into place together once every
gate passed, so a failure at any step leaves nothing under a final name.

Temp names carry the exporting process's id (.tmp-<stem>-<kind>-pid<N>-XXXX.onnx, .tmp-quant-pid<N>-XXXX/),
so that the next export can remove what an export killed with -9 left (remove_stale_temps), and never
what a live one is still writing. A full disk while writing any of them is one UserError (`writing`)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from typing import Optional

from toolkit import contract
from toolkit.artifacts import TWINS, atomic_write, process_alive, twin_path, write_failure
from toolkit.errors import UserError, first_line

# A temp file or folder whose owner is gone is removed once it is this old (the age guards against an
# owner in another pid namespace, e.g. another container sharing the folder)...
STALE_AFTER_S = 3600
# ... and one without an owner in its name (written by an older toolkit) once it is this old.
UNOWNED_STALE_AFTER_S = 24 * 3600
_OWNER = re.compile(r"-pid(\d+)-[A-Za-z0-9_]+(?:\.onnx(?:\.data)?)?$")
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def report_path(path: str) -> str:
    return path[:-len(".onnx")] + ".report.json"


class Staging:
    """The temp files of one export (kind -> path), the IR version each was written with, and work folders.

    Use it as a context manager: whatever is still staged when the block ends (a gate failed) is removed."""

    def __init__(self, path: str, ir_version: Optional[int]):
        self.path = path  # the final FP32 path
        self.folder = os.path.dirname(os.path.abspath(path))
        self.ir_version = ir_version  # None = keep the exporter's
        self.files: dict = {}  # kind -> temp path in the output folder
        self.ir_written: dict = {}  # kind -> the IR version in the file
        self.work_dirs: list = []

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        for tmp in self.files.values():
            for p in (tmp, tmp + ".data"):
                if os.path.exists(p):
                    os.unlink(p)
        for folder in self.work_dirs:
            shutil.rmtree(folder, ignore_errors=True)

    def new(self, kind: str) -> str:
        """A fresh temp path for `kind` beside the final file."""
        with writing(twin_path(self.path, kind)):
            # the name cut short: the temp name adds ~37 characters to a name that may be near the 255 limit
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(self.path)[:-5][:80]}-{kind}-pid{os.getpid()}-",
                                       suffix=".onnx", dir=self.folder)
        os.close(fd)
        self.files[kind] = tmp
        return tmp

    def work_dir(self, prefix: str) -> str:
        with writing(self.path):
            folder = tempfile.mkdtemp(prefix=f"{prefix}pid{os.getpid()}-", dir=self.folder)
        self.work_dirs.append(folder)
        return folder

    def save(self, proto, kind: str) -> None:
        """Write `proto` to the temp file of `kind` (one file, no external data)."""
        import onnx

        if self.ir_version is not None:
            proto.ir_version = self.ir_version  # before the checker and the parity gate, so they judge these bytes
        self.ir_written[kind] = int(proto.ir_version)
        with writing(twin_path(self.path, kind)):
            onnx.save_model(proto, self.files[kind], save_as_external_data=False)

    def publish(self) -> dict:
        """Rename every staged file into place; returns kind -> {path, bytes}."""
        files = {kind: {"path": twin_path(self.path, kind), "bytes": os.path.getsize(tmp)}
                 for kind, tmp in self.files.items()}
        for kind, tmp in self.files.items():
            _publish(tmp, files[kind]["path"])
        self.files.clear()
        return files


def _disk_full(exc: BaseException) -> Optional[OSError]:
    """The disk-full error behind `exc` (itself, or what it was raised from), or None. Libraries wrap it:
    torch.onnx and the quantizer re-raise or reword an OSError on the way out."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return seen
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def writing(path: str):
    """Whatever the block writes for `path` (the file the user will get): a full disk in it becomes one
    UserError naming `path`, the disk (the folder that could not be written: where `path` goes, unless
    the error names another, e.g. the quantizer's temp folder) and its free space; nothing is published."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        full = _disk_full(exc)
        if full is None:
            raise
        folder = os.path.dirname(os.path.abspath(path))
        elsewhere = "export elsewhere with --out"
        if isinstance(full.filename, str):
            failed = os.path.dirname(os.path.abspath(full.filename))
            if os.path.commonpath([failed, folder]) != folder:  # outside the export's folder: a temp folder
                folder, elsewhere = failed, "point TMPDIR at a disk with room"
        try:
            free = f", {shutil.disk_usage(folder).free / 1e6:.0f} MB free"
        except OSError:
            free = ""
        if full.errno == errno.EFBIG:   # a file-size limit (ulimit -f, FAT32's 4 GB), not a full disk
            then = (f"the file is larger than the file system or a limit on this process lets it be (ulimit -f): "
                    f"{elsewhere} and export again; nothing was published")
        else:
            then = (f"the disk holding {folder} is full{free}: free some space there (or {elsewhere}) and export "
                    "again; nothing was published")
        raise write_failure(path, full, then) from None


def _owner_gone(name: str) -> Optional[bool]:
    """Whether the process named in a temp name has ended (None: the name names none)."""
    match = _OWNER.search(name)
    if match is None:
        return None
    pid = int(match.group(1))
    return pid != os.getpid() and not process_alive(pid)


# The work folders each export format makes beside its output (quantization, the web site, the .tflite
# conversion, the Triton repository), each named with its process id.
WORK_DIR_PREFIXES = (".tmp-quant-", ".tmp-web-pid", ".tmp-tflite-pid", ".tmp-triton-pid")


def _is_stale(entry: os.DirEntry, now: float) -> bool:
    is_work_dir = entry.name.startswith(WORK_DIR_PREFIXES) and entry.is_dir(follow_symlinks=False)
    is_file = entry.name.endswith((".onnx", ".onnx.data")) and entry.is_file(follow_symlinks=False)
    if not (is_work_dir or is_file):
        return False
    try:
        age = now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False  # gone already
    gone = _owner_gone(entry.name)
    return age > UNOWNED_STALE_AFTER_S if gone is None else gone and age > STALE_AFTER_S


def remove_stale_temps(folder: str, say) -> list:
    """Remove the temp files and work folders (.tmp-*.onnx, WORK_DIR_PREFIXES) that an export killed
    with -9 left in `folder`: those whose owner process has ended and that are older than STALE_AFTER_S
    (without an owner in the name: UNOWNED_STALE_AFTER_S). Returns what was removed."""
    removed, stale, now = [], [], time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:   # a folder not made yet: nothing
        stale = [e for e in entries if e.name.startswith(".tmp-") and _is_stale(e, now)]
    for entry in stale:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue  # removed meanwhile, or not ours to remove
        removed.append(entry.path)
    if removed:
        say(f"removed {len(removed)} temp file(s) left in {folder} by an export that was killed: "
            f"{', '.join(os.path.basename(p) for p in removed)}")
    return removed


def check_file(path: str) -> None:
    """The ONNX checker in full, as a one-line UserError."""
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as exc:
        raise UserError(f"{path}: the ONNX checker rejected the exported graph ({first_line(exc)})") from None


def remove_stale_twins(path: str, files: dict, sha: str, say) -> list:
    """A twin left from an export of another checkpoint would contradict the new file; remove it."""
    removed = []
    for kind in TWINS:
        twin = twin_path(path, kind)
        if kind in files or not os.path.isfile(twin):
            continue
        try:
            props = contract.raw_props(twin)
        except Exception:
            continue  # not ours to judge
        if props.get("toolkit_format") in ("1", contract.FORMAT_VERSION) and props.get("checkpoint_sha256") != sha:
            os.unlink(twin)
            removed.append(twin)
            say(f"removed {twin}: it came from another checkpoint")
    return removed


def _publish(tmp: str, final: str) -> None:
    """Rename a finished temp file into place with ordinary permissions (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, final)


def write_json(path: str, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")
