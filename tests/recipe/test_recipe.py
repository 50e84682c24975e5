"""Recipes: every shipped recipe validates; every problem is reported at once with the dotted key."""
import glob
import os
import re

import yaml
import subprocess
import sys

import pytest

from toolkit import recipe as recipe_mod
from toolkit.errors import UserError

from conftest import ROOT  # the repository root


def _problems(raw: dict) -> list[str]:
    with pytest.raises(UserError) as info:
        recipe_mod.from_dict(raw)
    return [line.strip() for line in str(info.value).splitlines()[1:]]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml"))))
def test_every_shipped_recipe_is_valid(path, monkeypatch, tmp_path):
    """Shipped recipes validate; paths they name (a source run's checkpoint) are checked on disk, so lay it."""
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(open(path))
    weights = raw.get("model", {}).get("weights", "imagenet")
    if weights not in ("imagenet", "none"):
        os.makedirs(os.path.dirname(weights), exist_ok=True)
        open(weights, "wb").close()
    if raw.get("data", {}).get("source") == "folder":
        os.makedirs(raw["data"]["root"], exist_ok=True)
    recipe = recipe_mod.load(path)
    from toolkit.train.data import build_augment  # the augment block must build, too

    build_augment(recipe)


def test_shipped_flowers_recipe_is_the_documented_one():
    recipe = recipe_mod.load(os.path.join(ROOT, "recipes", "flowers.yaml"))
    assert recipe.data.source == "flowers102"
    assert (recipe.model.arch, recipe.model.weights, recipe.preprocess.crop) == ("vgg16", "imagenet", 224)
    assert recipe.train.freeze_epochs > 0 and recipe.train.lr_decay < 1
    # each key carries a comment
    lines = [ln for ln in open(os.path.join(ROOT, "recipes", "flowers.yaml")) if ":" in ln and not ln.strip().startswith("#")]
    scalar_keys = [ln for ln in lines if not ln.rstrip().endswith(":") and "__" not in ln and "- " not in ln]
    assert sum("#" in ln for ln in scalar_keys) / len(scalar_keys) > 0.8


def test_all_problems_at_once_with_suggestions():
    problems = _problems({
        "data": {"source": "digit", "val_fraction": 1.5},
        "model": {"arhc": "vgg16", "weights": "none"},
        "train": {"epocs": 3, "lr": "fast", "strategy": "scratch", "trainable_blocks": [0, 6]},
    })
    text = "\n".join(problems)
    assert "model.arhc: unknown key; did you mean 'model.arch'?" in text
    assert "train.epocs: unknown key; did you mean 'train.epochs'?" in text
    assert "train.lr: expected a number, got 'fast'" in text
    # the list of sources grows (fashion_mnist ...): the line names the first ones and the nearest
    assert re.search(r"data\.source: 'digit' is not one of folder, flowers102, digits\b.* \(did you mean 'digits'\?\)",
                     text)
    assert any(p.startswith("data.val_fraction:") for p in problems)
    assert any(p.startswith("train.trainable_blocks:") for p in problems)
    assert len(problems) == 6, problems


def test_a_misspelt_key_is_one_problem_not_two(tmp_path):
    """`data.rot=photos` also reported data.root (left at its default 'data') as "not a folder": a knock-on
    of the misspelling, not a second problem. The key meant is still checked when nothing points at it."""
    problems = _problems({"data": {"source": "folder", "rot": str(tmp_path)}})
    assert problems == ["data.rot: unknown key; did you mean 'data.root'?"]
    assert [p.split(":")[0] for p in _problems({"data": {"source": "folder", "root": str(tmp_path / "none")}})] == \
        ["data.root"]


def test_value_checks_name_key_and_expectation():
    problems = _problems({"data": {"source": "digits"}, "preprocess": {"resize": 32, "crop": 48},
                          "model": {"weights": "none", "head": "classic"}, "train": {"strategy": "finetune",
                                                                                   "group_lrs": {"blok1": 0.1}}})
    text = "\n".join(problems)
    assert "preprocess.crop: crop 48 with resize 32" in text
    assert "train.strategy: 'finetune' with model.weights: none" in text
    assert "train.group_lrs.blok1: unknown group; did you mean 'block1'?" in text


def test_the_fit_mode_is_a_recipe_key_with_one_clear_error_for_a_bad_value(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {source: digits}\npreprocess: {resize: 32, crop: 32, fit: letterbox}\n"
                    "model: {weights: none}\ntrain: {strategy: scratch}\n")
    assert recipe_mod.load(str(path)).preprocess.fit == "letterbox"
    assert recipe_mod.load(str(path), ["preprocess.fit=squash"]).preprocess.fit == "squash"
    assert recipe_mod.from_dict({"data": {"source": "digits"}, "model": {"weights": "none"},
                                 "train": {"strategy": "scratch"}}).preprocess.fit == "crop"  # the default
    problems = _problems({"data": {"source": "digits"}, "preprocess": {"fit": "letterbx"},
                          "model": {"weights": "none"}, "train": {"strategy": "scratch"}})
    assert problems == ["preprocess.fit: 'letterbx' is not one of crop, letterbox, squash (did you mean 'letterbox'?)"]


