"""Data sources (recipe `data.source`): each lists (labels, {split: [(source, label)]}, locate).

  folder      data.root with class sub-folders, either split (train/ val/ test/) or not (then split
              by val_fraction / test_fraction, stratified and seeded by split_seed)
  flowers102  torchvision's Oxford Flowers-102 with its official 1020/1020/6149 split (torchvision is
              imported only for this source, to download and list it)
  digits      scikit-learn's bundled 8x8 handwritten digits, rendered as RGB images (offline demo)
  fashion_mnist  Zalando's Fashion-MNIST idx files: torchvision's root/FashionMNIST/raw/ or Debian's
              dataset-fashion-mnist; val held out of train, test a fixed 2,000 of t10k (datasets/fashion.py)
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from toolkit.datasets.fashion import load_fashion_mnist
from toolkit.datasets.splits import SPLIT_NAMES, locate_split, split_class
from toolkit.errors import UserError
from toolkit.preprocess import IMAGE_EXTENSIONS

# ----------------------------------------------------------------------------------------------
# Source: folder

def _visible_dirs(path: str) -> list:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _list_images(folder: str) -> list:
    """Image files under `folder` (recursive), hidden files and folders skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _load_folder(d, problems: list, exclude: frozenset = frozenset()):
    """-> (labels, {split: [(path, label)]}, locate); structural problems appended to `problems`. The
    paths in `exclude` (data.dedupe's drops) are left out before a split is carved."""
    root = d.root
    dirs = _visible_dirs(root)
    split_dirs = {SPLIT_NAMES[x]: x for x in dirs if x in SPLIT_NAMES}
    if split_dirs:
        others = [x for x in dirs if x not in SPLIT_NAMES]
        if "train" not in split_dirs:
            problems.append(f"{root}: has {', '.join(sorted(split_dirs.values()))}/ but no train/; expected "
                            "train/ (and optionally val/, test/), each with class sub-folders")
            return [], {"train": [], "val": [], "test": []}, None
        if others:
            problems.append(f"{root}: {', '.join(others)} next to train/; expected only train/, val/ "
                            "and test/ in a split layout")
        layout = {split: os.path.join(root, name) for split, name in split_dirs.items()}
    else:
        layout = {"train": root}

    wanted = None if d.classes is None else [str(c) for c in d.classes]
    per_split = {}  # split -> {class: [paths]}
    for split, folder in layout.items():
        names = _visible_dirs(folder)
        if wanted is not None:
            names = [n for n in names if n in wanted]
        per_split[split] = {n: [p for p in _list_images(os.path.join(folder, n)) if p not in exclude]
                            for n in names}

    train_classes = sorted(per_split["train"])
    where = lambda split: os.path.relpath(layout[split], root) + "/" if split_dirs else ""  # noqa: E731
    if wanted is not None:
        missing = [c for c in wanted if c not in per_split["train"]]
        if missing:
            problems.append(f"data.classes: {', '.join(missing)} not found in {layout['train']}; found: "
                            f"{', '.join(_visible_dirs(layout['train'])) or 'no class folders'}")
    if not train_classes:
        problems.append(f"{layout['train']}: no class sub-folders; expected one folder per class "
                        "holding its images")
    elif len(train_classes) < 2:
        problems.append(f"{layout['train']}: only one class ({train_classes[0]}); expected at least two")
    for split in ("val", "test"):
        if split in per_split and sorted(per_split[split]) != train_classes:
            have = set(per_split[split])
            lack = [c for c in train_classes if c not in have]
            extra = sorted(have - set(train_classes))
            parts = ([f"not in {where(split)}: {', '.join(lack)}"] if lack else []) + \
                    ([f"only in {where(split)}: {', '.join(extra)}"] if extra else [])
            problems.append(f"{where(split)}: class mismatch with {where('train')}: {'; '.join(parts)}")

    labels = train_classes
    index = {name: i for i, name in enumerate(labels)}
    splits = {"train": [], "val": [], "test": []}
    for split, classes in per_split.items():
        for name, paths in classes.items():
            if name in index:
                splits[split] += [(p, index[name]) for p in paths]
    # Splits that have no folder are carved out of train.
    fractions = (0.0 if "val" in layout else d.val_fraction, 0.0 if "test" in layout else d.test_fraction)
    if any(fractions):
        carved = {"train": [], "val": [], "test": []}
        for label, name in enumerate(labels):
            paths = [p for p, lab in splits["train"] if lab == label]
            for split, part in zip(("train", "val", "test"), split_class(paths, name, *fractions, d.split_seed)):
                carved[split] += [(p, label) for p in part]
        splits["train"] = carved["train"]
        splits["val"] += carved["val"]
        splits["test"] += carved["test"]

    def locate(split, name):  # the class folder; None where there is none (carved split, or a mismatch)
        path = os.path.join(layout[split], name) if split in layout else None
        return path if path and os.path.isdir(path) else None
    return labels, splits, locate


