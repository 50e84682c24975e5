"""How far one temperature can calibrate a trained run (not a test).

    python tests/bench_calibration.py RUN_DIR [--checkpoint last.pt] [--split test] [--all-t10k]

On the split, ECE (15 bins) at:
- T = 1 (uncalibrated);
- the T fitted on validation (what training's calibration.json and export store);
- the T that minimises NLL on the split itself (an oracle: the best fit one scalar could have found);
- the T in 0.5-2 with the lowest ECE on the split (an oracle again, picked on the measure itself).
`--all-t10k` (a fashion_mnist run): all 10,000 t10k images instead of the split, for a lower noise floor.
When even the last stays above half the uncalibrated ECE, no temperature halves it on this model; the
reliability table (confidence against accuracy per bin, at T = 1 and at the validation T) shows why.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolkit import calibration, recipe as recipe_mod  # noqa: E402
from toolkit.datasets import load_dataset  # noqa: E402
from toolkit.train.device import pick_device  # noqa: E402
from toolkit.train.evaluate import split_logits  # noqa: E402
from toolkit.train.model import model_from_checkpoint  # noqa: E402


def reliability(logits, targets, temperature, min_images=20):
    """Rows (bin, images, mean confidence, accuracy) of the 15 equal-width confidence bins."""
    probs = calibration.softmax(logits, temperature)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == targets
    which = np.minimum((conf * calibration.ECE_BINS).astype(np.int64), calibration.ECE_BINS - 1)
    return [(b, int(inside.sum()), conf[inside].mean(), correct[inside].mean())
            for b in range(calibration.ECE_BINS) if (inside := which == b).sum() >= min_images]


def all_t10k(recipe) -> list:
    """Every Fashion-MNIST t10k image as (RGB view, label): the fixed test split is 2,000 of them."""
    from toolkit.datasets import fashion

    files = fashion.locate_files(recipe.data)
    images, labels = fashion.read_pair(*(files[name] for name in fashion.FILES["t10k"]))
    rgb = fashion._as_rgb(images)  # the source's own three-channel view, as its splits hand out
    return [(rgb[i], int(labels[i])) for i in range(len(images))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--split", default="test")
    ap.add_argument("--all-t10k", action="store_true", help="fashion_mnist: all 10,000 t10k images as the split")
    args = ap.parse_args()
    model, ckpt = model_from_checkpoint(os.path.join(args.run_dir, "checkpoints", args.checkpoint))
    recipe = recipe_mod.from_dict(ckpt["recipe"], source=args.run_dir, check_paths=False)
    data, device = load_dataset(recipe, scan=False), pick_device("auto")
    items = all_t10k(recipe) if args.all_t10k else getattr(data, args.split)
    if args.all_t10k:
        args.split = "t10k"
    val, split = (split_logits(model, recipe, x, 32, device)[:2] for x in (data.val, items))
    t_val, t_nll = calibration.fit_temperature(*val), calibration.fit_temperature(*split)
    grid = np.exp(np.linspace(np.log(0.5), np.log(2.0), 301))
    eces = [calibration.ece(calibration.softmax(split[0], t), split[1]) for t in grid]
    t_ece = float(grid[int(np.argmin(eces))])
    before = calibration.ece(calibration.softmax(split[0]), split[1])
    print(f"{args.run_dir} ({args.checkpoint}), {args.split}: {len(split[0])} images, "
          f"top-1 {100 * np.mean(split[0].argmax(1) == split[1]):.1f}%; validation: {len(val[0])} images")
    for name, t in (("T = 1", 1.0), ("T fitted on validation", t_val), (f"T minimising NLL on {args.split}", t_nll),
                    (f"T minimising ECE on {args.split}", t_ece)):
        after = calibration.ece(calibration.softmax(split[0], t), split[1])
        print(f"  {name:<28} T {t:.3f}: ECE {100 * after:.2f}% ({100 * (after / before - 1):+.0f}%)")
    for t in (1.0, t_val):
        print(f"  reliability at T {t:.3f}: bin, images, confidence, accuracy")
        for b, n, conf, acc in reliability(*split, t):
            print(f"    {b / calibration.ECE_BINS:.2f}-{(b + 1) / calibration.ECE_BINS:.2f} {n:6d}  {conf:.3f}  "
                  f"{acc:.3f}  ({acc - conf:+.3f})")


if __name__ == "__main__":
    main()
