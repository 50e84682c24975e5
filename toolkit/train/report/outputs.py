"""Per-image results for the report: logits of every image of a split, from a checkpoint (PyTorch, the model
kept for Grad-CAM) or from an ONNX file (toolkit.runtime.onnx_eval, the way `toolkit evaluate` reads it)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from toolkit import artifacts
from toolkit import recipe as recipe_mod
from toolkit.datasets import load_dataset
from toolkit.errors import UserError
from toolkit.preprocess import Preprocess
from toolkit.runtime.onnx_eval import EmptySplit, onnx_outputs
from toolkit.train import data as data_mod
from toolkit.train.device import pick_device
from toolkit.train.evaluate import collect_logits, run_calibration
from toolkit.train.model import model_from_checkpoint


@dataclasses.dataclass
class Outputs:
    """What the report is made of. `logits` is None when no split had images to score."""
    source: str  # the checkpoint or .onnx file
    run_dir: str | None  # the run folder (calibration.json, data_health.json, curves.png), when there is one
    recipe: Any
    labels: list
    preprocess: Preprocess
    split: str | None = None  # the split scored
    logits: np.ndarray | None = None
    targets: np.ndarray | None = None
    sources: list = dataclasses.field(default_factory=list)  # the images scored, in order (paths or arrays)
    model: Any = None  # the torch model (from a checkpoint), for Grad-CAM
    device: Any = None
    dataset: Any = None  # the data set listing (train/val/test), when loaded here
    unreadable: list = dataclasses.field(default_factory=list)  # [(path, reason)]
    notes: list = dataclasses.field(default_factory=list)  # what was skipped or fallen back on, and why
    temperature: float | None = None  # the calibration T that belongs to `source`; None: plain softmax
    calibration_source: str = "none"  # where that T came from, or why there is none


def split_order(split: str) -> list[str]:
    """The splits to try: the one asked for, and test after an empty val."""
    return [split, "test"] if split == "val" else [split]


def from_checkpoint(target: str, recipe_path: str | None, split: str, batch_size: int, device: str,
                    dataset=None) -> Outputs:
    """`dataset`: the listing of the checkpoint's data when the caller has it (training), else scanned here."""
    checkpoint = artifacts.run_checkpoint(target)
    run_dir = os.path.dirname(os.path.dirname(checkpoint)) if os.path.basename(
        os.path.dirname(checkpoint)) == "checkpoints" else None
    model, ckpt = model_from_checkpoint(checkpoint)
    recipe = recipe_mod.load(recipe_path) if recipe_path else recipe_mod.from_dict(
        ckpt["recipe"], source=f"{checkpoint} (recipe)", check_paths=False)
    dataset = dataset if dataset is not None else load_dataset(recipe)
    if list(dataset.labels) != list(ckpt["labels"]):
        raise UserError(f"{checkpoint}: trained on {len(ckpt['labels'])} classes, the data has "
                        f"{len(dataset.labels)} (or in another order); expected the same classes")
    out = Outputs(checkpoint, run_dir, recipe, list(ckpt["labels"]), data_mod.eval_preprocess(recipe),
                  dataset=dataset, unreadable=list(dataset.skipped))
    out.temperature, out.calibration_source = checkpoint_calibration(checkpoint)
    chosen = next((s for s in split_order(split) if getattr(dataset, s)), None)
    if chosen is None:
        out.notes.append(f"no images in the {' or '.join(split_order(split))} split: the scores, confusion "
                         "matrix, top losses and Grad-CAM are skipped")
        return out
    if chosen != split:
        out.notes.append(f"the {split} split is empty: scored the {chosen} split instead")
    items = getattr(dataset, chosen)
    out.device = pick_device(device)
    loader = DataLoader(data_mod.ImageDataset(items, out.preprocess, max_pixels=recipe.data.max_pixels),
                        batch_size=batch_size, num_workers=recipe.data.workers)
    out.model = model.to(out.device)
    out.logits, out.targets, _ = collect_logits(out.model, loader, out.device)
    out.split, out.sources = chosen, [source for source, _ in items]
    return out


def checkpoint_calibration(checkpoint: str) -> tuple[float | None, str]:
    """(T, where it came from) for a checkpoint, by the rule `toolkit evaluate RUN` applies: the run's
    calibration.json belongs to best.pt alone (toolkit.train.evaluate.run_calibration). A file that rule
    refuses leaves plain softmax and says why, rather than ending the report."""
    try:
        temperature, _, source = run_calibration(checkpoint)
    except UserError as exc:
        return None, str(exc)
    return temperature, source


def from_onnx(target: str, recipe_path: str | None, split: str, batch_size: int) -> Outputs:
    recipe = recipe_mod.load(recipe_path) if recipe_path else None
    empty = []
    for name in split_order(split):
        try:
            got = onnx_outputs(target, recipe, name, batch_size)
        except EmptySplit:
            empty.append(name)
            continue
        out = Outputs(target, None, got.recipe, got.labels, got.preprocess, split=name, logits=got.logits,
                      targets=got.targets, sources=got.sources, unreadable=list(got.skipped))
        out.run_dir = got.recipe.run_dir if os.path.isdir(got.recipe.run_dir) else None
        # the file's own T: each twin carries the one refitted on its own logits, not the run's
        out.temperature = got.model.temperature
        out.calibration_source = "this file's metadata" if out.temperature is not None else "none in this file"
        if empty:
            out.notes.append(f"the {split} split is empty: scored the {name} split instead")
        out.notes.append("Grad-CAM needs the checkpoint: skipped for an .onnx file")
        return out
    raise UserError(f"{target}: no images in the {' or '.join(empty)} split of its data; the report of an .onnx "
                    "file needs a split to score (pass another with --split, or the data with --recipe)")


def checkpoint_model_inputs(outputs: Outputs, indices: list) -> torch.Tensor:
    """The normalised input tensor of these scored images (for Grad-CAM)."""
    pixels = np.stack([outputs.preprocess.pixels(outputs.sources[i], outputs.recipe.data.max_pixels)
                       for i in indices])
    return torch.from_numpy(outputs.preprocess.normalize(pixels)).to(outputs.device)
