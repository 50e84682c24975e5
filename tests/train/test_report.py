"""`toolkit report`: report.json's numbers, the page's escaping and sections, the fallbacks (no split to
score, unreadable images, an .onnx file), the report at the end of training and the
TensorBoard logs. One tiny run, trained once for the module; a class is named <script> on purpose."""
import json
import os
import shutil
from html import escape

import numpy as np
import pytest
import torch

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip
from conftest import make_image_folder, tiny_recipe, write_recipe, write_tiny_model
from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.recipe import from_dict
from toolkit.train import tensorboard as tb_mod
from toolkit.train.loop import train
from toolkit.train.report import ReportOptions, build_report, content, outputs
from toolkit.train.report import build as build_mod, page as page_mod
from toolkit.train.report.saliency import grad_cam

EVIL = "<script>alert(1)</script>"
EVIL_FILE = "<img src=x onerror=alert(1)>"  # a file name can't hold the '/' of </script>


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run whose first class is named <script>, and its data folder."""
    tmp = tmp_path_factory.mktemp("report")
    root = make_image_folder(tmp / "images")
    os.rename(os.path.join(root, "class_0"), os.path.join(root, "<script>"))
    for name in os.listdir(os.path.join(root, "class_1")):  # each one, so the val split has some
        os.rename(os.path.join(root, "class_1", name), os.path.join(root, "class_1", f"{EVIL_FILE}{name}"))
    recipe = from_dict(tiny_recipe(tmp, root, train={"epochs": 1}), check_paths=False)
    train(recipe, quiet=True)
    return {"dir": recipe.run_dir, "root": root, "tmp": tmp}


def read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_training_wrote_the_report(run):
    data = json.loads(read(os.path.join(run["dir"], "report.json")))
    assert len(data["top_losses"]) == min(8, data["scores"]["n"]) > 0
    assert os.path.isfile(os.path.join(run["dir"], "report.html"))


def test_training_wrote_tensorboard_logs(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run["dir"], "tb"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "top1/train", "top1/val"} <= set(tags["scalars"])
    assert any(t.startswith("lr/") for t in tags["scalars"]), tags
    assert tags["images"] == ["confusion/val"]
    assert [e.step for e in events.Scalars("loss/train")] == [1]


def test_tensorboard_false_writes_no_event_files(tmp_path):
    said = []
    log = tb_mod.TensorBoardLog(str(tmp_path), ["a", "b"], say=said.append, enabled=False)
    log.log_epoch({"epoch": 1, "train_loss": 1.0, "train_top1": 50.0, "lr": {"head": 0.1}, "val_top1": 50.0},
                  [[1, 0], [1, 0]])
    log.close()
    assert not (tmp_path / "tb").exists() and said == []  # off on purpose: no "not installed" note either


def test_scores_per_class_and_top_losses(run, tmp_path):
    data = build_report(run["dir"], ReportOptions(out_dir=str(tmp_path), top=5))
    s = data["scores"]
    matrix = np.asarray(s["confusion"])
    assert s["n"] == matrix.sum() and len(s["per_class"]) == 3
    for i, row in enumerate(s["per_class"]):
        assert row["support"] == matrix[i].sum()
        if row["recall"] is not None:
            assert row["recall"] == pytest.approx(100 * matrix[i, i] / matrix[i].sum())
    losses = [r["loss"] for r in data["top_losses"]]
    assert len(losses) == min(5, s["n"]) and losses == sorted(losses, reverse=True)
    assert data["saliency"].startswith("Grad-CAM")
    assert not data["calibration"]["calibrated"] and "plain softmax" in data["calibration"]["note"]
    assert data["class_counts"]["val"] == matrix.sum(axis=1).tolist()


def test_calibration_temperature_changes_the_scores(run, tmp_path):
    plain = build_report(run["dir"], ReportOptions(out_dir=str(tmp_path / "a")))["top_losses"]
    shutil.copytree(run["dir"], tmp_path / "run")
    (tmp_path / "run" / "calibration.json").write_text(json.dumps({"temperature": 3.0}))
    calibrated = build_report(str(tmp_path / "run"), ReportOptions())
    assert calibrated["calibration"]["calibrated"] and "3" in calibrated["calibration"]["note"]
    assert [r["path"] for r in calibrated["top_losses"]] == [r["path"] for r in plain]
    assert all(c["score"] < p["score"] for c, p in zip(calibrated["top_losses"], plain))  # T > 1 flattens


def test_html_escapes_labels_and_file_names_and_embeds_every_picture(run, tmp_path):
    data = build_report(run["dir"], ReportOptions(out_dir=str(tmp_path), top=24))
    html = read(data["files"]["html"])
    assert "&lt;script&gt;" in html and "<script" not in html.lower() and "<img src=x" not in html
    assert any(EVIL_FILE in r["path"] for r in data["top_losses"])  # the file named <img ...> is in the gallery
    assert "http://" not in html and "https://" not in html
    assert html.count("src='data:image/") >= 2 * len(data["top_losses"]) + 1  # thumbnails, Grad-CAMs, confusion


def test_data_health_and_mislabels_sections(run, tmp_path, monkeypatch):
    shutil.copytree(run["dir"], tmp_path / "run")
    photo, other = (os.path.join(run["root"], "class_2", name) for name in sorted(os.listdir(
        os.path.join(run["root"], "class_2")))[:2])
    health = {"exact_duplicates": [[photo, other]],
              "leaks": [{"train": photo, "val": f"{EVIL}.jpg", "distance": 0}],
              "class_balance": {EVIL: {"train": 5, "val": 2}}, "small_images": [], "unreadable": []}
    scanned = {"health": health}   # what the report's own scan of the data finds

    def load_dataset(recipe, **kwargs):
        dataset = real_load_dataset(recipe, **kwargs)
        dataset.health = scanned["health"]
        return dataset

    real_load_dataset = outputs.load_dataset
    monkeypatch.setattr(outputs, "load_dataset", load_dataset)
    (tmp_path / "run" / "data_health.json").write_text(json.dumps({"exact_duplicates": [], "stale": True}))
    monkeypatch.setattr(content, "rank_mislabels",
                        lambda run_dir, dataset=None: [{"path": photo, "label": "class_2", "suggested": EVIL, "score": 0.93}])
    data = build_report(str(tmp_path / "run"), ReportOptions(mislabels=True))
    html = read(data["files"]["html"])
    assert list(data["data_health"]["sections"]) == ["exact_duplicates", "leaks", "class_balance", "small_images",
                                                     "unreadable"]
    assert data["mislabels"]["rows"][0]["score"] == 0.93
    assert "<script" not in html.lower() and "class=thumb" in html and "none found" in html
    # the scan's, not the run's data_health.json from training (another --recipe, or data changed since)
    assert "stale" not in data["data_health"]["sections"]
    scanned["health"] = None   # no scan's health: the run's file, and without it a note
    assert build_report(str(tmp_path / "run"), ReportOptions())["data_health"]["sections"]["stale"] is True
    os.remove(tmp_path / "run" / "data_health.json")
    assert "skipped" in build_report(str(tmp_path / "run"), ReportOptions())["data_health"]["note"]


def test_no_split_to_score_and_unreadable_images(run, tmp_path):
    root = make_image_folder(tmp_path / "images")
    os.rename(os.path.join(root, "class_0"), os.path.join(root, "<script>"))
    (tmp_path / "images" / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    raw = tiny_recipe(tmp_path, root, data={"val_fraction": 0.0, "skip_corrupt": True})
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    data = build_report(run["dir"], ReportOptions(recipe=recipe, out_dir=str(tmp_path / "out")))
    assert "scores" not in data and "no images in the val or test split" in data["notes"][0]
    assert [os.path.basename(p) for p, _ in data["unreadable"]] == ["broken.jpg"]
    html = read(data["files"]["html"])
    assert "Unreadable images" in html and "broken.jpg" in html and "Top losses" not in html


def test_onnx_file_with_a_recipe(run, tmp_path):
    model = write_tiny_model(tmp_path / "m.onnx", labels=["<script>", "class_1", "class_2"])
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, run["root"]))
    data = build_report(model, ReportOptions(recipe=recipe))
    assert data["files"]["html"] == str(tmp_path / "m_report" / "report.html")
    assert data["scores"]["n"] > 0 and data["top_losses"]
    assert any("Grad-CAM needs the checkpoint" in n for n in data["notes"])
    assert "<script" not in read(data["files"]["html"]).lower()


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "not a run folder" in err
    assert "Traceback" not in err and not os.listdir(tmp_path)
    with pytest.raises(UserError, match="--top"):
        build_report(str(tmp_path), ReportOptions(top=-1))


def test_a_failing_report_never_fails_training(tmp_path, image_folder, monkeypatch, capsys):
    from toolkit.train.report import build as report_mod

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(report_mod, "build_report", broken)
    monkeypatch.setattr(tb_mod, "summary_writer_class", lambda: None)  # as without the tensorboard package
    recipe = from_dict(tiny_recipe(tmp_path, image_folder, train={"epochs": 1}), check_paths=False)
    summary = train(recipe)
    out, err = capsys.readouterr()
    assert summary["epochs_run"] == 1
    assert [line for line in err.splitlines() if "report" in line] == [
        f"warning: the run report was not written (RuntimeError: boom); try: toolkit report {recipe.run_dir}"]
    assert out.count("tensorboard package is not installed") == 1 and not os.path.exists(
        os.path.join(recipe.run_dir, "tb"))


def test_grad_cam_points_at_the_evidence():
    """A net whose class-0 score is the red in the image: the map peaks where the red patch is."""
    conv = torch.nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 1] = 1.0
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = torch.zeros(2, 3, 16, 16)
    images[0, 0, :4, :4] = 1.0  # top left
    images[1, 0, 10:, 12:] = 1.0  # bottom right
    cams = grad_cam(model, images, [0, 0])
    assert cams.shape == (2, 16, 16) and cams.max() == pytest.approx(1.0)
    assert cams[0, :4, :4].mean() > 0.5 > cams[0, 8:, 8:].mean()
    assert cams[1, 10:, 12:].mean() > 0.5 > cams[1, :6, :6].mean()


@pytest.mark.slow
def test_page_in_headless_browser(run, tmp_path):
    """The page renders in chromium, every picture decodes, no console error, nothing fetched from outside."""
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    data = build_report(run["dir"], ReportOptions(out_dir=str(tmp_path), top=24))
    errors, outside = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
            page.goto("file://" + data["files"]["html"])
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            headings = page.locator("h2").all_text_contents()
            labels = page.locator("td").all_text_contents()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(widths) >= 2 * len(data["top_losses"]) + 2 and min(widths) > 0, widths
    assert {"Per class", "Confusion matrix", "Top losses", "Data health"} <= set(headings), headings
    assert "<script>" in labels  # the label shows as text
    assert not errors and not outside, (errors, outside)


@pytest.mark.parametrize("value", ["warm", True, -1.0, 0, float("inf")])
def test_a_temperature_that_is_no_positive_finite_number_leaves_plain_softmax(tmp_path, value):
    """calibration.json's T is read by evaluate's rule (the contract's: finite, above 0); a T it refuses
    leaves the report on plain softmax, saying why, instead of ending it."""
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"a checkpoint")
    os.utime(best, (1, 1))  # older than the calibration.json written below
    (tmp_path / "run" / "calibration.json").write_text(json.dumps({"temperature": value}))
    temperature, why = outputs.checkpoint_calibration(str(best))
    assert temperature is None and "temperature" in why
    (tmp_path / "run" / "calibration.json").write_text(json.dumps({"temperature": 2.5}))
    assert outputs.checkpoint_calibration(str(best)) == (2.5, "the run's calibration.json")


def test_the_runs_temperature_belongs_to_best_pt_alone(tmp_path):
    """As `toolkit evaluate RUN`: last.pt, and a best.pt newer than calibration.json (a later best the T was
    not fitted on), are scored at T = 1, and the report says why."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (tmp_path / "run" / "calibration.json").write_text(json.dumps({"temperature": 2.5}))
    (folder / "last.pt").write_bytes(b"a checkpoint")
    assert outputs.checkpoint_calibration(str(folder / "last.pt")) == (
        None, "none for last.pt: the run's calibration.json was fitted on best.pt")
    assert outputs.checkpoint_calibration(str(tmp_path / "run" / "calibration.json")) == (
        None, "none for this checkpoint")   # a .pt outside a run's checkpoints/ folder
    (folder / "best.pt").write_bytes(b"a later best")
    os.utime(tmp_path / "run" / "calibration.json", (1, 1))
    temperature, why = outputs.checkpoint_calibration(str(folder / "best.pt"))
    assert temperature is None and "older than best.pt" in why
    got = content.calibration(outputs.Outputs("best.pt", None, None, [], None, temperature=None,
                                              calibration_source=why))
    assert got["temperature"] == 1.0 and not got["calibrated"] and "older than best.pt" in got["note"]


def test_a_copied_run_keeps_its_calibration(tmp_path):
    """`cp -r` writes a run's files in any order, so calibration.json came out older than best.pt and the copy
    was scored at T = 1 ("fitted on an earlier best"). calibration.json names best.pt by its SHA-256 now: the
    times are not read, and a best.pt it was not fitted on is still caught."""
    from toolkit.artifacts import sha256_file

    folder = tmp_path / "copy" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"the best checkpoint")
    saved = tmp_path / "copy" / "calibration.json"
    saved.write_text(json.dumps({"temperature": 2.5, "checkpoint_sha256": sha256_file(str(folder / "best.pt"))}))
    os.utime(saved, (1, 1))   # older than best.pt, as a copy may leave it
    assert outputs.checkpoint_calibration(str(folder / "best.pt")) == (2.5, "the run's calibration.json")
    (folder / "best.pt").write_bytes(b"a later best")
    temperature, why = outputs.checkpoint_calibration(str(folder / "best.pt"))
    assert temperature is None and why == f"none: {saved} was fitted on another best.pt (an earlier best)"


