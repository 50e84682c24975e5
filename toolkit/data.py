"""Datasets, splits, the pre-flight scan and train-time augmentation (torch side).

Sources (recipe `data.source`):
  folder      data.root with class sub-folders, either split (train/ val/ test/) or not (then split
              by val_fraction / test_fraction, stratified and seeded by split_seed)
  flowers102  torchvision's Oxford Flowers-102 with its official 1020/1020/6149 split
  digits      scikit-learn's bundled 8x8 handwritten digits, rendered as RGB images (offline demo)

Every source gives a `Dataset` of (source, label_index) items, where a source is an image path or
a uint8 HxWx3 array. Eval preprocessing is `toolkit.preprocess.Preprocess` (numpy + Pillow, the one
source of truth); training runs albumentations (from the recipe's serialised pipeline) and then the
same `Preprocess.normalize`, so train and eval share mean/std by construction.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import tempfile
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

# albumentations checks PyPI for a newer version on import; a toolkit run never touches the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402  (albumentations' backend: border modes, thread count)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from toolkit.errors import UserError  # noqa: E402
from toolkit.preprocess import DEFAULT_MAX_PIXELS, ImageError, Preprocess, open_image, to_rgb  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_LISTED = 20  # problems listed in one error before "and N more"

Item = tuple  # (source: str | np.ndarray, label: int)


@dataclass
class Dataset:
    labels: list  # class names; label index i is labels[i]
    train: list = field(default_factory=list)  # [(source, label)]
    val: list = field(default_factory=list)
    test: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # [(path, reason)] dropped by skip_corrupt


# ----------------------------------------------------------------------------------------------
# Splitting: stratified, seeded per class so a class's split never depends on which other classes
# were chosen, and label subsampling happens after the split so the val/test sets stay put.

def _class_rng(seed: int, name: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(str(name).encode()), stream])


def _split_class(paths: list, name: str, val_fraction: float, test_fraction: float, seed: int):
    """One class's items -> (train, val, test); each fraction > 0 gets at least one when possible."""
    n = len(paths)
    counts = []
    for frac in (test_fraction, val_fraction):
        k = int(round(n * frac))
        counts.append(max(k, 1) if frac > 0 else 0)
    n_test, n_val = counts
    while n_test + n_val >= n and (n_test or n_val):  # keep at least one training image
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = _class_rng(seed, name, 0).permutation(n)
    picked = [paths[i] for i in order]
    return picked[n_test + n_val:], picked[n_test:n_test + n_val], picked[:n_test]


def _keep_per_class(train: list, labels: list, per_class: Optional[int], seed: int) -> list:
    """At most `per_class` training items per class. Nested: the N kept are a subset of the N+1 kept."""
    if per_class is None:
        return train
    out = []
    for label, name in enumerate(labels):
        items = [it for it in train if it[1] == label]
        order = _class_rng(seed, name, 1).permutation(len(items))[:per_class]
        out += [items[i] for i in sorted(order)]
    return out


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


def _load_folder(d, problems: list):
    """-> (labels, {split: [(path, label)]}, locate); structural problems appended to `problems`."""
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
        per_split[split] = {n: _list_images(os.path.join(folder, n)) for n in names}

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
            for split, part in zip(("train", "val", "test"), _split_class(paths, name, *fractions, d.split_seed)):
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

