"""Checkpoints: tensors and plain types only, written atomically, read with weights_only=True.

weights_only=True keeps a hostile pickle from running code, but a file can still be a valid pickle of
the wrong shape (no 'recipe', 'model' an int, a list at the top). `check_structure` turns every such
file into one UserError naming what is missing or of the wrong type, before anything indexes into it.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping

import torch

from toolkit.artifacts import atomic_path
from toolkit.errors import UserError, first_line

FORMAT = "toolkit-checkpoint/1"

# What every toolkit checkpoint holds (best.pt and last.pt): key -> (type, what it should be).
REQUIRED = {"model": (Mapping, "a state dict (a mapping of names to tensors)"),
            "labels": (list, "the list of class names"), "recipe": (Mapping, "the training recipe as a mapping")}
# What last.pt adds, to resume from.
RESUME = {"optimizer": (Mapping, "the optimizer's state dict"), "run_state": (Mapping, "the run's progress"),
          "rng": (Mapping, "the random number generators' states"), "metrics": (Mapping, "the last validation"),
          "scaler": (Mapping, "the gradient scaler's state")}
# RunState's fields (toolkit.train.state) -> (types, what).
RUN_STATE_TYPES = {"epoch": (int, "an integer"), "step_in_epoch": (int, "an integer"),
                   "global_step": (int, "an integer"), "best_top1": ((int, float), "a number"),
                   "best_epoch": (int, "an integer"), "stale_evals": (int, "an integer"),
                   "best_confusion": ((list, type(None)), "a list or None"), "history": (list, "a list")}


def save_checkpoint(path: str, state: dict) -> None:
    """Write `state` to `path` so that a crash at any moment leaves either the old file or the new one.
    A failed write (disk full, ...) is one UserError naming `path`; the old file stays as it was."""
    kept = f"the previous {os.path.basename(path)} is intact: " if os.path.isfile(path) else ""
    resumable = os.path.isfile(os.path.join(os.path.dirname(path), "last.pt"))
    then = kept + ("free some space, then continue the run with toolkit train RECIPE --resume" if resumable
                   else "free some space and train again")
    # Through a Python file: a full disk then raises OSError(ENOSPC) rather than torch's bare RuntimeError.
    with atomic_path(path, then) as tmp, open(tmp, "wb") as fh:
        try:
            torch.save({"format": FORMAT, **state}, fh)
        except RuntimeError as exc:
            raise UserError(f"{path}: could not write it ({first_line(exc, 160)}); {then}") from None


def _problems(state: Mapping, fields: dict) -> list[str]:
    out = []
    for key, (kind, what) in fields.items():
        if key not in state:
            out.append(f"'{key}' is missing (expected {what})")
        elif not isinstance(state[key], kind):
            out.append(f"'{key}' is {type(state[key]).__name__}; expected {what}")
    return out


def _resume_problems(state: Mapping) -> list[str]:
    problems = _problems(state, RESUME)
    run_state = state.get("run_state")
    if isinstance(run_state, Mapping):
        for key, value in run_state.items():
            kind, what = RUN_STATE_TYPES.get(key, (None, ""))
            if kind is None:
                problems.append(f"'run_state' has an unknown key {str(key)[:40]!r}")
            elif not isinstance(value, kind) or isinstance(value, bool):
                problems.append(f"'run_state.{key}' is {type(value).__name__}; expected {what}")
    rng = state.get("rng")
    if isinstance(rng, Mapping):
        shapes = {"torch": (torch.Tensor, 0), "numpy": ((list, tuple), 5), "python": ((list, tuple), 3)}
        for key, (kind, length) in shapes.items():
            if not isinstance(rng.get(key), kind) or (length and len(rng[key]) != length):
                problems.append(f"'rng.{key}' is missing or malformed")
    return problems


def check_structure(state, path: str, resume: bool = False, prefix: str = "") -> None:
    """Raise one UserError listing what a loaded checkpoint lacks or holds with the wrong type.
    resume=True also checks what last.pt needs to continue a run; `prefix` leads the message
    (e.g. 'model.weights: ')."""
    if not isinstance(state, Mapping):
        raise UserError(f"{prefix}{path}: holds a {type(state).__name__}; expected a toolkit checkpoint (a mapping "
                        "written by toolkit train)")
    problems = _problems(state, REQUIRED)
    model = state.get("model")
    if isinstance(model, Mapping):
        bad = next((k for k, v in model.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            problems.append(f"'model' holds {type(model[bad]).__name__} at {str(bad)[:40]!r}; expected tensors only")
    labels = state.get("labels")
    if isinstance(labels, list) and (not labels or not all(isinstance(x, (str, int)) for x in labels)):
        problems.append("'labels' must be a non-empty list of class names")
    if resume:
        problems += _resume_problems(state)
    if problems:
        raise UserError(f"{prefix}{path}: not a complete toolkit checkpoint: {'; '.join(problems[:4])}"
                        f"{f' (and {len(problems) - 4} more)' if len(problems) > 4 else ''}; expected a file "
                        "written by toolkit train")


def load_checkpoint(path: str, map_location: str = "cpu", resume: bool = False) -> dict:
    """Read a toolkit checkpoint; a missing, corrupt, foreign or malformed file is a UserError.
    resume=True also requires what continuing a run needs (optimizer, run state, RNG states)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint; expected runs/<name>/checkpoints/best.pt or last.pt")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) == 4 and head != b"PK\x03\x04" and head[0] != 0x80:   # neither torch's zip nor a legacy pickle
        raise UserError(f"{path}: not a PyTorch checkpoint; expected a checkpoint (.pt) written by toolkit train")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({first_line(exc, 160)}); "
                        "expected a file written by toolkit train") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a toolkit checkpoint (expected format {FORMAT}); "
                        "a plain torchvision state dict belongs in model.weights")
    check_structure(state, path, resume=resume)
    return state


def load_model_state(model, state: Mapping, source) -> None:
    """Load a checkpoint's weights into `model`; weights of another shape are a UserError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        arch = getattr(model, "arch", "the model")
        raise UserError(f"{source}: weights do not fit {arch} ({first_line(exc, 160)}); expected a checkpoint of "
                        "this recipe's model") from None


def load_optimizer_state(optimizer, state: Mapping, source) -> None:
    """Load a checkpoint's optimizer state; one that doesn't match the model's parameters is a UserError."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"{source}: the optimizer state does not fit this model ({first_line(exc, 160)}); "
                        "expected the last.pt this run wrote") from None


