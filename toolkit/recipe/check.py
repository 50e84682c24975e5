"""Recipe value checks that types alone don't catch, one small function per section.

Every check appends to one list, so all problems are reported at once; each line names the dotted key
and what was expected. The order of the checks is the order of the lines in the error.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, Callable

from toolkit.artifacts import folder_problem, from_here
from toolkit.recipe.archs import ARCH_TABLE, family_problems, has_batchnorm
from toolkit.recipe.schema import CHOICES, GROUPS, LR_SCALINGS, Recipe

Err = Callable[[str, str], None]  # err(dotted key, what is wrong and what was expected)


def check(recipe: Recipe, errors: list[str], check_paths: bool = True) -> None:
    """Append one line per problem to `errors`. check_paths=False skips checks of files on disk."""
    def err(key: str, msg: str) -> None:
        errors.append(f"{key}: {msg}")

    _check_choices(recipe, err)
    _check_name(recipe, err)
    _check_out_dir(recipe, err, check_paths)
    _check_finite(recipe, err)
    _check_data(recipe, err, check_paths)
    _check_preprocess(recipe, err)
    _check_augment(recipe, err)
    _check_model(recipe, err, check_paths)
    _check_family(recipe, err)
    _check_strategy(recipe, err)
    _check_train_schedule(recipe, err)
    _check_group_lrs(recipe, err)
    _check_train_limits(recipe, err)
    _check_distributed(recipe, err)
    _check_distill(recipe, err, check_paths)


def _nearest(value, choices) -> str | None:
    near = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    return near[0] if near else None


def _check_choices(recipe: Recipe, err: Err) -> None:
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if value not in choices:
            near = _nearest(value, choices)
            hint = f" (did you mean '{near}'?)" if near else ""
            err(key, f"{value!r} is not one of {', '.join(choices)}{hint}")


MAX_NAME_BYTES = 100  # runs/<name>/, exports/<name>.report.json and the twins must fit a 255-byte file name


def _check_name(recipe: Recipe, err: Err) -> None:
    name = recipe.name
    shown = repr(name) if len(name) <= 40 else repr(name[:37] + "...")
    control = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if name.startswith("."):   # a hidden folder, and `..` would leave out_dir
        err("name", f"{shown} starts with a dot; expected a plain name that does not (it names runs/<name>/)")
    elif not name or any(c in name for c in "/\\"):
        err("name", f"{shown}; expected a plain name without slashes (it names runs/<name>/)")
    elif control is not None:
        err("name", f"{shown} holds the control character {control!r}; expected a plain name (it names runs/<name>/)")
    elif len(name.encode("utf-8")) > MAX_NAME_BYTES:
        err("name", f"{shown} is {len(name.encode('utf-8'))} bytes long; expected at most {MAX_NAME_BYTES} (it "
                    "names runs/<name>/ and exports/<name>.onnx)")


def _check_out_dir(recipe: Recipe, err: Err, check_paths: bool) -> None:
    """out_dir must be a folder that run folders can be made in (artifacts.folder_problem probes it)."""
    out = recipe.out_dir
    if not out or "\0" in out:
        err("out_dir", f"{out!r}; expected a folder path (where run folders are made)")
        return
    problem = folder_problem(out) if check_paths else None
    if problem:
        err("out_dir", f"{out!r}: {problem}; expected a writable folder where run folders can be made "
                       "(set out_dir=<folder>)")


def _non_finite(value: Any) -> float | None:
    """The first NaN or infinity inside a value (lists and mappings included), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((bad for bad in map(_non_finite, items) if bad is not None), None)


def _check_finite(recipe: Recipe, err: Err) -> None:
    """NaN and infinity in list and mapping values (lone numbers are refused while the recipe is read)."""
    sections = {"": recipe, **{f.name + ".": getattr(recipe, f.name) for f in dataclasses.fields(recipe)
                                if dataclasses.is_dataclass(getattr(recipe, f.name))}}
    for prefix, section in sections.items():
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if prefix + f.name == "train.group_lrs":
                continue  # _check_group_lrs names the group
            if isinstance(value, (list, dict)) and _non_finite(value) is not None:
                err(prefix + f.name, f"holds {_non_finite(value)}; expected finite numbers")


