"""toolkit.calibration (temperature, ECE, NLL, OOD scores, thresholds, AUROC) and the contract's `temperature`
and `ood` keys, checked at load."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import tiny_metadata
from toolkit import calibration, contract
from toolkit.errors import UserError


def _overconfident(n=3000, classes=10, true_t=2.5, seed=0):
    """Logits drawn from a calibrated model, then sharpened by true_t: the fitted T must undo it."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1.5, (n, classes))
    probs = calibration.softmax(base)
    targets = np.array([rng.choice(classes, p=p) for p in probs])
    return base * true_t, targets


def test_fitted_temperature_undoes_overconfidence_and_halves_ece():
    logits, targets = _overconfident()
    t = calibration.fit_temperature(logits, targets)
    assert t == pytest.approx(2.5, rel=0.1)
    s = calibration.split_summary(logits, targets, t)
    assert s["ece_after"] <= s["ece_before"] / 2 and s["nll_after"] < s["nll_before"]
    assert calibration.nll(logits, targets, t) <= min(calibration.nll(logits, targets, t * f) for f in (0.9, 1.1))


def test_no_minimum_inside_the_range_keeps_the_raw_scores():
    """A validation split the model gets all right, with margins: NLL falls on as T -> 0, and the fit sat at
    T 0.05, which made a photo of none of the classes 1.00 (0.84 raw). Now T = 1 and a note says why."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 60)
    separated = np.eye(3)[targets] * 4.0 + rng.normal(0, 0.3, (60, 3))   # every argmax right, margin ~4
    assert calibration.fit_temperature(separated, targets) == 1.0
    assert "every validation image right" in calibration.fit(separated, targets)["note"]
    chance, labels = rng.normal(0, 10.0, (600, 3)), rng.integers(0, 3, 600)   # answers unrelated to the labels
    assert calibration.fit_temperature(chance, labels) == 1.0
    assert "near chance" in calibration.fit(chance, labels)["note"]
    logits, targets = _overconfident()   # a minimum inside the range: fitted, no note
    assert "note" not in calibration.fit(logits, targets) and calibration.fit_temperature(logits, targets) != 1.0


def test_ece_of_a_perfectly_calibrated_bin_is_zero_and_of_a_wrong_sure_one_is_one():
    assert calibration.ece(np.array([[1.0, 0.0]] * 4), np.zeros(4, int)) == 0.0
    assert calibration.ece(np.array([[1.0, 0.0]] * 4), np.ones(4, int)) == 1.0


def test_scores_threshold_and_separation():
    logits = np.array([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    assert calibration.ood_score(logits, 1.0, "max_prob")[0] > calibration.ood_score(logits, 1.0, "max_prob")[1]
    assert calibration.ood_score(logits, 2.0, "energy")[0] == pytest.approx(2 * 0 + np.log(np.exp(2.5) + 2))
    scores = np.arange(100.0)
    thr = calibration.threshold_for(scores, 0.95)
    assert np.mean(scores >= thr) == 0.95 and thr not in scores  # between two images, never on one
    assert np.all(scores >= calibration.threshold_for(scores, 1.0))
    assert calibration.auroc([2, 3, 4], [0, 1]) == 1.0 and calibration.auroc([1, 1], [1, 1]) == 0.5
    assert calibration.auroc([0, 1], [2, 3]) == 0.0
    assert calibration.fpr_at_tpr(np.arange(100), np.arange(50)) == pytest.approx(45 / 50)


@pytest.mark.parametrize("rate", [0, -1, 1.01, float("nan"), "x", True, None])
def test_accept_rate_outside_zero_one_is_one_error(rate):
    with pytest.raises(UserError, match=r"--accept-rate .*above 0 and at most 1"):
        calibration.check_accept_rate(rate)
    assert calibration.check_accept_rate("0.9") == 0.9 and calibration.check_accept_rate(1) == 1.0


def test_too_few_validation_images_skip_with_one_line():
    assert calibration.too_few(0) == "calibration skipped: no validation split"
    assert "19 validation images (needs at least 20)" in calibration.too_few(19)
    assert calibration.too_few(20) is None


def _props(**extra):
    return contract.encode({**tiny_metadata(), **extra})


OOD = {"score": "energy", "threshold": 1.5, "accept_rate": 0.95}


def test_contract_reads_temperature_and_ood():
    model = contract.from_props(_props(temperature=1.7, ood={**OOD, "bf16": {"temperature": 1.8, "threshold": 1.4}}),
                                "m.onnx")
    assert model.temperature == 1.7 and model.ood["score"] == "energy" and model.ood["bf16"]["temperature"] == 1.8
    plain = contract.from_props(_props(), "m.onnx")  # a file without the keys: as before calibration
    assert plain.temperature is None and plain.ood is None


@pytest.mark.parametrize("extra, message", [
    ({"temperature": 0}, "'temperature' metadata is '0'; expected a finite positive number"),
    ({"temperature": -1.0}, "'temperature' metadata is '-1.0'"),
    ({"temperature": float("inf")}, "'temperature' metadata is 'Infinity'"),
    ({"temperature": float("nan")}, "'temperature' metadata is 'NaN'"),
    ({"temperature": "hot"}, "'temperature' metadata is 'hot'"),
    ({"ood": {**OOD, "threshold": float("nan")}}, "'ood.threshold' metadata is 'nan'; expected a number"),
    ({"ood": {**OOD, "threshold": None}}, "'ood.threshold' metadata is 'None'"),
    ({"ood": {**OOD, "score": "vibes"}}, "'ood' metadata is"),
    ({"ood": {**OOD, "accept_rate": 0}}, "'ood.accept_rate' metadata is '0'"),
    ({"ood": {**OOD, "bf16": {"temperature": -2, "threshold": 1}}}, "'ood.bf16.temperature' metadata is '-2'"),
    ({"ood": {**OOD, "bf16": {"threshold": 1}}}, "'ood.bf16' metadata has no temperature"),
    ({"ood": "[1, 2]"}, "'ood' metadata is"),
])
def test_bad_calibration_metadata_is_a_contract_error_at_load(extra, message):
    with pytest.raises(contract.ContractError) as err:
        contract.from_props(_props(**extra), "m.onnx")
    assert message in str(err.value) and str(err.value).startswith("m.onnx: ")


def test_binomial_tail_and_clopper_pearson_lower_bound():
    # values from scipy.stats.binom.sf and beta.ppf (not a dependency of the edge install)
    assert calibration.binomial_tail(2, 180, 0.01) == pytest.approx(0.53835936, rel=1e-6)
    assert calibration.binomial_tail(14, 600, 0.01) == pytest.approx(0.0034486198, rel=1e-6)
    assert calibration.binomial_tail(0, 10, 0.3) == 1.0 and calibration.binomial_tail(11, 10, 0.3) == 0.0
    assert calibration.rate_lower_bound(1, 1) == pytest.approx(0.05)
    assert calibration.rate_lower_bound(10, 600) == pytest.approx(0.0090694533, rel=1e-6)
    assert calibration.rate_lower_bound(30, 2000) == pytest.approx(0.0108170848, rel=1e-6)
    assert calibration.rate_lower_bound(0, 50) == 0.0