def _load_flowers102(d, problems: list):
    from torchvision.datasets import Flowers102

    splits = {}
    for split in ("train", "val", "test"):
        try:
            ds = Flowers102(d.root, split=split, download=d.download)
        except RuntimeError as exc:
            if "not found" in str(exc).lower() and not d.download:
                raise UserError(f"data.root: Flowers-102 not found in {d.root}/flowers-102; set "
                                "data.download: true to fetch it (about 330 MB), or place 102flowers.tgz's "
                                "jpg/, imagelabels.mat and setid.mat there") from None
            raise UserError(f"data: Flowers-102 in {d.root}/flowers-102 is incomplete or corrupted ({exc}); "
                            "delete it and set data.download: true") from None
        except (OSError, ValueError) as exc:  # network failures (URLError is an OSError), bad archives
            raise UserError(f"data: could not download Flowers-102 into {d.root} ({exc}); check the network, "
                            f"or place jpg/, imagelabels.mat and setid.mat in {d.root}/flowers-102 by hand "
                            "and set data.download: false") from None
        except ImportError as exc:
            raise UserError(f"data.source: flowers102 needs scipy to read its .mat files ({exc}); "
                            "pip install scipy") from None
        splits[split] = [(str(p), int(lab)) for p, lab in zip(ds._image_files, ds._labels)]
    names = list(Flowers102.classes)  # the 102 Oxford category names, in label-index order
    if d.classes is None:
        return names, splits, _locate_split
    wanted = [str(c) for c in d.classes]
    unknown = [c for c in wanted if c not in names]
    if unknown:
        problems.append(f"data.classes: {', '.join(unknown)} not among the Flowers-102 names "
                        f"(e.g. {', '.join(names[:4])}, ...)")
        return names, splits, _locate_split
    keep = sorted(names.index(c) for c in set(wanted))  # keep the official order
    remap = {old: new for new, old in enumerate(keep)}
    return [names[i] for i in keep], {s: [(p, remap[lab]) for p, lab in items if lab in remap]
                                      for s, items in splits.items()}, _locate_split


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
        for split, part in zip(("train", "val", "test"), _split_class(
                idx.tolist(), labels[label], d.val_fraction, d.test_fraction, d.split_seed)):
            splits[split] += [(pixels[i], label) for i in part]
    return labels, splits, _locate_split


# ----------------------------------------------------------------------------------------------
# The pre-flight scan

def _check_file(path: str, max_pixels: int) -> Optional[str]:
    """None when the file decodes completely, else the reason it can't be used."""
    try:
        open_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        msg = str(exc)
        return msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
    except Exception as exc:  # anything Pillow raises that open_image didn't classify
        return f"cannot read image ({type(exc).__name__}: {exc})"
    return None


def scan_items(items: list, max_pixels: int = DEFAULT_MAX_PIXELS, threads: Optional[int] = None,
               progress: bool = True) -> list:
    """Decode every file item (arrays are skipped); -> [(path, reason)] for each unusable one.

    Pillow releases the GIL while decoding, so a thread pool scales with cores.
    """
    paths = sorted({src for src, _ in items if isinstance(src, str)})
    if not paths:
        return []
    threads = threads or min(16, 2 * (os.cpu_count() or 1))  # bounded: each may hold a big decoded image
    show = progress and len(paths) >= 2000
    bad, start = [], time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for n, (path, reason) in enumerate(zip(paths, pool.map(lambda p: _check_file(p, max_pixels), paths))):
            if reason is not None:
                bad.append((path, reason))
            if show and sys.stdout.isatty() and (n + 1) % 1000 == 0:
                print(f"\rscan: {n + 1}/{len(paths)} images checked", end="", flush=True)
    if show:
        print(f"\rscan: {len(paths)} images checked in {time.perf_counter() - start:.1f}s, {len(bad)} unusable")
    return bad


