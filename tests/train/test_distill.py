"""Distillation: the loss, the teacher's checks (labels, checkpoint), data.unlabeled, cached vs per-batch logits."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_image_folder, tiny_recipe
from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.preprocess import Preprocess
from toolkit.train.checkpoint import FORMAT, save_checkpoint
from toolkit.train.distill import UNLABELLED, Teacher, distill_loss, wants_cache
from toolkit.train.distributed import IGNORE
from toolkit.train.loop import train
from toolkit.train.model import build_from_recipe

SMALL = {"arch": "mobilenet_v3_small", "weights": "none", "head": "gap", "hidden": None}  # fast on a CPU
RESIZE_ONLY = {"__version__": "2.0.8", "transform": {"__class_fullname__": "Compose", "p": 1.0, "transforms": [
    {"__class_fullname__": "Resize", "p": 1.0}]}}  # deterministic: the teacher's logits can be cached


def test_loss_is_label_loss_and_kl_times_t_squared_mixed_by_alpha():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    targets = torch.tensor([0, 2, UNLABELLED, IGNORE])  # two labelled, one photo without a label, one padding
    criterion = torch.nn.CrossEntropyLoss(reduction="sum", ignore_index=IGNORE)
    alpha, t = 0.3, 2.0
    q, log_p = F.softmax(teacher / t, 1), F.log_softmax(student / t, 1)
    kl = (q * (q.log() - log_p)).sum(1)[:3].sum()  # every real image, the padding left out
    ce = F.cross_entropy(student[:2], targets[:2], reduction="sum")  # the labelled ones only
    expected = (1 - alpha) * ce + alpha * t * t * kl
    assert torch.allclose(distill_loss(student, teacher, targets, alpha, t, criterion), expected, atol=1e-6)
    # A student that already matches its teacher owes it nothing: the labels' term alone is left.
    same = distill_loss(student, student, targets, alpha, t, criterion)
    assert torch.allclose(same, (1 - alpha) * ce, atol=1e-6)
    assert distill_loss(student, teacher, targets, 0.0, t, criterion).item() == pytest.approx(ce.item(), abs=1e-6)


def _teacher_checkpoint(tmp_path, labels, raw) -> str:
    """A toolkit checkpoint of the tiny recipe's model (random weights) that knows `labels`."""
    recipe = recipe_mod.from_dict({**raw, "model": SMALL})
    model = build_from_recipe(recipe, num_classes=len(labels))
    path = str(tmp_path / "teacher.pt")
    save_checkpoint(path, {"model": model.state_dict(), "labels": list(labels), "recipe": recipe_mod.to_dict(recipe),
                           "epoch": 0})
    return path


@pytest.fixture
def square_folder(tmp_path):
    return make_image_folder(tmp_path / "data", size=(32, 32))


def test_a_teacher_with_other_labels_is_one_error_naming_both(tmp_path, square_folder):
    raw = tiny_recipe(tmp_path, square_folder)
    teacher = _teacher_checkpoint(tmp_path, ["cat", "dog", "fox"], raw)
    student = tiny_recipe(tmp_path, square_folder, model=SMALL, train={"teacher": teacher})
    with pytest.raises(UserError, match=r"trained on the labels \[cat, dog, fox\].*data has \[class_0, class_1, "
                                        r"class_2\] \(3 classes\)"):
        train(recipe_mod.from_dict(student), quiet=True)


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: str(tmp / "nowhere"), "train.teacher: .*no such run folder or checkpoint"),
    (lambda tmp: (tmp / "empty-run").mkdir() or str(tmp / "empty-run"), "train.teacher: .*has no checkpoint"),
    (lambda tmp: torch.save({"format": FORMAT, "model": 3}, tmp / "bad.pt") or str(tmp / "bad.pt"),
     "train.teacher: .*not a complete toolkit checkpoint: 'model' is int"),
    (lambda tmp: (tmp / "junk.pt").write_bytes(b"not a zip") and str(tmp / "junk.pt"),
     "train.teacher: .*not a PyTorch checkpoint"),
])
def test_a_missing_or_malformed_teacher_is_the_resume_error(tmp_path, square_folder, make, expected):
    student = tiny_recipe(tmp_path, square_folder, model=SMALL, train={"teacher": make(tmp_path)})
    with pytest.raises(UserError, match=expected):
        train(recipe_mod.from_dict(student), quiet=True)


