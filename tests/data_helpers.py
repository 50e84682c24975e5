"""Shared by tests/datasets and tests/train/test_data.py: tiny recipes and tiny image folders (no torch)."""
import os
import zlib

import numpy as np
from PIL import Image

from toolkit import recipe as R


def make_recipe(data=None, augment=None, crop=32, resize=32):
    raw = {"model": {"weights": "none", "arch": "vgg11"}, "train": {"strategy": "scratch", "batch_size": 4},
           "preprocess": {"resize": resize, "crop": crop},
           # any existing folder passes the recipe check where a test needs no images
           "data": {"workers": 0, "root": os.path.dirname(__file__), **(data or {})}}
    if augment is not None:
        raw["augment"] = augment
    return R.from_dict(raw)


def write_image(path, size=(40, 30), seed=0, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return str(path)


def make_folder(root, classes, n=4, splits=None, ext=".png"):
    """root/[split/]class/img_i.ext with n images each."""
    for split in splits or [None]:
        for c in classes:
            for i in range(n):
                base = os.path.join(root, split, c) if split else os.path.join(root, c)
                write_image(os.path.join(base, f"img_{i}{ext}"), seed=zlib.crc32(f"{split}/{c}/{i}".encode()))
    return str(root)
