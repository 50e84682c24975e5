"""Data health: exact and near duplicates, leaks across splits, class balance, small and unreadable images.

Computed from one fingerprint per image, taken where the pre-flight scan decodes it (toolkit.datasets.load),
so the scan reads each file once. torch-free: numpy and Pillow.

- exact duplicates: the same decoded pixels (a BLAKE2 hash of the RGB bytes and the size);
- near duplicates: a 64-bit DCT perceptual hash (pHash) of the greyscale image finds the candidates (at most
  NEAR_BITS bits apart), and their 16x16 greyscale thumbnails confirm them: with their mean brightness matched
  (at most NEAR_SHIFT apart), they differ by at most NEAR_MAD grey levels on average and nowhere by more than
  NEAR_PEAK of the pair's contrast. The mean alone passed distinct objects on a shared plain background (the
  background's equal pixels dilute it); the peak does not. Chosen by measurement on tests/bench_data_health.py
  (docs/data.md): on digits, a difference hash (dHash) pairs thousands of distinct images at any threshold
  that finds the resized copies (plain backgrounds give equal bits), pHash alone tens, pHash + the thumbnail
  check none. Backbone embeddings were not used: the scan runs torch-free, before any model exists;
- leaks: duplicate pairs (exact or near) whose images sit in different splits.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from toolkit.preprocess import DEFAULT_MAX_PIXELS, ImageError, open_image

NEAR_BITS = 10  # pHash bits (of 64) a near-duplicate candidate pair may differ in, chosen on the bench
NEAR_MAD = 6.0  # ... the most its 16x16 greyscale thumbnails may differ, mean absolute grey levels (0-255)
NEAR_PEAK = 0.12  # ... and at any one pixel, as a share of the pair's contrast (its thumbnails' max - min)
NEAR_SHIFT = 24.0  # ... the most their mean brightness may differ (matched before the two checks above)
THUMB = 16  # the thumbnail's side
SMALL_FRACTION = 0.5  # an image whose shorter side is under this x the crop is "far smaller than the crop"
MAX_NEAR_IMAGES = 50_000  # above this many images the all-pairs near search (n^2 / 2 popcounts) is skipped
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class Fingerprint:
    """What data health needs of one decoded image."""
    digest: str  # BLAKE2b of the RGB pixels and the size: equal digests are exact duplicates
    phash: int  # 64-bit DCT hash of the greyscale image
    thumb: bytes  # THUMB x THUMB greyscale pixels (bilinear: a resized copy's matches), to confirm a near pair
    width: int
    height: int


DCT_ROWS = np.cos(np.pi * (2 * np.arange(32)[None, :] + 1) * np.arange(8)[:, None] / 64)  # the 8 lowest DCT-II rows


def phash(img: Image.Image) -> int:
    """64-bit DCT hash (pHash): the 8x8 lowest frequencies of the 32x32 greyscale image's DCT, each bit
    above or below their median (the DC term left out of the median)."""
    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    low = (DCT_ROWS @ grey @ DCT_ROWS.T).ravel()
    return int(np.packbits(low > np.median(low[1:])).view(">u8")[0])


def fingerprint(img: Image.Image) -> Fingerprint:
    """The fingerprint of a decoded RGB image."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    h = hashlib.blake2b(rgb.tobytes(), digest_size=16)
    h.update(f"{rgb.width}x{rgb.height}".encode())
    # bilinear (antialiased) rather than box: at sizes not a multiple of THUMB, box thumbnails of a resized
    # copy differed at the edges by up to 0.4 of the contrast (Fashion-MNIST), bilinear ones by 0.11
    thumb = rgb.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR).tobytes()
    return Fingerprint(h.hexdigest(), phash(rgb), thumb, rgb.width, rgb.height)


def name_of(source, split: str, index: int) -> str:
    """An item's name in the report: its path, or split[index] for an in-memory image (digits)."""
    return source if isinstance(source, str) else f"{split}[{index}]"


def fingerprint_items(entries: list, max_pixels: int = DEFAULT_MAX_PIXELS, threads: Optional[int] = None) -> dict:
    """{name: Fingerprint} of (name, source) entries, decoding each (threads: Pillow releases the GIL);
    an unreadable one is left out (the scan reports it). In-memory images (arrays) are fingerprinted in
    this thread: there is no decoding to overlap, and a pool's overhead doubled the time for Fashion-MNIST."""
    def one(source):
        try:
            return fingerprint(open_image(source, max_pixels=max_pixels))
        except ImageError:
            return None
    sources = [src for _, src in entries]
    if threads is None:
        threads = min(16, 2 * (os.cpu_count() or 1)) if any(isinstance(src, str) for src in sources) else 1
    if threads == 1:
        prints = [one(src) for src in sources]
    else:
        with ThreadPoolExecutor(threads) as pool:
            prints = list(pool.map(one, sources))
    return {name: fp for (name, _), fp in zip(entries, prints) if fp is not None}


