"""Recipe files from anyone: every file-level failure is one clear UserError, fast; list-index overrides."""
import os
import sys
import time

import pytest

from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.recipe.reading import MAX_BYTES, MAX_DEPTH

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]) + "\n"
DIGITS = ("data: {source: digits}\npreprocess: {resize: 32, crop: 32}\nmodel: {weights: none}\n"
          "train: {strategy: scratch}\n")


def _write(tmp_path, content, name="r.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def _load_error(path, overrides=()) -> str:
    with pytest.raises(UserError) as info:
        recipe_mod.load(path, list(overrides))
    return str(info.value)


@pytest.mark.parametrize("where", ["data:\n  classes: *i\n", "augment:\n  transform: *i\n"])
def test_alias_bomb_is_refused_in_milliseconds(tmp_path, where):
    path = _write(tmp_path, BILLION_LAUGHS + where)
    started = time.perf_counter()
    text = _load_error(path)
    assert time.perf_counter() - started < 0.5
    assert "line 2: YAML alias *a" in text and "not allowed in a recipe" in text


def test_merge_keys_use_aliases_and_are_refused_too(tmp_path):
    path = _write(tmp_path, "base: &base {epochs: 3}\ntrain:\n  <<: *base\n")
    assert "YAML alias *base" in _load_error(path)


def test_a_key_written_twice_and_an_override_into_a_value_are_refused(tmp_path):
    """Two `train:` blocks silently dropped the first (and its mistakes); `train: 5` plus a train.x override
    silently became a mapping."""
    path = _write(tmp_path, DIGITS + "train:\n  epochs: 3\n")
    assert "line 5: key 'train' appears twice in this mapping (first at line 4)" in _load_error(path)
    path = _write(tmp_path, DIGITS.replace("train: {strategy: scratch}", "train: {lr: 0.1, lr: 0.2}"), "twice.yaml")
    assert "key 'lr' appears twice" in _load_error(path)
    path = _write(tmp_path, DIGITS.replace("train: {strategy: scratch}", "train: 5"), "five.yaml")
    assert "train is 5 in the recipe, not a mapping" in _load_error(path, ["train.epochs=3"])


def test_deep_nesting_is_bounded_before_recursion(tmp_path):
    path = _write(tmp_path, "augment: " + "[" * 5000 + "]" * 5000 + "\n")
    text = _load_error(path)
    assert f"nested more than {MAX_DEPTH} levels deep" in text and "RecursionError" not in text
    # the same depth with mappings, and just under the bound is fine
    assert "levels deep" in _load_error(_write(tmp_path, "augment: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n"))
    ok = "augment: {transform: " + "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3) + "}\n"
    try:  # it may still fail for another reason (no data/ folder where the test runs), never for its depth
        recipe_mod.load(_write(tmp_path, ok), [])
    except UserError as exc:
        assert "levels deep" not in str(exc)


def test_huge_integers_are_one_clear_error(tmp_path):
    assert sys.get_int_max_str_digits() < 5000  # Python itself refuses to parse these: not a bare ValueError here
    text = _load_error(_write(tmp_path, "seed: " + "9" * 5000 + "\n"))
    assert "line 1: integer 999999999999...9999 (5000 digits) is too large" in text
    text = _load_error(_write(tmp_path, "train:\n  epochs: 99999999999999999999\n"))
    assert "line 2: integer" in text and "too large" in text
    assert "too large" in _load_error(_write(tmp_path, DIGITS), ["train.epochs=" + "1" * 5000])


@pytest.mark.parametrize("content, expected", [
    ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 (byte 0xe9 at line 1)"),
    ("name: x\n".encode("utf-16"), "the file is UTF-16 (it starts with a UTF-16 byte-order mark)"),
    ("name: x\n".encode("utf-32"), "the file is UTF-32"),
    ("name: x\n".encode("utf-16-le"), "NUL byte at line 1"),
    (b"name: \x01x\n", "not valid YAML: unacceptable character #x0001"),
])
def test_encodings_other_than_utf8_are_one_clear_error(tmp_path, content, expected):
    text = _load_error(_write(tmp_path, content))
    assert expected in text and "\n" not in text