def _listing(lines: list) -> str:
    shown = lines[:MAX_LISTED]
    more = [f"and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else []
    return "\n".join(f"  {line}" for line in shown + more)


def _locate_split(split: str, name: str) -> Optional[str]:
    return f"{split} split, class {name}"


def _empty_classes(labels: list, splits: dict, locate) -> list:
    """One line per class without a usable image in train, or in a val/test split that exists."""
    problems = []
    for split, items in splits.items():
        if split != "train" and not items:
            continue  # a split that doesn't exist
        counts = np.bincount([lab for _, lab in items], minlength=len(labels))
        for i in np.flatnonzero(counts == 0):
            where = locate(split, labels[i])
            if where is not None:
                problems.append(f"{where}: empty class, no usable images ({' '.join(IMAGE_EXTENSIONS)})")
    return problems


# ----------------------------------------------------------------------------------------------
# Public: load_dataset

LOADERS = {"folder": _load_folder, "flowers102": _load_flowers102, "digits": _load_digits}


def load_dataset(recipe, scan: bool = True) -> Dataset:
    """The recipe's data as a Dataset. With `scan`, every image file is decoded first and all problems
    (bad files, empty classes, class mismatches) are raised as one UserError; `data.skip_corrupt` drops
    bad files instead (empty classes and mismatches stay fatal)."""
    d = recipe.data
    if d.source == "folder" and not os.path.isdir(d.root):
        raise UserError(f"data.root: {d.root!r} is not a folder; expected a folder of class sub-folders")
    problems: list = []
    labels, splits, locate = LOADERS[d.source](d, problems)
    bad = scan_items(splits["train"] + splits["val"] + splits["test"], d.max_pixels) if scan else []
    skipped = []
    if bad and d.skip_corrupt:
        drop = {p for p, _ in bad}
        splits = {s: [it for it in items if not (isinstance(it[0], str) and it[0] in drop)]
                  for s, items in splits.items()}
        skipped, bad = bad, []
    if labels:
        problems += _empty_classes(labels, splits, locate)
    lines = problems + [f"{path}: {reason}" for path, reason in bad]
    if lines:
        what = d.root if d.source == "folder" else f"the {d.source} data"
        hint = "\nset data.skip_corrupt: true to skip the unusable images" if bad else ""
        n = len(lines)
        raise UserError(f"data: {n} problem{'s' if n > 1 else ''} in {what}:\n{_listing(lines)}{hint}")
    if skipped:
        print(f"data: skipped {len(skipped)} unusable image{'s' if len(skipped) > 1 else ''} "
              f"(data.skip_corrupt):\n{_listing([f'{p}: {r}' for p, r in skipped])}")
    train = _keep_per_class(splits["train"], labels, d.labels_per_class, d.split_seed)
    return Dataset(labels=labels, train=train, val=splits["val"], test=splits["test"], skipped=skipped)


# ----------------------------------------------------------------------------------------------
# Preprocessing and augmentation

def eval_preprocess(recipe) -> Preprocess:
    return Preprocess(**dataclasses.asdict(recipe.preprocess))


def default_augment(recipe) -> dict:
    """The default train-time pipeline for photos, in albumentations' own serialised form (plain JSON
    types, so it writes into the resolved recipe as YAML). Digits recipes bring their own: no flips."""
    crop = recipe.preprocess.crop
    pipeline = A.Compose([
        # Bilinear: big JPEGs arrive pre-shrunk (see _pixels), so the scale change here is small.
        A.RandomResizedCrop(size=(crop, crop), scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-10, 10), scale=(0.95, 1.05), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
    ])
    return json.loads(json.dumps(A.to_dict(pipeline)))


def _dummy_image(recipe) -> np.ndarray:
    """A test input shaped like the real data: digits are square, photos roughly 4:3 at resize."""
    if recipe.data.source == "digits":
        h = w = recipe.data.image_size
    else:
        h, w = recipe.preprocess.resize, recipe.preprocess.resize * 4 // 3 + 1
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def build_augment(recipe) -> A.Compose:
    """recipe.augment (or the default) -> albumentations Compose, checked once on a dummy image."""
    spec = recipe.augment if recipe.augment is not None else default_augment(recipe)
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
                            f"crop/resize to preprocess.crop ({crop})")
    pipeline.set_random_seed(None)
    return pipeline


# ----------------------------------------------------------------------------------------------
# torch Dataset and DataLoader

def _pixels(source: Any, max_pixels: int, min_side: int = 0) -> np.ndarray:
    """Any image source -> contiguous uint8 HxWx3, for augmentation.

    Arrays (the digits source) pass straight through. A JPEG with a short side of at least 2 x `min_side`
    is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (Pillow's `draft`), keeping the short
    side >= `min_side`: a phone photo then decodes many times faster, and DCT scaling is a clean
    (antialiased) downscale. Everything else goes through `open_image` unchanged.
    """
    if isinstance(source, np.ndarray) and source.dtype == np.uint8 and source.ndim == 3 and source.shape[2] == 3:
        return np.ascontiguousarray(source)
    if min_side and isinstance(source, str):
        try:
            with Image.open(source) as img:
                if (img.format == "JPEG" and min(img.size) >= 2 * min_side
                        and img.width * img.height <= max_pixels):
                    img.draft("RGB", (min_side, min_side))
                    return np.asarray(to_rgb(img))
        except (OSError, ValueError, SyntaxError):
            pass  # let open_image classify the problem
    return np.asarray(open_image(source, max_pixels=max_pixels))


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
    """Photo-like JPEGs: smooth colour fields plus noise, so they compress like real pictures."""
    rng = np.random.default_rng(0)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        path = os.path.join(folder, f"img_{i:04d}.jpg")
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
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