def test_unlabeled_folder_without_readable_images_is_one_error(tmp_path, square_folder):
    raw = tiny_recipe(tmp_path, square_folder)
    teacher = _teacher_checkpoint(tmp_path, ["class_0", "class_1", "class_2"], raw)
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for folder, expected in ((empty, "folder holds no images"), (broken, "no readable images")):
        student = tiny_recipe(tmp_path, square_folder, model=SMALL, train={"teacher": teacher}, data={"unlabeled": str(folder)})
        with pytest.raises(UserError, match=f"data.unlabeled: .*{expected}"):
            train(recipe_mod.from_dict(student), quiet=True)
    with pytest.raises(UserError, match="data.unlabeled: .* without train.teacher"):
        recipe_mod.from_dict(tiny_recipe(tmp_path, square_folder, data={"unlabeled": str(broken)}))


def test_unlabeled_scan_line_only_when_not_quiet(tmp_path, square_folder, capsys, monkeypatch):
    """A quiet run (the demos' dozens) prints no scan line for its pool; `toolkit train` does."""
    from toolkit.datasets import load as load_mod
    from toolkit.train.distill_data import unlabeled_items

    monkeypatch.setattr(load_mod, "PROGRESS_MIN_IMAGES", 1)  # the line, shown here for 3 photos
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(pool / f"{i}.png")
    recipe = recipe_mod.from_dict(tiny_recipe(tmp_path, square_folder))
    recipe.data.unlabeled = str(pool)
    assert len(unlabeled_items(recipe, -1, progress=False)) == 3 and capsys.readouterr().out == ""
    assert len(unlabeled_items(recipe, -1)) == 3 and "scan: 3 images checked" in capsys.readouterr().out


def test_cache_is_chosen_only_for_a_deterministic_augmentation(tmp_path, square_folder):
    from toolkit.train.data import build_augment

    recipe = recipe_mod.from_dict(tiny_recipe(tmp_path, square_folder, augment=RESIZE_ONLY))
    preprocess = Preprocess(resize=32, crop=32)
    assert wants_cache("auto", build_augment(recipe), preprocess)
    default = recipe_mod.from_dict(tiny_recipe(tmp_path, square_folder))  # random crops and flips
    assert not wants_cache("auto", build_augment(default), preprocess)
    assert wants_cache("always", build_augment(default), preprocess)
    assert not wants_cache("never", build_augment(recipe), preprocess)


def _run(tmp_path, root, name, teacher, cache, unlabeled):
    raw = tiny_recipe(tmp_path, root, name=name, augment=RESIZE_ONLY, model=SMALL,
                      train={"epochs": 1, "teacher": teacher, "distill_cache": cache, "distill_alpha": 0.7},
                      data={"unlabeled": unlabeled})
    train(recipe_mod.from_dict(raw), quiet=True, report=False, evaluate_test=False)
    run = tmp_path / "runs" / name
    info = json.loads((run / "distill.json").read_text())
    return info, json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


