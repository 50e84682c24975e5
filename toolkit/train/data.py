"""Train-time data (torch side): albumentations augmentation, the torch Dataset and DataLoader, and the
input pipeline's throughput.

Listing, sources, splits and the pre-flight scan are torch-free and live in toolkit.datasets;
`load_dataset`, `scan_items`, `render_digits` and `Dataset` are re-exported here for callers on this side.

Items are (source, label_index), where a source is an image path or a uint8 HxWx3 array. Eval
preprocessing is `toolkit.preprocess.Preprocess` (numpy + Pillow, the one source of truth); training runs
albumentations (from the recipe's serialised pipeline) and then the same `Preprocess.normalize`, so train
and eval share mean/std by construction.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import tempfile
import time
import warnings
from typing import Any, Optional

# albumentations checks PyPI for a newer version on import; a toolkit run never touches the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402  (albumentations' backend: border modes, thread count)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from toolkit.errors import UserError  # noqa: E402
from toolkit.preprocess import DEFAULT_MAX_PIXELS, ImageError, Preprocess, open_image  # noqa: E402
from toolkit.runtime.benchmark.backends import synthetic_jpegs  # noqa: E402

from toolkit.datasets import Dataset, load_dataset, render_digits, scan_items  # noqa: E402,F401  (the listing, for callers on this side)

# ----------------------------------------------------------------------------------------------
# Preprocessing and augmentation

def eval_preprocess(recipe) -> Preprocess:
    return Preprocess(**dataclasses.asdict(recipe.preprocess))


def default_augment(recipe) -> dict:
    """The default train-time pipeline for photos, in albumentations' own serialised form (plain JSON
    types, so it writes into the resolved recipe as YAML). Digits recipes bring their own: no flips.

    It follows preprocess.fit, so training sees what evaluation sees: crop trains on random crops of
    35-100% of the photo; letterbox and squash keep the photo's whole content (letterbox: the long side
    to crop, padded with the mean colour as Preprocess pads; squash: both sides to crop), and jitter
    scale, shift and angle by a little instead of cropping."""
    crop, fit = recipe.preprocess.crop, recipe.preprocess.fit
    colour = A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5)
    if fit == "crop":
        pipeline = A.Compose([
            # Bilinear: big JPEGs arrive pre-shrunk (see _pixels), so the scale change here is small.
            A.RandomResizedCrop(size=(crop, crop), scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-10, 10), scale=(0.95, 1.05), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
            colour,
        ])
    else:
        pad = [float(c) for c in eval_preprocess(recipe).pad_colour]
        border = {"border_mode": cv2.BORDER_CONSTANT, "fill": pad} if fit == "letterbox" else \
            {"border_mode": cv2.BORDER_REFLECT_101}
        fit_square = [A.LongestMaxSize(max_size=crop), A.PadIfNeeded(min_height=crop, min_width=crop,
                                                                      position="center", **border)] \
            if fit == "letterbox" else [A.Resize(height=crop, width=crop)]
        pipeline = A.Compose([
            *fit_square,
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-10, 10), scale=(0.9, 1.05), translate_percent=(-0.05, 0.05), p=0.5, **border),
            colour,
        ])
    spec = json.loads(json.dumps(A.to_dict(pipeline)))
    for t in spec["transform"]["transforms"]:
        if t["__class_fullname__"] == "PadIfNeeded":
            t.pop("padding", None)  # albumentations 2.0.8 writes it but from_dict refuses it (warns "not valid")
    return spec


def _dummy_image(recipe) -> np.ndarray:
    """A test input shaped like the real data: digits are square, photos roughly 4:3 at resize."""
    if recipe.data.source == "digits":
        h = w = recipe.data.image_size
    else:
        h, w = recipe.preprocess.resize, recipe.preprocess.resize * 4 // 3 + 1
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


# Transforms that make the network's input size, and their size arguments. One that leaves its size
# out follows preprocess.crop, so changing the resolution is one edit of the recipe.
_SIZED_TRANSFORMS = {"RandomResizedCrop": ("size",), "RandomSizedCrop": ("size",), "Resize": ("height", "width"),
                     "CenterCrop": ("height", "width"), "RandomCrop": ("height", "width")}


def fill_crop_size(spec: Any, crop: int) -> Any:
    """A copy of an albumentations dict in which every sized transform without a size gets crop x crop.
    A size the recipe sets stays as written (and must still produce crop x crop)."""
    if not isinstance(spec, dict):
        return spec  # A.from_dict reports the malformed pipeline
    spec = copy.deepcopy(spec)
    pending = [spec.get("transform", spec)]
    while pending:
        t = pending.pop()
        if not isinstance(t, dict):
            continue
        keys = _SIZED_TRANSFORMS.get(str(t.get("__class_fullname__", "")).rsplit(".", 1)[-1], ())
        if keys and not any(k in t for k in keys):
            t.update({"size": [crop, crop]} if keys == ("size",) else {"height": crop, "width": crop})
        nested = t.get("transforms")
        pending.extend(nested if isinstance(nested, list) else [])
    return spec


def build_augment(recipe) -> A.Compose:
    """recipe.augment (or the default) -> albumentations Compose, checked once on a dummy image."""
    spec = recipe.augment if recipe.augment is not None else default_augment(recipe)
    spec = fill_crop_size(spec, recipe.preprocess.crop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pipeline = A.from_dict(spec)
        except KeyError as exc:
            raise UserError(f"augment: unknown albumentations transform {exc}; write the pipeline with "
                            "albumentations.to_dict(Compose([...]))") from None
        except Exception as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
            raise UserError("augment: " + "; ".join(ln.strip() for ln in lines)) from None
    # albumentations only warns about misspelt arguments; a typo must not pass silently.
    invalid = [str(w.message) for w in caught if "not valid for transform" in str(w.message)]
    if invalid:
        raise UserError("augment: " + "; ".join(invalid))
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(pipeline, A.Compose):
        pipeline = A.Compose([pipeline])

    crop, dummy = recipe.preprocess.crop, _dummy_image(recipe)
    for seed in range(4):  # a few draws, so a transform applied with p < 1 shows up
        pipeline.set_random_seed(seed)
        try:
            out = pipeline(image=dummy)["image"]
        except Exception as exc:
            raise UserError(f"augment: the pipeline failed on a {dummy.shape[1]}x{dummy.shape[0]} test image "
                            f"({type(exc).__name__}: {exc})") from None
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
            raise UserError(f"augment: pipeline outputs {type(out).__name__} of {out.dtype}, expected uint8 "
                            "pixels; leave out Normalize/ToTensorV2, the toolkit normalises with "
                            "preprocess.mean and std")
        if out.shape != (crop, crop, 3):
            got = "x".join(map(str, out.shape[:2])) if out.ndim >= 2 else str(out.shape)
            raise UserError(f"augment: pipeline outputs {got}, expected {crop}x{crop}; end it with a "
                            f"crop/resize to preprocess.crop ({crop}), or leave that transform's size out "
                            "so it follows preprocess.crop")
    pipeline.set_random_seed(None)
    return pipeline


# ----------------------------------------------------------------------------------------------
# torch Dataset and DataLoader

def _pixels(source: Any, max_pixels: int, min_side: int = 0) -> np.ndarray:
    """Any image source -> contiguous uint8 HxWx3, for augmentation.

    Arrays (the digits source) pass straight through. Everything else goes through `open_image`, where a
    JPEG (or MPO) with a short side of at least 2 x `min_side` is decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg's DCT scaling (Pillow's `draft`), keeping the short side >= `min_side`: a phone photo then
    decodes many times faster, and DCT scaling is a clean (antialiased) downscale.
    """
    if isinstance(source, np.ndarray) and source.dtype == np.uint8 and source.ndim == 3 and source.shape[2] == 3:
        return np.ascontiguousarray(source)
    return np.asarray(open_image(source, max_pixels=max_pixels, min_side=min_side))


class ImageDataset(torch.utils.data.Dataset):
    """(source, label) items -> (float32 3xHxW tensor, int label).

    Eval mode (augment None) is exactly `preprocess(source)`. Train mode decodes, augments, then applies
    `preprocess.normalize`. Each training sample reseeds the pipeline, from the seed given to `load` (the
    training loop passes one derived from (seed, epoch, index)) or else from torch's RNG.
    """

    def __init__(self, items: list, preprocess: Preprocess, augment: Optional[A.Compose] = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.items = list(items)
        self.preprocess = preprocess
        self.augment = augment
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.load(index)

    def load(self, index: int, seed: Optional[int] = None):
        """Item `index`; a training item's augmentation draws from `seed` (default: torch's RNG)."""
        source, label = self.items[index]
        try:
            if self.augment is None:
                x = self.preprocess(source, max_pixels=self.max_pixels)
            else:
                if seed is None:
                    seed = int(torch.randint(0, 2**62, ()).item())
                self.augment.set_random_state(np.random.default_rng(seed), random.Random(seed))
                pixels = _pixels(source, self.max_pixels, min_side=self.preprocess.resize)
                x = self.preprocess.normalize(self.augment(image=pixels)["image"])
        except ImageError as exc:
            # DataLoader workers re-raise by type with a single message argument; UserError takes one.
            raise UserError(str(exc)) from None
        return torch.from_numpy(x), int(label)


def _seed_worker(worker_id: int) -> None:
    """numpy and random follow torch's per-worker seed (DataLoader seeds torch per worker).

    Don't call cv2.setNumThreads here: in a forked child it waits forever on the parent's thread pool.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _uses_cuda(recipe) -> bool:
    device = recipe.train.device
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def make_loader(items: list, recipe, train: bool, generator: Optional[torch.Generator] = None):
    """A DataLoader over `items`: augmented and shuffled (by `generator`) when `train`, else eval."""
    augment = build_augment(recipe) if train else None
    dataset = ImageDataset(items, eval_preprocess(recipe), augment, recipe.data.max_pixels)
    workers = recipe.data.workers
    return torch.utils.data.DataLoader(
        dataset, batch_size=recipe.train.batch_size, shuffle=train, generator=generator, drop_last=False,
        num_workers=workers, persistent_workers=workers > 0, worker_init_fn=_seed_worker if workers else None,
        pin_memory=_uses_cuda(recipe))


