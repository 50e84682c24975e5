"""Recipe loading: YAML file -> KEY=VALUE overrides -> typed dataclasses -> value checks.

A recipe is checked completely before any model is built: every problem is reported at once, one line
each, naming the dotted key and what was expected; an unknown key suggests the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from typing import Any, Union

import yaml

from toolkit.errors import UserError
from toolkit.recipe.archs import fill_defaults
from toolkit.recipe.check import check
from toolkit.recipe.reading import RecipeYAMLError, parse_yaml, read_recipe_file
from toolkit.recipe.schema import Recipe


def short_repr(value: Any, limit: int = 80) -> str:
    """repr cut to `limit` characters: an error line quotes a value, never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        if value is False:  # YAML 1.1 reads a bare `off` (train.amp: off) as false
            return True, "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    return isinstance(value, base), value


def _build(cls: type, raw: Any, prefix: str, errors: list[str], meant: set | None = None) -> Any:
    """Dataclass `cls` from mapping `raw`, appending one line per problem to `errors` (and to `meant` the key
    each misspelt one was probably meant as)."""
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
            if near and meant is not None:
                meant.add(f"{prefix}{near[0]}")
            errors.append(f"{dotted}: unknown key{hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted + ".", errors, meant)
            continue
        ok, value = _coerce(value, tp)
        if not ok:
            errors.append(f"{dotted}: expected {_type_name(tp)}, got {short_repr(value)}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{dotted}: {value}; expected a finite number")
            continue
        kwargs[key] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3). Values are read as YAML (with the recipe file's rules)."""
    if "=" not in text:
        raise UserError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, _, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise UserError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except RecipeYAMLError as exc:
        raise UserError(f"override {key}: {exc.message}") from None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _child(node: Any, part: str, where: str, text: str) -> tuple[Any, Any]:
    """(container, key) for one step of an override's path: a list item by index, else a mapping key."""
    if isinstance(node, list):
        if not part.isdigit():
            raise UserError(f"override {text!r}: {where} is a list; expected an item index 0-{len(node) - 1}, "
                            f"got {part!r}")
        if int(part) >= len(node):
            raise UserError(f"override {text!r}: {where} has {len(node)} item{'s' * (len(node) != 1)}, so index "
                            f"{part} is out of range; expected 0-{len(node) - 1}" if node else
                            f"override {text!r}: {where} is an empty list; there is no item {part} to set")
        return node, int(part)
    return node, part


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set each KEY=VALUE in `raw` (in place, creating sections as needed); return `raw`.

    A numeric part addresses an item of an existing list: augment.transform.transforms.0.size=[64,64]."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[:depth + 1])
            container, key = _child(node, part, ".".join(path[:depth]) or "recipe", text)
            child = container[key] if isinstance(container, list) else container.get(key)
            if path[depth + 1].isdigit() and not isinstance(child, (list, dict)):
                now = "not set in the recipe" if child is None else short_repr(child)
                raise UserError(f"override {text!r}: {where} is {now}; an index ({path[depth + 1]}) needs a list "
                                f"there (write the list in the recipe, or set it whole: {where}=[...])")
            if child is not None and not isinstance(child, (list, dict)):   # was replaced by {} without a word
                raise UserError(f"override {text!r}: {where} is {short_repr(child)} in the recipe, not a mapping; "
                                f"expected a section of keys there")
            if child is None:
                child = container[key] = {}
            node = child
        container, key = _child(node, path[-1], ".".join(path[:-1]) or "recipe", text)
        container[key] = value
    return raw


def from_dict(raw: Any, source: str = "recipe", check_paths: bool = True) -> Recipe:
    """Build and validate a Recipe; raise one UserError listing every problem.

    check_paths=False is for a recipe read back from a checkpoint on another machine."""
    errors: list[str] = []
    meant: set = set()
    recipe = _build(Recipe, fill_defaults(raw), "", errors, meant)  # unset preprocess/head: the arch's (archs.py)
    _expand_home(recipe)
    # Value checks run too, so every problem shows at once; a key already reported isn't repeated.
    reported = {e.split(":")[0] for e in errors}
    # ... nor the key a misspelt one was meant as: `data.rot=photos` left data.root at its default, whose
    # "not a folder" only follows from the misspelling
    checks: list[str] = []
    check(recipe, checks, check_paths)
    broken_sections = {key for key in reported if "." not in key}  # a whole section was not a mapping
    errors += [e for e in checks if e.split(":")[0] not in reported | meant
               and e.split(":")[0].split(".")[0] not in broken_sections]
    if errors:
        head = f"{source}: {len(errors)} problem{'s' if len(errors) > 1 else ''}"
        raise UserError(head + "\n" + "\n".join(f"  {e}" for e in errors))
    return recipe


# The recipe's paths: `~` means the home folder in them, as in a shell (`data.root=~/photos` reaches the
# recipe unexpanded: the shell expands a ~ only at the start of a word).
_PATH_FIELDS = (("data", "root"), ("data", "unlabeled"), ("model", "weights"), ("train", "teacher"), (None, "out_dir"))


def _expand_home(recipe: Recipe) -> None:
    for section, key in _PATH_FIELDS:
        owner = getattr(recipe, section) if section else recipe
        value = getattr(owner, key, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(owner, key, os.path.expanduser(value))


def load(path: str, overrides: list[str] | tuple = ()) -> Recipe:
    """Read a recipe file (toolkit.recipe.reading), apply KEY=VALUE overrides, validate."""
    raw = read_recipe_file(path)
    if raw is None:  # an empty file (or only comments) would train on every default: data.root 'data', VGG16
        raise UserError(f"{path}: the recipe is empty; expected a mapping of recipe keys "
                        "(data:, model:, train: ...; docs/recipes.md)")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of recipe keys at the top level")
    raw = apply_overrides(raw, [overrides] if isinstance(overrides, str) else list(overrides))  # one, not its letters
    return from_dict(raw, source=path)


def to_dict(recipe: Recipe) -> dict:
    """Plain types only: what a checkpoint and the ONNX metadata store."""
    return dataclasses.asdict(recipe)


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML, in schema order (runs/<name>/recipe.yaml)."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
