"""Data source `fashion_mnist`: Zalando's Fashion-MNIST, read from its four idx files without torch.

Where the files are looked for, first hit wins (each file plain or .gz):
  1. <data.root>/FashionMNIST/raw/   torchvision's layout (what `FashionMNIST(root, download=True)` writes)
  2. /usr/share/datasets/fashion-mnist/   Debian's `apt-get install dataset-fashion-mnist`
With neither, `data.download: true` fetches them into (1) through torchvision (imported only then);
otherwise one error says how to get them.

Splits: train and val come from the 60,000 training images (`data.val_fraction`, stratified, seeded by
`data.split_seed`); test is a FIXED subset of the 10,000 t10k images, TEST_PER_CLASS of each class
picked with TEST_SEED, whatever the split seed: every run of every recipe scores on the same images.
`data.test_fraction` is not used. Images are 28x28 greyscale, handed out as read-only RGB views
(HxWx3 uint8, no copy): the networks take three channels and `preprocess` resizes them.
"""
from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from toolkit.datasets.splits import class_rng, locate_split, split_class
from toolkit.errors import UserError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")  # label order of the idx files (and torchvision's FashionMNIST.classes)
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # where dataset-fashion-mnist installs them
TEST_PER_CLASS = 200  # the fixed test subset: 200 per class, 2,000 of t10k's 10,000
TEST_SEED = 0  # picks that subset; not data.split_seed, so the test images never move
IDX_MAGIC = {1: 0x801, 3: 0x803}  # idx header: unsigned bytes, 1 dimension (labels) or 3 (images)


def torchvision_dir(root: str) -> str:
    return os.path.join(root, "FashionMNIST", "raw")


def _file_in(folder: str, name: str):
    for candidate in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


def find_files(root: str, debian_dir=None):
    """{name: path} of the four files from the first folder that has all of them, else None."""
    for folder in (torchvision_dir(root), debian_dir or DEBIAN_DIR):
        found = {name: _file_in(folder, name) for pair in FILES.values() for name in pair}
        if all(found.values()):
            return found
    return None


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, size: int, mtime: float) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise UserError(f"{path}: cannot read this Fashion-MNIST file ({exc}); reinstall it "
                        "(apt-get install --reinstall dataset-fashion-mnist) or delete it and download again") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    ndim = {v: k for k, v in IDX_MAGIC.items()}.get(magic)
    if ndim is None or len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path}: not an idx file of unsigned bytes (header {raw[:4].hex() or 'empty'}); "
                        "expected Fashion-MNIST's idx3 images or idx1 labels")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path}: {body.size} bytes of data for shape {shape}; the file is truncated or corrupt")
    return body.reshape(shape)  # read-only (a view of bytes), so the cached copy can be shared


def read_idx(path: str) -> np.ndarray:
    """An idx file (plain or .gz) -> a read-only uint8 array; cached while the file is unchanged."""
    st = os.stat(path)
    return _read_idx_cached(os.path.abspath(path), st.st_size, st.st_mtime)


def read_pair(images_path: str, labels_path: str) -> tuple:
    """(N x 28 x 28 images, N labels) of one idx pair, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{images_path}, {labels_path}: shapes {images.shape} and {labels.shape}; expected "
                        "N x H x W images and N labels")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise UserError(f"{labels_path}: label {int(labels.max())}; Fashion-MNIST labels are 0-{len(CLASSES) - 1}")
    return images, labels


def _download(root: str) -> None:
    import shutil

    from torchvision.datasets import FashionMNIST

    created = [f for f in (root, os.path.join(root, "FashionMNIST")) if not os.path.exists(f)]
    try:
        FashionMNIST(root, train=True, download=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        for folder in created:  # a failed download leaves no half-filled folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"data: could not download Fashion-MNIST into {torchvision_dir(root)} ({exc}); check "
                        "the network, or install it offline with `apt-get install dataset-fashion-mnist`") from None


def locate_files(d, debian_dir=None) -> dict:
    """The four files' paths, downloading them first when `data.download` allows; else one clear error."""
    debian_dir = debian_dir or DEBIAN_DIR  # read at call time, so a test can point it elsewhere
    found = find_files(d.root, debian_dir)
    if found is None and d.download:
        _download(d.root)
        found = find_files(d.root, debian_dir)
    if found is None:
        raise UserError(f"data: Fashion-MNIST not found in {torchvision_dir(d.root)} or {debian_dir}; expected "
                        f"its four idx files ({', '.join(n for pair in FILES.values() for n in pair)}, plain or "
                        ".gz). Install them with `apt-get install dataset-fashion-mnist`, or set data.download: true "
                        "to fetch them (about 30 MB) with torchvision")
    return found


def _chosen_classes(d, problems: list) -> list:
    """data.classes (names or indices 0-9) -> sorted label indices; problems appended."""
    if d.classes is None:
        return list(range(len(CLASSES)))
    chosen, unknown = set(), []
    for c in d.classes:
        if isinstance(c, int) and 0 <= c < len(CLASSES):
            chosen.add(c)
        elif str(c) in CLASSES:
            chosen.add(CLASSES.index(str(c)))
        else:
            unknown.append(str(c))
    if unknown:
        problems.append(f"data.classes: {', '.join(unknown)} not among the Fashion-MNIST classes; expected "
                        f"names ({', '.join(CLASSES)}) or indices 0-{len(CLASSES) - 1}")
    return sorted(chosen)


def _as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.broadcast_to(gray[..., None], gray.shape + (3,))  # no copy: three views of one channel


def load_fashion_mnist(d, problems: list, debian_dir=None):
    """-> (labels, {split: [(HxWx3 uint8 view, label)]}, locate), the shape every source returns."""
    files = locate_files(d, debian_dir)
    train_images, train_labels = read_pair(*(files[n] for n in FILES["train"]))
    test_images, test_labels = read_pair(*(files[n] for n in FILES["t10k"]))
    chosen = _chosen_classes(d, problems)
    names = [CLASSES[c] for c in chosen]
    train_rgb, test_rgb = _as_rgb(train_images), _as_rgb(test_images)
    splits = {"train": [], "val": [], "test": []}
    for label, (cls, name) in enumerate(zip(chosen, names)):
        idx = np.flatnonzero(train_labels == cls).tolist()
        train, val, _ = split_class(idx, name, d.val_fraction, 0.0, d.split_seed)
        splits["train"] += [(train_rgb[i], label) for i in train]
        splits["val"] += [(train_rgb[i], label) for i in val]
        pool = np.flatnonzero(test_labels == cls)
        picked = np.sort(pool[class_rng(TEST_SEED, name, 2).permutation(len(pool))[:TEST_PER_CLASS]])
        splits["test"] += [(test_rgb[i], label) for i in picked.tolist()]
    return names, splits, locate_split
