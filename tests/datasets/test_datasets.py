"""toolkit.datasets: sources, splits and the pre-flight scan (torch-free).

Everything runs on tiny images generated in tmp_path; nothing touches the network.
"""
import os

import numpy as np
import pytest
from PIL import Image

from toolkit import datasets as D
from toolkit.errors import UserError
from toolkit.preprocess import FOLDER_FORMATS, IMAGE_EXTENSIONS

from data_helpers import make_folder, make_recipe, write_image


def paths(items):
    return sorted(os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p) for p, _ in items)


# ---------------------------------------------------------------------------------------------- folder

def test_folder_split_layout(tmp_path):
    root = make_folder(tmp_path, ["b_tulip", "a_rose"], n=3, splits=["train", "val", "test"])
    ds = D.load_dataset(make_recipe({"root": root}))
    assert ds.labels == ["a_rose", "b_tulip"]  # sorted by class name
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 6, 6)
    assert all(f"{os.sep}train{os.sep}" in p for p, _ in ds.train)
    assert all(os.path.basename(os.path.dirname(p)) == ds.labels[lab] for p, lab in ds.val)
    assert ds.skipped == []


def test_folder_fractions_are_stratified_seeded_and_disjoint(tmp_path):
    root = make_folder(tmp_path, ["a", "b", "c"], n=10)
    recipe = make_recipe({"root": root, "val_fraction": 0.2, "test_fraction": 0.3, "split_seed": 1})
    ds = D.load_dataset(recipe)
    for split, per_class in ((ds.train, 5), (ds.val, 2), (ds.test, 3)):
        assert np.bincount([lab for _, lab in split]).tolist() == [per_class] * 3
    everything = [p for p, _ in ds.train + ds.val + ds.test]
    assert len(set(everything)) == 30
    again = D.load_dataset(recipe)
    assert (again.train, again.val, again.test) == (ds.train, ds.val, ds.test)
    other = D.load_dataset(make_recipe({"root": root, "val_fraction": 0.2, "test_fraction": 0.3, "split_seed": 2}))
    assert paths(other.test) != paths(ds.test)
    # labels_per_class subsamples train only, after the split
    few = D.load_dataset(make_recipe({"root": root, "val_fraction": 0.2, "test_fraction": 0.3, "split_seed": 1,
                                      "labels_per_class": 2}))
    assert len(few.train) == 6 and set(few.train) <= set(ds.train)
    assert (few.val, few.test) == (ds.val, ds.test)


def test_a_class_too_small_for_every_split_keeps_validation_before_test():
    """Training needs validation and test is optional: two images make train 1 / val 1, not train 1 / test 1."""
    from toolkit.datasets.splits import split_class
    sizes = lambda n, val, test: tuple(len(part) for part in split_class(list(range(n)), "c", val, test, 0))
    assert sizes(2, 0.2, 0.1) == (1, 1, 0)
    assert sizes(1, 0.2, 0.1) == (1, 0, 0)
    assert sizes(3, 0.2, 0.1) == (1, 1, 1)
    assert sizes(3, 0.5, 0.5) == (1, 1, 1)
    assert sizes(10, 0.2, 0.3) == (5, 2, 3)


def test_labels_per_class_scans_only_the_images_kept(tmp_path):
    """Fashion-MNIST at 5 labels per class used to decode all 59,400 training images every run."""
    root = make_folder(tmp_path, ["a", "b"], n=6, splits=["train", "val"])
    few = D.load_dataset(make_recipe({"root": root, "labels_per_class": 2}))
    assert few.health["images"] == len(few.train) + len(few.val) == 4 + 12
    unused = next(p for p in sorted(os.listdir(os.path.join(root, "train", "a")))
                  if os.path.join(root, "train", "a", p) not in {q for q, _ in few.train})
    with open(os.path.join(root, "train", "a", unused), "wb") as fh:
        fh.write(b"not an image")  # a file the run does not use cannot stop it
    assert D.load_dataset(make_recipe({"root": root, "labels_per_class": 2})).train == few.train
    with pytest.raises(UserError, match="not a recognised image"):
        D.load_dataset(make_recipe({"root": root}))


