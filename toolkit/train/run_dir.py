"""The run folder, runs/<name>/: checked and made at the start, its log kept in step with the checkpoint,
summary.json at the end. Rank 0 alone touches it."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import time

from toolkit import recipe as recipe_mod
from toolkit.artifacts import atomic_write, from_here, process_alive, write_failure
from toolkit.errors import UserError
from toolkit.train import model as model_mod
from toolkit.train.checkpoint import load_checkpoint
from toolkit.train.calibrate_run import calibrate_run
from toolkit.train.device import pick_device
from toolkit.train.evaluate import evaluate_checkpoint


def checkpoint_paths(run_dir: str) -> tuple[str, str]:
    """(last.pt, best.pt) of a run folder."""
    folder = os.path.join(run_dir, "checkpoints")
    return os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt")


def prepare_run_dir(run_dir: str, resume: bool, overwrite: bool) -> dict | None:
    """Check the run folder against --resume / --overwrite, and load last.pt when resuming. Nothing is made
    or removed here: make_run_dir does that once the data and the model loaded."""
    last_path, _ = checkpoint_paths(run_dir)
    if resume and overwrite:   # together they resumed, then cleared the run under the resumed training
        raise UserError("--resume and --overwrite: pass one; --resume continues the run, --overwrite starts it again")
    if not _is_run_or_empty(run_dir):
        raise UserError(f"{run_dir}: exists and is not a run folder (no recipe.yaml or checkpoints/ in it); "
                        "expected a new run name (set name=<new>) or out_dir=<another folder>")
    if resume:
        if not os.path.isfile(last_path):
            raise UserError(f"{from_here(last_path)}: no such checkpoint, so nothing to resume; expected the "
                            "run's last.pt (resume from the folder the run was trained in), or train without "
                            "--resume to start the run")
        return load_checkpoint(last_path, resume=True)
    if os.path.exists(last_path) and not overwrite:
        raise UserError(f"{run_dir}: already holds a trained run; pass --resume to continue it, --overwrite "
                        f"to replace it, or set another name (e.g. name=<new>)")
    return None   # out_dir's writability: the recipe check probed it (toolkit.recipe.check)


def _is_run_or_empty(run_dir: str) -> bool:
    """Missing, empty, or a folder training wrote: what training may write into (and --overwrite remove)."""
    if not os.path.isdir(run_dir):
        return not os.path.lexists(run_dir)
    names = os.listdir(run_dir)
    return not names or bool({"recipe.yaml", "checkpoints", LOCK} & set(names))


def make_run_dir(run_dir: str, overwrite: bool, resume: bool = False) -> None:
    """Make the run folder after every check that can still fail before training (the data scan, the model
    and its weights): a bad image leaves no empty run folder behind, and with --overwrite the old run as
    it was (it is removed here, not before). The folder is claimed for this process (release_run_dir)."""
    _refuse_if_claimed(run_dir)   # before --overwrite removes anything another training still writes
    try:
        if overwrite and os.path.exists(checkpoint_paths(run_dir)[0]):
            shutil.rmtree(run_dir)
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        _claim(run_dir)
    except OSError as exc:
        raise UserError(f"{exc.filename or run_dir}: could not make the run folder ({exc.strerror}); expected a "
                        "writable out_dir (set out_dir=<folder>)") from None
    if not (resume or overwrite) and os.path.exists(checkpoint_paths(run_dir)[0]):
        release_run_dir(run_dir)   # another training of this run ended while this one loaded its data
        raise UserError(f"{run_dir}: another toolkit train trained this run while this one was loading; pass "
                        "--resume to continue it, --overwrite to replace it, or set another name (e.g. name=<new>)")


# The process training a run: two `toolkit train` of one run at once mixed their metrics and checkpoints.
LOCK = ".training.pid"


def _lock(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK)


def _claimant(run_dir: str) -> int | None:
    try:
        with open(_lock(run_dir)) as fh:
            return int(fh.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _refuse_if_claimed(run_dir: str) -> None:
    """A UserError when another live process trains this run; a claim left by one that ended is removed."""
    pid = _claimant(run_dir)
    if pid is None:
        return
    if pid != os.getpid() and process_alive(pid):
        raise UserError(f"{run_dir}: another toolkit train (process {pid}) is training this run now; expected it "
                        "to end first, or another run name (name=<new>)")
    with contextlib.suppress(OSError):
        os.unlink(_lock(run_dir))


def _claim(run_dir: str) -> None:
    """Write this process's id in the run folder, only if no other process did since the check."""
    try:
        fd = os.open(_lock(run_dir), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:   # claimed between the check and here: theirs when they still run
        _refuse_if_claimed(run_dir)
        fd = os.open(_lock(run_dir), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))