def test_an_onnx_report_uses_the_files_own_temperature(run, tmp_path):
    """An .onnx file (a twin, say) carries the T refitted on its own logits: the report applies that one,
    not its run's calibration.json, and a file without one is plain softmax even beside a calibrated run."""
    raw = tiny_recipe(tmp_path, run["root"])
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "calibration.json").write_text(json.dumps({"temperature": 5.0}))
    labels = ["<script>", "class_1", "class_2"]
    with_t = write_tiny_model(tmp_path / "t.onnx", labels=labels, meta={"temperature": 2.0})
    got = build_report(with_t, ReportOptions(recipe=recipe))
    assert got["run"] == str(run_dir)  # the run is found, and its calibration.json is still not used
    assert got["files"]["html"] == str(tmp_path / "t_report" / "report.html")  # beside the file, as documented
    assert not (run_dir / "report.html").exists()  # the run's own report (of its checkpoint) is not replaced
    from toolkit import calibration
    from toolkit.runtime.onnx_eval import onnx_outputs

    scored = onnx_outputs(with_t, recipe)   # the split's logits as `toolkit evaluate` reads them
    ece, raw_ece = (calibration.ece(calibration.softmax(scored.logits, t), scored.targets) for t in (2.0, 1.0))
    assert {k: got["calibration"][k] for k in ("temperature", "calibrated", "source")} == {
        "temperature": 2.0, "calibrated": True, "source": "this file's metadata"}
    # how calibrated the scores are on the split, beside where T came from (the report showed only T)
    assert got["calibration"]["ece"] == pytest.approx(ece) and got["calibration"]["ece_uncalibrated"] == \
        pytest.approx(raw_ece)
    assert got["calibration"]["note"] == (f"scores calibrated with temperature 2 (this file's metadata); on val: "
                                          f"ECE {ece * 100:.2f}% (uncalibrated {raw_ece * 100:.2f}%), NLL "
                                          f"{got['calibration']['nll']:.4f}")
    plain = build_report(write_tiny_model(tmp_path / "p.onnx", labels=labels), ReportOptions(recipe=recipe))
    assert plain["calibration"]["temperature"] == 1.0 and "none in this file" in plain["calibration"]["note"]


