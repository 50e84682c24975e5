"""Data health in the pre-flight scan (toolkit.datasets.health): duplicates, leaks, balance, small and
unreadable images, data.dedupe. On a few-image version of the bench set (tests/bench_data_health.py)."""
import os

import pytest
from PIL import Image

from bench_data_health import make_set, make_shapes
from data_helpers import make_recipe, write_image
from toolkit import datasets as D
from toolkit.datasets.health import class_balance, data_health, fingerprint, phash


@pytest.fixture
def noisy_set(tmp_path):
    root = str(tmp_path / "digits")
    # 3 classes, 6 duplicates across splits: 2 exact, 2 JPEG re-encodes, 2 resized copies
    return root, make_set(root, n=48, flip=0.1, dup=0.125, classes=(0, 1, 2), seed=3)


def _pairs(health, key):
    if key == "exact_duplicates":
        return {frozenset((a["path"], b["path"])) for g in health[key] for a in g["items"] for b in g["items"]
                if a is not b}
    return {frozenset((p["a"]["path"], p["b"]["path"])) for p in health[key]}


def test_every_duplicate_found_and_each_leak_named(noisy_set, capsys):
    root, truth = noisy_set
    health = D.load_dataset(make_recipe({"root": root})).health
    assert _pairs(health, "exact_duplicates") == {frozenset(p) for p in truth["exact"]}
    assert _pairs(health, "near_duplicates") == {frozenset(p) for p in truth["near"]}  # all, and nothing else
    leaks = {frozenset((lk["a"]["path"], lk["b"]["path"])): lk for lk in health["leaks"]}
    assert set(leaks) == {frozenset(p) for p in truth["exact"] + truth["near"]}
    for lk in leaks.values():
        assert lk["a"]["split"] == "train" and lk["b"]["split"] in ("val", "test")
    out = capsys.readouterr().out
    assert "warning: 6 duplicate pairs cross splits" in out
    a, b = truth["near"][0]
    assert f"{a} (train) = {b} (" in out or f"{b} (" in out and a in out


def test_re_encoded_and_resized_copies_hash_close_and_other_digits_far(noisy_set):
    root, truth = noisy_set
    for a, b in truth["near"]:
        assert bin(phash(Image.open(a).convert("RGB")) ^ phash(Image.open(b).convert("RGB"))).count("1") <= 10
    fp = fingerprint(Image.open(truth["exact"][0][0]).convert("RGB"))
    assert fp == fingerprint(Image.open(truth["exact"][0][1]).convert("RGB"))


def test_distinct_shapes_on_one_white_background_are_not_near_duplicates(tmp_path):
    # the background's equal pixels kept the mean thumbnail difference small between a triangle and a circle
    root = str(tmp_path / "shapes")
    make_shapes(root, per_class=12, seed=3)
    health = D.load_dataset(make_recipe({"root": root, "val_fraction": 0.25}), quiet=True).health
    assert health["images"] == 36
    assert health["near_duplicates"] == [] and health["leaks"] == []


def test_near_copies_of_shapes_on_white_are_still_found(tmp_path):
    root = str(tmp_path / "shapes")
    # a JPEG, resized by 2 px, half size, 8 grey levels brighter, 8 darker
    truth = make_shapes(root, per_class=12, seed=3, copies=5)
    health = D.load_dataset(make_recipe({"root": root}), quiet=True).health
    assert _pairs(health, "near_duplicates") == {frozenset(p) for p in truth["near"]}


def test_class_balance_table_and_small_images(tmp_path):
    root = tmp_path / "imgs"
    for split, counts in (("train", (6, 2)), ("val", (2, 1))):
        for k, n in enumerate(counts):
            for i in range(n):
                write_image(str(root / split / f"c{k}" / f"{i}.png"), size=(40, 40), seed=100 * k + 10 * i + len(split))
    write_image(str(root / "train" / "c1" / "tiny.png"), size=(12, 9), seed=7)
    health = D.load_dataset(make_recipe({"root": str(root)})).health
    assert health["class_balance"] == [{"class": "c0", "train": 6, "val": 2, "test": 0},
                                       {"class": "c1", "train": 3, "val": 1, "test": 0}]
    assert [(s["path"], s["width"], s["height"]) for s in health["small_images"]] == [
        (str(root / "train" / "c1" / "tiny.png"), 12, 9)]


def test_unreadable_images_are_listed_when_skipped(tmp_path):
    root = tmp_path / "imgs"
    for k in range(2):
        for i in range(3):
            write_image(str(root / f"c{k}" / f"{i}.png"), seed=10 * k + i)
    bad = root / "c0" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    health = D.load_dataset(make_recipe({"root": str(root), "skip_corrupt": True})).health
    assert [u["path"] for u in health["unreadable"]] == [str(bad)]
    assert health["unreadable"][0]["reason"]
    assert health["images"] == 6


def test_dedupe_drops_copies_so_nothing_leaks(noisy_set):
    root, truth = noisy_set
    ds = D.load_dataset(make_recipe({"root": root, "dedupe": True}))
    kept = {p for p, _ in ds.train + ds.val + ds.test}
    copies = [b for _, b in truth["exact"] + truth["near"]]
    originals = [a for a, _ in truth["exact"] + truth["near"]]
    assert ds.health["leaks"] == [] and ds.health["exact_duplicates"] == []
    assert sorted(ds.health["deduped"]) == sorted(originals)  # the held-out copy is kept, the train one dropped
    assert all(c in kept for c in copies) and not any(o in kept for o in originals)


def test_dedupe_happens_before_a_carved_split(tmp_path):
    root = tmp_path / "flat"
    for k in range(2):
        for i in range(6):
            write_image(str(root / f"c{k}" / f"{i}.png"), size=(40, 40), seed=10 * k + i)
    Image.open(root / "c0" / "0.png").save(root / "c0" / "0_copy.png")
    recipe = make_recipe({"root": str(root), "val_fraction": 0.5, "dedupe": True})
    ds = D.load_dataset(recipe)
    names = sorted(os.path.basename(p) for p, lab in ds.train + ds.val if lab == 0)
    assert len(names) == 6 and names[1:] == ["1.png", "2.png", "3.png", "4.png", "5.png"]  # one of the two kept
    # the split is drawn from the 12 images left: 3 + 3 per class, as for a set without the copy
    assert (len(ds.train), len(ds.val)) == (6, 6)


def test_arrays_are_checked_too():
    import numpy as np
    img = np.full((16, 16, 3), 200, np.uint8)
    img[4:12, 4:12] = 0
    splits = {"train": [(img, 0), (np.zeros((16, 16, 3), np.uint8), 1)], "val": [(img.copy(), 0)], "test": []}
    health = data_health(["a", "b"], splits, crop=64)  # 16 px < half of 64
    assert [(lk["a"]["path"], lk["b"]["path"]) for lk in health["leaks"]] == [("train[0]", "val[0]")]
    assert len(health["small_images"]) == 3
    assert class_balance(["a", "b"], splits)[0] == {"class": "a", "train": 1, "val": 1, "test": 0}
