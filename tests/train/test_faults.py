"""Training faults: malformed checkpoints, a torn metrics line, a full disk; each one clear error, then resume."""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import make_image_folder, tiny_recipe, write_recipe
from toolkit import recipe as recipe_mod
from toolkit.artifacts import atomic_write
from toolkit.errors import UserError
from toolkit.train import checkpoint as ckpt_mod
from toolkit.train import run_dir as run_dir_mod
from toolkit.train.checkpoint import FORMAT, load_checkpoint
from toolkit.train.loop import train
from toolkit.train.model import model_from_checkpoint
from toolkit.train.run_dir import truncate_metrics

TENSORS = {"w": torch.zeros(2)}
RECIPE = {"model": {"arch": "vgg11", "weights": "none", "head": "classic", "hidden": 32},
          "train": {"strategy": "scratch"}}


def _train(raw, **kwargs):
    return train(recipe_mod.from_dict(raw), quiet=True, **kwargs)


def _save(tmp_path, obj, name="c.pt") -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


WRONG_STRUCTURE = [
    ({"format": FORMAT, "model": TENSORS, "labels": ["a", "b"]}, "'recipe' is missing"),
    ({"format": FORMAT, "model": 3, "labels": ["a"], "recipe": RECIPE}, "'model' is int; expected a state dict"),
    ({"format": FORMAT, "model": {"w": [1, 2]}, "labels": ["a"], "recipe": RECIPE}, "'model' holds list at 'w'"),
    ({"format": FORMAT, "model": TENSORS, "labels": "ab", "recipe": RECIPE}, "'labels' is str; expected the list"),
    ({"format": FORMAT, "model": TENSORS, "labels": [], "recipe": RECIPE}, "'labels' must be a non-empty list"),
    ({"format": FORMAT, "model": TENSORS, "labels": ["a"], "recipe": [1, 2]}, "'recipe' is list; expected"),
    ({"format": FORMAT}, "'model' is missing"),
]


@pytest.mark.parametrize("state, expected", WRONG_STRUCTURE)
def test_wrong_structure_checkpoint_is_one_clear_error(tmp_path, state, expected):
    path = _save(tmp_path, state)
    with pytest.raises(UserError, match="not a complete toolkit checkpoint") as info:
        load_checkpoint(path)
    assert expected in str(info.value) and path in str(info.value)
    with pytest.raises(UserError, match="not a complete toolkit checkpoint"):
        model_from_checkpoint(path)  # export and evaluate load through here
    from toolkit.train.model import build_from_recipe, load_weights

    model = build_from_recipe(recipe_mod.from_dict(RECIPE, check_paths=False), num_classes=2)
    with pytest.raises(UserError, match=r"^model\.weights: .*not a complete toolkit checkpoint"):
        load_weights(model, path, "vgg11", ["a", "b"])  # model.weights: a .pt checkpoint


@pytest.mark.parametrize("obj", [7, [1, 2], "text", {"model": TENSORS}])
def test_foreign_pickles_are_not_toolkit_checkpoints(tmp_path, obj):
    with pytest.raises(UserError, match="not a toolkit checkpoint"):
        load_checkpoint(_save(tmp_path, obj))


