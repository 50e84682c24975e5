"""`toolkit export --format web`: a self-contained static folder that classifies in the browser.

    <folder>/index.html            the drop-an-image page
    <folder>/toolkit-web.js        metadata reader (metadata_props from the protobuf), Preprocess in JS, top-k
    <folder>/model.onnx            the verified export (+ model.int8.onnx with --int8), unchanged
    <folder>/model.report.json     the export report, with the browser's numbers under "web"
    <folder>/web.json              what was verified, and how (or UNVERIFIED.txt where no browser ran)
    <folder>/ort/                  onnxruntime-web (WASM build), vendored from the npm package at export time

Stages: the usual export (plan, graph, parity gate, twins), then the browser stage (toolkit/export/web_check.py:
WASM logits against PyTorch, the INT8 twin against ONNX Runtime CPU, the page's own preprocessing against
Preprocess), all before anything is published; the folder is built beside its final place and renamed in.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Optional

from toolkit.artifacts import atomic_write, folder_problem
from toolkit.errors import UserError
from toolkit.export.options import ExportOptions
from toolkit.export.staging import remove_stale_temps
from toolkit.export.web_browser import DEFAULT_CHROMIUM, browser_missing

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web_page")
PAGE_FILES = ("index.html", "toolkit-web.js")
# The onnxruntime-web files the page loads: the WASM-only ES module build and its threaded SIMD runtime.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_WEB_VERSION = "1.31.1"


@dataclass
class WebOptions:
    """How `toolkit export --format web` builds and checks the folder."""

    folder: Optional[str] = None  # the site folder (--out); None = exports_dir/<name>-web
    ort_web_version: str = ORT_WEB_VERSION  # the onnxruntime-web npm version vendored into the folder
    check_images: int = 200  # validation images the page's own preprocessing is checked on against Preprocess
    chromium: str = DEFAULT_CHROMIUM  # the browser that verifies the folder (headless, through playwright)
    bench_runs: int = 20  # batch-1 inferences timed per runtime (WASM 1 and N threads, ORT CPU) for the report


def check_web(web: WebOptions, export_fields: dict) -> None:
    """One clear error, before any work, for what the page cannot run or the options that make no sense."""
    problems = []
    for key, value in (("--check-images", web.check_images), ("--bench-runs", web.bench_runs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{key} {value!r}: expected a whole number, at least 1")
    if export_fields.get("raw_input"):
        problems.append("--raw-input: the web page preprocesses in JavaScript and feeds the float32 NCHW file; "
                        "drop --raw-input with --format web")
    if export_fields.get("fp16"):
        problems.append("--fp16: the browser check covers the FP32 file and the INT8 twin only; drop --fp16 "
                        "with --format web")
    if export_fields.get("dynamic_hw"):
        problems.append("--dynamic-hw: the page always feeds crop x crop; drop --dynamic-hw with --format web")
    folder = web.folder
    if folder is not None and (str(folder).endswith(".onnx") or os.path.isfile(str(folder))):
        problems.append(f"--out {folder}: with --format web, expected a folder for the site")
    elif folder is not None and os.path.isdir(str(folder)) and os.listdir(str(folder)) \
            and not os.path.isfile(os.path.join(str(folder), "index.html")):
        problems.append(f"--out {folder}: a folder that is not an earlier web export; expected a new or empty "
                        "folder (an earlier web export there is replaced)")
    if problems:
        raise UserError("\n".join(problems))


def cache_dir() -> str:
    return os.environ.get("TOOLKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "toolkit")


def vendor_ort(version: str) -> str:
    """The folder of onnxruntime-web `version`'s files (ORT_FILES, package.json), from the cache, else `npm pack`."""
    target = os.path.join(cache_dir(), f"onnxruntime-web-{version}")
    if all(os.path.isfile(os.path.join(target, f)) for f in (*ORT_FILES, "package.json")):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"--format web vendors onnxruntime-web {version} from npm, and npm is not installed "
                        f"(apt-get install npm); or put {', '.join(ORT_FILES)} from its dist/ in {target}")
    os.makedirs(cache_dir(), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".tmp-ort-web-", dir=cache_dir())
    try:
        # --loglevel error, not --silent: --silent hid npm's reason too ("failed: " and nothing after it)
        done = subprocess.run([npm, "pack", f"onnxruntime-web@{version}", "--pack-destination", work, "--loglevel",
                               "error"], capture_output=True, text=True, timeout=600)
        tgz = [f for f in os.listdir(work) if f.endswith(".tgz")]
        if done.returncode != 0 or not tgz:
            raise UserError(f"npm pack onnxruntime-web@{version} failed: {_npm_reason(done)}; expected a published "
                            "onnxruntime-web version (npm view onnxruntime-web versions) and the npm registry in reach")
        unpacked = os.path.join(work, "files")
        os.makedirs(unpacked)
        _extract(os.path.join(work, tgz[0]), unpacked, version)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _npm_reason(done: subprocess.CompletedProcess) -> str:
    """npm's own words for a failure: its `npm error` lines, less the debug-log pointer."""
    lines = [line.removeprefix("npm error").strip() for line in (done.stderr or done.stdout or "").splitlines()
             if line.strip() and "complete log of this run" not in line]
    return " ".join(lines)[:300] or f"exit status {done.returncode}, no message"