def test_unknown_top_level_and_section_type():
    text = "\n".join(_problems({"trian": {}, "model": "vgg16"}))
    assert "trian: unknown key; did you mean 'train'?" in text
    assert "model: expected a mapping, got str" in text


def test_overrides_are_yaml_typed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {source: digits}\npreprocess: {resize: 32, crop: 32}\nmodel: {weights: none}\n"
                    "train: {strategy: scratch}\n")
    recipe = recipe_mod.load(str(path), ["train.epochs=3", "train.lr=0.05", "data.classes=[1,2]",
                                         "train.grad_clip=null", "name=x"])
    assert recipe.train.epochs == 3 and recipe.train.lr == 0.05
    assert recipe.data.classes == [1, 2] and recipe.train.grad_clip is None and recipe.name == "x"
    with pytest.raises(UserError, match="train.epochs: expected an integer"):
        recipe_mod.load(str(path), ["train.epochs=many"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        recipe_mod.load(str(path), ["train.epochs"])
    # 1e-3 is a number, in an override and in the file (YAML 1.1 made it the string '1e-3')
    path.write_text(path.read_text().replace("strategy: scratch", "strategy: scratch, weight_decay: 5e-4"))
    recipe = recipe_mod.load(str(path), ["train.lr=1e-3"])
    assert recipe.train.lr == 0.001 and recipe.train.weight_decay == 0.0005
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}   # PyYAML's own loader left as it was


def test_a_tilde_in_a_recipe_path_is_the_home_folder(tmp_path, monkeypatch):
    """`data.root=~/photos` reaches the recipe unexpanded (the shell expands ~ only at a word's start)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "photos").mkdir()
    recipe = recipe_mod.from_dict({"data": {"root": "~/photos"}, "out_dir": "~/runs"})
    assert recipe.data.root == str(tmp_path / "photos") and recipe.out_dir == str(tmp_path / "runs")


def test_fp16_autocast_on_a_cpu_is_one_clear_error():
    raw = {"data": {"source": "digits"}, "model": {"weights": "none"},
           "train": {"strategy": "scratch", "amp": "fp16", "device": "cpu"}}
    assert _problems(raw) == ["train.amp: fp16 with train.device: cpu; fp16 autocast is CUDA only: expected auto, "
                              "bf16 or off"]
    recipe_mod.from_dict({**raw, "train": {**raw["train"], "amp": "bf16"}})  # bf16 on a CPU is allowed
    # YAML 1.1 reads a bare `off` as false: `train.amp: off` is the string "off", as written
    assert recipe_mod.from_dict({**raw, "train": {**raw["train"], "amp": False}}).train.amp == "off"


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="no such recipe file"):
        recipe_mod.load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        recipe_mod.load(str(bad))


def test_resolved_recipe_round_trips():
    recipe = recipe_mod.load(os.path.join(ROOT, "recipes", "flowers.yaml"))
    again = recipe_mod.from_dict(yaml.safe_load(recipe_mod.dump(recipe)))
    assert again == recipe


def test_cli_reports_recipe_errors_in_one_block_without_traceback(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {arhc: vgg16}\ntrain: {epocs: 2}\n")
    proc = subprocess.run([sys.executable, "-m", "toolkit", "train", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "model.arhc: unknown key; did you mean 'model.arch'?" in proc.stderr
    assert "train.epocs: unknown key; did you mean 'train.epochs'?" in proc.stderr


def test_class_balance_and_dedupe_fields():
    text = "\n".join(_problems({"data": {"source": "digits", "dedupe": "yes please"},
                                "train": {"strategy": "scratch", "class_weights": "balance", "sampler": "weighted"}}))
    assert "train.class_weights: 'balance' is not one of none, balanced (did you mean 'balanced'?)" in text
    assert "train.sampler: 'weighted' is not one of uniform, balanced" in text
    assert "data.dedupe:" in text
    recipe = recipe_mod.from_dict({"data": {"source": "digits", "dedupe": True}, "model": {"weights": "none"},
                                   "train": {"strategy": "scratch", "class_weights": "balanced",
                                             "sampler": "balanced"}})
    assert recipe.data.dedupe is True
    assert (recipe.train.class_weights, recipe.train.sampler) == ("balanced", "balanced")
    assert recipe_mod.from_dict({"data": {"source": "digits"}, "model": {"weights": "none"},
                                 "train": {"strategy": "scratch"}}).train.sampler == "uniform"


def test_a_relative_path_that_is_not_there_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """A run's recipe names its photos relative to where it was trained: run from elsewhere, `'photos' is not
    a folder` did not say that the current folder was the one searched."""
    monkeypatch.chdir(tmp_path)
    problems = " ".join(_problems({"data": {"source": "folder", "root": "photos"}}))
    assert f"data.root: 'photos' (looked for in the current folder, {tmp_path}) is not a folder" in problems
    absolute = " ".join(_problems({"data": {"source": "folder", "root": str(tmp_path / "photos")}}))
    assert f"data.root: '{tmp_path / 'photos'}' is not a folder" in absolute and "looked for" not in absolute