def _check_data(recipe: Recipe, err: Err, check_paths: bool) -> None:
    d = recipe.data
    if not 0 <= d.val_fraction < 1:
        err("data.val_fraction", f"{d.val_fraction}; expected 0 <= x < 1")
    if not 0 <= d.test_fraction < 1 or (0 <= d.val_fraction < 1 and d.val_fraction + d.test_fraction >= 1):
        err("data.test_fraction", f"{d.test_fraction}; expected 0 <= x and val_fraction + test_fraction < 1")
    if d.labels_per_class is not None and d.labels_per_class < 1:
        err("data.labels_per_class", f"{d.labels_per_class}; expected a positive integer or null")
    if d.image_size < 8:
        err("data.image_size", f"{d.image_size}; expected at least 8")
    if d.max_pixels < 1:
        err("data.max_pixels", f"{d.max_pixels}; expected a positive integer")
    if d.workers < 0:
        err("data.workers", f"{d.workers}; expected 0 or more")
    if d.source == "digits" and d.classes is not None:
        bad = [c for c in d.classes if not (isinstance(c, int) and 0 <= c <= 9)]
        if bad or len(set(d.classes)) < 2:
            err("data.classes", f"{d.classes}; digits needs at least two distinct digits from 0 to 9")
    elif d.classes is not None and len(set(map(str, d.classes))) < 2:
        err("data.classes", f"{d.classes}; expected at least two classes")
    if check_paths and d.source == "folder" and not os.path.isdir(d.root):
        err("data.root", f"{from_here(d.root)} is not a folder; expected a folder of class sub-folders")


def _check_preprocess(recipe: Recipe, err: Err) -> None:
    p = recipe.preprocess
    if p.crop < 32 or p.resize < p.crop:
        err("preprocess.crop", f"crop {p.crop} with resize {p.resize}; expected 32 <= crop <= resize "
                               "(VGG halves the input five times)")
    for key in ("mean", "std"):
        vals = getattr(p, key)
        if len(vals) != 3 or not all(isinstance(v, (int, float)) for v in vals):
            err(f"preprocess.{key}", f"{vals!r}; expected three numbers (R, G, B)")
        elif key == "std" and min(vals) <= 0:
            err("preprocess.std", f"{vals!r}; expected positive numbers")
    if recipe.model.head == "classic" and p.crop % 32:
        err("preprocess.crop", f"{p.crop}; the classic head flattens VGG's 1/32 feature map, so crop "
                               "must be a multiple of 32 (or use model.head: gap)")


def _check_augment(recipe: Recipe, err: Err) -> None:
    if recipe.augment is not None and "transform" not in recipe.augment:
        err("augment", "expected albumentations' serialised form (a mapping with 'transform'), or null "
                       "for the default; write it with albumentations.to_dict(Compose([...]))")


def _check_model(recipe: Recipe, err: Err, check_paths: bool) -> None:
    m = recipe.model
    weights = str(m.weights)
    if check_paths and weights not in ("imagenet", "none") and not os.path.isfile(weights):
        err("model.weights", f"{from_here(weights)} is not a file; expected imagenet, none, a .pth state dict "
                             "or a toolkit checkpoint")
    if m.hidden is not None and m.hidden < 1:
        err("model.hidden", f"{m.hidden}; expected a positive integer")
    if not 0 <= m.dropout < 1:
        err("model.dropout", f"{m.dropout}; expected 0 <= x < 1")


def _check_family(recipe: Recipe, err: Err) -> None:
    """VGG-only keys (the classic head, model.hidden) with another backbone family: one line."""
    m = recipe.model
    for key, msg in family_problems(m.arch, m.head, m.hidden):
        err(key, msg)


def _check_strategy(recipe: Recipe, err: Err) -> None:
    """The strategy and the starting weights must agree; the finetune blocks must exist."""
    t, weights = recipe.train, str(recipe.model.weights)
    if t.strategy == "scratch" and weights != "none":
        err("model.weights", f"{weights!r} with train.strategy: scratch; scratch starts from random "
                             "weights, so set model.weights: none")
    if t.strategy != "scratch" and weights == "none":
        err("train.strategy", f"{t.strategy!r} with model.weights: none; a {t.strategy} needs pretrained "
                              "weights (use strategy: scratch to train from random weights)")
    blocks = t.trainable_blocks
    if not all(isinstance(b, int) and 1 <= b <= 5 for b in blocks):
        err("train.trainable_blocks", f"{blocks!r}; expected block numbers from 1 to 5")


def _check_train_schedule(recipe: Recipe, err: Err) -> None:
    t = recipe.train
    if t.epochs < 1:
        err("train.epochs", f"{t.epochs}; expected at least 1")
    if t.freeze_epochs < 0 or (t.freeze_epochs >= t.epochs and t.strategy == "finetune"):
        err("train.freeze_epochs", f"{t.freeze_epochs}; expected 0 <= freeze_epochs < epochs ({t.epochs})")
    if t.batch_size < 1:
        err("train.batch_size", f"{t.batch_size}; expected at least 1")
    if t.lr <= 0:
        err("train.lr", f"{t.lr}; expected a positive number")
    if not 0 < t.lr_decay <= 1:
        err("train.lr_decay", f"{t.lr_decay}; expected 0 < x <= 1")


