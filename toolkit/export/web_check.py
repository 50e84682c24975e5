"""The browser stage of `toolkit export --format web`: the folder's own page in headless chromium (playwright).

Checks, all before anything is published (a failure lists every check's numbers and writes nothing):
  fp32        WASM logits of model.onnx on the parity gate's inputs (real images + random tensors, batch 1, 2,
              7, 16) against PyTorch, with the FP32 gate's tolerances (toolkit/export/parity.py)
  int8        WASM logits of model.int8.onnx against ONNX Runtime CPU on the same file, same tolerances
  preprocess  the page's JavaScript decode + preprocessing on real validation images against Preprocess:
              the max pixel difference, and top-1 (ONNX Runtime CPU on both tensors) agreeing on >= 99%
Timed too, for the report (never judged): batch-1 img/s of WASM with 1 and N threads and of ORT CPU.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import statistics
import time

import numpy as np

from toolkit.artifacts import twin_path
from toolkit.errors import UserError
from toolkit.export.parity import FP32_ATOL, FP32_RTOL, Gate, parity_line
from toolkit.export.web_browser import launch_browser, open_page, ort_web_version
from toolkit.runtime.onnx_eval import cpu_session
from toolkit.runtime.serve.static_site import serving

MIN_PREPROCESS_AGREEMENT = 0.99

_RUN_JS = """async ([file, b64, shape, outputs]) => {
  const { ort, ready } = window.toolkitPage;
  window.toolkitSessions = window.toolkitSessions || {};
  const session = file === "model.onnx" ? (await ready).session : (window.toolkitSessions[file] ||=
      await ort.InferenceSession.create("./" + file, { executionProviders: ["wasm"] }));
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const out = await session.run({ input: new ort.Tensor("float32", new Float32Array(bytes.buffer), shape) });
  return outputs.map((name) => { const d = out[name].data; let s = "";
    const u = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode(...u.subarray(i, i + 8192));
    return btoa(s); });
}"""

_PIXELS_JS = """async (images) => {
  const { ready, toolkitWeb } = window.toolkitPage;
  const { meta } = await ready;
  const out = [];
  for (const b64 of images) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const { rgba, w, h, jpeg } = await toolkitWeb.decode(new Blob([bytes]));
    const px = toolkitWeb.pixels(rgba, w, h, meta.preprocess, jpeg);
    const x = toolkitWeb.normalize(px, meta.preprocess);
    let s = ""; for (let i = 0; i < px.length; i += 8192) s += String.fromCharCode(...px.subarray(i, i + 8192));
    const xb = new Uint8Array(x.buffer); let t = "";
    for (let i = 0; i < xb.length; i += 8192) t += String.fromCharCode(...xb.subarray(i, i + 8192));
    out.push([btoa(s), btoa(t)]);
  }
  return out;
}"""

_SPEED_JS = """async ([runs, crop]) => {
  const { ort, ready } = window.toolkitPage;
  const { session } = await ready;
  const x = new ort.Tensor("float32", new Float32Array(3 * crop * crop).fill(0.1), [1, 3, crop, crop]);
  for (let i = 0; i < 3; i++) await session.run({ input: x });
  const ms = [];
  for (let i = 0; i < runs; i++) { const t = performance.now(); await session.run({ input: x }); ms.push(performance.now() - t); }
  return { ms, threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated };
}"""


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


class BrowserSession:
    """ORT's run(outputs, feed) for a file of the served folder, run by the page's onnxruntime-web."""

    def __init__(self, page, file: str):
        self.page, self.file = page, file

    def run(self, outputs: list, feed: dict) -> list:
        x = np.ascontiguousarray(feed["input"], np.float32)
        got = self.page.evaluate(_RUN_JS, [self.file, _b64(x), list(x.shape), list(outputs)])
        return [np.frombuffer(base64.b64decode(g), np.float32).reshape(len(x), -1) for g in got]


def browser_stage(site: str, web):
    """The export stage that checks `site` in the browser; returns the report's "web" section."""
    def stage(job, staging, gate: Gate, data, why) -> dict:
        t = time.perf_counter()
        for kind, name in ((kind, os.path.basename(twin_path("model.onnx", kind))) for kind in ("fp32", "int8")):
            if kind in staging.files:  # a copy: publishing renames the staged file over it
                shutil.copyfile(staging.files[kind], os.path.join(site, name))
        checks: dict = {}
        with serving(site) as url, launch_browser(str(web.chromium)) as browser:
            page = open_page(browser, url, threads=1)
            checks["fp32"] = gate.measure(site, False, FP32_RTOL, lambda s: FP32_ATOL, BrowserSession(page, "model.onnx"))
            if "int8" in staging.files:
                checks["int8"] = _int8_check(page, gate, staging.files["int8"])
            checks["preprocess"] = _preprocess_check(page, job, data, why, int(web.check_images), staging.files["fp32"])
            speed = _speed(browser, page, url, job, staging.files["fp32"], int(web.bench_runs))
        section = _section(web, checks, speed, time.perf_counter() - t, ort_web_version(site))
        _judge(section, job.say)
        return section
    return stage