def test_bad_split_and_out_dir_are_one_error_before_any_work(tmp_path):
    """--split nope was an AttributeError after the data scan; an --out-dir that is a file, a FileExistsError."""
    from toolkit.train.report import ReportOptions, gather

    (tmp_path / "a-file").write_text("x")
    for opts, message in [(ReportOptions(split="nope"), "--split 'nope': expected one of train, val, test"),
                          (ReportOptions(out_dir=str(tmp_path / "a-file")), "a-file is not a folder; expected a "
                                                                              "writable folder for the report")]:
        with pytest.raises(UserError, match=message):
            gather(str(tmp_path / "no-such-run"), opts)
    # an .onnx file's default folder (MODEL_report/) where a file of that name is: a FileExistsError traceback
    (tmp_path / "m_report").write_text("x")
    with pytest.raises(UserError, match=r"m_report: .*m_report is not a folder; expected a folder for the report "
                                        r"there, or --out-dir DIR"):
        gather(str(tmp_path / "m.onnx"), ReportOptions())
    # a folder name longer than the file system takes: an OSError traceback (after the whole benchmark there)
    with pytest.raises(UserError, match=r"a folder name there is longer than the file system takes \(300 bytes\)"):
        gather(str(tmp_path / "no-such-run"), ReportOptions(out_dir=str(tmp_path / ("L" * 300))))


