"""Checkpoints: tensors and plain types only, written atomically, read with weights_only=True."""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile

import torch

from toolkit.errors import UserError

FORMAT = "toolkit-checkpoint/1"


def save_checkpoint(path: str, state: dict) -> None:
    """Write `state` to `path` so that a crash at any moment leaves either the old file or the new one."""
    state = {"format": FORMAT, **state}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str, map_location: str = "cpu") -> dict:
    """Read a toolkit checkpoint; a missing, corrupt or foreign file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint; expected runs/<name>/checkpoints/best.pt or last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: corrupt or truncated checkpoint ({first[:160]}); "
                        "expected a file written by toolkit train") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a toolkit checkpoint (expected format {FORMAT}); "
                        "a plain torchvision state dict belongs in model.weights")
    return state


def model_from_checkpoint(source, map_location: str = "cpu"):
    """(model in eval mode, checkpoint dict) from a checkpoint path or an already loaded dict."""
    from toolkit import recipe as recipe_mod
    from toolkit.model import build_from_recipe

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
