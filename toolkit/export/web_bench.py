"""`toolkit benchmark --web FOLDER`: a web export's own page in headless chromium, timed beside ONNX Runtime.

One BrowserBackend (toolkit.runtime.benchmark.Backend) per WASM thread count (1, and the benchmark's threads)
and file (model.onnx; model.int8.onnx for --precision int8): a tab of one chromium (web_browser.py, as the
export's browser check drives it) on the folder served with COOP/COEP (static_site.serving), so that threads
are obtained; each tab reads back what it got (ort.env.wasm.numThreads, crossOriginIsolated) into its record.

How it is timed: the rounds time each call from Python, a round trip through playwright (page.evaluate ->
session.run on the batch already in the page -> back). The page also times session.run alone with
performance.now(): session_options.in_page_p50_ms holds its median per batch size (every call, warm-up
included), so the round trip's share can be read off.
"""
from __future__ import annotations

import base64
import bisect
import contextlib
import os
import time
from dataclasses import dataclass

import numpy as np

from toolkit.artifacts import twin_path
from toolkit.export.web_browser import browser_missing, launch_browser, open_page, ort_web_version
from toolkit.runtime.benchmark.records import BackendRecord
from toolkit.runtime.serve.static_site import serving

TIMING = ("round trip from Python through playwright: page.evaluate -> session.run on the batch already in the "
          "page -> back; in_page_p50_ms: performance.now() around session.run alone, median per batch size")

_SETUP_JS = """async (file) => {
  const { ort, ready } = window.toolkitPage;
  const session = file === "model.onnx" ? (await ready).session
      : await ort.InferenceSession.create("./" + file, { executionProviders: ["wasm"] });
  window.toolkitBench = { session };
  return { threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated };
}"""

_INPUT_JS = """([b64, shape]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  window.toolkitBench.x = new window.toolkitPage.ort.Tensor("float32", new Float32Array(bytes.buffer), shape);
}"""

_CALL_JS = """async () => {
  const b = window.toolkitBench, t = performance.now();
  await b.session.run({ input: b.x });
  return performance.now() - t;
}"""


@dataclass
class Browser:
    """The served folder and the chromium its tabs run in."""

    site: str
    url: str
    chromium: object  # playwright's Browser
    ort_web: str  # the vendored onnxruntime-web version


@contextlib.contextmanager
def browser_for(site: str, chromium: str):
    """The folder served with COOP/COEP and a headless chromium, for the block."""
    with serving(site) as url, launch_browser(chromium) as browser:
        yield Browser(site, url, browser, ort_web_version(site))


def _put_input(page, x: np.ndarray) -> None:
    x = np.ascontiguousarray(x, np.float32)
    page.evaluate(_INPUT_JS, [base64.b64encode(x.tobytes()).decode("ascii"), list(x.shape)])


class BrowserBackend:
    """One file of the folder in one tab with `threads` WASM threads asked for."""

    modes = ("model",)
    may_fail = False

    def __init__(self, browser: Browser, file: str, threads: int, precision: str, preprocess, flops: int):
        self.browser, self.file, self.threads, self.preprocess = browser, file, threads, preprocess
        t = time.perf_counter()
        self.page = open_page(browser.chromium, browser.url, threads)
        got = self.page.evaluate(_SETUP_JS, file)
        self.session_s = time.perf_counter() - t
        self.in_page: dict = {}  # batch -> in-page ms of every call, sorted
        path = os.path.join(browser.site, file)
        shortfall = "" if got["threads"] >= threads else f" (asked {threads}: the page is not cross-origin isolated)"
        self.record = BackendRecord(
            key=f"onnxruntime-web-{threads}t/cpu/{precision}", backend="onnxruntime-web",
            engine=f"onnxruntime-web {browser.ort_web}", engine_device=f"chromium {browser.chromium.version}",
            inference_precision="fp32", device="cpu", precision=precision,
            provider=f"wasm, {got['threads']} thread{'s' if got['threads'] != 1 else ''}{shortfall}",
            providers=["wasm"], file=path, file_bytes=os.path.getsize(path), flops_per_image=flops, flops_by_op={},
            provider_options={},
            session_options={"threads_asked": threads, "threads": got["threads"],
                             "cross_origin_isolated": got["isolated"], "timing": TIMING, "in_page_p50_ms": {}})

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: dict) -> None:
        _put_input(self.page, self.preprocess.normalize(pixels))
        self.batch, self.times = str(batch), self.in_page.setdefault(batch, [])

    def run(self, mode: str) -> None:
        bisect.insort(self.times, self.page.evaluate(_CALL_JS))
        self.record.session_options["in_page_p50_ms"][self.batch] = round(self.times[len(self.times) // 2], 4)

    def decode_share(self, mode: str):
        return None

    def cold_start(self, threads: int, sizes: tuple) -> dict:
        """Page load to a ready session, then the first call per batch size (ascending), in a fresh browser
        context (its own HTTP cache) of the same chromium: not a fresh process, so no peak RSS."""
        context = self.browser.chromium.new_context()
        try:
            t = time.perf_counter()
            page = open_page(context, self.browser.url, self.threads)
            page.evaluate(_SETUP_JS, self.file)
            out = {"session_s": round(time.perf_counter() - t, 4), "first_inference_s": {}, "peak_rss_mb": {},
                   "isolated": False, "how": "a fresh browser context of the benchmark's chromium"}
            crop = self.preprocess.crop
            for n in sorted(sizes):
                _put_input(page, np.zeros((n, 3, crop, crop), np.float32))
                t = time.perf_counter()
                page.evaluate(_CALL_JS)
                out["first_inference_s"][str(n)] = round(time.perf_counter() - t, 4)
            return out
        finally:
            context.close()


def web_rows(stack: contextlib.ExitStack, site: str, chromium: str, precisions: list, threads: int, preprocess,
             flops: int) -> tuple[list, list]:
    """([BrowserBackend] for WASM 1 and `threads` threads x the folder's files of `precisions`, [notes]); the
    browser and the server join `stack`. No browser or playwright here: no backends, one note saying why."""
    why = browser_missing(chromium)
    if why:
        return [], [f"no onnxruntime-web rows: {why}"]
    browser = stack.enter_context(browser_for(site, chromium))
    files = {p: twin_path("model.onnx", p) for p in ("fp32", "int8")}
    there = [p for p in precisions if p in files and os.path.isfile(os.path.join(site, files[p]))]
    notes = [f"no onnxruntime-web {p} rows: {site} has no {files[p]}" for p in precisions
             if p in files and p not in there]
    backends = [BrowserBackend(browser, files[p], n, p, preprocess, flops) for p in there for n in sorted({1, threads})]
    return backends, notes + [f"onnxruntime-web rows: {TIMING} (backends[].session_options)"] * bool(backends)