def _extract(tgz: str, into: str, version: str) -> None:
    """ORT_FILES and package.json out of the npm tarball (nothing else, no paths from it)."""
    wanted = {f"package/dist/{f}": f for f in ORT_FILES} | {"package/package.json": "package.json"}  # (MIT: in it)
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                with tar.extractfile(member) as src, open(os.path.join(into, wanted[member.name]), "wb") as dst:
                    shutil.copyfileobj(src, dst)
    missing = [name for name in wanted.values() if not os.path.isfile(os.path.join(into, name))]
    if missing:
        raise UserError(f"onnxruntime-web {version} from npm lacks {', '.join(missing)}; pick another "
                        "--ort-web-version")
    with open(os.path.join(into, "package.json")) as f:
        got = json.load(f).get("version")
    if got != version:
        raise UserError(f"npm gave onnxruntime-web {got}, expected {version}")


def write_page(site: str, ort_dir: str) -> None:
    """The page, its module and the vendored runtime into `site` (the model files are the export's)."""
    for name in PAGE_FILES:
        shutil.copyfile(os.path.join(PAGE_DIR, name), os.path.join(site, name))
    os.makedirs(os.path.join(site, "ort"), exist_ok=True)
    for name in (*ORT_FILES, "package.json"):
        shutil.copyfile(os.path.join(ort_dir, name), os.path.join(site, "ort", name))


def export_web(run=None, web: Optional[WebOptions] = None, **fields) -> dict:
    """Export a run (every gate of a plain export), check the folder in headless chromium, publish it.

    Keyword arguments are ExportOptions or WebOptions fields (`out` is the folder). Returns the export report;
    its "web" section holds the browser's numbers, or verified: false and why."""
    # here, not at the top: WebOptions stays importable without torch (`toolkit export --help` on the base install)
    from toolkit.export.pipeline import export_run
    from toolkit.export.web_check import browser_stage, unverified_stage

    names = {f.name for f in dataclasses.fields(WebOptions)}
    fields = {("folder" if k == "out" else k): v for k, v in fields.items()}
    web = dataclasses.replace(web or WebOptions(), **{k: v for k, v in fields.items() if k in names})
    options = ExportOptions.of(run, **{k: v for k, v in fields.items() if k not in names})
    check_web(web, dataclasses.asdict(options))
    folder = str(web.folder) if web.folder else None
    parent = os.path.dirname(os.path.abspath(folder)) if folder else os.path.abspath(options.exports_dir)
    if problem := folder_problem(parent):   # before npm and the export: a file in the way, a read-only folder
        raise UserError(f"--out {folder or parent}: {problem}; expected a folder the site can be written in")
    ort_dir = vendor_ort(str(web.ort_web_version))
    why_not = browser_missing(str(web.chromium))
    remove_stale_temps(parent, (lambda _line: None) if options.quiet else print)  # left by a killed export
    os.makedirs(parent, exist_ok=True)
    site = tempfile.mkdtemp(prefix=f".tmp-web-pid{os.getpid()}-", dir=parent)
    try:
        write_page(site, ort_dir)
        stage = unverified_stage(site, why_not) if why_not else browser_stage(site, web)
        report = export_run(options, out=os.path.join(site, "model.onnx"), list_files=False,
                            stages=(("web", stage),))
        final = folder or os.path.join(parent, f"{report['name']}-web")
        report["web"]["folder"] = final
        _write_notes(site, report)
        _publish_folder(site, final)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    if not options.quiet:
        _say_site(report, final)
    return report


def _write_notes(site: str, report: dict) -> None:
    """web.json (what the folder is and what was verified) and, unverified, UNVERIFIED.txt; the report's
    paths point into the final folder."""
    web = report["web"]
    atomic_write(os.path.join(site, "web.json"), json.dumps(web, indent=2, default=str) + "\n")
    if not web["verified"]:
        atomic_write(os.path.join(site, "UNVERIFIED.txt"),
                     f"unverified: {web['why_unverified']}\nThe ONNX file passed the export's gates against "
                     "PyTorch (ONNX Runtime CPU); the page itself was never run in a browser.\n")
    rel = {k: os.path.join(web["folder"], os.path.basename(v["path"])) for k, v in report["files"].items()}
    for kind, path in rel.items():
        report["files"][kind]["path"] = path
    report["model"], report["report"] = rel["fp32"], os.path.join(web["folder"], "model.report.json")
    atomic_write(os.path.join(site, "model.report.json"), json.dumps(report, indent=2, default=str) + "\n")


def _publish_folder(site: str, final: str) -> None:
    """Rename the finished site into place; an old folder there is swapped out, then removed."""
    os.chmod(site, 0o755)
    old = None
    if os.path.exists(final):
        if not os.path.isfile(os.path.join(final, "index.html")) and os.listdir(final):
            raise UserError(f"--out {final}: a folder that is not an earlier web export; expected a new or "
                            "empty folder")
        old = tempfile.mkdtemp(prefix=".old-web-", dir=os.path.dirname(os.path.abspath(final)))
        os.replace(final, os.path.join(old, "site"))
    os.replace(site, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _say_site(report: dict, final: str) -> None:
    web = report["web"]
    print(f"wrote {final.rstrip(os.sep) or final}{os.sep} (index.html, toolkit-web.js, model.onnx"
          f"{', model.int8.onnx' if 'int8' in report['files'] else ''}, onnxruntime-web {web['ort_web']})")
    if web["verified"]:
        for line in web["summary"]:
            print(f"  {line}")
    else:
        print(f"  UNVERIFIED in a browser: {web['why_unverified']} (UNVERIFIED.txt says so in the folder)")
    print(f"serve it: toolkit serve-local --static {final}   (COOP/COEP headers: WebAssembly threads)")
