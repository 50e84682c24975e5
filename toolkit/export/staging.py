"""Files of an export: staged as temp files in the output folder, renamed into place together once every
gate passed, so a failure at any step leaves nothing under a final name."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from toolkit import contract
from toolkit.artifacts import TWINS, atomic_write, twin_path
from toolkit.errors import UserError, first_line


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
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(self.path)[:-5]}-{kind}-", suffix=".onnx",
                                   dir=self.folder)
        os.close(fd)
        self.files[kind] = tmp
        return tmp

    def work_dir(self, prefix: str) -> str:
        folder = tempfile.mkdtemp(prefix=prefix, dir=self.folder)
        self.work_dirs.append(folder)
        return folder

    def save(self, proto, kind: str) -> None:
        """Write `proto` to the temp file of `kind` (one file, no external data)."""
        import onnx

        if self.ir_version is not None:
            proto.ir_version = self.ir_version  # before the checker and the parity gate, so they judge these bytes
        self.ir_written[kind] = int(proto.ir_version)
        onnx.save_model(proto, self.files[kind], save_as_external_data=False)

    def publish(self) -> dict:
        """Rename every staged file into place; returns kind -> {path, bytes}."""
        files = {kind: {"path": twin_path(self.path, kind), "bytes": os.path.getsize(tmp)}
                 for kind, tmp in self.files.items()}
        for kind, tmp in self.files.items():
            _publish(tmp, files[kind]["path"])
        self.files.clear()
        return files


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
        if props.get("toolkit_format") == contract.FORMAT_VERSION and props.get("checkpoint_sha256") != sha:
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
