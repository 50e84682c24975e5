"""Data health, mislabels and class weights measured on digits made into a folder data set (not a test).

The set: scikit-learn's digits rendered as PNGs in train/ val/ test/ class folders, with a known share of
training labels flipped (the image filed under another class) and a known share of images duplicated
across splits (exact copies, JPEG re-encodes, slightly resized copies). `make_set` writes it and returns
the truth; the fast tests build a few-image version of it (tests/datasets/test_health.py,
tests/train/test_mislabels.py, tests/train/test_balance.py).

    python tests/bench_data_health.py                   # all three parts, 500 images
    python tests/bench_data_health.py --part health     # duplicates only (dHash and pHash compared)
    python tests/bench_data_health.py --part shapes     # near duplicates on shapes on white (make_shapes)
    python tests/bench_data_health.py --part mislabels  # trains a small run, ranks its training images
    python tests/bench_data_health.py --part balance    # class_weights none vs balanced on a 10:1 set
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolkit.datasets.sources import render_digits  # noqa: E402

SPLIT_SHARES = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def _save(pixels: np.ndarray, path: str, kind: str = "png", size: int = 0) -> None:
    img = Image.fromarray(pixels)
    if size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "jpg":
        img.save(path, quality=90)
    else:
        img.save(path)


def _plan(n: int, classes: list, seed: int, imbalance: float = 1.0) -> list:
    """[(digit index, class, split)] for n originals: the classes' shares fall from 1 to 1/imbalance."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    rng = np.random.default_rng(seed)
    shares = np.geomspace(1.0, 1.0 / imbalance, len(classes)) if imbalance > 1 else np.ones(len(classes))
    per_class = np.maximum(3, np.floor(n * shares / shares.sum())).astype(int)
    per_class[:max(0, n - per_class.sum())] += 1  # the rounding's remainder, so n originals in all
    plan = []
    for c, k in zip(classes, per_class):
        idx = rng.permutation(np.flatnonzero(target == c))[:k]
        cuts = np.cumsum([int(round(len(idx) * s)) for _, s in SPLIT_SHARES[:2]])
        for j, i in enumerate(idx):
            plan.append((int(i), c, "train" if j < cuts[0] else "val" if j < cuts[1] else "test"))
    return plan


def make_set(root: str, n: int = 500, flip: float = 0.05, dup: float = 0.03, classes=tuple(range(10)),
             size: int = 32, seed: int = 0, imbalance: float = 1.0) -> dict:
    """Write the folder data set under root; -> the truth: {flipped: [path], exact: [(a, b)], near: [(a, b)],
    images: count}. n counts every file written: originals plus duplicates."""
    from sklearn.datasets import load_digits

    images = render_digits(load_digits().images, size)
    rng = np.random.default_rng(seed + 1)
    n_dup = int(round(n * dup))
    plan = _plan(n - n_dup, list(classes), seed, imbalance)
    train = [k for k, (_, _, s) in enumerate(plan) if s == "train"]
    flipped = set(rng.choice(train, int(round(len(train) * flip)), replace=False).tolist()) if flip else set()
    paths, truth = {}, {"flipped": [], "exact": [], "near": [], "images": n}
    for k, (i, c, split) in enumerate(plan):
        label = c
        if k in flipped:
            label = int(rng.choice([x for x in classes if x != c]))
        paths[k] = os.path.join(root, split, str(label), f"d{i:04d}.png")
        _save(images[i], paths[k])
        if k in flipped:
            truth["flipped"].append(paths[k])
    sources = rng.choice([k for k in train if k not in flipped], n_dup, replace=False)
    for j, k in enumerate(sources):  # a copy of a training image in val or test: a leak
        i, c, _ = plan[k]
        kind = ("exact", "jpg", "resized")[j % 3]
        split = ("val", "test")[j % 2]
        ext = "jpg" if kind == "jpg" else "png"
        copy = os.path.join(root, split, str(c), f"copy{j:03d}_d{i:04d}.{ext}")
        _save(images[i], copy, ext, size=size + 2 if kind == "resized" else 0)
        truth["exact" if kind == "exact" else "near"].append((paths[k], copy))
    return truth


SHAPE_COLOURS = {"circle": (220, 40, 40), "square": (40, 200, 60), "triangle": (40, 60, 220)}
SHAPE_COPIES = ("jpg", "resized", "half", "brighter", "darker")  # the near copies make_shapes plants, in turn