def test_cli_export_and_evaluate_of_a_malformed_checkpoint(tmp_path, capsys, monkeypatch):
    from toolkit import cli

    monkeypatch.chdir(tmp_path)
    path = _save(tmp_path, {"format": FORMAT, "model": 3, "labels": ["a"]})
    for argv in (["export", path], ["evaluate", path]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "not a complete toolkit checkpoint" in err and "'recipe' is missing" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def trained_one_epoch(tmp_path_factory):
    """A 2-epoch tiny run stopped after epoch 1, trained once for this module. Its paths are relative, so a
    copy of the folder is a run of its own (the checkpoint's recipe names out_dir and data.root)."""
    base = tmp_path_factory.mktemp("one_epoch")
    make_image_folder(base / "images")
    raw = tiny_recipe(base, "images", out_dir="runs", train={"epochs": 2})
    cwd = os.getcwd()
    os.chdir(base)
    try:
        _train(raw, stop_after_epochs=1)
    finally:
        os.chdir(cwd)
    return raw, base


@pytest.fixture
def one_epoch_run(trained_one_epoch, tmp_path, monkeypatch):
    """This test's own copy of that run, with the working directory in it: (raw recipe, run folder)."""
    raw, base = trained_one_epoch
    shutil.copytree(base, tmp_path / "copy")
    monkeypatch.chdir(tmp_path / "copy")
    return raw, tmp_path / "copy" / "runs" / "tiny"


def test_resume_refuses_a_last_pt_without_its_resume_state(one_epoch_run):
    raw, run = one_epoch_run
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["optimizer"]
    state["run_state"]["epoch"] = "one"
    torch.save(state, last)
    with pytest.raises(UserError) as info:
        _train(raw, resume=True)
    text = str(info.value)
    assert "'optimizer' is missing" in text and "'run_state.epoch' is str; expected an integer" in text
    load_checkpoint(str(last))  # still fine for export and evaluate: only a resume needs those


def test_torn_metrics_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "x": 1}\n{"epoch": 2, "x": 2}\n{"epoch": 3, "x"')
    notes = []
    truncate_metrics(str(path), 2, notes.append)
    assert path.read_text() == '{"epoch": 1, "x": 1}\n{"epoch": 2, "x": 2}\n'
    assert len(notes) == 1 and "dropped a half-written last line (line 3" in notes[0]
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(UserError, match="line 2 is not a metrics record"):
        truncate_metrics(str(path), 2, notes.append)
    path.write_text('{"epoch": 1}')  # a whole record without its newline is kept, and ended
    truncate_metrics(str(path), 2, notes.append)
    assert path.read_text() == '{"epoch": 1}\n'


def test_resume_tolerates_a_torn_metrics_line(one_epoch_run, capsys):
    raw, run = one_epoch_run
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_loss": 0.5, "val_')  # a crash mid-write
    train(recipe_mod.from_dict(raw), resume=True)
    assert "dropped a half-written last line" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in open(run / "metrics.jsonl")] == [1, 2]


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_at_checkpoint_keeps_last_pt_and_resume_continues(one_epoch_run, monkeypatch):
    raw, run = one_epoch_run
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def half_then_full(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        _disk_full()

    with monkeypatch.context() as patch, pytest.raises(UserError) as info:
        patch.setattr(ckpt_mod.torch, "save", half_then_full)
        _train(raw, resume=True)
    text = str(info.value)
    assert "checkpoints/" in text and ".pt: could not write it (No space left on device)" in text
    assert "intact" in text and "--resume" in text and "\n" not in text
    assert last.read_bytes() == before and load_checkpoint(str(last))["epoch"] == 1
    assert not [f for f in os.listdir(run / "checkpoints") if f.startswith(".tmp")]
    summary = _train(raw, resume=True)  # space freed: continues from the last good checkpoint, epoch 1
    assert load_checkpoint(str(last))["epoch"] == 2 and summary["epochs_run"] == 2
    assert load_checkpoint(str(run / "checkpoints" / "best.pt"))["epoch"] == summary["best_epoch"]
    assert [json.loads(line)["epoch"] for line in open(run / "metrics.jsonl")] == [1, 2]


def test_disk_full_in_the_metrics_log_then_resume(one_epoch_run, monkeypatch, capsys):
    raw, run = one_epoch_run
    real_open = open

    class FullFile:
        def __init__(self, path, *args, **kwargs):
            self.fh = real_open(path, *args, **kwargs)

        def __enter__(self):
            return self

        def write(self, text):
            self.fh.write(text[:20])  # part of the line reaches the disk
            self.fh.flush()
            _disk_full()

        def __exit__(self, *exc):
            self.fh.close()

    appending_fails = lambda path, mode="r", *a, **k: (FullFile if mode == "a" else real_open)(path, mode, *a, **k)
    with monkeypatch.context() as patch, pytest.raises(UserError, match=r"metrics\.jsonl: could not write it "
                                                                       r"\(No space left on device\); free some"):
        patch.setattr(run_dir_mod, "open", appending_fails, raising=False)
        _train(raw, resume=True)
    train(recipe_mod.from_dict(raw), resume=True)
    assert "dropped a half-written last line" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in open(run / "metrics.jsonl")] == [1, 2]


