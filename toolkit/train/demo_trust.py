"""`toolkit demo --imagenet`'s trust table: how far the Fashion-MNIST model's scores can be trusted.

For one trained run (the demo's showcase: the last transfer run), from its final weights: T fitted on
validation (toolkit.calibration), ECE and NLL on test before and after, and the "unknown" answer against
an out-of-distribution set no test uses: scikit-learn's handwritten digits (1,797 8x8 images, offline),
for both OOD scores (AUROC, FPR at 95% TPR, the share rejected at the 95%-validation threshold)."""
from __future__ import annotations

import os

import numpy as np

from toolkit import calibration
from toolkit import recipe as recipe_mod
from toolkit.datasets import load_dataset
from toolkit.train.device import pick_device
from toolkit.train.evaluate import split_logits
from toolkit.train.model import model_from_checkpoint

__all__ = ["digits_images", "trust_table"]


def digits_images(limit: int = 500) -> list:
    """scikit-learn's digits as (uint8 greyscale image, 0) pairs: photos of none of Fashion-MNIST's classes."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:limit]
    return [((img * (255 / 16)).astype(np.uint8), 0) for img in images]


def trust_table(run_dir: str, batch_size: int = 32) -> tuple[list, dict]:
    """(printable lines, the numbers) for a run's last.pt: calibration on test, OOD against digits."""
    model, ckpt = model_from_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    recipe = recipe_mod.from_dict(ckpt["recipe"], source=run_dir, check_paths=False)
    data, dev = load_dataset(recipe, scan=False), pick_device("auto")
    val, test = (split_logits(model, recipe, getattr(data, s), batch_size, dev)[:2] for s in ("val", "test"))
    ood = split_logits(model, recipe, digits_images(), batch_size, dev)[0]
    t = calibration.fit_temperature(*val)
    record = {"run": run_dir, "temperature": t, "test": calibration.split_summary(*test, t), "ood": {}}
    lines = [f"Trust ({run_dir}, last.pt): T {t:.3f} fitted on {len(val[0])} validation images",
             f"  test ECE {record['test']['ece_before'] * 100:.2f}% -> {record['test']['ece_after'] * 100:.2f}%, "
             f"NLL {record['test']['nll_before']:.3f} -> {record['test']['nll_after']:.3f}",
             f"  vs {len(ood)} scikit-learn digits (none of the classes), threshold accepting 95% of validation:",
             "  | score | AUROC | FPR at 95% TPR | digits rejected | test accepted |", "  |---|---|---|---|---|"]
    for kind in calibration.OOD_SCORES:
        fit = {"score": kind, "threshold": calibration.threshold_for(calibration.ood_score(val[0], t, kind), 0.95)}
        s = calibration.ood_summary(test[0], ood, t, fit)
        accepted = calibration.split_summary(*test, t, fit)["accept_rate"]
        record["ood"][kind] = {**{k: s[k] for k in ("auroc", "fpr_at_95_tpr", "rejection_rate")},
                               "test_accept_rate": accepted}
        lines.append(f"  | {kind} | {s['auroc']:.3f} | {s['fpr_at_95_tpr'] * 100:.1f}% | "
                     f"{s['rejection_rate'] * 100:.1f}% | {accepted * 100:.1f}% |")
    return lines, record
