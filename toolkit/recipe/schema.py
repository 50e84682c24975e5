"""Recipe schema (dataclasses), loading, command-line overrides and validation.

A recipe is a YAML file. It is checked completely before any model is built: every problem is
reported at once, one line each, naming the dotted key and what was expected; an unknown key
suggests the nearest valid one. No torch here (see DESIGN.md).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from toolkit.errors import UserError
from toolkit.preprocess import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
SOURCES = ("folder", "flowers102", "digits")
HEADS = ("classic", "gap")
STRATEGIES = ("linear-probe", "finetune", "scratch")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")
GROUPS = ("block1", "block2", "block3", "block4", "block5", "head")


@dataclass
class DataConfig:
    source: str = "folder"  # folder | flowers102 | digits
    root: str = "data"  # folder: the image folder; flowers102: where to download it
    download: bool = True  # flowers102: fetch it when missing
    val_fraction: float = 0.2  # held out of train when there is no val/ split
    test_fraction: float = 0.0  # held out of train when there is no test/ split
    classes: Optional[list] = None  # keep only these classes (folder names, or digits 0-9)
    labels_per_class: Optional[int] = None  # keep at most N training images per class
    image_size: int = 32  # digits: the size the 8x8 scans are rendered at
    skip_corrupt: bool = False  # skip unreadable images (reported) instead of stopping
    max_pixels: int = 40_000_000  # images above this are refused before decoding
    workers: int = 2  # data-loader worker processes
    split_seed: int = 0  # seed of the train/val/test split and the label subsampling


@dataclass
class PreprocessConfig:
    resize: int = 256  # shorter side, pixels
    crop: int = 224  # square center crop: the network's input size
    interpolation: str = "bilinear"
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class ModelConfig:
    arch: str = "vgg16"  # any torchvision VGG, _bn variants included
    weights: str = "imagenet"  # imagenet | none | a .pth state dict | a toolkit checkpoint (.pt)
    head: str = "classic"  # classic: Flatten-512-ReLU-Dropout-classes; gap: any input size
    hidden: int = 512  # classic head's hidden width
    dropout: float = 0.5


@dataclass
class TrainConfig:
    strategy: str = "finetune"  # linear-probe | finetune | scratch
    trainable_blocks: list = field(default_factory=lambda: [1, 2, 3, 4, 5])  # finetune: conv blocks that train
    freeze_epochs: int = 0  # finetune: head-only epochs before the blocks unfreeze
    epochs: int = 10
    batch_size: int = 32  # the global batch: under torchrun it is split across the processes
    optimizer: str = "sgd"  # sgd (with momentum) | adamw
    lr: float = 0.01  # the head's learning rate
    lr_decay: float = 0.5  # each block's rate = the next block's rate x this (discriminative LRs)
    group_lrs: Optional[dict] = None  # or explicit rates, e.g. {block1: 1e-4, head: 1e-2}
    lr_scaling: str = "none"  # none | linear | sqrt: scale every rate by (batch_size / lr_reference_batch)^1 or ^0.5
    lr_reference_batch: Optional[int] = None  # the global batch the rates above were chosen for
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine (with warmup_epochs) | constant
    warmup_epochs: float = 1.0  # cosine: linear warm-up length
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None  # max gradient norm
    amp: str = "auto"  # CUDA only: auto (bf16 where supported) | bf16 | fp16 | off
    channels_last: bool = True  # CUDA only
    device: str = "auto"  # auto | cpu | cuda | mps
    eval_every: int = 1  # validate every N epochs (and after the last)
    save_every: int = 1  # rewrite last.pt every N epochs: a kill -9 loses at most this many
    early_stopping: Optional[int] = None  # stop after N validations without a better val top-1
    nan_patience: int = 3  # stop after this many non-finite steps
    deterministic: bool = False  # bit-reproducible kernels (slower)
    sync_batchnorm: bool = False  # distributed, _bn archs, CUDA: BatchNorm statistics over the global batch
    dist_timeout: float = 1800  # distributed: seconds a process waits for the others before giving up


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: Optional[dict] = None  # albumentations' own serialised Compose; null = the default
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out_dir, self.name)


CHOICES = {
    "data.source": SOURCES, "preprocess.interpolation": tuple(INTERPOLATIONS), "model.arch": ARCHS,
    "model.head": HEADS, "train.strategy": STRATEGIES, "train.optimizer": OPTIMIZERS,
    "train.schedule": SCHEDULES, "train.lr_scaling": LR_SCALINGS, "train.amp": AMP_MODES, "train.device": DEVICES,
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is not None:
        return origin.__name__
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "list": "a list", "dict": "a mapping"}.get(tp.__name__, tp.__name__)


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value) for a YAML value against a field's annotation; ints widen to floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return True, None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                ok, v = _coerce(value, arg)
                if ok:
                    return True, v
        return False, value
    base = origin or tp
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if base is bool:
        return isinstance(value, bool), value
    if base is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    return isinstance(value, base), value


def _build(cls: type, raw: Any, prefix: str, errors: list[str]) -> Any:
    """Dataclass `cls` from mapping `raw`, appending one line per problem to `errors`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            errors.append(f"{dotted}: unknown key{hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted + ".", errors)
            continue
        ok, value = _coerce(value, tp)
        if not ok:
            errors.append(f"{dotted}: expected {_type_name(tp)}, got {value!r}")
            continue
        kwargs[key] = value
    return cls(**kwargs)


def _check(recipe: Recipe, errors: list[str], check_paths: bool = True) -> None:
    """Value checks that types alone don't catch. check_paths=False skips checks of files on disk."""
    def err(key, msg):
        errors.append(f"{key}: {msg}")

    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if value not in choices:
            near = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            err(key, f"{value!r} is not one of {', '.join(choices)}{hint}")

    if not recipe.name or any(c in recipe.name for c in "/\\") or recipe.name.startswith("."):
        err("name", f"{recipe.name!r}; expected a plain name without slashes (it names runs/<name>/)")
    d, p, m, t = recipe.data, recipe.preprocess, recipe.model, recipe.train
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
        err("data.root", f"{d.root!r} is not a folder; expected a folder of class sub-folders")

    if p.crop < 32 or p.resize < p.crop:
        err("preprocess.crop", f"crop {p.crop} with resize {p.resize}; expected 32 <= crop <= resize "
                               "(VGG halves the input five times)")
    for key in ("mean", "std"):
        vals = getattr(p, key)
        if len(vals) != 3 or not all(isinstance(v, (int, float)) for v in vals):
            err(f"preprocess.{key}", f"{vals!r}; expected three numbers (R, G, B)")
        elif key == "std" and min(vals) <= 0:
            err("preprocess.std", f"{vals!r}; expected positive numbers")
    if m.head == "classic" and p.crop % 32:
        err("preprocess.crop", f"{p.crop}; the classic head flattens VGG's 1/32 feature map, so crop "
                               "must be a multiple of 32 (or use model.head: gap)")

    if recipe.augment is not None and "transform" not in recipe.augment:
        err("augment", "expected albumentations' serialised form (a mapping with 'transform'), or null "
                       "for the default; write it with albumentations.to_dict(Compose([...]))")

    weights = str(m.weights)
    if check_paths and weights not in ("imagenet", "none") and not os.path.isfile(weights):
        err("model.weights", f"{weights!r} is not a file; expected imagenet, none, a .pth state dict "
                             "or a toolkit checkpoint")
    if m.hidden < 1:
        err("model.hidden", f"{m.hidden}; expected a positive integer")
    if not 0 <= m.dropout < 1:
        err("model.dropout", f"{m.dropout}; expected 0 <= x < 1")

    if t.strategy == "scratch" and weights != "none":
        err("model.weights", f"{weights!r} with train.strategy: scratch; scratch starts from random "
                             "weights, so set model.weights: none")
    if t.strategy != "scratch" and weights == "none":
        err("train.strategy", f"{t.strategy!r} with model.weights: none; a {t.strategy} needs pretrained "
                              "weights (use strategy: scratch to train from random weights)")
    blocks = t.trainable_blocks
    if not all(isinstance(b, int) and 1 <= b <= 5 for b in blocks):
        err("train.trainable_blocks", f"{blocks!r}; expected block numbers from 1 to 5")
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
    if t.group_lrs is not None:
        for key, value in t.group_lrs.items():
            if key not in GROUPS:
                near = difflib.get_close_matches(str(key), GROUPS, n=1, cutoff=0.5)
                hint = f"; did you mean '{near[0]}'?" if near else f"; expected one of {', '.join(GROUPS)}"
                err(f"train.group_lrs.{key}", f"unknown group{hint}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                err(f"train.group_lrs.{key}", f"{value!r}; expected a non-negative number")
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
    if t.lr_reference_batch is not None and t.lr_reference_batch < 1:
        err("train.lr_reference_batch", f"{t.lr_reference_batch}; expected a positive integer or null")
    elif t.lr_scaling != "none" and t.lr_scaling in LR_SCALINGS and t.lr_reference_batch is None:
        err("train.lr_reference_batch", f"null with train.lr_scaling: {t.lr_scaling}; expected the global batch "
                                        "size your learning rates were chosen for, e.g. 32")
    if t.sync_batchnorm and not m.arch.endswith("_bn"):
        err("train.sync_batchnorm", f"true, but model.arch {m.arch} has no BatchNorm layers; expected a _bn arch "
                                    f"(e.g. {m.arch}_bn) or false")
    if t.dist_timeout <= 0:
        err("train.dist_timeout", f"{t.dist_timeout}; expected a positive number of seconds")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3). Values are read as YAML."""
    if "=" not in text:
        raise UserError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, _, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise UserError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return raw


def from_dict(raw: Any, source: str = "recipe", check_paths: bool = True) -> Recipe:
    """Build and validate a Recipe; raise one UserError listing every problem.

    check_paths=False is for a recipe read back from a checkpoint on another machine."""
    errors: list[str] = []
    recipe = _build(Recipe, raw, "", errors)
    # Value checks run too, so every problem shows at once; a key already reported isn't repeated.
    reported = {e.split(":")[0] for e in errors}
    checks: list[str] = []
    _check(recipe, checks, check_paths)
    broken_sections = {key for key in reported if "." not in key}  # a whole section was not a mapping
    errors += [e for e in checks if e.split(":")[0] not in reported
               and e.split(":")[0].split(".")[0] not in broken_sections]
    if errors:
        head = f"{source}: {len(errors)} problem{'s' if len(errors) > 1 else ''}"
        raise UserError(head + "\n" + "\n".join(f"  {e}" for e in errors))
    return recipe


def load(path: str, overrides: list[str] | tuple = ()) -> Recipe:
    """Read a recipe file, apply KEY=VALUE overrides, validate."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such recipe file; expected a YAML recipe such as recipes/flowers.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of recipe keys at the top level")
    raw = apply_overrides(raw, list(overrides))
    return from_dict(raw, source=path)


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
