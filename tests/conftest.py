"""Shared test helpers: tiny learnable image folders and tiny recipes (vgg11, 32 px, CPU, no network)."""
import os
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Subprocesses started by tests import the checkout under test, installed or not.
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40)]


def make_image_folder(root, classes=3, per_class=8, size=(48, 40), splits=None, seed=0) -> str:
    """root/[split/]class_k/img_i.jpg: each class a colour with noise, so a tiny net can learn it."""
    rng = np.random.default_rng(seed)
    for split in splits or [None]:
        for k in range(classes):
            folder = os.path.join(root, split, f"class_{k}") if split else os.path.join(root, f"class_{k}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                base = np.array(COLOURS[k % len(COLOURS)], np.float32)
                pixels = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"img_{i}.jpg"), quality=90)
    return str(root)


def tiny_recipe(tmp_path, image_root, **sections) -> dict:
    """A raw recipe dict for a seconds-long CPU run; `sections` update it key by key."""
    raw = {
        "name": "tiny", "seed": 0, "out_dir": str(tmp_path / "runs"),
        "data": {"source": "folder", "root": str(image_root), "val_fraction": 0.25, "workers": 0},
        "preprocess": {"resize": 32, "crop": 32},
        "model": {"arch": "vgg11", "weights": "none", "head": "classic", "hidden": 32},
        "train": {"strategy": "scratch", "epochs": 2, "batch_size": 4, "lr": 0.01, "lr_decay": 1.0,
                  "deterministic": True, "device": "cpu"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def write_recipe(path, raw) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh)
    return str(path)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images")