def near_pairs(hashes: np.ndarray, max_bits: int) -> np.ndarray:
    """(i, j, distance) rows, i < j, whose hashes differ in at most max_bits bits; all pairs, in row blocks."""
    out = [np.empty((0, 3), np.int64)]
    block = max(1, 4_000_000 // max(len(hashes), 1))
    for start in range(0, len(hashes), block):
        dist = np.bitwise_count(hashes[start:start + block, None] ^ hashes[None, :])
        r, c = np.nonzero(dist <= max_bits)
        keep = start + r < c
        out.append(np.stack([start + r[keep], c[keep], dist[r[keep], c[keep]]], axis=1).astype(np.int64))
    return np.concatenate(out)


def _entry(names: list, meta: dict, i: int) -> dict:
    split, label = meta[names[i]]
    return {"path": names[i], "split": split, "label": label}


def _thumb_checks(thumbs: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> tuple:
    """(mean, peak, shift, close): each pair's thumbnail difference with mean brightness matched (its mean and
    largest absolute value), the brightness shift, and whether all three pass; in chunks (a look-alike data
    set has millions of candidates)."""
    means = thumbs.mean(axis=1, dtype=np.float32)
    contrast = np.ptp(thumbs, axis=1).astype(np.float32)
    out = [np.zeros((0, 3), np.float32)]
    for k in range(0, len(pairs), chunk):
        i, j = pairs[k:k + chunk, 0], pairs[k:k + chunk, 1]
        shift = means[i] - means[j]
        diff = np.abs(thumbs[i] - thumbs[j] - shift[:, None])
        out.append(np.stack([diff.mean(axis=1), diff.max(axis=1), np.abs(shift)], axis=1))
    mean, peak, shift = np.concatenate(out).T
    # the peak: distinct objects on one plain background differ little on average (the background is equal)
    # but a lot where the objects are; a copy differs little everywhere. NEAR_MAD floors it for flat images
    allowed = np.maximum(NEAR_PEAK * np.maximum(contrast[pairs[:, 0]], contrast[pairs[:, 1]]), NEAR_MAD)
    return mean, peak, shift, (mean <= NEAR_MAD) & (peak <= allowed) & (shift <= NEAR_SHIFT)


def _duplicates(names: list, prints: dict, meta: dict, near_bits: int) -> tuple:
    """(exact groups, near pairs): pHash candidates confirmed by their thumbnails; exact pairs left out."""
    groups: dict = {}
    for i, name in enumerate(names):
        groups.setdefault(prints[name].digest, []).append(i)
    exact = [{"items": [_entry(names, meta, i) for i in idx]} for idx in groups.values() if len(idx) > 1]
    near = []
    if 1 < len(names) <= MAX_NEAR_IMAGES:
        group_of = {digest: g for g, digest in enumerate(groups)}
        group = np.array([group_of[prints[n].digest] for n in names])
        pairs = near_pairs(np.array([prints[n].phash for n in names], dtype=np.uint64), near_bits)
        pairs = pairs[group[pairs[:, 0]] != group[pairs[:, 1]]]  # exact pairs are reported as groups
        thumbs = np.stack([np.frombuffer(prints[n].thumb, np.uint8) for n in names]).astype(np.float32)
        mean, peak, _, close = _thumb_checks(thumbs, pairs)
        near = [{"a": _entry(names, meta, i), "b": _entry(names, meta, j), "distance": d,
                 "thumb_difference": round(m, 2), "thumb_peak": round(p, 1)}
                for (i, j, d), m, p in zip(pairs[close].tolist(), mean[close].tolist(), peak[close].tolist())]
    return exact, near


def _leaks(exact: list, near: list) -> list:
    """Every duplicate pair whose two images are in different splits."""
    leaks = []
    for group in exact:
        items = group["items"]
        leaks += [{"kind": "exact", "a": a, "b": b} for k, a in enumerate(items) for b in items[k + 1:]
                  if a["split"] != b["split"]]
    leaks += [{"kind": "near", "a": p["a"], "b": p["b"], "distance": p["distance"]} for p in near
              if p["a"]["split"] != p["b"]["split"]]
    return leaks


def class_balance(labels: list, splits: dict) -> list:
    """[{class, train, val, test}]: the images of each class in each split."""
    counts = {s: np.bincount([lab for _, lab in splits.get(s, [])], minlength=len(labels)) for s in SPLIT_ORDER}
    return [{"class": name, **{s: int(counts[s][i]) for s in SPLIT_ORDER}} for i, name in enumerate(labels)]


def data_health(labels: list, splits: dict, crop: int, prints: Optional[dict] = None,
                unreadable: Iterable = (), near_bits: int = NEAR_BITS) -> dict:
    """The data health of a listed data set: `splits` is {split: [(source, label)]}, `prints` {name:
    Fingerprint} from the scan (images without one are decoded here), `unreadable` [(path, reason)] skipped.

    -> {exact_duplicates, near_duplicates, leaks, class_balance, small_images, unreadable, images,
        near_method}; each image is named by its path (or split[index] for an in-memory one)."""
    meta, entries, unreadable = {}, [], list(unreadable)
    for split in SPLIT_ORDER:
        for index, (source, label) in enumerate(splits.get(split, [])):
            name = name_of(source, split, index)
            meta[name] = (split, labels[label])
            entries.append((name, source))
    skipped = {p for p, _ in unreadable}
    prints = dict(prints or {})
    prints.update(fingerprint_items([e for e in entries if e[0] not in prints and e[0] not in skipped]))
    names = [name for name, _ in entries if name in prints]
    exact, near = _duplicates(names, prints, meta, near_bits)
    small = [{"path": n, "split": meta[n][0], "width": prints[n].width, "height": prints[n].height}
             for n in names if min(prints[n].width, prints[n].height) < SMALL_FRACTION * crop]
    return {
        "images": len(names),
        "near_method": (f"phash64<={near_bits}, thumb{THUMB} mean<={NEAR_MAD} peak<={NEAR_PEAK} of contrast "
                        f"shift<={NEAR_SHIFT}") if len(names) <= MAX_NEAR_IMAGES else "skipped (too many images)",
        "exact_duplicates": exact,
        "near_duplicates": near,
        "leaks": _leaks(exact, near),
        "class_balance": class_balance(labels, splits),
        "small_images": small,
        "unreadable": [{"path": p, "reason": r} for p, r in unreadable],
    }


def duplicate_drops(health: dict) -> set:
    """The names `data.dedupe` drops: all but one image of each duplicate group (exact groups and near pairs
    joined), keeping the one in the latest split (test, then val, then train) and then the first name."""
    parent: dict = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    items = {}
    pairs = [(g["items"][0], it) for g in health["exact_duplicates"] for it in g["items"][1:]]
    pairs += [(p["a"], p["b"]) for p in health["near_duplicates"]]
    for a, b in pairs:
        items[a["path"]], items[b["path"]] = a, b
        parent[root(a["path"])] = root(b["path"])
    groups: dict = {}
    for name in items:
        groups.setdefault(root(name), []).append(items[name])
    drops = set()
    for members in groups.values():
        keep = min(members, key=lambda it: (-SPLIT_ORDER.index(it["split"]), it["path"]))
        drops |= {it["path"] for it in members if it is not keep}
    return drops


def summary_lines(health: dict, listed: int = 5) -> list:
    """The short summary printed by the pre-flight scan; each leak named (the first `listed`)."""
    exact = sum(len(g["items"]) - 1 for g in health["exact_duplicates"])
    counts = [row["train"] for row in health["class_balance"]]
    ratio = f"{max(counts) / max(min(counts), 1):.1f}:1" if counts else "n/a"
    lines = [f"data health: {health['images']} images, {exact} exact duplicate{'s' * (exact != 1)}, "
             f"{len(health['near_duplicates'])} near-duplicate pair{'s' * (len(health['near_duplicates']) != 1)}, "
             f"{len(health['small_images'])} far smaller than the crop, {len(health['unreadable'])} unreadable; "
             f"train classes largest:smallest {ratio}"]
    leaks = health["leaks"]
    if leaks:
        lines.append(f"warning: {len(leaks)} duplicate pair{'s' * (len(leaks) != 1)} cross splits (leakage "
                     "inflates val/test accuracy; data.dedupe: true drops them):")
        lines += [f"  {lk['a']['path']} ({lk['a']['split']}) = {lk['b']['path']} ({lk['b']['split']}) "
                  f"[{lk['kind']}]" for lk in leaks[:listed]]
        if len(leaks) > listed:
            # the same scan ends up in a run's data_health.json, or in a report's report.json (another
            # --recipe's data: the run folder's file is about the data it trained on)
            lines.append(f"  and {len(leaks) - listed} more (listed in full under data_health: the run's "
                         "data_health.json when training, the report's report.json for toolkit report)")
    return lines
