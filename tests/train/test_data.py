"""toolkit.train.data: augmentation, the torch Dataset and loaders, and the input pipeline's throughput.

Everything runs on tiny images generated in tmp_path; nothing touches the network.
"""
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from toolkit import recipe as R
from toolkit.train import data as D
from toolkit.errors import UserError
from toolkit.preprocess import Preprocess

from conftest import ROOT
from data_helpers import make_folder, make_recipe, write_image

A = D.A  # albumentations, imported by toolkit.train.data with its update check switched off


# ---------------------------------------------------------------------------------------------- augment

def test_default_augment_round_trips_through_the_recipe():
    recipe = make_recipe()
    spec = D.default_augment(recipe)
    assert spec["transform"]["__class_fullname__"] == "Compose"
    pipeline = D.build_augment(recipe)
    assert isinstance(pipeline, A.Compose)
    assert A.to_dict(pipeline)["transform"]["transforms"][0]["size"] == (32, 32)
    # written into a YAML recipe and read back, it builds the same pipeline
    reloaded = R.from_dict(yaml.safe_load(R.dump(make_recipe(augment=spec))))
    assert reloaded.augment == spec
    assert D.build_augment(reloaded)(image=np.zeros((50, 70, 3), np.uint8))["image"].shape == (32, 32, 3)


def test_custom_augment_from_albumentations_to_dict():
    custom = A.to_dict(A.Compose([A.Affine(rotate=(-5, 5), p=1.0), A.Resize(32, 32)]))
    recipe = make_recipe({"source": "digits", "image_size": 40}, augment=custom)
    pipeline = D.build_augment(recipe)
    assert [type(t).__name__ for t in pipeline.transforms] == ["Affine", "Resize"]


def test_an_augment_crop_without_a_size_follows_preprocess_crop():
    spec = {"transform": {"__class_fullname__": "Compose", "p": 1.0, "transforms": [
        {"__class_fullname__": "OneOf", "p": 1.0, "transforms": [
            {"__class_fullname__": "RandomResizedCrop", "p": 1.0},
            {"__class_fullname__": "Resize", "p": 1.0}]},
        {"__class_fullname__": "HorizontalFlip", "p": 0.5}]}}
    for crop in (32, 64):  # one edit of preprocess.crop changes the augmentation too
        pipeline = D.build_augment(make_recipe(crop=crop, resize=crop + 8, augment=spec))
        assert pipeline(image=np.zeros((50, 70, 3), np.uint8))["image"].shape == (crop, crop, 3)
    assert "size" not in spec["transform"]["transforms"][0]["transforms"][0]  # the recipe is not edited
    flowers = R.load(os.path.join(ROOT, "recipes", "flowers.yaml"), ["preprocess.crop=160"])  # the shipped recipe
    assert D.build_augment(flowers)(image=np.zeros((300, 400, 3), np.uint8))["image"].shape == (160, 160, 3)
    # a size the recipe sets is kept as written, so a mismatch is still the clear error
    fixed = A.to_dict(A.Compose([A.RandomResizedCrop(size=(32, 32), p=1.0)]))
    with pytest.raises(UserError, match="expected 64x64.*leave that transform.s size out"):
        D.build_augment(make_recipe(crop=64, resize=72, augment=fixed))


@pytest.mark.parametrize("spec, match", [
    ({"transform": {"__class_fullname__": "NoSuchTransform", "p": 1.0}}, "augment: unknown albumentations"),
    ({"transform": {"__class_fullname__": "RandomResizedCrop", "size": "big", "p": 1.0}}, "augment: .*size"),
    ({"transform": {"__class_fullname__": "Compose", "p": 1.0, "transforms": [
        {"__class_fullname__": "HorizontalFlip", "prob": 0.5}]}}, "augment: .*prob"),
    ({"transform": {"__class_fullname__": "Compose", "p": 1.0, "transforms": [
        {"__class_fullname__": "HorizontalFlip", "p": 0.5}]}}, r"augment: pipeline outputs 32x43, expected 32x32"),
    (A.to_dict(A.Compose([A.Resize(32, 32), A.Normalize()])), "augment: .*float32.*leave out Normalize"),
])
def test_bad_augment_is_a_user_error(spec, match):
    with pytest.raises(UserError, match=match):
        D.build_augment(make_recipe(augment=spec))


# ---------------------------------------------------------------------------------------------- datasets

def test_datasets_train_and_eval_outputs(tmp_path):
    src = write_image(tmp_path / "x.jpg", size=(57, 41), fmt="JPEG")
    recipe = make_recipe(crop=32, resize=36)
    pre = D.eval_preprocess(recipe)
    assert pre == Preprocess(resize=36, crop=32)
    digit = D.render_digits(np.full((1, 8, 8), 8.0), 36)[0]
    for source in (src, digit):
        x, y = D.ImageDataset([(source, 3)], pre)[0]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y == 3
        assert np.array_equal(x.numpy(), pre(source))  # eval is exactly the numpy + Pillow function
        t, _ = D.ImageDataset([(source, 3)], pre, D.build_augment(recipe))[0]
        assert t.dtype == torch.float32 and t.shape == (3, 32, 32)


def _fit_recipe(fit):
    recipe = make_recipe(crop=32, resize=36)
    recipe.preprocess.fit = fit
    return recipe