def test_atomic_write_failures_name_the_path_and_keep_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(UserError, match=r"summary\.json: could not write it \(No space left on device\); the disk "
                                        r"is full"):
        atomic_write(str(path), "new")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(UserError, match="Read-only file system.*not writable"):
        atomic_write(str(path), "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]


def test_cli_disk_full_is_one_line_without_traceback(tmp_path, image_folder, monkeypatch, capsys):
    from toolkit import cli

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, image_folder, train={"epochs": 1}))
    monkeypatch.setattr(os, "replace", _disk_full)  # the first file a run writes: recipe.yaml
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", recipe])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "recipe.yaml: could not write it (No space left on device)" in err


def test_unwritable_out_dir_is_a_clear_error(tmp_path, image_folder, monkeypatch):
    raw = tiny_recipe(tmp_path, image_folder)
    real = os.makedirs

    def refuse(path, *args, **kwargs):
        if "runs" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(run_dir_mod.os, "makedirs", refuse)
    with pytest.raises(UserError, match="could not make the run folder \\(Permission denied\\)"):
        _train(raw)


def test_resume_with_overwrite_and_a_folder_that_is_not_a_run_are_refused(tmp_path, image_folder):
    """--resume --overwrite resumed, then removed the run under it; a folder of other files was trained into
    (and --overwrite deleted them)."""
    raw = tiny_recipe(tmp_path, image_folder)
    with pytest.raises(UserError, match="--resume and --overwrite: pass one"):
        train(recipe_mod.from_dict(raw), resume=True, overwrite=True, quiet=True)
    precious = tmp_path / "runs" / "tiny"
    precious.mkdir(parents=True)
    (precious / "important.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="exists and is not a run folder"):
            train(recipe_mod.from_dict(raw), overwrite=overwrite, quiet=True)
    assert os.listdir(precious) == ["important.txt"]


def test_resume_of_a_finished_run_says_how_to_go_on(tmp_path, image_folder, capsys):
    """It said "resuming at epoch 3", trained nothing, and wrote the calibration and report again."""
    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 1})
    train(recipe_mod.from_dict(raw), quiet=True)
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    before = last.stat().st_mtime_ns
    with pytest.raises(UserError, match=r"the run ran all 1 epochs; nothing to resume. Expected train.epochs above 1"):
        train(recipe_mod.from_dict(raw), resume=True, quiet=True)
    assert last.stat().st_mtime_ns == before and "data health" not in capsys.readouterr().out


def test_a_run_stopped_after_its_last_epoch_resumes_to_write_its_summary(tmp_path, image_folder):
    """A signal during the last epoch's validation saved last.pt and printed `continue with: ... --resume`,
    which then said the run ran all its epochs: the run never got its summary, calibration or report."""
    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 1})
    train(recipe_mod.from_dict(raw), quiet=True)
    run = tmp_path / "runs" / "tiny"
    ending = [name for name in ("summary.json", "calibration.json", "report.html") if (run / name).is_file()]
    assert "summary.json" in ending and "report.html" in ending
    for name in ending:
        (run / name).unlink()   # as a stop after the last checkpoint leaves the run
    train(recipe_mod.from_dict(raw), resume=True, quiet=True)
    assert all((run / name).is_file() for name in ending)
    assert [json.loads(line)["epoch"] for line in open(run / "metrics.jsonl")] == [1]   # no epoch trained again