def test_cached_and_per_batch_teacher_logits_give_the_same_loss(tmp_path, square_folder):
    """With augmentation that only resizes 32 px photos to 32 px, the teacher's cached eval view is the
    batch it would see: the two modes must train alike (weights: none, deterministic kernels)."""
    unlabeled = make_image_folder(tmp_path / "pool", classes=2, per_class=3, size=(32, 32), seed=5)
    teacher = _teacher_checkpoint(tmp_path, ["class_0", "class_1", "class_2"], tiny_recipe(tmp_path, square_folder))
    cached, first = _run(tmp_path, square_folder, "cached", teacher, "auto", unlabeled)
    per_batch, second = _run(tmp_path, square_folder, "per-batch", teacher, "never", unlabeled)
    assert cached["teacher_logits"] == "cached" and cached["cached_images"] == 18 + 6
    assert per_batch["teacher_logits"] == "per_batch" and per_batch["unlabeled_images"] == 6
    assert first["train_loss"] == pytest.approx(second["train_loss"], rel=1e-4)
    assert first["val_loss"] == pytest.approx(second["val_loss"], rel=1e-3)
    assert first["train_loss"] > 0 and np.isfinite(first["train_loss"])
    assert os.path.isfile(tmp_path / "runs" / "cached" / "checkpoints" / "last.pt")


@pytest.mark.parametrize("crop", [32, 64])
def test_per_batch_the_teacher_sees_the_students_augmented_view_at_its_own_input(tmp_path, square_folder, crop):
    """Consistent teaching: same flip and crop as the student's sample, in the teacher's size, mean and std
    (not the student's tensor converted: a 32 px view blown up to 64 px is not what a 64 px teacher learnt on)."""
    from toolkit.train.data import ImageDataset, build_augment, eval_preprocess
    from toolkit.train.distill import Distiller
    from toolkit.train.sampling import SeededAugmentation

    student = recipe_mod.from_dict(tiny_recipe(tmp_path, square_folder, preprocess={
        "resize": 32, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    own = recipe_mod.from_dict(tiny_recipe(tmp_path, square_folder, preprocess={"resize": crop, "crop": crop,
                                                                                 "mean": [0.5] * 3, "std": [0.5] * 3}))
    items = [(str(p), 0) for p in sorted(Path(square_folder).rglob("*.jpg"))][:4]
    train_set = SeededAugmentation(ImageDataset(items, eval_preprocess(student), build_augment(student)), seed=3)
    teacher = Teacher(torch.nn.Identity(), eval_preprocess(own), eval_preprocess(student), torch.device("cpu"),
                      section=own.preprocess)
    dist = Distiller(teacher, 0.5, 2.0)
    views = dist.with_own_views(train_set, items, student)
    pixels = lambda x, p: x * torch.tensor(p.std).view(3, 1, 1) + torch.tensor(p.mean).view(3, 1, 1)
    for encoded in (0, 1, 5, 6):  # epoch 0 and epoch 1 (items 1 and 2): a new draw each epoch
        image, target, view = views[encoded]
        assert view.shape == (3, crop, crop) and torch.equal(image, train_set[encoded][0])
        ours, theirs = pixels(image, teacher.student_preprocess), pixels(view, teacher.preprocess)
        if crop != 32:
            theirs = F.interpolate(theirs[None], size=(32, 32), mode="bilinear", antialias=True)[0]
        assert (ours - theirs).abs().mean() < (0.02 if crop != 32 else 1e-5)
    batch = torch.stack([views[i][2] for i in range(2)])
    assert torch.equal(dist.soft_targets(torch.zeros(2, 3, 32, 32), batch), batch)  # its own view, as it is
    assert "augmented view rendered at" in dist.describe()["teacher_input"]


def test_cached_logits_say_the_teacher_saw_each_photos_eval_view(tmp_path, square_folder):
    """With distill_cache: always and the teacher's input alike, distill.json said "same as the student's",
    though the cache holds one eval view a photo while the student sees augmented ones."""
    from toolkit.train.data import eval_preprocess
    from toolkit.train.distill import Distiller

    student = recipe_mod.from_dict(tiny_recipe(tmp_path, square_folder))
    teacher = Teacher(torch.nn.Identity(), eval_preprocess(student), eval_preprocess(student), torch.device("cpu"),
                      section=student.preprocess)
    dist = Distiller(teacher, 0.5, 2.0)
    assert teacher.same_input and dist.describe()["teacher_input"] == "same as the student's"
    dist.cache = torch.zeros(4, 3)
    assert dist.describe()["teacher_input"].startswith("its own eval view of each photo")