def _check_group_lrs(recipe: Recipe, err: Err) -> None:
    for key, value in (recipe.train.group_lrs or {}).items():
        if key not in GROUPS:
            near = _nearest(key, GROUPS)
            hint = f"; did you mean '{near}'?" if near else f"; expected one of {', '.join(GROUPS)}"
            err(f"train.group_lrs.{key}", f"unknown group{hint}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            err(f"train.group_lrs.{key}", f"{value!r}; expected a finite, non-negative number")


def _check_train_limits(recipe: Recipe, err: Err) -> None:
    t = recipe.train
    if not 0 <= t.momentum < 1:
        err("train.momentum", f"{t.momentum}; expected 0 <= x < 1")
    if t.weight_decay < 0:
        err("train.weight_decay", f"{t.weight_decay}; expected 0 or more")
    if not 0 <= t.label_smoothing < 1:
        err("train.label_smoothing", f"{t.label_smoothing}; expected 0 <= x < 1")
    if t.grad_clip is not None and t.grad_clip <= 0:
        err("train.grad_clip", f"{t.grad_clip}; expected a positive number or null")
    if t.warmup_epochs < 0:
        err("train.warmup_epochs", f"{t.warmup_epochs}; expected 0 or more")
    if t.early_stopping is not None and t.early_stopping < 1:
        err("train.early_stopping", f"{t.early_stopping}; expected a positive integer or null")
    for key in ("eval_every", "save_every"):
        if getattr(t, key) < 1:
            err(f"train.{key}", f"{getattr(t, key)}; expected a positive integer")
    if t.nan_patience < 1:
        err("train.nan_patience", f"{t.nan_patience}; expected at least 1")
    if t.amp == "fp16" and t.device in ("cpu", "mps"):
        err("train.amp", f"fp16 with train.device: {t.device}; fp16 autocast is CUDA only: expected auto, bf16 or off")


def _check_distributed(recipe: Recipe, err: Err) -> None:
    """Batch-size scaling of the rates, SyncBatchNorm (and freeze_bn) and the process timeout."""
    t, arch = recipe.train, recipe.model.arch
    if t.lr_reference_batch is not None and t.lr_reference_batch < 1:
        err("train.lr_reference_batch", f"{t.lr_reference_batch}; expected a positive integer or null")
    elif t.lr_scaling != "none" and t.lr_scaling in LR_SCALINGS and t.lr_reference_batch is None:
        err("train.lr_reference_batch", f"null with train.lr_scaling: {t.lr_scaling}; expected the global batch "
                                        "size your learning rates were chosen for, e.g. 32")
    for key in ("sync_batchnorm", "freeze_bn"):
        if getattr(t, key) and arch in ARCH_TABLE and not has_batchnorm(arch):
            like = f"a _bn arch (e.g. {arch}_bn)" if arch.startswith("vgg") else "an arch with BatchNorm layers"
            err(f"train.{key}", f"true, but model.arch {arch} has no BatchNorm layers; expected {like} or false")
    if t.dist_timeout <= 0:
        err("train.dist_timeout", f"{t.dist_timeout}; expected a positive number of seconds")


def _check_distill(recipe: Recipe, err: Err, check_paths: bool) -> None:
    """train.teacher and its knobs; data.unlabeled needs a teacher (only the teacher labels those photos)."""
    t, unlabeled = recipe.train, recipe.data.unlabeled
    if not 0 <= t.distill_alpha <= 1:
        err("train.distill_alpha", f"{t.distill_alpha}; expected 0 <= x <= 1 (the weight of the teacher's term)")
    if t.distill_temperature <= 0:
        err("train.distill_temperature", f"{t.distill_temperature}; expected a positive number")
    if t.teacher is not None and check_paths and not os.path.exists(t.teacher):
        err("train.teacher", f"{t.teacher!r}: no such run folder or checkpoint; expected runs/<name> or a .pt file")
    if unlabeled is None:
        return
    if t.teacher is None:
        err("data.unlabeled", f"{unlabeled!r} without train.teacher; only a teacher can label those photos")
    if t.sampler == "balanced":
        err("data.unlabeled", "with train.sampler: balanced; photos without labels have no class to balance, "
                              "so use train.sampler: uniform")
    if check_paths and not os.path.isdir(unlabeled):
        err("data.unlabeled", f"{unlabeled!r} is not a folder; expected a folder of photos without labels")