def release_run_dir(run_dir: str) -> None:
    """Drop this process's claim on the run folder (at the end of training, however it ends)."""
    if _claimant(run_dir) == os.getpid():
        with contextlib.suppress(OSError):
            os.unlink(_lock(run_dir))


DATA_HEALTH = "data_health.json"  # the pre-flight scan's data health (toolkit.datasets.health), in the run folder


def write_run_files(recipe, model, epochs_done: int, say, health: dict | None = None) -> None:
    """recipe.yaml, param_groups.txt and data_health.json (with the scan's `health`); metrics.jsonl trimmed
    back to the checkpoint's epochs."""
    run_dir, t = recipe.run_dir, recipe.train
    atomic_write(os.path.join(run_dir, "recipe.yaml"), recipe_mod.dump(recipe))
    if health is not None:
        atomic_write(os.path.join(run_dir, DATA_HEALTH), json.dumps(health, indent=1) + "\n")
    table = model_mod.param_group_table(model, model_mod.group_learning_rates(t), model_mod.trainable_from(t))
    atomic_write(os.path.join(run_dir, "param_groups.txt"), table + "\n")
    say(table)
    truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), epochs_done, say)


RESUME_HINT = "free some space, then continue the run with toolkit train RECIPE --resume"


def _metrics_epoch(line: str):
    """A metrics.jsonl line's epoch, or None when the line is not a whole record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def truncate_metrics(path: str, epochs_done: int, say=print) -> None:
    """After a crash the metrics log may run ahead of the checkpoint: keep only what the checkpoint saw.
    A torn last line (a write cut off by a crash or a full disk) is dropped with a note; a broken line
    before the end is not a torn write, so it is an error."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [line for line in fh if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        epoch = _metrics_epoch(line)
        if epoch is None and number == len(lines):
            say(f"note: {path}: dropped a half-written last line (line {number}: {line.strip()[:40]!r})")
        elif epoch is None:
            raise UserError(f"{path}: line {number} is not a metrics record ({line.strip()[:40]!r}); expected one "
                            "JSON object with an 'epoch' per line: delete that line (the checkpoint keeps the "
                            "run's history) and resume again")
        elif epoch <= epochs_done:
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write(path, "".join(kept), then=RESUME_HINT)


def write_distill(run_dir: str, info: dict) -> None:
    """distill.json: the teacher, alpha, T, cached or per-batch logits (and the cache's cost), the images."""
    atomic_write(os.path.join(run_dir, "distill.json"), json.dumps(info, indent=1) + "\n")


def read_metrics(run_dir: str) -> list:
    """A finished run's metrics.jsonl: one record per epoch, in order."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def append_metrics(run_dir: str, record: dict) -> None:
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise write_failure(path, exc, RESUME_HINT + " (a half-written last line is dropped then)") from None


def write_summary(recipe, dataset, device, state, started: float, quiet: bool, world: int = 1) -> dict:
    """summary.json (with the test split's scores of best.pt when `dataset` has one) and the closing lines."""
    _, best_path = checkpoint_paths(recipe.run_dir)
    summary = {"run": recipe.run_dir, "best_checkpoint": best_path, "best_epoch": state.best_epoch,
               "val_top1": state.best_top1, "epochs_run": state.epoch, "processes": world, "wall_time_s": None}
    if dataset is not None and dataset.test:
        test = evaluate_checkpoint(best_path, dataset=dataset, split="test", device=str(device), quiet=True)
        summary.update(test_top1=test["top1"], test_top5=test["top5"], test_mean_per_class=test["mean_per_class"])
    if dataset is not None:
        best, _ = model_mod.model_from_checkpoint(best_path)
        calibrate_run(best, recipe, dataset, pick_device(str(device)), recipe.run_dir,
                      say=(lambda *a: None) if quiet else print, checkpoint=best_path)
    summary["wall_time_s"] = round(time.time() - started, 1)
    atomic_write(os.path.join(recipe.run_dir, "summary.json"), json.dumps(summary, indent=2) + "\n",
                 then=RESUME_HINT)
    if not quiet:
        print(f"\ndone in {summary['wall_time_s']:.0f}s: best val top-1 {state.best_top1:.2f}% at epoch "
              f"{state.best_epoch}" + (f", test top-1 {summary['test_top1']:.2f}%" if "test_top1" in summary else ""))
        print(f"  run folder  {recipe.run_dir}/  (recipe.yaml, metrics.jsonl, param_groups.txt, curves.png, "
              f"confusion.png)")
        print(f"  checkpoint  {best_path}")
        print(f"  next        toolkit export {shlex.quote(recipe.run_dir)}")   # pastes as it reads
    return summary
