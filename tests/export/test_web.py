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
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiny_model
from toolkit.errors import UserError
from toolkit.export import web as web_mod
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
writeFileSync("out.json", JSON.stringify(out));
"""


def run_page_module(tmp_path, model: str, images: list) -> dict:
    """toolkit-web.js's readMetadata, contractOf and pixels, run in node on `model` and RGBA `images`."""
    shutil.copyfile(os.path.join(web_mod.PAGE_DIR, "toolkit-web.js"), tmp_path / "toolkit-web.mjs")
    (tmp_path / "run.mjs").write_text(NODE_SCRIPT)
    (tmp_path / "job.json").write_text(json.dumps({"model": model, "images": images}))
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