def _entries(run, n, split="val"):
    """`n` real image entries as the data health scan names them ({path, split, label})."""
    folder = os.path.join(run["root"], "class_2")
    return [{"path": os.path.join(folder, name), "split": split, "label": "class_2"}
            for name in sorted(os.listdir(folder))[:n]]


def test_duplicate_and_leak_tables_show_thumbnails(run):
    """Exact groups, near pairs and leaks name their images in nested entries: each one is a thumbnail with
    its split and label as short text, not the entry printed as a dict."""
    a, b, c, d = _entries(run, 4)
    health = {"exact_duplicates": [{"items": [a, b]}],
              "near_duplicates": [{"a": c, "b": d, "distance": 3, "thumb_difference": 1.5}],
              "leaks": [{"kind": "near", "a": c, "b": {**d, "split": "train"}, "distance": 3}]}
    data = {"data_health": content.data_health(None, health), "mislabels": {"note": "not asked for"}}
    thumbs = build_mod.thumbnails(data, 10_000_000)
    assert set(thumbs) == {e["path"] for e in (a, b, c, d)}  # the collector finds the nested paths
    html = page_mod.health(data, {"thumbs": thumbs})
    sections = dict(zip(["exact_duplicates", "near_duplicates", "leaks"], html.split("<h3>")[1:]))
    assert {name: part.count("<img class=thumb") for name, part in sections.items()} == {
        "exact_duplicates": 2, "near_duplicates": 2, "leaks": 2}
    assert "path:" not in html and "split:" not in html
    assert f"{escape(d['path'])} (train, class_2)" in sections["leaks"]