@pytest.mark.parametrize("fit", ["crop", "letterbox", "squash"])
def test_the_training_eval_transform_is_preprocess_for_each_fit(tmp_path, fit):
    recipe = _fit_recipe(fit)
    pre = D.eval_preprocess(recipe)
    assert pre == Preprocess(resize=36, crop=32, fit=fit)
    val = [(write_image(tmp_path / f"{i}.jpg", size=size, seed=i, fmt="JPEG"), i) for i, size in
           enumerate([(57, 41), (41, 90), (300, 20)])]
    batch, labels = next(iter(D.make_loader(val, recipe, train=False)))
    assert labels.tolist() == [0, 1, 2]
    assert np.array_equal(batch.numpy(), np.stack([pre(path) for path, _ in val]))


def test_the_default_augment_keeps_the_whole_photo_for_letterbox_and_squash():
    """crop trains on random crops; letterbox and squash first fit the whole photo into the square as
    Preprocess does (albumentations' resize differs from Pillow's by a little), then jitter it a little,
    letterbox filling with Preprocess' pad colour."""
    img = np.asarray(Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 10, 3), np.uint8))
                     .resize((80, 40), Image.Resampling.BICUBIC))  # 2:1, smooth
    names = {fit: [type(t).__name__ for t in D.build_augment(_fit_recipe(fit)).transforms]
             for fit in ("crop", "letterbox", "squash")}
    assert names["crop"][0] == "RandomResizedCrop"
    assert names["letterbox"] == ["LongestMaxSize", "PadIfNeeded", "HorizontalFlip", "Affine", "ColorJitter"]
    assert names["squash"] == ["Resize", "HorizontalFlip", "Affine", "ColorJitter"]
    for fit, stages in (("letterbox", 2), ("squash", 1)):
        pipeline = D.build_augment(_fit_recipe(fit))
        fitted = A.Compose(pipeline.transforms[:stages])(image=img)["image"].astype(int)
        expected = Preprocess(resize=36, crop=32, fit=fit).pixels(img).astype(int)
        assert fitted.shape == expected.shape == (32, 32, 3)
        assert np.abs(fitted - expected).mean() < 3, fit
        for seed in range(4):
            pipeline.set_random_seed(seed)
            assert pipeline(image=img)["image"].shape == (32, 32, 3)
    letterbox = D.build_augment(_fit_recipe("letterbox")).transforms
    assert tuple(letterbox[1].fill) == tuple(letterbox[3].fill) == (124, 116, 104)  # round(ImageNet mean x 255)


def test_big_jpegs_decode_shrunk_for_training(tmp_path):
    big = write_image(tmp_path / "big.jpg", size=(1200, 900), fmt="JPEG")
    pixels = D._pixels(big, max_pixels=10**7, min_side=100)
    assert pixels.dtype == np.uint8 and pixels.shape == (113, 150, 3)  # 1/8 scale, short side >= 100
    assert D._pixels(big, max_pixels=10**7, min_side=500).shape == (900, 1200, 3)  # not 2x too big
    with pytest.raises(UserError):  # the pixel cap still holds
        D.ImageDataset([(big, 0)], Preprocess(resize=100, crop=96), D.build_augment(make_recipe(crop=96, resize=100)),
                       max_pixels=1000)[0]


def test_loaders_shuffle_reproducibly(tmp_path):
    root = make_folder(tmp_path, ["a", "b"], n=5)
    recipe = make_recipe({"root": root, "val_fraction": 0.2})
    ds = D.load_dataset(recipe)

    def epoch(workers):
        recipe.data.workers = workers
        torch.manual_seed(0)
        loader = D.make_loader(ds.train, recipe, train=True, generator=torch.Generator().manual_seed(1))
        return [(x, y) for x, y in loader]

    first, second = epoch(0), epoch(0)
    assert [len(y) for _, y in first] == [4, 4]  # 8 images, batch 4, no drop_last
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    in_workers = epoch(1), epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*in_workers))
    val = list(D.make_loader(ds.val, recipe, train=False))
    assert [y.tolist() for _, y in val] == [[lab for _, lab in ds.val]]
    assert torch.equal(val[0][0][0], torch.from_numpy(D.eval_preprocess(recipe)(ds.val[0][0])))


def test_validation_batches_are_prepared_once_and_replayed_when_they_fit():
    from toolkit.train.sampling import ReplayedBatches

    class Counting:  # a loader that counts its passes
        passes = 0

        def __len__(self):
            return 2

        def __iter__(self):
            Counting.passes += 1
            yield torch.zeros(4, 3), torch.arange(4)
            yield torch.ones(2, 3), torch.arange(2)

    small = ReplayedBatches(Counting(), max_bytes=1024)
    first, second = list(small), list(small)
    assert Counting.passes == 1 and len(small) == 2
    assert all(torch.equal(a, b) for x, y in zip(first, second) for a, b in zip(x, y))
    Counting.passes = 0
    big = ReplayedBatches(Counting(), max_bytes=64)  # 4x3 floats alone are 48 bytes, with labels more than 64
    list(big), list(big)
    assert Counting.passes == 2  # too big to keep: prepared every pass
    Counting.passes = 0
    broken = ReplayedBatches(Counting(), max_bytes=1024)
    next(iter(broken))  # a pass left half way is not kept
    list(broken)
    assert Counting.passes == 2


def test_measure_pipeline_smoke():
    result = D.measure_pipeline(make_recipe(), n=3)
    assert result["images"] == 3 and result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0