def test_resume_refuses_what_would_change_the_model_and_says_what_it_ignores(one_epoch_run, capsys):
    """--resume with model.arch, data.root, lr or seed overrides trained the original run silently."""
    import copy

    raw, run = one_epoch_run
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    os.makedirs("other")
    changed = copy.deepcopy(raw)
    changed["model"]["arch"] = "vgg13"
    changed["data"].update(root="other", val_fraction=0.5)
    changed["train"]["lr"] = 0.5
    with pytest.raises(UserError) as info:
        _train(changed, resume=True)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{raw['out_dir']}/tiny: --resume cannot change the model or its data; the run was " \
                       "started with other values for:"
    assert lines[1:4] == ["  data.root: 'other' (the run's: 'images')", "  data.val_fraction: 0.5 (the run's: 0.25)",
                          "  model.arch: 'vgg13' (the run's: 'vgg11')"], lines
    assert "start a new run" in lines[-1] and len(lines) == 5  # train.lr is not refused, and not listed
    assert last.read_bytes() == before

    harmless = copy.deepcopy(raw)
    harmless["seed"] = 7
    harmless["train"].update(lr=0.5, epochs=3)
    capsys.readouterr()
    train(recipe_mod.from_dict(harmless), resume=True)
    out = capsys.readouterr().out.splitlines()
    said = [line for line in out if line.startswith("resume: ")]
    assert said == ["resume: ignored seed=7; the run keeps 0 (a resume continues the run as it was started)",
                    "resume: train.epochs 2 -> 3",
                    "resume: ignored train.lr=0.5; the run keeps 0.01 (a resume continues the run as it was started)"]
    saved = load_checkpoint(str(last))
    assert saved["epoch"] == 3 and saved["recipe"]["train"]["lr"] == 0.01 and saved["recipe"]["seed"] == 0


def test_a_run_another_training_is_writing_is_refused(tmp_path, image_folder):
    """Two `toolkit train` of one run name at once both succeeded, their metrics and checkpoints mixed."""
    from toolkit.train.run_dir import LOCK, make_run_dir, release_run_dir

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "runs" / "tiny"
        run.mkdir(parents=True)
        (run / LOCK).write_text(str(other.pid))   # as the other training's claim reads
        raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 1})
        for overwrite in (False, True):
            with pytest.raises(UserError, match=rf"another toolkit train \(process {other.pid}\) is training this run"):
                train(recipe_mod.from_dict(raw), overwrite=overwrite, quiet=True)
        assert (run / LOCK).read_text() == str(other.pid) and os.listdir(run) == [LOCK]   # nothing written
    finally:
        other.kill()
        other.wait()
    train(recipe_mod.from_dict(raw), quiet=True)   # its process ended: the claim is stale, the run trains
    assert not (run / LOCK).exists() and (run / "summary.json").is_file()   # released at the end
    make_run_dir(str(run), overwrite=False, resume=True)
    assert (run / LOCK).read_text() == str(os.getpid())
    release_run_dir(str(run))
    assert not (run / LOCK).exists()
    # a second training that passed the "already holds a trained run" check while the first still ran, and
    # reached the folder after the first ended, trained over the finished run
    before = sorted(os.listdir(run))
    with pytest.raises(UserError, match="another toolkit train trained this run while this one was loading"):
        make_run_dir(str(run), overwrite=False)
    assert sorted(os.listdir(run)) == before and not (run / LOCK).exists()


def test_train_given_a_path_says_what_it_takes():
    """train('recipes/x.yaml') was AttributeError: 'str' object has no attribute 'train'."""
    with pytest.raises(UserError, match=r"train: a str; expected a Recipe: toolkit.recipe.load\(PATH\)"):
        train("recipes/digits-source.yaml")