# ----------------------------------------------------------------------------------------------
# Source: flowers102

def _remove_folders(created: list) -> None:
    """Remove the folders this attempt created (a failed download leaves no empty or half-filled folder
    behind); folders that were there before are left alone."""
    import shutil

    for folder in created:
        shutil.rmtree(folder, ignore_errors=True)


def _load_flowers102(d, problems: list):
    from torchvision.datasets import Flowers102

    splits = {}
    created = [f for f in (d.root, os.path.join(d.root, "flowers-102")) if not os.path.exists(f)]
    for split in ("train", "val", "test"):
        try:
            ds = Flowers102(d.root, split=split, download=d.download)
        except RuntimeError as exc:
            _remove_folders(created)
            if "not found" in str(exc).lower() and not d.download:
                raise UserError(f"data.root: Flowers-102 not found in {d.root}/flowers-102; set "
                                "data.download: true to fetch it (about 330 MB), or place 102flowers.tgz's "
                                "jpg/, imagelabels.mat and setid.mat there") from None
            raise UserError(f"data: Flowers-102 in {d.root}/flowers-102 is incomplete or corrupted ({exc}); "
                            "delete it and set data.download: true") from None
        except (OSError, ValueError) as exc:  # network failures (URLError is an OSError), bad archives
            _remove_folders(created)
            raise UserError(f"data: could not download Flowers-102 into {d.root} ({exc}); check the network, "
                            f"or place jpg/, imagelabels.mat and setid.mat in {d.root}/flowers-102 by hand "
                            "and set data.download: false") from None
        except ImportError as exc:
            raise UserError(f"data.source: flowers102 needs scipy to read its .mat files ({exc}); "
                            "pip install scipy") from None
        created = []  # downloaded and readable: from here on the files are the user's
        splits[split] = [(str(p), int(lab)) for p, lab in zip(ds._image_files, ds._labels)]
    names = list(Flowers102.classes)  # the 102 Oxford category names, in label-index order
    if d.classes is None:
        return names, splits, locate_split
    wanted = [str(c) for c in d.classes]
    unknown = [c for c in wanted if c not in names]
    if unknown:
        problems.append(f"data.classes: {', '.join(unknown)} not among the Flowers-102 names "
                        f"(e.g. {', '.join(names[:4])}, ...)")
        return names, splits, locate_split
    keep = sorted(names.index(c) for c in set(wanted))  # keep the official order
    remap = {old: new for new, old in enumerate(keep)}
    return [names[i] for i in keep], {s: [(p, remap[lab]) for p, lab in items if lab in remap]
                                      for s, items in splits.items()}, locate_split


# ----------------------------------------------------------------------------------------------
# Source: digits (offline demo)

def render_digits(images: np.ndarray, size: int) -> np.ndarray:
    """sklearn's 8x8 scans (values 0-16) -> uint8 Nxsizexsizex3: dark ink on light paper, bilinear."""
    gray = (255.0 - np.asarray(images, np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
    out = np.empty((len(gray), size, size, 3), np.uint8)
    for i, g in enumerate(gray):
        big = np.asarray(Image.fromarray(g, "L").resize((size, size), Image.Resampling.BILINEAR))
        out[i] = big[:, :, None]
    return out


def _load_digits(d, problems: list):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    chosen = sorted(set(int(c) for c in d.classes)) if d.classes is not None else list(range(10))
    labels = [str(c) for c in chosen]
    splits = {"train": [], "val": [], "test": []}
    for label, digit in enumerate(chosen):
        idx = np.flatnonzero(bunch.target == digit)
        pixels = dict(zip(idx.tolist(), render_digits(bunch.images[idx], d.image_size)))  # this class only
        for split, part in zip(("train", "val", "test"), split_class(
                idx.tolist(), labels[label], d.val_fraction, d.test_fraction, d.split_seed)):
            splits[split] += [(pixels[i], label) for i in part]
    return labels, splits, locate_split


LOADERS = {"folder": _load_folder, "flowers102": _load_flowers102, "digits": _load_digits,
           "fashion_mnist": load_fashion_mnist}