def test_quiet_load_keeps_the_health_and_prints_nothing(tmp_path, capsys, monkeypatch):
    """The demos train dozens of runs quietly: one health summary (or scan line) each would bury their tables."""
    from toolkit.datasets import load as load_mod

    monkeypatch.setattr(load_mod, "PROGRESS_MIN_IMAGES", 1)  # the scan's line, shown here for 12 images
    recipe = make_recipe({"root": make_folder(tmp_path, ["a", "b"], n=3, splits=["train", "val"])})
    assert D.load_dataset(recipe, quiet=True).health["images"] == 12 and capsys.readouterr().out == ""
    D.load_dataset(recipe)
    printed = capsys.readouterr().out
    assert "data health: 12 images" in printed and "scan: 12 images checked" in printed


def test_a_data_folder_that_moved_is_one_error(tmp_path, monkeypatch):
    """A run whose data.root was moved or deleted: `toolkit report` and `evaluate` load its data through here,
    and the message's from_here was never imported (a NameError traceback)."""
    import dataclasses

    recipe = make_recipe()   # the recipe as its run saved it: the folder was there then

    def moved(root):
        return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, root=root))
    with pytest.raises(UserError, match=r"data.root: '.*moved' is not a folder; expected a folder of class"):
        D.load_dataset(moved(str(tmp_path / "moved")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"'gone' \(looked for in the current folder, .*\) is not a folder"):
        D.load_dataset(moved("gone"))


def test_folder_train_only_split_carves_val(tmp_path):
    root = make_folder(tmp_path, ["a", "b"], n=5, splits=["train", "test"])
    ds = D.load_dataset(make_recipe({"root": root, "val_fraction": 0.2}))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 10)


def test_hidden_and_non_image_files_are_ignored_and_classes_subset(tmp_path):
    root = make_folder(tmp_path, ["cat", "dog", "eel"], n=2)
    write_image(tmp_path / ".thumbnails" / "x.png")  # hidden folder: never a class
    write_image(tmp_path / "cat" / ".hidden.png")  # hidden file
    write_image(tmp_path / "cat" / ".cache" / "y.png")  # hidden sub-folder
    write_image(tmp_path / "cat" / "UPPER.JPG", fmt="JPEG")  # extensions are case-insensitive
    write_image(tmp_path / "dog" / "more" / "nested.png")  # nested folders belong to their class
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = D.load_dataset(make_recipe({"root": str(root), "val_fraction": 0.0}))
    assert ds.labels == ["cat", "dog", "eel"]
    assert paths(ds.train) == ["cat/UPPER.JPG", "cat/img_0.png", "cat/img_1.png", "dog/img_0.png",
                               "dog/img_1.png", "eel/img_0.png", "eel/img_1.png", "more/nested.png"]
    assert [ds.labels[lab] for p, lab in ds.train if p.endswith("nested.png")] == ["dog"]
    sub = D.load_dataset(make_recipe({"root": str(root), "val_fraction": 0.0, "classes": ["eel", "cat"]}))
    assert sub.labels == ["cat", "eel"] and {lab for _, lab in sub.train} == {0, 1}
    with pytest.raises(UserError, match="data.classes: emu not found"):
        D.load_dataset(make_recipe({"root": str(root), "classes": ["cat", "emu"]}))


# ---------------------------------------------------------------------------------------------- scan