def unverified_stage(site: str, why_not: str):
    """The stage where no browser can run: says so, claims nothing."""
    def stage(job, staging, gate, data, why) -> dict:
        job.say(f"note: the web folder is UNVERIFIED in a browser: {why_not}")
        return {"verified": False, "why_unverified": why_not, "checks": {}, "ort_web": ort_web_version(site)}
    return stage


def _int8_check(page, gate: Gate, int8_path: str) -> dict:
    """The INT8 twin in WASM against ONNX Runtime CPU on the same file (the twin's own budget was judged by
    the export already), on the gate's inputs."""
    session = cpu_session(int8_path)
    ref = Gate(None, gate.cases, gate.probabilities)
    ref.ref_cache = {(i, False): np.asarray(session.run(["logits"], {"input": c["x"]})[0], np.float32)
                     for i, c in enumerate(gate.cases)}
    return ref.measure(int8_path, False, FP32_RTOL, lambda s: FP32_ATOL, BrowserSession(page, twin_path("model.onnx", "int8")))


def _image_bytes(source) -> bytes:
    """What the browser is given: the file's own bytes, or an in-memory image (digits, Fashion-MNIST) as PNG."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return f.read()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(source)).save(buf, "PNG")
    return buf.getvalue()


def _preprocess_check(page, job, data, why, limit: int, fp32_path: str) -> dict:
    """The page's decode + preprocessing against Preprocess on up to `limit` validation images."""
    if data is None:
        return {"ran": False, "why": f"no validation images ({why})"}
    items = (data.val or data.test or data.train)[:limit]
    pre = job.preprocess
    js_px, py_px, js_x = [], [], []
    for start in range(0, len(items), 16):
        chunk = items[start:start + 16]
        got = page.evaluate(_PIXELS_JS, [base64.b64encode(_image_bytes(s)).decode("ascii") for s, _ in chunk])
        for (source, _), (px, x) in zip(chunk, got):
            js_px.append(np.frombuffer(base64.b64decode(px), np.uint8).reshape(pre.crop, pre.crop, 3))
            js_x.append(np.frombuffer(base64.b64decode(x), np.float32).reshape(3, pre.crop, pre.crop))
            py_px.append(pre.pixels(source))
    if not py_px:
        return {"ran": False, "why": "the run's data has no images"}
    js_px, py_px, js_x = np.stack(js_px), np.stack(py_px), np.stack(js_x)
    diff = np.abs(js_px.astype(np.int16) - py_px.astype(np.int16))
    session = cpu_session(fp32_path)
    top = [np.concatenate([session.run(["logits"], {"input": x[i:i + 32]})[0].argmax(1) for i in range(0, len(x), 32)])
           for x in (js_x, pre.normalize(py_px))]
    agree = float((top[0] == top[1]).mean())
    return {"ran": True, "images": len(py_px), "top1_agreement": agree, "min_agreement": MIN_PREPROCESS_AGREEMENT,
            "max_pixel_diff": int(diff.max()), "mean_pixel_diff": float(diff.mean()),
            "images_exact": int((diff.reshape(len(diff), -1).max(1) == 0).sum()),
            "normalize_max_diff": float(np.abs(js_x - pre.normalize(js_px)).max()),
            "decode": pre.decode, "fit": pre.fit, "interpolation": pre.interpolation}


