"""load_dataset: a recipe's data as a Dataset, after the pre-flight scan that decodes every image file."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from toolkit.artifacts import from_here
from toolkit.datasets.health import data_health, duplicate_drops, fingerprint, name_of, summary_lines
from toolkit.datasets.sources import LOADERS
from toolkit.datasets.splits import Dataset, keep_per_class
from toolkit.errors import UserError
from toolkit.preprocess import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, Preprocess, open_image

MAX_LISTED = 20  # problems listed in one error before "and N more"


# ----------------------------------------------------------------------------------------------
# The pre-flight scan

def _check_file(path: str, max_pixels: int, preprocess: Optional[Preprocess] = None,
                prints: Optional[dict] = None) -> Optional[str]:
    """None when the file decodes completely (and, with `preprocess`, goes through the eval transform's
    decode, resize and crop: what evaluation will do with it), else the reason it can't be used. With
    `prints`, the decoded image's data-health fingerprint is stored there under its path."""
    try:
        img = open_image(path, max_pixels=max_pixels) if preprocess is None else preprocess.open(path, max_pixels)
        if prints is not None:
            prints[path] = fingerprint(img)  # one dict key per thread and path: safe without a lock
        if preprocess is not None:
            preprocess.resize_crop(img)
    except ImageError as exc:
        msg = str(exc)
        return msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
    except Exception as exc:  # anything Pillow raises that open_image didn't classify
        return f"cannot read image ({type(exc).__name__}: {exc})"
    return None


PROGRESS_MIN_IMAGES = 2000  # a scan of fewer files is quick enough to need no progress line


def scan_items(items: list, max_pixels: int = DEFAULT_MAX_PIXELS, threads: Optional[int] = None,
               progress: bool = True, preprocess: Optional[Preprocess] = None, prints: Optional[dict] = None) -> list:
    """Decode every file item (arrays are skipped); -> [(path, reason)] for each unusable one. With `prints`
    (a dict), each usable file's data-health fingerprint (toolkit.datasets.health) is added to it.

    With `preprocess` (load_dataset passes the recipe's), each file runs through that transform's own
    decode (draft or full), resize and crop, so a file the scan passes also passes evaluation, and the
    scan's work per image is bounded like evaluation's. Pillow releases the GIL while decoding, so a
    thread pool scales with cores.
    """
    paths = sorted({src for src, _ in items if isinstance(src, str)})
    if not paths:
        return []
    threads = threads or min(16, 2 * (os.cpu_count() or 1))  # bounded: each may hold a big decoded image
    show = progress and len(paths) >= PROGRESS_MIN_IMAGES
    bad, start = [], time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        reasons = pool.map(lambda p: _check_file(p, max_pixels, preprocess, prints), paths)
        for n, (path, reason) in enumerate(zip(paths, reasons)):
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
                problems.append(f"{where}: empty class, no usable images; expected at least one "
                                f"({' '.join(IMAGE_EXTENSIONS)})")
    return problems


def _drop(splits: dict, names: set) -> dict:
    """The splits without the items named (a path, or split[index] for an in-memory image)."""
    return {s: [it for i, it in enumerate(items) if name_of(it[0], s, i) not in names] for s, items in splits.items()}


def _dedupe(recipe, problems: list, splits: dict, drops: set) -> dict:
    """data.dedupe: the splits without `drops`. A folder is listed again without them, so a split carved
    out of train is drawn from the deduplicated images (before the split)."""
    print(f"data: data.dedupe dropped {len(drops)} duplicate image{'s' * (len(drops) > 1)}")
    # With labels_per_class only the kept images were scanned: drop from them (a class may end one short).
    if recipe.data.source == "folder" and recipe.data.labels_per_class is None:
        return LOADERS["folder"](recipe.data, problems, exclude=frozenset(drops))[1]
    return _drop(splits, drops)


def _check_health(recipe, labels: list, problems: list, splits: dict, prints: dict, skipped: list, say=print):
    """(splits, health): data health from the scan's fingerprints, duplicates dropped with data.dedupe,
    its summary said (each leak across splits named)."""
    crop = recipe.preprocess.crop
    health = data_health(labels, splits, crop, prints, skipped)
    drops = duplicate_drops(health) if recipe.data.dedupe else set()
    if drops:
        splits = _drop(_dedupe(recipe, problems, splits, drops), {p for p, _ in skipped})
        health = data_health(labels, splits, crop, prints, skipped)
        health["deduped"] = sorted(drops)  # what data.dedupe dropped; the rest describes what is left
    say("\n".join(summary_lines(health)))
    return splits, health


def load_dataset(recipe, scan: bool = True, quiet: bool = False) -> Dataset:
    """The recipe's data as a Dataset. With `scan`, every image file is decoded first and all problems
    (bad files, empty classes, class mismatches) are raised as one UserError; `data.skip_corrupt` drops
    bad files instead (empty classes and mismatches stay fatal). The scan also measures the data's health
    (Dataset.health, toolkit.datasets.health) and prints its summary unless `quiet`; `data.dedupe` drops
    duplicates."""
    d = recipe.data
    if d.source == "folder" and not os.path.isdir(d.root):
        raise UserError(f"data.root: {from_here(d.root)} is not a folder; expected a folder of class sub-folders")
    problems: list = []
    labels, splits, locate = LOADERS[d.source](d, problems)
    # Only the training images the run keeps are scanned: labels_per_class 5 of Fashion-MNIST would otherwise
    # decode and fingerprint all 59,400 training images, every run.
    splits["train"] = keep_per_class(splits["train"], labels, d.labels_per_class, d.split_seed)
    preprocess = Preprocess(**dataclasses.asdict(recipe.preprocess))
    prints: dict = {}
    bad = scan_items(splits["train"] + splits["val"] + splits["test"], d.max_pixels, progress=not quiet,
                     preprocess=preprocess, prints=prints) if scan else []
    skipped = []
    if bad and d.skip_corrupt:
        splits, skipped, bad = _drop(splits, {p for p, _ in bad}), bad, []
    if labels:   # before the health scan: its summary is no use to data that cannot train
        problems += _empty_classes(labels, splits, locate)
    health = None
    if scan and labels and not bad and not problems:
        splits, health = _check_health(recipe, labels, problems, splits, prints, skipped,
                                       say=(lambda text: None) if quiet else print)
        if d.dedupe:   # dropping duplicates can empty a class
            problems += _empty_classes(labels, splits, locate)
    lines = problems + [f"{path}: {reason}" for path, reason in bad]
    if lines:
        what = d.root if d.source == "folder" else f"the {d.source} data"
        hint = "\nset data.skip_corrupt: true to skip the unusable images" if bad else ""
        n = len(lines)
        raise UserError(f"data: {n} problem{'s' if n > 1 else ''} in {what}:\n{_listing(lines)}{hint}")
    if skipped:   # on stderr, like a warning: `toolkit evaluate --json > x.json` keeps its stdout JSON
        print(f"data: skipped {len(skipped)} unusable image{'s' if len(skipped) > 1 else ''} "
              f"(data.skip_corrupt):\n{_listing([f'{p}: {r}' for p, r in skipped])}", file=sys.stderr)
    return Dataset(labels=labels, train=splits["train"], val=splits["val"], test=splits["test"], skipped=skipped,
                   health=health)
