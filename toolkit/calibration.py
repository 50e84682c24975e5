"""How far a model's scores can be trusted: temperature scaling, calibration error, and the "unknown" answer.

numpy only (no torch, no scipy), so training, export, evaluation and the edge runtime share one copy:

    T = fit_temperature(val_logits, val_targets)            # one scalar, minimises NLL (bounded 1-D search)
    probs = softmax(logits, T)                              # calibrated scores
    ece(probs, targets), nll(logits, targets, T)            # 15-bin ECE, mean negative log-likelihood
    s = ood_score(logits, T, "energy")                      # higher = more like the training classes
    thr = threshold_for(val_scores, accept_rate=0.95)       # accepts 95% of the validation images
    auroc(s_in, s_out), fpr_at_tpr(s_in, s_out)             # against a folder of "none of these" photos
    rate_lower_bound(differ, n)                             # how low a rate seen differ of n times can be

The OOD scores (both computed from the logits, higher = in distribution):
  max_prob  the largest calibrated probability, max softmax(logits / T)
  energy    logsumexp(logits / T), the negative free energy (Liu et al., 2020)
DEFAULT_SCORE is the one measured better on the demo models (docs/evaluate.md has the numbers).
"""
from __future__ import annotations

import math

import numpy as np

from toolkit.contract import OOD_SCORES
from toolkit.errors import UserError

__all__ = ["OOD_SCORES", "DEFAULT_SCORE", "DEFAULT_ACCEPT_RATE", "MIN_AGREEMENT", "ECE_BINS", "MIN_CALIBRATION_IMAGES",
           "softmax", "nll", "ece", "fit_temperature", "ood_score", "threshold_for", "auroc", "fpr_at_tpr",
           "check_share", "check_accept_rate", "fit", "split_summary", "ood_summary", "too_few", "binomial_tail",
           "rate_lower_bound"]

DEFAULT_SCORE = "energy"
DEFAULT_ACCEPT_RATE = 0.95
# The share of validation images on which every twin and engine must take the FP32 file's accept/reject
# decision (export's --min-agreement; toolkit.export.calibrate applies it).
MIN_AGREEMENT = 0.99
ECE_BINS = 15
MIN_CALIBRATION_IMAGES = 20  # fewer validation images than this: T and the threshold would be noise
# The bounded search range of T: far wider than any trained net needs (label smoothing: T < 1 typically).
T_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) per row, in float64."""
    x = np.asarray(logits, np.float64) / float(temperature)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=-1))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    x = np.asarray(logits, np.float64) / float(temperature)
    targets = np.asarray(targets, np.int64)
    if len(x) == 0:
        return float("nan")
    return float(np.mean(_logsumexp(x) - x[np.arange(len(x)), targets]))


def ece(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per equal-width confidence bin, weighted by size."""
    probs = np.asarray(probs, np.float64)
    if len(probs) == 0:
        return float("nan")
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = pred == np.asarray(targets)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total / len(probs))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T in T_RANGE that minimises NLL(logits / T). A minimum at an end of the range is no fit: 1.0, the
    raw scores (fit() says why). A model that gets every validation image right with margins has NLL
    falling on as T -> 0, and T 0.05 made every answer 1.00, a photo of none of its classes included."""
    return _kept(_nll_minimum(logits, targets))[0]


def _kept(t: float) -> tuple[float, str | None]:
    """(the T to use, one line why it is 1) for a search's minimum `t`: 1 when it sits at an end of T_RANGE."""
    if T_RANGE[0] * 1.05 <= t <= T_RANGE[1] / 1.05:
        return t, None
    why = ("the model gets every validation image right with room to spare, so NLL falls on as T goes to 0"
           if t < 1 else "NLL falls on as T grows: the validation answers are near chance")
    return 1.0, f"note: no temperature fits ({why}); the scores stay the raw softmax (T = 1)"


