"""`toolkit export --format web`: the page's JavaScript (metadata reader, Preprocess in integer arithmetic) run
in node against the Python originals (fast), the folder's checks before any work, serve-local --static's headers,
and (slow) the whole export verified in headless chromium."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiny_model
from toolkit.errors import UserError
from toolkit.export import web as web_mod
from toolkit.export import web_browser, web_check
from toolkit.export.formats import export_as
from toolkit.preprocess import Preprocess
from toolkit.runtime.serve.static_site import ISOLATION_HEADERS, serving, static_server

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node not installed (apt-get install nodejs)")
NODE_SCRIPT = """
import * as web from "./toolkit-web.mjs";
import { readFileSync, writeFileSync } from "node:fs";
const job = JSON.parse(readFileSync("job.json", "utf8"));
const out = { meta: web.readMetadata(readFileSync(job.model)), pixels: [] };
out.contract = web.contractOf(out.meta);
for (const img of job.images) {
  const rgba = Uint8Array.from(Buffer.from(img.rgba, "base64"));
  out.pixels.push(Buffer.from(web.pixels(rgba, img.w, img.h, img.pre)).toString("base64"));
}
out.scores = (job.scores || []).map(([logits, meta]) => web.scores(logits, meta, 2));
writeFileSync("out.json", JSON.stringify(out));
"""


def run_page_module(tmp_path, model: str, images: list, scores: list = ()) -> dict:
    """toolkit-web.js's readMetadata, contractOf, pixels and scores, run in node on `model`, RGBA `images` and
    [logits, metadata] `scores`."""
    shutil.copyfile(os.path.join(web_mod.PAGE_DIR, "toolkit-web.js"), tmp_path / "toolkit-web.mjs")
    (tmp_path / "run.mjs").write_text(NODE_SCRIPT)
    (tmp_path / "job.json").write_text(json.dumps({"model": model, "images": images, "scores": list(scores)}))
    subprocess.run([NODE, "run.mjs"], cwd=tmp_path, check=True, timeout=300)
    return json.loads((tmp_path / "out.json").read_text())


def photo(seed: int, size: tuple, alpha: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 7, 4 if alpha else 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 21, np.asarray(img).shape), 0, 255)
    return Image.fromarray(noisy.astype(np.uint8))


@needs_node
def test_metadata_reader_reads_what_onnx_wrote(tmp_path):
    import onnx

    model = write_tiny_model(tmp_path / "m.onnx", labels=["cat", "dög", "a\nb"], meta={"temperature": 1.5})
    got = run_page_module(tmp_path, model, [])
    want = {p.key: p.value for p in onnx.load(model).metadata_props}
    assert got["meta"] == want
    assert got["contract"]["labels"] == ["cat", "dög", "a\nb"] and got["contract"]["temperature"] == 1.5
    assert got["contract"]["preprocess"]["crop"] == 32 and got["contract"]["ood"] is None


@needs_node
def test_page_scores_apply_the_files_calibration(tmp_path):
    """softmax(logits / T), top-k, and the "unknown" answer (energy or max_prob against the threshold)."""
    model = write_tiny_model(tmp_path / "m.onnx")
    logits, labels = [2.0, 0.5, 3.0], ["a", "b", "c"]
    x = np.asarray(logits) / 2.0
    probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    energy = float(x.max() + np.log(np.exp(x - x.max()).sum()))
    metas = [{"labels": labels, "temperature": 2.0, "ood": {"score": "energy", "threshold": energy + 0.01}},
             {"labels": labels, "temperature": 2.0, "ood": {"score": "max_prob", "threshold": probs.max() - 0.01}},
             {"labels": labels, "temperature": None, "ood": None}]
    got = run_page_module(tmp_path, model, [], [[logits, m] for m in metas])["scores"]
    assert [t["label"] for t in got[0]["top"]] == ["c", "a"]
    assert np.allclose([t["score"] for t in got[0]["top"]], sorted(probs)[::-1][:2])
    assert got[0]["accepted"] is False and abs(got[0]["ood_score"] - energy) < 1e-9
    assert got[1]["accepted"] is True and abs(got[1]["ood_score"] - probs.max()) < 1e-9
    # the page's headline in the Predictor's words (it showed "unknown: below the file's threshold" in its status)
    from toolkit.runtime.predictor import Prediction

    for page, accepted in zip(got, (False, True, True)):
        top = [{"label": t["label"], "score": t["score"], "index": 0} for t in page["top"]]
        assert page["answer"] == Prediction(top, accepted).text()
    assert got[0]["answer"] == f"unknown (best guess: c {probs.max():.2f})"
    plain = np.exp(np.asarray(logits) - 3.0) / np.exp(np.asarray(logits) - 3.0).sum()
    assert got[2]["accepted"] is True and abs(got[2]["top"][0]["score"] - plain.max()) < 1e-9


@needs_node
def test_page_preprocessing_equals_preprocess(tmp_path):
    """Pillow's resampling redone in JS: every fit and filter, wide, tall, thin (the box path) and tiny images,
    and alpha composited onto white, give Preprocess's pixels: exactly, except where Pillow 13 runs the vertical
    pass first (some tall images), there within 4/255."""
    model = write_tiny_model(tmp_path / "m.onnx")
    sizes = [(300, 200), (200, 300), (64, 64), (17, 90), (2000, 40), (40, 2100), (13, 11)]
    cases, images = [], []
    for fit in ("crop", "letterbox", "squash"):
        for interpolation in ("bilinear", "bicubic", "lanczos"):
            for i, size in enumerate(sizes):
                pre = Preprocess(resize=72, crop=64, interpolation=interpolation, fit=fit, decode="full")
                img = photo(i, size, alpha=i == 2)
                rgba = np.asarray(img.convert("RGBA"))
                images.append({"rgba": base64.b64encode(rgba.tobytes()).decode(), "w": size[0], "h": size[1],
                               "pre": pre.to_dict() | {"mean": list(pre.mean), "std": list(pre.std)}})
                cases.append((pre, img))
    got = run_page_module(tmp_path, model, images)
    exact = 0
    for (pre, img), px in zip(cases, got["pixels"]):
        want = pre.pixels(img)
        js = np.frombuffer(base64.b64decode(px), np.uint8).reshape(want.shape)
        diff = int(np.abs(js.astype(int) - want).max())
        assert diff <= 4, (pre.fit, pre.interpolation, img.size, img.mode, diff)
        exact += diff == 0
        if img.width >= img.height:  # never the vertical pass first
            assert diff == 0, (pre.fit, pre.interpolation, img.size, img.mode, diff)
    assert exact >= 0.7 * len(cases), exact


# ------------------------------------------------------------------------------------------------
# Before any work: what the page cannot run, another format's flags; serve-local --static

@pytest.mark.parametrize("fields, message", [
    ({"raw_input": True}, "--raw-input: the web page preprocesses in JavaScript"),
    ({"fp16": True}, "--fp16: the browser check covers the FP32 file and the INT8 twin only"),
    ({"dynamic_hw": True}, "--dynamic-hw: the page always feeds crop x crop"),
    ({"check_images": 0}, "--check-images 0: expected a whole number, at least 1"),
    ({"out": "site.onnx"}, "with --format web, expected a folder for the site"),
    ({"out": "<a folder of other files>"}, "a folder that is not an earlier web export"),
    ({"out": "<under a file>"}, "a-file is not a folder; expected a folder the site can be written in"),
])
def test_what_the_page_cannot_run_fails_before_any_work(tmp_path, monkeypatch, fields, message):
    monkeypatch.setattr(web_mod, "vendor_ort", lambda version: pytest.fail("work started before the checks"))
    if fields.get("out") == "<a folder of other files>":
        (tmp_path / "photos").mkdir()
        (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
        fields = {"out": str(tmp_path / "photos")}
    if fields.get("out") == "<under a file>":   # it named an internal probe.onnx, with "File exists"
        (tmp_path / "a-file").write_text("x")
        fields = {"out": str(tmp_path / "a-file" / "site")}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        web_mod.export_web(run=str(tmp_path / "no-run"), exports_dir=str(tmp_path / "e"), **fields)
    assert not (tmp_path / "e").exists()


def test_format_registry_errors():
    with pytest.raises(UserError, match=r"--format 'tflite2': expected onnx \(one file and its twins\), triton"):
        export_as("tflite2", None, {})
    with pytest.raises(UserError, match="--check-images goes with --format web"):
        export_as("onnx", None, {"check_images": 5})
    with pytest.raises(UserError, match="--instances goes with --format triton"):
        export_as("web", None, {"instances": 2})


def test_cli_export_web_refuses_raw_input_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "toolkit", "export", str(tmp_path / "run"), "--format", "web",
                           "--raw-input"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: --raw-input: the web page preprocesses in JavaScript" in done.stderr


def test_static_server_sends_isolation_headers_and_types(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "a.mjs").write_text("export {}")
    (tmp_path / "b.wasm").write_bytes(b"\0asm")
    with serving(str(tmp_path)) as url:
        for name, kind in (("index.html", "text/html"), ("a.mjs", "text/javascript"), ("b.wasm", "application/wasm")):
            with urllib.request.urlopen(url + name) as r:
                assert r.headers["Content-Type"].startswith(kind)
                for key, value in ISOLATION_HEADERS.items():
                    assert r.headers[key] == value


def test_static_server_wants_a_site_folder(tmp_path):
    with pytest.raises(UserError, match="expected a folder with an index.html"):
        static_server(str(tmp_path))


def test_static_serving_refuses_model_options_and_lists_no_folder(tmp_path, monkeypatch, capsys):
    """`serve-local m.onnx --static DIR --engine openvino` served the folder and ignored the rest without a word;
    --host 0.0.0.0 gave no warning; a sub-folder without index.html was listed."""
    from toolkit.runtime.serve import server
    from toolkit.runtime.serve.options import ServeOptions

    problems = ServeOptions(model="m.onnx", static=str(tmp_path), engine="openvino", max_batch=4).problems()
    assert problems == ["static: serves a folder, no model; expected no max_batch, model, engine with it (they go "
                        "with a model)"]
    assert ServeOptions(static=str(tmp_path), host="0.0.0.0", port=0).problems() == []
    monkeypatch.setattr(server, "serve_static", lambda *args: None)
    server.serve(ServeOptions(static=str(tmp_path), host="0.0.0.0", port=0))
    assert "warning: listening on" in capsys.readouterr().err
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "ort").mkdir()
    (tmp_path / "ort" / "x.mjs").write_text("export {}")
    with serving(str(tmp_path)) as url:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "ort/")
        assert info.value.code == 404


# ------------------------------------------------------------------------------------------------
# The whole export, checked in headless chromium (slow)

def _browser_or_skip():
    reason = web_mod.browser_missing(web_mod.DEFAULT_CHROMIUM)
    cached = os.path.isdir(os.path.join(web_mod.cache_dir(), f"onnxruntime-web-{web_mod.ORT_WEB_VERSION}"))
    reason = reason or (None if cached or shutil.which("npm") else "npm not installed (apt-get install npm)")
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"web export test cannot run in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def web_run(tmp_path_factory):
    from test_export import make_images, make_run

    root = tmp_path_factory.mktemp("web")
    return root, make_run(root / "runs", make_images(root / "data"), name="flowers", head="gap")


@pytest.mark.slow
def test_web_export_verified_in_chromium(web_run):
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    from toolkit.runtime.predictor import Predictor

    root, run = web_run
    site = root / "site"
    report = web_mod.export_web(run=run, out=str(site), int8=True, int8_budget=100, exports_dir=str(root / "e"),
                                quiet=True, bench_runs=2)
    assert sorted(os.listdir(site)) == ["index.html", "model.int8.onnx", "model.onnx", "model.report.json", "ort",
                                        "toolkit-web.js", "web.json"]
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-web")]
    web = json.loads((site / "web.json").read_text())
    assert web["verified"] and web == json.loads(json.dumps(report["web"], default=str))
    assert web["checks"]["fp32"]["close"] and web["checks"]["fp32"]["real_inputs"] > 0
    assert web["checks"]["int8"]["top1_agreement"] == 1.0
    assert web["checks"]["preprocess"]["ran"] and web["checks"]["preprocess"]["top1_agreement"] >= 0.99
    assert web["speed"]["runtimes"]["wasm_1t"]["img_s"] > 0 and "ort_cpu" in web["speed"]["runtimes"]
    # The page itself, as a user opens it: an image dropped in gets the Predictor's answer.
    image = root / "data" / "val" / os.listdir(root / "data" / "val")[0]
    image = image / sorted(os.listdir(image))[0]
    want = Predictor(str(site / "model.onnx"), device="cpu").predict(str(image), top_k=1)[0]["label"]
    with sync_playwright() as pw, serving(str(site)) as url:
        browser = pw.chromium.launch(executable_path=web_mod.DEFAULT_CHROMIUM, args=web_browser.BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#model")).to_contain_text("3 labels", timeout=60000)
            page.set_input_files("#file", str(image))
            expect(page.locator("#predictions li .label").first).to_have_text(want, timeout=60000)
            assert page.evaluate("self.crossOriginIsolated")
            # ?model=int8: the INT8 twin the folder ships (the page only ever loaded model.onnx)
            want8 = Predictor(str(site / "model.int8.onnx"), device="cpu").predict(str(image), top_k=1)[0]["label"]
            page.goto(url + "?model=int8")
            expect(page.locator("#model")).to_contain_text("model.int8.onnx: 3 labels", timeout=60000)
            page.set_input_files("#file", str(image))
            expect(page.locator("#predictions li .label").first).to_have_text(want8, timeout=60000)
        finally:
            browser.close()


@pytest.mark.slow
def test_failed_browser_check_writes_nothing_and_lists_every_check(web_run, monkeypatch):
    _browser_or_skip()
    root, run = web_run
    monkeypatch.setattr(web_check, "MIN_PREPROCESS_AGREEMENT", 1.01)  # a bar no page can pass
    with pytest.raises(UserError) as failed:
        web_mod.export_web(run=run, out=str(root / "failed"), exports_dir=str(root / "e"), quiet=True, bench_runs=1)
    message = str(failed.value)
    assert "preprocess: top-1 agreement 100.0% (expected at least 101%)" in message
    assert "browser fp32 vs PyTorch: max abs diff" in message and "nothing was written" in message
    assert not (root / "failed").exists() and not [n for n in os.listdir(root) if n.startswith(".tmp-web")]


@pytest.mark.slow
def test_no_browser_writes_the_folder_marked_unverified(web_run):
    root, run = web_run
    if not (os.path.isdir(os.path.join(web_mod.cache_dir(), f"onnxruntime-web-{web_mod.ORT_WEB_VERSION}"))
            or shutil.which("npm")):
        pytest.skip("npm not installed (apt-get install npm)")
    site = root / "unverified"
    report = web_mod.export_web(run=run, out=str(site), exports_dir=str(root / "e"), quiet=True,
                                chromium=str(root / "no-chromium"))
    assert report["web"]["verified"] is False and "no browser at" in report["web"]["why_unverified"]
    assert report["web"]["checks"] == {} and "unverified" in (site / "UNVERIFIED.txt").read_text()
    assert json.loads((site / "web.json").read_text())["verified"] is False


def test_npm_failure_says_npm_s_reason():
    """`--ort-web-version 0.0.0-nope` said `npm pack ... failed: ` and nothing after it (npm ran --silent)."""
    import subprocess

    done = subprocess.CompletedProcess([], 1, "", "npm error code ETARGET\nnpm error notarget No matching version "
                                       "found for onnxruntime-web@0.0.0-nope.\nnpm error A complete log of this run "
                                       "can be found in: /root/.npm/_logs/x.log\n")
    assert web_mod._npm_reason(done) == ("code ETARGET notarget No matching version found for "
                                         "onnxruntime-web@0.0.0-nope.")
    assert web_mod._npm_reason(subprocess.CompletedProcess([], 7, "", "")) == "exit status 7, no message"
