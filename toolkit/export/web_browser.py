"""Headless chromium on a web folder (playwright, Debian's chromium: no browser download), shared by the export's
browser check (web_check.py) and `toolkit benchmark --web` (web_bench.py). Light: playwright loads when a
browser starts, torch never."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Optional

from toolkit.errors import UserError

DEFAULT_CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
LOAD_TIMEOUT_MS = 120_000


def browser_missing(chromium: str) -> Optional[str]:
    """Why the folder cannot be run in a browser here, or None."""
    if not os.path.isfile(chromium) or not os.access(chromium, os.X_OK):
        return f"no browser at {chromium} (apt-get install chromium, or --chromium PATH)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install 'toolkit[web]')"
    return None


@contextlib.contextmanager
def launch_browser(chromium: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=BROWSER_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, threads: int):
    """The folder's index.html with `threads` WASM threads, its model loaded (a load error is a UserError).
    `browser`: a playwright Browser or BrowserContext."""
    page = browser.new_page()
    errors: list = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}index.html?threads={threads}")
    page.wait_for_function("window.toolkitPage !== undefined", timeout=LOAD_TIMEOUT_MS)
    problem = page.evaluate("window.toolkitPage.ready.then(() => null, (e) => String(e && e.message || e))")
    if problem or errors:
        raise UserError(f"the web page could not load its model in chromium: {problem or errors[0]}; "
                        "nothing was written")
    return page


def ort_web_version(site: str) -> str:
    """The onnxruntime-web version vendored into the folder."""
    with open(os.path.join(site, "ort", "package.json")) as f:
        return json.load(f)["version"]
