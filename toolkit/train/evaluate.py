"""`toolkit evaluate`: top-1, top-5, per-class accuracy and confusion matrix of a checkpoint or an ONNX file.

Loads without torch: `toolkit evaluate MODEL.onnx` runs on the torch-free install, so a checkpoint's
evaluation imports the torch side (torch, toolkit.train.data, .model, .device) when it runs."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from toolkit import artifacts
from toolkit import recipe as recipe_mod
from toolkit.contract import check_calibration
from toolkit.datasets.splits import SPLITS
from toolkit.errors import UserError
from toolkit.metrics import classification_report, format_report
from toolkit.parsing import parse_int
from toolkit.runtime.engines import DEFAULT_ENGINE
from toolkit.runtime.engine_eval import versus_line
from toolkit.runtime.onnx_eval import evaluate_onnx
from toolkit.runtime.ood_eval import calibration_fields, calibration_lines, ood_pixels


def collect_logits(model, loader, device, autocast=None, criterion=None, channels_last: bool = False):
    """(logits, targets, mean loss) of `model` over `loader`, in eval mode, as numpy. `channels_last`: the
    model's layout, which the batches are put in first (the same logits; the model's first layer would
    otherwise reorder each batch, a sixth of a Lite0 validation on CPU). The model runs with its BatchNorms
    folded into its convolutions (toolkit.train.model.fold: the same logits to float rounding, faster)."""
    import torch

    from toolkit.train.model.fold import folded_for_eval

    layout = torch.channels_last if channels_last else torch.preserve_format
    model = folded_for_eval(model)  # in eval mode
    outputs, targets, loss_sum, n = [], [], 0.0, 0
    with torch.inference_mode():
        for images, labels in loader:
            images, labels = images.to(device, memory_format=layout), labels.to(device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(images).float()
            if criterion is not None:
                loss_sum += float(criterion(logits, labels)) * len(labels)
            n += len(labels)
            outputs.append(logits.cpu().numpy())
            targets.append(labels.cpu().numpy())
    if not outputs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), 0.0
    return np.concatenate(outputs), np.concatenate(targets), loss_sum / max(n, 1)


def evaluate_checkpoint(checkpoint: str, recipe=None, dataset=None, split: str = "val", batch_size: int = 32,
                        device: str = "auto", quiet: bool = False, scan: bool = True,
                        run_calibrated: bool = False, ood: str | None = None) -> dict:
    """Evaluate a toolkit checkpoint on a split of its own data set (or of `recipe`'s). `scan=False` skips
    the data scan (toolkit.datasets.load_dataset): for a caller that has just trained on that data.
    `run_calibrated`: the calibration fields use the run's calibration.json where it belongs to this
    checkpoint (`run_calibration`), as `toolkit evaluate RUN` shows them; else T = 1. `ood`: a folder of
    photos that are none of the classes, as `evaluate MODEL.onnx --ood` takes it (AUROC, FPR at 95% TPR,
    the share rejected at the run's threshold)."""
    from toolkit.train import data as data_mod
    from toolkit.train.device import pick_device
    from toolkit.train.model import model_from_checkpoint

    if split not in SPLITS:
        raise UserError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    model, ckpt = model_from_checkpoint(checkpoint)
    if recipe is None:
        recipe = recipe_mod.from_dict(ckpt["recipe"], source=f"{checkpoint} (recipe)", check_paths=False)
    if dataset is None:
        dataset = data_mod.load_dataset(recipe, scan=scan, quiet=quiet)
    if list(dataset.labels) != list(ckpt["labels"]):
        raise UserError(f"{checkpoint}: trained on classes {_short(ckpt['labels'])} but the data has "
                        f"{_short(dataset.labels)}; expected the same classes in the same order")
    if not getattr(dataset, split):
        raise UserError(f"data: the {split} split is empty; pick another with --split")
    dev = pick_device(device)
    logits, targets, loss = split_logits(model, recipe, getattr(dataset, split), batch_size, dev)
    out_logits = folder_logits(model, recipe, ood, batch_size, dev) if ood else None
    report = classification_report(logits, targets, dataset.labels)
    temperature, spec, source = run_calibration(checkpoint) if run_calibrated else (None, None, None)
    report.update(loss=loss, split=split, model=str(checkpoint),
                  calibration={**calibration_fields(logits, targets, temperature, spec, out_logits),
                               "source": source})
    if not quiet:
        print(format_report(report, f"{checkpoint} on {split}:"))
        print("\n".join(calibration_lines(report["calibration"])))
    return report


def run_calibration(checkpoint: str) -> tuple[float | None, dict | None, str]:
    """(T, ood, where they came from) for a run's best.pt: the calibration training fitted on it and wrote
    to runs/<name>/calibration.json. Any other checkpoint, or a calibration.json of another best.pt (a later
    best it was not fitted on: its checkpoint_sha256, or in files without one its time), gets (None, None,
    why): T = 1 and no threshold."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(os.path.dirname(folder), artifacts.CALIBRATION_FILE)
    if os.path.basename(folder) != "checkpoints" or not os.path.isfile(path):
        return None, None, "none for this checkpoint"
    if os.path.basename(checkpoint) != "best.pt":
        return None, None, f"none for {os.path.basename(checkpoint)}: the run's {artifacts.CALIBRATION_FILE} " \
                           "was fitted on best.pt"
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); expected the JSON toolkit train writes, or delete it") from None
    if stale := _fitted_on_another(saved, path, checkpoint):
        return None, None, stale
    if not isinstance(saved, dict) or saved.get("temperature") is None:
        skipped = saved.get("skipped") if isinstance(saved, dict) else None
        return None, None, f"none: training skipped it ({skipped})" if skipped else f"none in {path}"
    temperature, ood = check_calibration(saved["temperature"], saved.get("ood"), path)
    return temperature, ood, f"the run's {artifacts.CALIBRATION_FILE}"


def _fitted_on_another(saved, path: str, checkpoint: str) -> str | None:
    """Why calibration.json is not best.pt's, or None. By content: a run folder copied with `cp -r` (or
    cloned, or unpacked) gets new file times in any order. Files written before the hash: by time."""
    sha = saved.get("checkpoint_sha256") if isinstance(saved, dict) else None
    if sha is not None and sha != artifacts.sha256_file(checkpoint):
        return f"none: {path} was fitted on another best.pt (an earlier best)"
    if sha is None and os.path.getmtime(path) < os.path.getmtime(checkpoint):
        return f"none: {path} is older than best.pt, so it was fitted on an earlier best"
    return None


def split_logits(model, recipe, items: list, batch_size: int, dev):
    """(logits, targets, mean loss) of a model on `items` ((image, label) pairs: a split of a data set),
    with the recipe's eval transform, in the memory layout training used (channels_last where it is faster)."""
    import torch
    from torch.utils.data import DataLoader

    from toolkit.train import data as data_mod

    loader = DataLoader(data_mod.ImageDataset(items, data_mod.eval_preprocess(recipe),
                                              max_pixels=recipe.data.max_pixels),
                        batch_size=batch_size, num_workers=recipe.data.workers)
    return _logits_in_training_layout(model, recipe, loader, dev, torch.nn.CrossEntropyLoss())


def folder_logits(model, recipe, folder: str, batch_size: int, dev) -> np.ndarray:
    """The model's logits on every readable image of an --ood folder (toolkit.runtime.ood_eval.ood_pixels:
    one error for a missing, empty or unreadable folder), through the recipe's eval transform, as the
    .onnx path runs them."""
    import torch

    from toolkit.train import data as data_mod

    preprocess = data_mod.eval_preprocess(recipe)
    pixels = ood_pixels(folder, preprocess, recipe.data.max_pixels)
    chunks = [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]
    batches = [(torch.from_numpy(preprocess.normalize(c)), torch.zeros(len(c), dtype=torch.long)) for c in chunks]
    return _logits_in_training_layout(model, recipe, batches, dev)[0]


def _logits_in_training_layout(model, recipe, batches, dev, criterion=None):
    """collect_logits with the model on `dev` in the memory layout training used."""
    import torch

    from toolkit.train.device import use_channels_last

    channels_last = use_channels_last(recipe.train, dev, recipe.model.arch)
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    return collect_logits(model, batches, dev, None, criterion, channels_last)


def _short(labels) -> str:
    labels = list(labels)
    return str(labels) if len(labels) <= 6 else f"[{', '.join(map(str, labels[:5]))}, ... {len(labels)} in all]"


def evaluate_command(target: str | None, recipe: str | None = None, split: str = "val", batch_size: int = 32,
                     device: str = "auto", as_json: bool = False, engine: str = "onnxruntime",
                     precision: str | None = None, ood: str | None = None) -> dict:
    """Dispatch: .onnx files go through ONNX Runtime (or OpenVINO: engine, precision), runs and checkpoints
    through PyTorch."""
    if parse_int(batch_size, "--batch-size") < 1:
        raise UserError(f"--batch-size {batch_size}: expected a positive whole number of images per call")
    if target is None:
        target = artifacts.newest_run()
        print(f"evaluating newest run: {target}", file=sys.stderr if as_json else sys.stdout)   # --json: JSON alone
    loaded_recipe = recipe_mod.load(recipe) if recipe else None
    if str(target).endswith(".onnx"):
        report = evaluate_onnx(target, loaded_recipe, split=split, batch_size=batch_size, device=device,
                               engine=engine, precision=precision, ood=ood)
        if not as_json:
            print(format_report(report, f"{target} on {split}:"))
            print("\n".join(calibration_lines(report["calibration"])))
            if versus_line(report):
                print(versus_line(report))
    else:
        if not os.path.exists(target):
            raise UserError(f"{target}: no such run, checkpoint or .onnx file")
        if engine not in (None, DEFAULT_ENGINE) or precision is not None:   # an engine was chosen
            raise UserError(f"--engine / --precision: for an exported .onnx file; {target} is a run or checkpoint "
                            "(evaluated with PyTorch): pass its exports/<name>.onnx instead")
        report = evaluate_checkpoint(artifacts.run_checkpoint(target), recipe=loaded_recipe, split=split,
                                     batch_size=batch_size, device=device, quiet=as_json, run_calibrated=True,
                                     ood=ood)
    if as_json:
        print(json.dumps(report, indent=2))
    return report