def _speed(browser, page, url: str, job, fp32_path: str, runs: int) -> dict:
    """Batch-1 img/s, median of `runs`: WASM with 1 thread and with N (this machine's cores, at most 4), and
    ORT CPU (its default threads) in the same run. Timings only: nothing is judged on them."""
    crop = job.preprocess.crop
    wasm = {}
    for threads in sorted({1, max(1, min(4, os.cpu_count() or 1))}):
        tab = page if threads == 1 else open_page(browser, url, threads)
        got = tab.evaluate(_SPEED_JS, [runs, crop])
        wasm[f"wasm_{got['threads']}t"] = {"img_s": 1000.0 / statistics.median(got["ms"]), "threads": got["threads"],
                                           "cross_origin_isolated": got["isolated"]}
    session = cpu_session(fp32_path)
    x = np.full((1, 3, crop, crop), 0.1, np.float32)
    for _ in range(3):
        session.run(["logits"], {"input": x})
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(["logits"], {"input": x})
        ms.append((time.perf_counter() - t) * 1000)
    wasm["ort_cpu"] = {"img_s": 1000.0 / statistics.median(ms), "threads": "default"}
    return {"batch": 1, "runs": runs, "runtimes": wasm, "load_average": list(os.getloadavg()),
            "cpus": os.cpu_count()}


def _section(web, checks: dict, speed: dict, seconds: float, ort_web: str) -> dict:
    pre = checks["preprocess"]
    summary = [f"browser fp32 vs PyTorch: {parity_line(checks['fp32'])}"]
    if "int8" in checks:
        summary.append(f"browser int8 vs ONNX Runtime CPU: {parity_line(checks['int8'])}")
    summary.append(f"page preprocessing vs Preprocess: top-1 agreement {pre['top1_agreement'] * 100:.1f}% on "
                   f"{pre['images']} images, max pixel difference {pre['max_pixel_diff']}/255" if pre["ran"] else
                   f"page preprocessing: NOT checked ({pre['why']})")
    summary.append("batch-1 img/s: " + ", ".join(f"{k} {v['img_s']:.1f}" for k, v in speed["runtimes"].items()) +
                   f" (load average {speed['load_average'][0]:.2f})")
    return {"verified": True, "browser": str(web.chromium), "ort_web": ort_web, "checks": checks, "speed": speed, "summary": summary,
            "preprocess_checked": pre["ran"], "webgpu": "not checked (headless chromium has no GPU adapter here)",
            "check_s": round(seconds, 1)}


def _judge(section: dict, say) -> None:
    """Every check's numbers when any fails (then nothing is written), else the summary lines."""
    checks, problems = section["checks"], []
    for kind in ("fp32", "int8"):
        p = checks.get(kind)
        if p is not None and (not p["close"] or p["top1_agreement"] < 1.0 or p.get("probabilities_match") is False):
            problems.append(f"{kind}: logits differ by up to {p['max_abs_diff']:.3g} (allowed rtol {p['rtol']:g}, "
                            f"atol {p['atol']:.3g}), top-1 agreement {p['top1_agreement'] * 100:.1f}%")
    pre = checks["preprocess"]
    if pre["ran"] and pre["top1_agreement"] < pre["min_agreement"]:
        problems.append(f"preprocess: top-1 agreement {pre['top1_agreement'] * 100:.1f}% (expected at least "
                        f"{pre['min_agreement'] * 100:g}%), max pixel difference {pre['max_pixel_diff']}/255")
    if problems:
        raise UserError("web check failed in chromium: " + "; ".join(problems) + "; every check: " +
                        " | ".join(section["summary"][:-1]) + "; nothing was written")
    for line in section["summary"]:
        say(f"web: {line}")