# ----------------------------------------------------------------------------------------------
# Throughput of the input pipeline (for the closing note and benchmarks)

def _write_test_jpegs(folder: str, n: int, size=(500, 375)) -> list:
    """The benchmark's photo-like JPEGs (smooth colour fields plus noise), written to `folder`."""
    paths = []
    for i, blob in enumerate(synthetic_jpegs(n, size)):
        path = os.path.join(folder, f"img_{i:04d}.jpg")
        with open(path, "wb") as fh:
            fh.write(blob)
        paths.append(path)
    return paths


def measure_pipeline(recipe, n: int = 200, items: Optional[list] = None, size=(500, 375)) -> dict:
    """Decode + augment + normalise images/s on one core (one process, one OpenCV/torch thread).

    `items` defaults to `n` generated JPEGs of `size`. Returns train (augmented) and eval rates.
    """
    threads = (torch.get_num_threads(), cv2.getNumThreads())
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if items is None:
                items = [(p, 0) for p in _write_test_jpegs(tmp, n, size)]
            rates = {}
            for mode, augment in (("train", build_augment(recipe)), ("eval", None)):
                ds = ImageDataset(items, eval_preprocess(recipe), augment, recipe.data.max_pixels)
                ds[0]  # warm-up
                start = time.perf_counter()
                for i in range(len(ds)):
                    ds[i]
                rates[mode] = len(ds) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    return {"crop": recipe.preprocess.crop, "images": len(items),
            "train_images_per_s": rates["train"], "eval_images_per_s": rates["eval"]}