def test_utf8_with_bom_is_read(tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbf" + DIGITS.encode() + "name: caf\xe9\n".encode())
    assert recipe_mod.load(path).name == "caf\xe9"


def test_file_level_problems(tmp_path):
    assert "not a regular file" in _load_error(str(tmp_path))
    assert "larger than" in _load_error(_write(tmp_path, "#" * (MAX_BYTES + 1)))
    assert "expected a mapping of recipe keys" in _load_error(_write(tmp_path, "- a\n- b\n"))
    assert "not valid YAML at line" in _load_error(_write(tmp_path, "a: 1\n---\nb: 2\n"))
    # an empty file, or one of comments only, would otherwise train on every default (data.root 'data')
    for text in ("", "# my recipe\n", "---\n"):
        assert "the recipe is empty" in _load_error(_write(tmp_path, text))


def test_nan_and_inf_are_refused_with_the_other_problems(tmp_path):
    content = DIGITS + "preprocess2: 1\n"
    path = _write(tmp_path, content.replace("train: {strategy: scratch}",
                                            "train: {strategy: scratch, lr: .nan, momentum: .inf, "
                                            "group_lrs: {head: -.inf}}")
                  .replace("preprocess: {resize: 32, crop: 32}", "preprocess: {resize: 32, crop: 32, "
                                                                    "mean: [0.5, .nan, 0.5], std: [1.0e+999, 1, 1]}"))
    lines = _load_error(path).splitlines()[1:]
    text = "\n".join(lines)
    assert "train.lr: nan; expected a finite number" in text
    assert "train.momentum: inf; expected a finite number" in text
    assert "preprocess.mean: holds nan; expected finite numbers" in text
    assert "preprocess.std: holds inf; expected finite numbers" in text
    assert "train.group_lrs.head: -inf; expected a finite, non-negative number" in text
    assert "preprocess2: unknown key; did you mean 'preprocess'?" in text  # collected with the rest
    assert len(lines) == 6, lines
    assert "train.lr: nan" in _load_error(_write(tmp_path, DIGITS), ["train.lr=.nan"])


@pytest.mark.parametrize("name, expected", [
    ('"a\\0b"', "holds the control character '\\x00'"),
    ('"a\\nb"', "holds the control character '\\n'"),
    ("x" * 300, "is 300 bytes long; expected at most 100"),
    ("a/b", "expected a plain name without slashes"),
    ('"a\\\\b"', "expected a plain name without slashes"),
    ("..", "starts with a dot; expected a plain name that does not"),
    (".hidden", "starts with a dot; expected a plain name that does not"),   # it said "without slashes"
])
def test_names_that_cannot_be_file_names(tmp_path, name, expected):
    text = _load_error(_write(tmp_path, DIGITS + f"name: {name}\n"))
    assert "name: " in text and expected in text
    assert len(text) < 400  # a 300-character name is quoted cut short


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_out_dir_that_cannot_hold_run_folders(tmp_path):
    text = _load_error(_write(tmp_path, DIGITS + "out_dir: /proc\n"))
    assert "out_dir: '/proc': cannot make folders in /proc" in text
    (tmp_path / "file").write_text("")
    text = _load_error(_write(tmp_path, DIGITS + f"out_dir: {tmp_path / 'file' / 'runs'}\n"))
    assert "is not a folder" in text
    # a folder that does not exist yet, under a writable one, is fine (and the probe leaves nothing behind)
    recipe_mod.load(_write(tmp_path, DIGITS + f"out_dir: {tmp_path / 'new' / 'runs'}\n"))
    assert sorted(os.listdir(tmp_path)) == ["file", "r.yaml"]


AUGMENT = """augment:
  transform:
    __class_fullname__: Compose
    p: 1.0
    transforms:
    - {__class_fullname__: RandomResizedCrop, size: [32, 32], p: 1.0}
    - {__class_fullname__: HorizontalFlip, p: 0.5}
"""


def test_overrides_address_list_items(tmp_path):
    path = _write(tmp_path, DIGITS + AUGMENT)
    recipe = recipe_mod.load(path, ["augment.transform.transforms.0.size=[64,64]",
                                    "augment.transform.transforms.1.p=0.25"])
    transforms = recipe.augment["transform"]["transforms"]
    assert transforms[0]["size"] == [64, 64] and transforms[1]["p"] == 0.25
    assert transforms[0]["__class_fullname__"] == "RandomResizedCrop"  # the rest of the item is kept
    recipe = recipe_mod.load(path, ["data.classes=[1, 2, 3]", "data.classes.2=7"])
    assert recipe.data.classes == [1, 2, 7]


def test_list_index_override_errors_name_the_list(tmp_path):
    path = _write(tmp_path, DIGITS + AUGMENT)
    text = _load_error(path, ["augment.transform.transforms.5.size=[64,64]"])
    assert "augment.transform.transforms has 2 items, so index 5 is out of range; expected 0-1" in text
    text = _load_error(path, ["augment.transform.transforms.first.p=1"])
    assert "augment.transform.transforms is a list; expected an item index 0-1, got 'first'" in text
    text = _load_error(_write(tmp_path, DIGITS), ["augment.transform.transforms.0.size=[64,64]"])
    assert "augment.transform.transforms is not set in the recipe; an index (0) needs a list there" in text


def test_override_values_follow_the_file_rules(tmp_path):
    path = _write(tmp_path, DIGITS)
    assert "override data.classes: nested more than" in _load_error(path, ["data.classes=" + "[" * 500])
    assert "YAML alias" in _load_error(path, ["data.classes=[&a 1, *a]"])