def make_shapes(root: str, per_class: int = 40, size: int = 64, seed: int = 0, copies: int = 0) -> dict:
    """Circles, squares and triangles of random size and place on white (size px PNGs, every image
    distinct), plus `copies` near copies of some (a JPEG at quality 75, resized by 2 px, half size, 8 grey
    levels brighter, 8 darker, in turn); -> {near: [(original, copy)], images: count}."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    paths = []
    for cls, colour in SHAPE_COLOURS.items():
        for i in range(per_class):
            img = Image.new("RGB", (size, size), (255, 255, 255))
            r = int(rng.integers(size * 6 // 64, size * 20 // 64))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            box = [cx - r, cy - r, cx + r, cy + r]
            draw = ImageDraw.Draw(img)
            {"circle": draw.ellipse, "square": draw.rectangle}.get(cls, lambda b, fill: draw.polygon(
                [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill))(box, fill=colour)
            paths.append(os.path.join(root, cls, f"{cls}_{i:03d}.png"))
            os.makedirs(os.path.dirname(paths[-1]), exist_ok=True)
            img.save(paths[-1])
    truth = {"near": [], "images": len(paths) + copies}
    for j, k in enumerate(rng.choice(len(paths), copies, replace=False)):
        img, kind = Image.open(paths[k]).convert("RGB"), SHAPE_COPIES[j % len(SHAPE_COPIES)]
        copy = os.path.join(os.path.dirname(paths[k]), f"copy{j:03d}_{kind}.{'jpg' if kind == 'jpg' else 'png'}")
        if kind == "resized":
            img = img.resize((size + 2, size + 2), Image.Resampling.BILINEAR)
        elif kind == "half":
            img = img.resize((size // 2, size // 2), Image.Resampling.LANCZOS)
        elif kind in ("brighter", "darker"):
            step = 8 if kind == "brighter" else -8
            img = Image.fromarray(np.clip(np.asarray(img, np.int16) + step, 0, 255).astype(np.uint8))
        img.save(copy, **({"quality": 75} if kind == "jpg" else {}))
        truth["near"].append((paths[k], copy))
    return truth


# ----------------------------------------------------------------------------------------------
# The measurements

def _pairs_found(pairs: list, found: set) -> int:
    return sum(frozenset(p) in found for p in pairs)


def dhash(img: Image.Image) -> int:
    """64-bit difference hash (the alternative measured): greyscale 9x8, one bit per adjacent pair."""
    grey = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return int(np.packbits((grey[:, :-1] > grey[:, 1:]).ravel()).view(">u8")[0])


def bench_health(root: str, truth: dict) -> dict:
    """Exact and near duplicates found, for dHash and pHash at a few thresholds (recall and false pairs)."""
    from toolkit.datasets.health import fingerprint_items, near_pairs, phash
    from toolkit.datasets import load_dataset
    from toolkit import recipe as recipe_mod

    recipe = recipe_mod.from_dict({"data": {"source": "folder", "root": root, "workers": 0},
                                   "preprocess": {"resize": 32, "crop": 32}, "model": {"arch": "vgg11"}})
    start = time.perf_counter()
    health = load_dataset(recipe).health
    seconds = time.perf_counter() - start
    exact = {frozenset((a["path"], b["path"])) for g in health["exact_duplicates"]
             for a in g["items"] for b in g["items"] if a is not b}
    near = {frozenset((p["a"]["path"], p["b"]["path"])) for p in health["near_duplicates"]}
    out = {"images": health["images"], "seconds": round(seconds, 2),
           "exact_found": f"{_pairs_found(truth['exact'], exact)}/{len(truth['exact'])}",
           "near_found": f"{_pairs_found(truth['near'], near)}/{len(truth['near'])}",
           "leaks": len(health["leaks"]), "near_pairs_reported": len(near),
           "false_near_pairs": len(near - {frozenset(p) for p in truth["near"]})}
    from toolkit.preprocess import open_image
    names = sorted(fingerprint_items([(p, p) for p in _all_files(root)]))
    imgs = [open_image(p) for p in names]
    true_near = {frozenset(p) for p in truth["near"]}
    for method, fn in (("dhash", dhash), ("phash", phash)):
        hashes = np.array([fn(im) for im in imgs], dtype=np.uint64)
        for bits in (2, 4, 6, 8, 10, 12):
            got = {frozenset((names[i], names[j])) for i, j, _ in near_pairs(hashes, bits)}
            got -= exact
            out[f"{method}<={bits}"] = (f"recall {_pairs_found(truth['near'], got)}/{len(truth['near'])}, "
                                        f"false pairs {len(got - true_near)}")
    return out


def bench_shapes(root: str, truth: dict) -> dict:
    """Near duplicates the scan reports on make_shapes' folder: the planted copies found, and distinct
    images paired (every pair but the planted ones is false)."""
    from toolkit import recipe as recipe_mod
    from toolkit.datasets import load_dataset

    recipe = recipe_mod.from_dict({"data": {"source": "folder", "root": root, "workers": 0, "val_fraction": 0.25,
                                            "test_fraction": 0.25}, "preprocess": {"resize": 64, "crop": 64},
                                   "model": {"arch": "vgg11"}})
    health = load_dataset(recipe, quiet=True).health
    near = {frozenset((p["a"]["path"], p["b"]["path"])) for p in health["near_duplicates"]}
    planted = {frozenset(p) for p in truth["near"]}
    return {"images": health["images"], "near_found": f"{_pairs_found(truth['near'], near)}/{len(truth['near'])}",
            "false_near_pairs": len(near - planted), "leaks": len(health["leaks"]),
            "exact_duplicates": len(health["exact_duplicates"])}


def _all_files(root: str) -> list:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def _digits_recipe(root: str, out: str, name: str, epochs: int, **train) -> dict:
    return {"name": name, "seed": 0, "out_dir": out,
            "data": {"source": "folder", "root": root, "workers": 0},
            "preprocess": {"resize": 32, "crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
            "model": {"arch": "vgg11_bn", "weights": "none", "head": "gap", "dropout": 0.0},
            "train": {"strategy": "scratch", "epochs": epochs, "batch_size": 32, "lr": 0.05, "lr_decay": 1.0,
                      "device": "cpu", "eval_every": epochs, **train}}


def bench_mislabels(root: str, truth: dict, out: str, epochs: int) -> dict:
    """Train a small scratch run on the noisy set, rank its training images; flipped ones in the top 10%."""
    from toolkit import recipe as recipe_mod
    from toolkit.train.loop import train
    from toolkit.train.mislabels import rank_mislabels

    recipe = recipe_mod.from_dict(_digits_recipe(root, out, "mislabels", epochs))
    start = time.perf_counter()
    train(recipe, quiet=True, evaluate_test=False)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    rows = rank_mislabels(recipe.run_dir)
    ranked = time.perf_counter() - start
    top = {r["path"] for r in rows[:max(1, len(rows) // 10)]}
    caught = sum(p in top for p in truth["flipped"])
    return {"train_images": len(rows), "flipped": len(truth["flipped"]), "in_top_10pct": caught,
            "share": round(caught / max(len(truth["flipped"]), 1), 3), "train_seconds": round(trained, 1),
            "rank_seconds": round(ranked, 1)}


def _balance_recipe(root: str, out: str, name: str, epochs: int, **train) -> dict:
    """A ResNet-18 from scratch with AdamW: cheaper per image than VGG at 32 px, and stable with weighted losses."""
    raw = _digits_recipe(root, out, name, epochs, **train)
    raw["model"] = {"arch": "resnet18", "weights": "none", "dropout": 0.0}
    raw["train"].update(optimizer="adamw", lr=0.003, weight_decay=0.0001, schedule="cosine", warmup_epochs=1)
    return raw


def bench_balance(out: str, epochs: int, sampler: bool = False) -> dict:
    """train.class_weights none vs balanced on a 10:1 imbalanced digits set: balanced accuracy on test."""
    from toolkit import recipe as recipe_mod
    from toolkit.train.evaluate import evaluate_checkpoint
    from toolkit.train.loop import train

    root = os.path.join(out, "imbalanced")
    make_set(root, n=500, flip=0.0, dup=0.0, seed=1, imbalance=10.0)
    result = {}
    runs = [("none", {}), ("balanced", {"class_weights": "balanced"})]
    for name, extra in runs + ([("sampler", {"sampler": "balanced"})] if sampler else []):
        recipe = recipe_mod.from_dict(_balance_recipe(root, out, f"balance-{name}", epochs, **extra))
        train(recipe, quiet=True, evaluate_test=False)
        report = evaluate_checkpoint(os.path.join(recipe.run_dir, "checkpoints", "last.pt"), split="test",
                                     quiet=True)
        recalls = [v for v in report["per_class"].values() if v is not None]  # per-class recall, %
        result[name] = {"top1": round(report["top1"], 1), "balanced_accuracy": round(report["mean_per_class"], 1),
                        "min_class_recall": round(min(recalls), 1), "rarest_class_recall": round(recalls[-1], 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "health", "shapes", "mislabels", "balance"), default="all")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--per-class", type=int, default=40, help="shapes: images per class")
    parser.add_argument("--size", type=int, default=64, help="shapes: image side, px")
    parser.add_argument("--copies", type=int, default=15, help="shapes: near copies planted")
    parser.add_argument("--seed", type=int, default=0, help="which images are flipped and copied")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sampler", action="store_true", help="balance: also train.sampler balanced")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "digits")
        results = {}
        if args.part == "shapes":  # --seed 3 --size 64 --per-class 40: 3 x 40 shapes, as docs/data.md
            truth = make_shapes(os.path.join(tmp, "shapes"), args.per_class, args.size, args.seed, args.copies)
            results["shapes"] = bench_shapes(os.path.join(tmp, "shapes"), truth)
            print(json.dumps(results, indent=2))
            return
        truth = make_set(root, n=args.images, seed=args.seed)
        if args.part in ("all", "health"):
            results["health"] = bench_health(root, truth)
        if args.part in ("all", "mislabels"):
            results["mislabels"] = bench_mislabels(root, truth, os.path.join(tmp, "runs"), args.epochs)
        if args.part in ("all", "balance"):
            results["balance"] = bench_balance(os.path.join(tmp, "runs"), args.epochs, args.sampler)
    print(json.dumps(results, indent=2))
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
