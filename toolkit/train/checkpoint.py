"""Checkpoints: tensors and plain types only, written atomically, read with weights_only=True."""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile

import torch

from toolkit.artifacts import atomic_path
from toolkit.errors import UserError, first_line

FORMAT = "toolkit-checkpoint/1"


def save_checkpoint(path: str, state: dict) -> None:
    """Write `state` to `path` so that a crash at any moment leaves either the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: str, map_location: str = "cpu") -> dict:
    """Read a toolkit checkpoint; a missing, corrupt or foreign file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint; expected runs/<name>/checkpoints/best.pt or last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({first_line(exc, 160)}); "
                        "expected a file written by toolkit train") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a toolkit checkpoint (expected format {FORMAT}); "
                        "a plain torchvision state dict belongs in model.weights")
    return state


def model_from_checkpoint(source, map_location: str = "cpu"):
    """(model in eval mode, checkpoint dict) from a checkpoint path or an already loaded dict."""
    from toolkit import recipe as recipe_mod
    from toolkit.train.model import build_from_recipe

    ckpt = load_checkpoint(source, map_location) if isinstance(source, (str, os.PathLike)) else source
    recipe = recipe_mod.from_dict(ckpt["recipe"], source=f"{source} (recipe inside the checkpoint)", check_paths=False)
    model = build_from_recipe(recipe, num_classes=len(ckpt["labels"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"{source}: weights do not fit {recipe.model.arch} with a {recipe.model.head} head "
                        f"({str(exc).splitlines()[0][:160]})") from None
    return model.eval(), ckpt


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
