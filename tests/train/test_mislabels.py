"""Likely mislabelled images (toolkit.train.mislabels): out-of-fold confidence from the run's backbone."""
import os
import shutil

import numpy as np
import pytest

from conftest import make_image_folder, tiny_recipe
from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.train.loop import train
from toolkit.train.mislabels import out_of_fold_probs, rank_mislabels


def test_out_of_fold_probe_never_scores_an_image_with_its_own_label():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(-2, 1, (20, 4)), rng.normal(2, 1, (20, 4))])
    labels = np.array([0] * 20 + [1] * 20)
    labels[3] = 1  # a class-0 point labelled 1: a probe that saw it would be less sure
    probs = out_of_fold_probs(feats, labels, 2)
    assert probs.shape == (40, 2) and np.allclose(probs.sum(1), 1)
    assert np.argsort(probs[np.arange(40), labels])[0] == 3


def test_flipped_labels_rank_first(tmp_path):
    images = make_image_folder(tmp_path / "images", classes=3, per_class=10, size=(32, 32))
    flipped = []
    for k, i in ((0, 1), (1, 2)):  # two images filed under the next class
        src = os.path.join(images, f"class_{k}", f"img_{i}.jpg")
        dst = os.path.join(images, f"class_{k + 1}", f"flipped_{i}.jpg")
        shutil.move(src, dst)
        flipped.append(dst)
    raw = tiny_recipe(tmp_path, images, data={"val_fraction": 0.2},
                      model={"arch": "vgg11", "weights": "none", "head": "gap"}, train={"epochs": 2})
    recipe = recipe_mod.from_dict(raw)
    train(recipe, quiet=True, evaluate_test=False)
    rows = rank_mislabels(recipe.run_dir, folds=3)
    assert set(rows[0]) == {"path", "label", "suggested", "score"}
    assert len(rows) == 24 and [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    top = {r["path"]: r for r in rows[:4]}
    in_train = [p for p in flipped if any(r["path"] == p for r in rows)]
    assert in_train and all(p in top for p in in_train)
    for p in in_train:
        assert top[p]["suggested"] != top[p]["label"]


def test_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        rank_mislabels(str(tmp_path / "nothing"))