def _bad_files(base):
    """A truncated JPEG, garbage named .jpg and an oversized PNG (with max_pixels 5000) in `base`."""
    good = write_image(base / "good.jpg", size=(64, 48), fmt="JPEG")
    with open(good, "rb") as fh:
        blob = fh.read()
    (base / "truncated.jpg").write_bytes(blob[: len(blob) // 2])
    (base / "garbage.jpg").write_bytes(b"this is not a picture" * 10)
    write_image(base / "huge.png", size=(100, 100))
    return {"truncated.jpg", "garbage.jpg", "huge.png"}


def test_scan_lists_every_problem_in_one_error(tmp_path):
    root = make_folder(tmp_path, ["a", "b"], n=2, splits=["train", "val"])
    bad = _bad_files(tmp_path / "train" / "a")
    os.makedirs(tmp_path / "train" / "empty")  # an empty class
    make_folder(tmp_path / "val", ["extra"], n=1)  # val: no 'empty', an 'extra'
    with pytest.raises(UserError) as info:
        D.load_dataset(make_recipe({"root": root, "max_pixels": 5000}))
    msg = str(info.value)
    lines = msg.splitlines()
    assert lines[0] == f"data: 5 problems in {root}:"
    for name in bad:
        assert any(name in line for line in lines), name
    assert "truncated" in next(ln for ln in lines if "truncated.jpg" in ln).split(":", 1)[1]
    assert "over the limit" in next(ln for ln in lines if "huge.png" in ln)
    assert any(os.path.join("train", "empty") in ln and "empty class" in ln for ln in lines)
    assert any("val/: class mismatch" in ln and "not in val/: empty" in ln and "only in val/: extra" in ln for ln in lines)
    assert lines[-1] == "set data.skip_corrupt: true to skip the unusable images"
    assert "good.jpg" not in msg


def test_skip_corrupt_skips_reports_and_continues(tmp_path, capsys):
    root = make_folder(tmp_path, ["a", "b"], n=2)
    bad = _bad_files(tmp_path / "a")
    ds = D.load_dataset(make_recipe({"root": root, "max_pixels": 5000, "skip_corrupt": True, "val_fraction": 0}))
    assert {os.path.basename(p) for p, _ in ds.skipped} == bad
    assert all(reason for _, reason in ds.skipped)
    assert paths(ds.train) == ["a/good.jpg", "a/img_0.png", "a/img_1.png", "b/img_0.png", "b/img_1.png"]
    out, err = capsys.readouterr()
    assert "skipped 3 unusable images" in err and "garbage.jpg" in err   # stderr: --json's stdout stays JSON
    assert "skipped" not in out


def test_skip_corrupt_still_fails_on_a_class_left_empty_and_caps_the_list(tmp_path, capsys):
    make_folder(tmp_path, ["a"], n=2)
    for i in range(25):
        (tmp_path / "b").mkdir(exist_ok=True)
        (tmp_path / "b" / f"bad_{i:02d}.png").write_bytes(b"\x89PNG nope")
    recipe = make_recipe({"root": str(tmp_path), "skip_corrupt": True})
    with pytest.raises(UserError, match=r"empty class, no usable images; expected at least one \(\.jpg"):
        D.load_dataset(recipe)
    assert "data health" not in capsys.readouterr().out   # no health summary for data that cannot train
    with pytest.raises(UserError) as info:
        D.load_dataset(make_recipe({"root": str(tmp_path)}))
    assert "and 5 more" in str(info.value)  # 25 files, 20 listed


def test_scan_false_does_not_decode(tmp_path):
    root = make_folder(tmp_path, ["a", "b"], n=2)
    (tmp_path / "a" / "garbage.jpg").write_bytes(b"nope")
    ds = D.load_dataset(make_recipe({"root": root, "val_fraction": 0}), scan=False)
    assert len(ds.train) == 5


# ---------------------------------------------------------------------------------------------- digits

def test_digits_classes_labels_per_class_and_stable_test_split():
    base = {"source": "digits", "classes": [7, 5, 9], "image_size": 24, "test_fraction": 0.25, "val_fraction": 0.1}
    full = D.load_dataset(make_recipe(base))
    assert full.labels == ["5", "7", "9"]
    img, label = full.train[0]
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8 and label in (0, 1, 2)
    assert img[0, 0].tolist() == [255, 255, 255]  # dark ink on light paper: corners are blank paper
    assert len(full.test) > 100 and len(full.val) > 40
    few = D.load_dataset(make_recipe({**base, "labels_per_class": 3}))
    assert np.bincount([lab for _, lab in few.train]).tolist() == [3, 3, 3]
    same = lambda a, b: len(a) == len(b) and all(x[1] == y[1] and np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    assert same(few.test, full.test) and same(few.val, full.val)
    more = D.load_dataset(make_recipe({**base, "labels_per_class": 10}))
    assert same(more.test, full.test)
    # nested: the 3 kept per class are among the 10 kept per class
    keys = {(lab, arr.tobytes()) for arr, lab in more.train}
    assert all((lab, arr.tobytes()) in keys for arr, lab in few.train)
    # a class's split doesn't depend on which other classes were chosen
    other = D.load_dataset(make_recipe({**base, "classes": [5, 6]}))
    fives = lambda ds: [a.tobytes() for a, lab in ds.test if ds.labels[lab] == "5"]
    assert fives(other) == fives(full)
    no_test = D.load_dataset(make_recipe({"source": "digits", "classes": [0, 1], "test_fraction": 0.0}))
    assert no_test.test == [] and no_test.val


def test_write_samples_writes_a_held_out_image_per_class(tmp_path):
    """The README's images to try `toolkit predict` on: the first test image of each class of a recipe's
    data, named by its label, the same pixels (never a training image); a recipe file's path works too."""
    recipe = make_recipe({"source": "digits", "classes": [3, 1, 7], "image_size": 32, "test_fraction": 0.2})
    paths = D.write_samples(recipe, str(tmp_path / "my-digits"), count=2)
    assert [os.path.basename(p) for p in paths] == ["1.png", "3.png"]
    listed = D.load_dataset(recipe)
    first_test = {listed.labels[label]: arr for arr, label in reversed(listed.test)}
    train = {arr.tobytes() for arr, _ in listed.train}
    for path in paths:
        pixels = np.asarray(Image.open(path))
        label = os.path.basename(path)[:-4]
        assert np.array_equal(pixels, first_test[label]) and pixels.tobytes() not in train
    folder = make_folder(tmp_path / "photos", classes=("cat", "dog"), n=4)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(f"data: {{source: folder, root: {folder}, val_fraction: 0.5}}\n")
    written = D.write_samples(str(recipe_file), str(tmp_path / "from-a-file"))
    assert [os.path.basename(p) for p in written] == ["cat.png", "dog.png"]  # no test split: validation


def test_flowers102_missing_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(UserError, match="data.download: true"):
        D.load_dataset(make_recipe({"source": "flowers102", "root": str(tmp_path), "download": False}))


def test_image_extensions_are_the_folder_formats():
    """One list (toolkit.preprocess): every listed extension decodes as one of FOLDER_FORMATS."""
    Image.init()
    registered = Image.registered_extensions()
    assert {registered[ext] for ext in IMAGE_EXTENSIONS} == set(FOLDER_FORMATS)
    assert D.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS


@pytest.mark.parametrize("root_exists", [False, True])
def test_flowers102_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch, root_exists):
    tv_datasets = pytest.importorskip("torchvision.datasets")
    root = tmp_path / "data" / "flowers102"
    if root_exists:
        os.makedirs(root)
        (root / "mine.txt").write_text("the user's own file")

    def failing_download(root_dir, split, download):  # torchvision makes its folder, then the network fails
        os.makedirs(os.path.join(root_dir, "flowers-102"), exist_ok=True)
        open(os.path.join(root_dir, "flowers-102", "102flowers.tgz.part"), "wb").close()
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv_datasets, "Flowers102", failing_download)
    with pytest.raises(UserError, match="could not download Flowers-102"):
        D.load_dataset(make_recipe({"source": "flowers102", "root": str(root), "download": True}))
    assert not (root / "flowers-102").exists()
    assert root.exists() == root_exists  # what was there before stays, what the attempt made goes
    if root_exists:
        assert (root / "mine.txt").read_text() == "the user's own file"
