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
