"""Reading a recipe file's text safely: size, encoding, and YAML without aliases, bounded in depth and ints.

A recipe comes from anyone, so reading it must fail fast and clearly on a hostile file: an alias bomb
("billion laughs") is refused at its first alias, before anything is expanded; nesting and integer size
are bounded while the YAML is composed, so neither a RecursionError nor Python's int-string limit can
escape. Every failure is one UserError naming the file, the line and what was expected.
"""
from __future__ import annotations

import codecs
import os
import re
from typing import Any

import yaml

from toolkit.errors import UserError, first_line

MAX_BYTES = 1 << 20  # a recipe is a few KB; albumentations' serialised pipelines stay far below this
MAX_DEPTH = 32  # nesting levels (the shipped recipes use 6; a nested OneOf in augment adds 2 a level)
MAX_INT = 2 ** 63 - 1  # what a seed, a size or a count can sensibly be

# Byte-order marks of the encodings that are not UTF-8 (UTF-32 first: its LE mark starts with UTF-16's).
_FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                 (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


class RecipeYAMLError(yaml.MarkedYAMLError):
    """A YAML construct a recipe may not use (an alias, too deep, a huge integer), with where it is."""

    def __init__(self, mark, message: str):
        super().__init__(problem=message, problem_mark=mark)
        self.message = message


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and bounds the nesting depth while composing (before any expansion)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise RecipeYAMLError(event.start_mark, f"YAML alias *{event.anchor}: aliases (and << merges) are "
                                                    "not allowed in a recipe; write the value out in full")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise RecipeYAMLError(self.peek_event().start_mark,
                                      f"nested more than {MAX_DEPTH} levels deep; expected a recipe's few sections")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        """A key written twice is an error: YAML's own rule kept the last without a word (two `train:`
        blocks dropped the first, mistakes and all)."""
        seen = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise RecipeYAMLError(key_node.start_mark, f"key {key_node.value!r} appears twice in this "
                                          f"mapping (first at line {seen[key_node.value] + 1}); expected it once")
                seen[key_node.value] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _construct_int(loader: _RecipeLoader, node) -> int:
    """YAML ints, refusing huge ones before Python's int() (whose digit limit raises a bare ValueError)."""
    digits = sum(c.isalnum() for c in node.value)
    value = yaml.SafeLoader.construct_yaml_int(loader, node) if digits <= 40 else None
    if value is None or abs(value) > MAX_INT:
        shown = node.value if len(node.value) <= 24 else node.value[:12] + "..." + node.value[-4:]
        raise RecipeYAMLError(node.start_mark, f"integer {shown} ({digits} digits) is too large; "
                                               f"expected at most {MAX_INT}")
    return value


_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
# YAML 1.2 floats without a dot (`lr: 1e-3`): YAML 1.1, which PyYAML follows, reads them as the string
# '1e-3', and `train.lr: expected a number, got '1e-3'` puzzled every user who wrote one.
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    """YAML text -> plain Python values, with the recipe rules above; raises yaml.YAMLError."""
    loader = _RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """'line 3: <problem>' (or the first line of the message when it carries no position)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if isinstance(exc, RecipeYAMLError):
        return f"line {mark.line + 1}: {exc.message}"
    if mark is not None and problem:
        return f"not valid YAML at line {mark.line + 1}: {problem}"
    return f"not valid YAML: {first_line(exc, 160)}"


def decode_recipe(path: str, data: bytes) -> str:
    """The file's text: UTF-8 (an optional UTF-8 BOM is dropped); anything else is a UserError."""
    for bom, name in _FOREIGN_BOMS:
        if data.startswith(bom):
            raise UserError(f"{path}: the file is {name} (it starts with a {name} byte-order mark); expected "
                            "UTF-8: save it as UTF-8")
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise UserError(f"{path}: NUL byte at line {line} (UTF-16 without a byte-order mark, or not text at all); "
                        "expected a UTF-8 YAML file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 (byte 0x{data[exc.start]:02x} at line {line}); expected a UTF-8 "
                        "YAML file: save it as UTF-8") from None


def read_recipe_file(path: str) -> Any:
    """A recipe file's YAML content; every file-level failure is one UserError naming the file."""
    if not os.path.exists(path):
        first = "; the recipe file goes first, then KEY=VALUE overrides" if "=" in str(path) else ""
        raise UserError(f"{path}: no such recipe file; expected a YAML recipe such as recipes/flowers.yaml{first}")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a regular file; expected a YAML recipe such as recipes/flowers.yaml")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{path}: could not be read ({exc.strerror}); expected a readable YAML recipe") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"{path}: larger than {MAX_BYTES // 1024} KB; expected a recipe (a few KB of YAML)")
    text = decode_recipe(path, data)
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: {describe_yaml_error(exc)}") from None
