"""Which saliency map the report shows: Grad-CAM against the plain input gradient (not a test).

A set where the evidence has a known place: 3 classes told apart only by where a white 8x8 square sits
(top left, centre, bottom right, +-2 px) on a noisy 32x32 background. A tiny VGG11 is trained on it, then
on every val image, for the predicted class:
- deletion: blank the most salient 20% of the crop; the mean softmax score lost (more: the map found
  the evidence; a random map is the floor);
- pointing: how often the map's peak falls on the square;
- ms per image.
Grad-CAM is measured at the last convolution with a grid of at least 7 (what the report uses) and at the
last one of all (2x2 at 32 px).

    python tests/bench_saliency.py [--epochs 6]
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_recipe  # noqa: E402

from toolkit.recipe import from_dict  # noqa: E402
from toolkit.train.loop import train  # noqa: E402
from toolkit.train.report.outputs import checkpoint_model_inputs, from_checkpoint  # noqa: E402
from toolkit.train.report.saliency import grad_cam, input_gradient  # noqa: E402

SPOTS = [(2, 2), (12, 12), (22, 22)]


def make_set(root: str, per_class: int = 40) -> None:
    rng = np.random.default_rng(0)
    for k, (y, x) in enumerate(SPOTS):
        os.makedirs(f"{root}/c{k}", exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 120, (32, 32, 3)).astype(np.uint8)
            dy, dx = rng.integers(-2, 3, 2)
            img[y + dy:y + dy + 8, x + dx:x + dx + 8] = 250
            Image.fromarray(img).save(f"{root}/c{k}/i{i}.png")


def deletion(model, x, classes, maps, base, frac=0.2) -> float:
    flat = torch.from_numpy(maps).flatten(1)
    mask = torch.ones_like(flat).scatter_(1, flat.topk(int(frac * flat.shape[1]), dim=1).indices, 0.0)
    with torch.no_grad():
        probs = torch.softmax(model(x * mask.view(x.shape[0], 1, *x.shape[2:])), 1)
    rows = torch.arange(len(classes))
    return float((base[rows, classes] - probs[rows, classes]).mean())


def pointing(maps, targets) -> int:
    hits = 0
    for m, t in zip(maps, targets):
        y, x = np.unravel_index(m.argmax(), m.shape)
        hits += SPOTS[t][0] - 2 <= y < SPOTS[t][0] + 10 and SPOTS[t][1] - 2 <= x < SPOTS[t][1] + 10
    return int(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_set(os.path.join(tmp, "images"))
        raw = tiny_recipe(pathlib.Path(tmp), os.path.join(tmp, "images"),
                          train={"epochs": args.epochs, "batch_size": 16, "lr": 0.02})
        raw["model"]["hidden"] = 64
        recipe = from_dict(raw, check_paths=False)
        train(recipe, quiet=True, report=False)
        out = from_checkpoint(recipe.run_dir, None, "val", 32, "cpu")
        x = checkpoint_model_inputs(out, list(range(len(out.sources))))
        with torch.no_grad():
            base = torch.softmax(out.model(x), 1)
        classes = base.argmax(1).tolist()
        print(f"val top-1 {100 * np.mean(np.asarray(classes) == out.targets):.1f}% on {len(classes)} images")
        methods = {"grad-cam (grid >= 7)": grad_cam, "grad-cam (last grid)": lambda m, i, c: grad_cam(m, i, c, 1),
                   "input gradient": input_gradient,
                   "random": lambda m, i, c: np.random.default_rng(0).random((len(c),) + tuple(i.shape[2:]))}
        for name, method in methods.items():
            start = time.perf_counter()
            maps = np.asarray(method(out.model, x, classes), np.float32)
            ms = (time.perf_counter() - start) / len(classes) * 1000
            print(f"{name:22s} deletion {deletion(out.model, x, classes, maps, base):.3f}  pointing "
                  f"{pointing(maps, out.targets.tolist())}/{len(classes)}  {ms:.1f} ms/image")


if __name__ == "__main__":
    main()
