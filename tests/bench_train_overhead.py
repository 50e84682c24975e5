"""Training images/s: `toolkit train` against a plain PyTorch loop doing the same work (not a test).

Both sides train VGG16 (classic head, SGD with momentum) on the same images through the same
decode + albumentations + normalise pipeline, one epoch at a time, interleaved in rounds so machine
noise hits both alike. Reported: the training loop's images/s (toolkit: metrics.jsonl's images_per_s,
the loop only; plain: the same interval) and the whole `train()` call's wall time per epoch (toolkit
adds validation, checkpoints and plots there).

    python tests/bench_train_overhead.py --crop 32 --images 256 --rounds 3
    python tests/bench_train_overhead.py --crop 224 --images 32 --batch 16 --rounds 2
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolkit.train import data as data_mod  # noqa: E402
from toolkit import recipe as recipe_mod  # noqa: E402
from toolkit.train.model import build_from_recipe  # noqa: E402
from toolkit.train.loop import train  # noqa: E402


def make_folder(root: str, n: int, size=(500, 375), classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, f"c{i % classes}")
        os.makedirs(folder, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def plain_epoch(recipe, items) -> float:
    """A plain loop: DataLoader, forward, loss, backward, step. Returns images/s of the loop."""
    torch.manual_seed(0)
    model = build_from_recipe(recipe, num_classes=4).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    dataset = data_mod.ImageDataset(items, data_mod.eval_preprocess(recipe), augment=data_mod.build_augment(recipe))
    loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.train.batch_size, shuffle=True,
                                         num_workers=recipe.data.workers)
    criterion = torch.nn.CrossEntropyLoss()
    seen, tick = 0, time.time()
    for images, targets in loader:
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(targets)
    return seen / (time.time() - tick)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = tempfile.mkdtemp(prefix="bench-train-")
    make_folder(os.path.join(work, "images"), args.images + 8)
    raw = {"name": "bench", "out_dir": os.path.join(work, "runs"),
           "data": {"source": "folder", "root": os.path.join(work, "images"), "val_fraction": 8 / (args.images + 8),
                    "workers": args.workers},
           "preprocess": {"resize": args.crop, "crop": args.crop},
           "model": {"arch": "vgg16", "weights": "none", "head": "classic"},
           "train": {"strategy": "scratch", "epochs": 1, "batch_size": args.batch, "lr": 1e-3, "lr_decay": 1.0,
                     "device": "cpu"}}
    recipe = recipe_mod.from_dict(raw)
    items = data_mod.load_dataset(recipe, scan=False).train
    toolkit_loop, toolkit_wall, plain = [], [], []
    for r in range(args.rounds):
        tick = time.time()
        train(recipe, overwrite=True, quiet=True)
        toolkit_wall.append(len(items) / (time.time() - tick))
        record = json.loads(open(os.path.join(recipe.run_dir, "metrics.jsonl")).readline())
        toolkit_loop.append(record["images_per_s"])
        plain.append(plain_epoch(recipe, items))
        print(f"round {r + 1}: toolkit loop {toolkit_loop[-1]:.2f} img/s (whole train() {toolkit_wall[-1]:.2f}), "
              f"plain loop {plain[-1]:.2f} img/s", flush=True)
    t, p, w = statistics.median(toolkit_loop), statistics.median(plain), statistics.median(toolkit_wall)
    print(f"VGG16 {args.crop}px batch {args.batch}, {len(items)} images/epoch, {args.rounds} rounds (medians): "
          f"toolkit {t:.2f} img/s, plain PyTorch {p:.2f} img/s -> toolkit overhead {100 * (p - t) / p:+.1f}% "
          f"(whole train() call incl. validation, checkpoints, plots: {w:.2f} img/s, {100 * (p - w) / p:+.1f}%)")


if __name__ == "__main__":
    main()