def test_a_thumbnail_of_any_aspect_fits_a_small_box():
    """A 4000 x 20 image's thumbnail was drawn 48 px high and ~3000 px wide, pushing the table off-screen."""
    body = page_mod.STYLE.split(".thumb{", 1)[1].split("}", 1)[0]
    rule = dict(part.split(":", 1) for part in body.split(";") if part)
    assert rule.get("max-width") == rule.get("max-height") == "48px" and rule.get("object-fit") == "contain"


@pytest.mark.slow
def test_an_extreme_aspect_thumbnail_in_a_browser(run, tmp_path):
    """The same in chromium: every thumbnail's box stays within 48 x 48 px, the page no wider than the window."""
    browser_or_skip()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    wide = str(tmp_path / "wide.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 4000, 3), np.uint8)).save(wide)
    data = {"data_health": {"sections": {"small_images": [{"path": wide, "split": "train", "width": 4000,
                                                             "height": 20}]}}, "mislabels": {}}
    html = (f"<!doctype html><html><head><style>{page_mod.STYLE}</style></head><body>"
            f"{page_mod.health(data, {'thumbs': build_mod.thumbnails(data, 10_000_000)})}</body></html>")
    (tmp_path / "page.html").write_text(html)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 600})
            page.goto(f"file://{tmp_path / 'page.html'}")
            boxes = page.eval_on_selector_all("img.thumb", "els => els.map(e => [e.width, e.height])")
            scroll = page.evaluate("document.documentElement.scrollWidth")
        finally:
            browser.close()
    assert boxes and all(w <= 48 and h <= 48 for w, h in boxes), boxes
    assert scroll <= 1000


