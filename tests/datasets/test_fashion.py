"""data.source: fashion_mnist (torch-free): idx files in torchvision's raw layout, Debian's folder, the
fixed test subset, and the one clear error when the files are nowhere."""
import gzip
import os

import numpy as np
import pytest

from toolkit import datasets as D
from toolkit.datasets import fashion
from toolkit.errors import UserError

from data_helpers import make_recipe
from fashion_helpers import write_idx, write_fashion


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    empty = tmp_path / "no-debian"
    empty.mkdir()
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(empty))
    return str(empty)


def _recipe(root, **data):
    return make_recipe({"source": "fashion_mnist", "root": str(root), "download": False, **data}, crop=32, resize=32)


@pytest.mark.parametrize("compress", [True, False])
def test_reads_torchvision_layout_and_splits(tmp_path, no_debian, compress):
    write_fashion(tmp_path / "FashionMNIST" / "raw", compress=compress)
    ds = D.load_dataset(_recipe(tmp_path, val_fraction=0.2, split_seed=3))
    assert ds.labels == list(fashion.CLASSES)
    assert np.bincount([lab for _, lab in ds.train]).tolist() == [24] * 10
    assert np.bincount([lab for _, lab in ds.val]).tolist() == [6] * 10
    # test: the fixed subset of t10k, TEST_PER_CLASS (200) per class
    assert np.bincount([lab for _, lab in ds.test]).tolist() == [fashion.TEST_PER_CLASS] * 10
    for pixels, label in ds.train + ds.val + ds.test:
        assert pixels.shape == (28, 28, 3) and pixels.dtype == np.uint8
        assert pixels[0, 0, 0] // 20 == label  # the label travels with its own image
        assert (pixels[..., 0] == pixels[..., 2]).all()  # greyscale as RGB
    # train and val never share an image; the test images do not depend on the split seed
    other = D.load_dataset(_recipe(tmp_path, val_fraction=0.2, split_seed=4))
    key = lambda items: sorted((int(p[0, 0, 0]), lab) for p, lab in items)  # noqa: E731
    assert key(other.test) == key(ds.test)


def test_labels_per_class_and_classes_by_name_or_index(tmp_path, no_debian):
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    few = D.load_dataset(_recipe(tmp_path, val_fraction=0.1, labels_per_class=2, classes=["Bag", 1]))
    assert few.labels == ["Trouser", "Bag"]  # file order, whichever way they were named
    assert np.bincount([lab for _, lab in few.train]).tolist() == [2, 2]
    assert all(p[0, 0, 0] // 20 == (1 if lab == 0 else 8) for p, lab in few.train + few.test)
    with pytest.raises(UserError, match="data.classes: Hat not among the Fashion-MNIST classes"):
        D.load_dataset(_recipe(tmp_path, classes=["Hat", "Bag"]))


def test_debian_folder_is_read_when_root_lacks_the_files(tmp_path, monkeypatch):
    debian = write_fashion(tmp_path / "debian")
    monkeypatch.setattr(fashion, "DEBIAN_DIR", debian)
    ds = D.load_dataset(_recipe(tmp_path / "empty-root"))
    assert len(ds.test) == 10 * fashion.TEST_PER_CLASS
    assert not (tmp_path / "empty-root").exists()  # read in place: nothing copied, nothing made


def test_missing_files_say_how_to_get_them(tmp_path, no_debian):
    with pytest.raises(UserError) as info:
        D.load_dataset(_recipe(tmp_path))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "data.download: true" in message
    assert os.path.join(str(tmp_path), "FashionMNIST", "raw") in message


def test_corrupt_and_mismatched_files_are_one_clear_error(tmp_path, no_debian):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fashion(raw)
    images = os.path.join(raw, fashion.FILES["train"][0] + ".gz")
    with open(images, "wb") as fh:
        fh.write(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"short"))
    with pytest.raises(UserError, match="truncated or corrupt"):
        D.load_dataset(_recipe(tmp_path))
    with open(images, "wb") as fh:
        fh.write(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read this Fashion-MNIST file"):
        D.load_dataset(_recipe(tmp_path))
    write_idx(images[:-3], np.zeros((3, 28, 28), np.uint8), compress=True)  # 3 images for 300 labels
    with pytest.raises(UserError, match="expected N x H x W images and N labels"):
        D.load_dataset(_recipe(tmp_path))

