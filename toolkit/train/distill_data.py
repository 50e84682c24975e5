"""data.unlabeled: a folder of photos without labels, for distillation (toolkit.train.distill).

The folder is listed like `toolkit predict` lists one (toolkit.runtime.image_files: image extensions,
hidden names skipped, sub-folders included) and every photo is decoded once before training, through the
recipe's eval transform, like the labelled data's pre-flight scan (toolkit.datasets.load.scan_items).
"""
from __future__ import annotations

import dataclasses

from toolkit.datasets.load import scan_items
from toolkit.errors import UserError
from toolkit.preprocess import Preprocess
from toolkit.runtime.image_files import collect_images

MAX_LISTED = 10  # unreadable photos named in one error


def unlabeled_items(recipe, label: int, progress: bool = True) -> list:
    """[(path, label)] for every readable photo of data.unlabeled; `label` marks them (distill.UNLABELLED).
    No photo, or no readable photo, is one UserError; some unreadable ones are an error listing them,
    unless data.skip_corrupt (then they are skipped, and said). `progress`: the scan's line (not when quiet)."""
    folder = recipe.data.unlabeled
    paths, problems = collect_images(folder)
    if problems or not paths:
        why = problems[0][1] if problems else "no images"
        raise UserError(f"data.unlabeled: {folder}: {why}; expected a folder of photos without labels")
    preprocess = Preprocess(**dataclasses.asdict(recipe.preprocess))
    bad = dict(scan_items([(p, label) for p in paths], recipe.data.max_pixels, progress=progress,
                          preprocess=preprocess))
    good = [p for p in paths if p not in bad]
    if not good:
        first = next(iter(bad.items()))
        raise UserError(f"data.unlabeled: {folder}: no readable images ({len(bad)} file{'s' * (len(bad) > 1)}, "
                        f"none decodes; {first[0]}: {first[1]}); expected a folder of photos without labels")
    if bad:
        lines = [f"  {path}: {reason}" for path, reason in list(bad.items())[:MAX_LISTED]]
        more = [f"  and {len(bad) - MAX_LISTED} more"] if len(bad) > MAX_LISTED else []
        text = "\n".join(lines + more)
        if not recipe.data.skip_corrupt:
            raise UserError(f"data.unlabeled: {len(bad)} unreadable image{'s' * (len(bad) > 1)} in {folder}:\n"
                            f"{text}\nset data.skip_corrupt: true to skip them")
        print(f"data.unlabeled: skipped {len(bad)} unreadable image{'s' * (len(bad) > 1)} (data.skip_corrupt):\n"
              f"{text}")
    return [(p, label) for p in good]
