"""What `--resume` takes from the recipe it is given (the file and its KEY=VALUE overrides).

A resume continues the run as it was started: its recipe is the one saved in last.pt. The recipe given
is compared with it key by key, and each key that differs is one of three kinds:
- applied: the few a resume may change (train longer, another machine, other loader processes);
- refused: what would change the model or the data it learns from (model.*, preprocess.*, and the data
  keys that choose the classes and the splits): one UserError listing them, before anything is loaded;
- every other key (lr, seed, augment, ...) is ignored, and each one is said, one line per key.
`name` and `out_dir` pick the run folder itself: they are the given ones, never compared.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from toolkit.errors import UserError
from toolkit.recipe import Recipe, to_dict

APPLIED = ("train.epochs", "train.device", "train.dist_timeout", "train.save_every", "data.workers",
           "data.download")
REFUSED_SECTIONS = ("model", "preprocess")
REFUSED_DATA = ("data.source", "data.root", "data.classes", "data.labels_per_class", "data.val_fraction",
                "data.test_fraction", "data.split_seed", "data.image_size", "data.dedupe", "data.unlabeled")
_RUN_FOLDER = ("name", "out_dir")


def _flat(recipe: Recipe) -> dict[str, Any]:
    """section.key -> value for the recipe's sections; top-level keys (seed, augment) as they are."""
    flat = {}
    for key, value in to_dict(recipe).items():
        if isinstance(value, dict) and key != "augment":
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "data.root" and isinstance(a, str) and isinstance(b, str):
        return os.path.realpath(a) == os.path.realpath(b)  # one folder, named from another cwd
    return a == b


def changes(given: Recipe, saved: Recipe) -> dict[str, tuple[Any, Any]]:
    """key -> (the run's value, the given value) for every key that differs."""
    mine, theirs = _flat(given), _flat(saved)
    return {key: (theirs.get(key), value) for key, value in mine.items()
            if key not in _RUN_FOLDER and not _same(key, theirs.get(key), value)}


def _refused(key: str) -> bool:
    return key.split(".")[0] in REFUSED_SECTIONS or key in REFUSED_DATA


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(given: Recipe, saved: Recipe, say: Callable[[str], None]) -> None:
    """Refuse a resume whose recipe would change the model or its data (one UserError, a line per key);
    say each applied change and each ignored key, one line per key."""
    found = changes(given, saved)
    refused = [key for key in found if _refused(key)]
    if refused:
        lines = [f"  {key}: {_show(found[key][1])} (the run's: {_show(found[key][0])})" for key in refused]
        raise UserError(f"{given.run_dir}: --resume cannot change the model or its data; the run was started "
                        "with other values for:\n" + "\n".join(lines) + "\nresume without these changes, or "
                        "start a new run (another name=, or --overwrite)")
    for key, (was, now) in found.items():
        if key in APPLIED:
            say(f"resume: {key} {_show(was)} -> {_show(now)}")
        else:
            say(f"resume: ignored {key}={_show(now)}; the run keeps {_show(was)} (a resume continues the run "
                "as it was started)")


def resumed_recipe(given: Recipe, saved: Recipe) -> Recipe:
    """The saved recipe with the APPLIED keys (and the run folder) taken from the given one."""
    saved.name, saved.out_dir = given.name, given.out_dir  # the folder last.pt was read from
    for key in APPLIED:
        section, name = key.split(".")
        setattr(getattr(saved, section), name, getattr(getattr(given, section), name))
    return saved


def check_unfinished(recipe: Recipe, state) -> None:
    """--resume of a run that ran all its epochs, or stopped early, and wrote its summary would train nothing and
    write its calibration and report again: one error, before the data scan, saying how to go on instead.
    A run stopped after its last epoch but before its summary (a signal while validating) resumes to write it.
    `state`: last.pt's RunState."""
    t = recipe.train
    if state.step_in_epoch:
        return   # stopped inside an epoch: that epoch is left to finish
    if not os.path.isfile(os.path.join(recipe.run_dir, "summary.json")):
        return   # stopped after its last epoch, before the summary, calibration and report: a resume writes them
    if t.early_stopping and state.stale_evals >= t.early_stopping:
        raise UserError(f"{recipe.run_dir}: the run stopped early (no better val top-1 in {state.stale_evals} "
                        f"validations, train.early_stopping {t.early_stopping}, which a resume keeps); nothing to "
                        "resume. Expected --overwrite to train it again, or a new run (name=<new>)")
    if state.epoch >= t.epochs:
        raise UserError(f"{recipe.run_dir}: the run ran all {state.epoch} epochs; nothing to resume. Expected "
                        f"train.epochs above {state.epoch} to train on (e.g. --resume train.epochs="
                        f"{state.epoch + 10}), or --overwrite to train it again")
