"""The "unknown" answer at run time: the Predictor's Prediction (accepted, ood_score beside the top-k),
calibrated scores, the per-call threshold and the switch, `toolkit predict`, serve-local's JSON, evaluate."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from conftest import write_tiny_model  # noqa: E402
from toolkit import calibration  # noqa: E402
from toolkit.errors import UserError  # noqa: E402
from toolkit.inference import Predictor, predict_command  # noqa: E402

REJECT_ALL = {"score": "energy", "threshold": 1e9, "accept_rate": 0.95}


def _image(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("unknown")
    return {"calibrated": write_tiny_model(base / "cal.onnx", meta={"temperature": 2.0, "ood": REJECT_ALL}),
            "plain": write_tiny_model(base / "plain.onnx"), "image": _image(base / "a.png")}


def test_scores_are_calibrated_and_rejected_images_keep_their_top_k(models):
    p = Predictor(models["calibrated"], device="cpu")
    logits = p.logits(p.prepare([models["image"]]))
    result = p.predict(models["image"], top_k=2)
    assert len(result) == 2 and result[0]["score"] == pytest.approx(calibration.softmax(logits, 2.0).max(), rel=1e-5)
    assert result.accepted is False and result.score_kind == "energy" and result.threshold == 1e9
    assert result.ood_score == pytest.approx(calibration.ood_score(logits, 2.0, "energy")[0], rel=1e-5)
    assert result.text() == f"unknown (best guess: {result[0]['label']} {result[0]['score']:.2f})"
    assert result.to_dict()["predictions"] == list(result) and result.to_dict()["accepted"] is False
    assert p.predict(models["image"], threshold=-1e9).accepted is True       # per-call threshold
    off = p.predict(models["image"], reject=False)
    assert off.accepted is True and off.threshold is None and off.ood_score == result.ood_score
    assert isinstance(p.predict([models["image"]] * 3), list) and len(p.predict([models["image"]] * 3)) == 3
    for bad in (float("nan"), float("inf"), -np.inf):   # inf: refused as `toolkit predict --threshold inf` is
        with pytest.raises(UserError, match=r"threshold: -?(nan|inf); expected a finite number"):
            p.predict(models["image"], threshold=bad)


def test_a_file_without_calibration_answers_as_before(models):
    p = Predictor(models["plain"], device="cpu")
    result = p.predict(models["image"], top_k=3)
    logits = p.logits(p.prepare([models["image"]]))
    assert result[0]["score"] == pytest.approx(calibration.softmax(logits).max(), rel=1e-5)
    assert result.accepted is True and result.ood_score is None and result.text() == \
        f"{result[0]['label']} {result[0]['score']:.2f}"
    assert json.loads(json.dumps(result)) == list(result)  # still a plain list of dicts in JSON
    with pytest.raises(UserError, match="has no 'ood' metadata"):
        p.predict(models["image"], threshold=1.0)


def test_predict_command_shows_unknown(models, capsys):
    assert predict_command(models["calibrated"], [models["image"]], top_k=1) == 0
    assert "unknown (best guess: " in capsys.readouterr().out
    assert predict_command(models["calibrated"], [models["image"]], top_k=1, reject=False) == 0
    assert "best guess" not in capsys.readouterr().out
    assert predict_command(models["calibrated"], [models["image"]], format="json") == 0
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert row["accepted"] is False and row["answer"].startswith("unknown (best guess: ")
    # CSV carries the decision too (it had only the top-k: a rejected image read as a confident answer)
    assert predict_command(models["calibrated"], [models["image"]], format="csv", top_k=2) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["accepted"] for r in rows] == ["False", "False"]
    assert float(rows[0]["ood_score"]) == pytest.approx(row["ood_score"], abs=1e-5)
    assert predict_command(models["plain"], [models["image"]], format="csv", top_k=1) == 0
    assert [(r["accepted"], r["ood_score"]) for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == \
        [("True", "")]


def test_a_bad_threshold_or_reject_writes_no_output(models, capsys):
    """--threshold on a file without 'ood' metadata failed after the CSV header was written."""
    with pytest.raises(UserError, match="has no 'ood' metadata"):
        predict_command(models["plain"], [models["image"]], format="csv", threshold=2.0)
    assert capsys.readouterr().out == ""
    with pytest.raises(UserError, match="reject: 'false'; expected True or False"):
        Predictor(models["calibrated"], device="cpu").predict(models["image"], reject="false")


def test_serve_json_says_unknown(models):
    pytest.importorskip("fastapi")  # the [serve] extra: the edge tier runs without it
    from starlette.testclient import TestClient

    from toolkit.runtime.serve import create_app

    buf = io.BytesIO()
    Image.open(models["image"]).save(buf, "PNG")
    with TestClient(create_app(Predictor(models["calibrated"], device="cpu"))) as client:
        body = client.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/png"}).json()
        model = client.get("/v1/model").json()
    assert body["accepted"] is False and body["answer"].startswith("unknown (best guess: ")
    assert len(body["predictions"]) >= 1 and isinstance(body["ood_score"], float)
    assert model["temperature"] == 2.0 and model["ood"]["threshold"] == 1e9