def test_mislabels_that_cannot_run_leave_a_note_and_the_rest_of_the_report(run, tmp_path, monkeypatch):
    """A class with a single training image: the out-of-fold probe can't run. The report is still written,
    the section saying why; the ranking itself (asked for alone) still raises."""
    from toolkit.train.mislabels import rank_mislabels

    def load_dataset(recipe, **kwargs):
        dataset = real_load_dataset(recipe, **kwargs)
        first = next(i for i, (_, label) in enumerate(dataset.train) if label == 2)
        dataset.train = [it for i, it in enumerate(dataset.train) if it[1] != 2 or i == first]
        return dataset

    real_load_dataset = outputs.load_dataset
    monkeypatch.setattr(outputs, "load_dataset", load_dataset)
    data = build_report(run["dir"], ReportOptions(mislabels=True, out_dir=str(tmp_path)))
    note = data["mislabels"]["note"]
    assert note.startswith("skipped: ") and "at least 2 training images" in note
    assert data["scores"]["n"] > 0 and "sections" in data["data_health"]
    assert escape(note) in read(data["files"]["html"])
    one_short = load_dataset(from_dict(tiny_recipe(run["tmp"], run["root"]), check_paths=False), quiet=True)
    with pytest.raises(UserError, match="at least 2 training images"):
        rank_mislabels(run["dir"], dataset=one_short)


def test_the_scans_leak_hint_points_at_the_reports_own_json(run, tmp_path, capsys):
    """Another --recipe's data: its leaks are in this report's report.json, not in the run folder's
    data_health.json (the data of training), where the scan's summary used to send the reader alone."""
    root = make_image_folder(tmp_path / "images", splits=["train", "val"])
    for split in ("train", "val"):
        os.rename(os.path.join(root, split, "class_0"), os.path.join(root, split, "<script>"))
    for i in range(7):  # 7 training images copied into val: 7 leaks, 5 listed by name
        shutil.copy(os.path.join(root, "train", "class_1", f"img_{i}.jpg"),
                    os.path.join(root, "val", "class_1", f"leak_{i}.jpg"))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, root))
    data = build_report(run["dir"], ReportOptions(recipe=recipe, out_dir=str(tmp_path / "out"), top=0))
    out = capsys.readouterr().out
    assert len(data["data_health"]["sections"]["leaks"]) == 7
    assert "and 2 more (listed in full under data_health: the run's data_health.json when training, the " \
           "report's report.json for toolkit report)" in out
