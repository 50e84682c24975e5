"""Sample images of a recipe's data as files: something real for `toolkit predict` to read when the data
lives in memory (the digits and Fashion-MNIST sources) or far away."""
from __future__ import annotations

import os

from PIL import Image

from toolkit import recipe as recipe_mod
from toolkit.datasets.load import load_dataset
from toolkit.errors import UserError


def write_samples(recipe, folder: str, count: int = 5) -> list[str]:
    """One test image per class (up to `count` classes; the validation split where there is no test split)
    as PNG files named by their label: held-out images, which training never saw. `recipe`: a Recipe, or a
    recipe file's path (`write_samples("recipes/digits-source.yaml", "my-digits")`). Returns the paths."""
    if isinstance(recipe, (str, os.PathLike)):
        recipe = recipe_mod.load(str(recipe))
    data = load_dataset(recipe, scan=False)
    held_out = data.test or data.val
    if not held_out:
        raise UserError(f"{recipe.data.source} data: no test or validation images to write samples from")
    first_of_class: dict = {}
    for pixels, label in held_out:  # one image per class, so the samples show different answers
        first_of_class.setdefault(label, pixels)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for label, pixels in sorted(first_of_class.items())[:count]:
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in data.labels[label])  # "T-shirt/top"
        path = os.path.join(folder, f"{safe}.png")
        image = Image.open(pixels) if isinstance(pixels, (str, os.PathLike)) else Image.fromarray(pixels)
        image.convert("RGB").save(path)
        paths.append(path)
    return paths
