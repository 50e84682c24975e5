"""toolkit.artifacts: which run and which export a command takes when it is given no path (torch-free)."""
import os

import pytest

from toolkit import artifacts
from toolkit.errors import UserError


def _run(root, *parts, age=0.0):
    ckpt = os.path.join(root, *parts, "checkpoints", "last.pt")
    os.makedirs(os.path.dirname(ckpt))
    open(ckpt, "wb").close()
    t = 1_700_000_000 - age
    os.utime(ckpt, (t, t))
    return os.path.join(root, *parts)


def test_newest_run_searches_any_depth(tmp_path):
    runs = str(tmp_path / "runs")
    _run(runs, "flowers", age=300)
    _run(runs, "demo", "digits-source", age=200)
    showcase = _run(runs, "demo", "transfer-k10-s2", age=10)  # the demo's runs sit one level down
    _run(runs, "demo", "scratch-k10-s2", age=20)
    os.makedirs(os.path.join(runs, "demo", "samples"))  # a folder without a checkpoint is not a run
    assert artifacts.newest_run(runs) == showcase
    assert artifacts.find_runs(runs) == sorted([
        os.path.join(runs, "flowers"), os.path.join(runs, "demo", "digits-source"), showcase,
        os.path.join(runs, "demo", "scratch-k10-s2")])


def test_newest_run_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match="no runs yet"):
        artifacts.newest_run(str(tmp_path / "runs"))
    os.makedirs(tmp_path / "runs" / "demo" / "half")
    with pytest.raises(UserError, match="no run has a checkpoint yet"):
        artifacts.newest_run(str(tmp_path / "runs"))


def test_only_regular_files_are_candidates(tmp_path):
    """A dangling symlink is skipped (was a FileNotFoundError traceback), and so is a FIFO named *.onnx
    (was picked as the newest export, and opening it blocked predict for ever)."""
    exports = tmp_path / "exports"
    exports.mkdir()
    real = exports / "real.onnx"
    real.write_bytes(b"x")
    os.utime(real, (1_700_000_000, 1_700_000_000))
    os.symlink(exports / "gone.onnx", exports / "dangling.onnx")
    os.mkfifo(exports / "pipe.onnx")  # newer than real.onnx
    os.symlink(real, exports / "alias.onnx")  # a symlink to a regular file still counts
    os.utime(exports / "alias.onnx", (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    assert artifacts.newest_export(str(exports)) in (str(real), str(exports / "alias.onnx"))
    os.unlink(real)
    os.unlink(exports / "alias.onnx")
    with pytest.raises(UserError, match="no exported model yet"):
        artifacts.newest_export(str(exports))

    runs = str(tmp_path / "runs")
    good = _run(runs, "good", age=100)
    os.makedirs(os.path.join(runs, "pipe", "checkpoints"))
    os.mkfifo(os.path.join(runs, "pipe", "checkpoints", "last.pt"))
    os.makedirs(os.path.join(runs, "dangling", "checkpoints"))
    os.symlink(os.path.join(runs, "nowhere.pt"), os.path.join(runs, "dangling", "checkpoints", "last.pt"))
    assert artifacts.find_runs(runs) == [good]
    assert artifacts.newest_run(runs) == good


def test_twin_names_live_in_one_place():
    """One naming for the files beside an export: twin path, the FP32 file of a twin, its precision."""
    base = os.path.join("exports", "flowers.onnx")
    assert [artifacts.twin_path(base, k) for k in ("fp32", "fp16", "int8", "raw")] == [
        base, os.path.join("exports", "flowers.fp16.onnx"), os.path.join("exports", "flowers.int8.onnx"),
        os.path.join("exports", "flowers.raw.onnx")]
    for kind in artifacts.PRECISION_TWINS:
        twin = artifacts.twin_path(base, kind)
        assert artifacts.base_of(twin) == (base, kind) and artifacts.precision_of(twin) == kind
    raw = artifacts.twin_path(base, "raw")  # a layout twin: its weights are FP32, it is its own base
    assert artifacts.base_of(raw) == (raw, None) and artifacts.precision_of(raw) == "fp32"
    assert artifacts.base_of(base) == (base, None) and artifacts.precision_of("int8.onnx") == "fp32"


def test_twin_naming_has_no_other_copy():
    """No module spells a twin suffix itself: they all ask toolkit.artifacts."""
    import pathlib
    import re

    package = pathlib.Path(artifacts.__file__).parent
    spelled = [f"{p.relative_to(package.parent)}:{i}" for p in sorted(package.rglob("*.py"))
               if p.name != "artifacts.py"
               for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
               if re.search(r"""["'][^"'\s]*\.(fp16|int8|raw)\.onnx|\(int8\|fp16\)|split\("\."\)\[1\]""",
                            line.split("#")[0])]
    assert not spelled, spelled