def _nll_minimum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Golden-section search on log T over T_RANGE (NLL is smooth and unimodal there), to a relative
    precision far below what ECE can see."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t):
        return nll(logits, targets, math.exp(log_t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def ood_score(logits: np.ndarray, temperature: float = 1.0, kind: str = DEFAULT_SCORE) -> np.ndarray:
    """Per row, how much it looks like the training classes (higher = more): see the module docstring."""
    x = np.asarray(logits, np.float64) / float(temperature)
    if len(x) == 0:
        return np.zeros(0)
    if kind == "energy":
        return _logsumexp(x)
    if kind == "max_prob":
        return softmax(x).max(axis=1)
    raise UserError(f"OOD score {kind!r}: expected one of {', '.join(OOD_SCORES)}")


def threshold_for(scores: np.ndarray, accept_rate: float) -> float:
    """The threshold (accept when score >= it) that accepts `accept_rate` of `scores` (at least that share).
    It sits halfway between the last score rejected and the first accepted, never on an image's own
    score, so a rounding difference between engines does not flip that image."""
    ordered = np.sort(np.asarray(scores, np.float64))
    k = min(int(math.floor((1.0 - accept_rate) * len(ordered) + 1e-9)), len(ordered) - 1)
    if k == 0:  # accept all: just below the lowest score
        return float(ordered[0] - max(1e-6, 1e-3 * abs(ordered[0])))
    return float((ordered[k - 1] + ordered[k]) / 2)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling in-distribution (positive, higher score) from OOD images: the
    chance a random in-distribution image scores above a random OOD one (ties count half)."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    _, where, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[where]  # 1-based ranks, ties averaged
    return float((ranks[:len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """The share of OOD images accepted at the threshold that accepts `tpr` of the in-distribution ones."""
    return float(np.mean(np.asarray(out_scores) >= threshold_for(in_scores, tpr)))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (n in the thousands does not overflow)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    i = np.arange(k)  # P(X >= k) = 1 - P(X < k)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((n - i[1:] + 1) / i[1:]))])
    below = np.exp(log_comb + i * math.log(p) + (n - i) * math.log1p(-p)).sum()
    return float(max(0.0, 1.0 - below))


def rate_lower_bound(count: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound of a rate seen `count` times in `n` trials: the smallest rate
    under which seeing `count` or more still has a chance of at least 1 - confidence (bisection)."""
    if count <= 0 or n <= 0:
        return 0.0
    lo, hi = 0.0, count / n
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binomial_tail(count, n, mid) < 1.0 - confidence else (lo, mid)
    return lo


def check_share(value, flag: str, meaning: str, example: float) -> float:
    """A share of validation images given as `flag`, as a float in (0, 1], or one clear UserError saying
    what it is (`meaning`) and what it could be (`example`)."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = float("nan")
    if isinstance(value, bool) or not 0.0 < share <= 1.0:
        raise UserError(f"{flag} {value!r}: expected {meaning}, above 0 and at most 1 (e.g. {example:g})")
    return share


def check_accept_rate(value) -> float:
    """--accept-rate as a float in (0, 1], or one clear UserError."""
    return check_share(value, "--accept-rate", "a share of validation images to accept", DEFAULT_ACCEPT_RATE)


def too_few(n: int) -> str | None:
    """Why calibration is skipped for `n` validation images (one line), or None."""
    if n == 0:
        return "calibration skipped: no validation split"
    if n < MIN_CALIBRATION_IMAGES:
        return f"calibration skipped: {n} validation images (needs at least {MIN_CALIBRATION_IMAGES})"
    return None


def fit(logits: np.ndarray, targets: np.ndarray, accept_rate: float = DEFAULT_ACCEPT_RATE,
        score: str = DEFAULT_SCORE) -> dict:
    """T and the rejection threshold fitted on validation logits: {temperature, score, threshold,
    accept_rate} (what export writes into the file; toolkit.contract checks it), and `note` where no T fits."""
    t, note = _kept(_nll_minimum(logits, targets))
    return {"temperature": t, "score": score, "accept_rate": float(accept_rate),
            "threshold": threshold_for(ood_score(logits, t, score), accept_rate), **({"note": note} if note else {})}


def split_summary(logits: np.ndarray, targets: np.ndarray, temperature: float, ood: dict | None = None) -> dict:
    """ECE and NLL before (T = 1) and after calibration on one split, and the share accepted."""
    out = {"n": int(len(logits)),
           "ece_before": ece(softmax(logits), targets), "ece_after": ece(softmax(logits, temperature), targets),
           "nll_before": nll(logits, targets), "nll_after": nll(logits, targets, temperature)}
    if ood:
        out["accept_rate"] = float(np.mean(ood_score(logits, temperature, ood["score"]) >= ood["threshold"]))
    return out


def ood_summary(in_logits: np.ndarray, out_logits: np.ndarray, temperature: float, ood: dict) -> dict:
    """How well the file's OOD score separates the split from a folder of other photos: AUROC, FPR at
    95% TPR and the share of that folder rejected at the file's threshold; both scores' AUROC for the record."""
    s_in, s_out = (ood_score(x, temperature, ood["score"]) for x in (in_logits, out_logits))
    return {"n_ood": int(len(out_logits)), "score": ood["score"], "auroc": auroc(s_in, s_out),
            "fpr_at_95_tpr": fpr_at_tpr(s_in, s_out),
            "rejection_rate": float(np.mean(s_out < ood["threshold"])),
            "auroc_by_score": {k: auroc(ood_score(in_logits, temperature, k), ood_score(out_logits, temperature, k))
                               for k in OOD_SCORES}}
