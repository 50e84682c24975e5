"""Predictor, provider truth and `toolkit predict` (toolkit/runtime/predictor.py, predict.py, session.py).

Most models are tiny conv nets written with onnx.helper and the ONNX file contract (conftest.write_tiny_model),
so these tests run on the base install without torch. The parity test builds a VGG11 with the
global-average-pool head at 32 px (toolkit.train.model), exports it with torch.onnx and compares it with
PyTorch; it skips where torch is missing.
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_metadata, write_tiny_model
from toolkit import contract
from toolkit.errors import UserError
from toolkit.runtime.cold_start import time_cold_start
from toolkit.runtime.predict import collect_images, predict_command
from toolkit.runtime.predictor import Predictor
from toolkit.preprocess import ImageError, Preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = ["daisy", "rose", "tulip", "sunflower"]
PRE = Preprocess(resize=40, crop=32, interpolation="bilinear")

onnx = pytest.importorskip("onnx")


# ------------------------------------------------------------------------------------------
# Fixtures: models and images
# ------------------------------------------------------------------------------------------

def _with_probabilities(path, out):
    """The model at `path` plus a `probabilities` output: softmax(logits / 2), so it is distinguishable
    from softmax(logits)."""
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(path)
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(2.0, np.float32), "temperature"))
    m.graph.node.extend([helper.make_node("Div", ["logits", "temperature"], ["scaled"]),
                         helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=1)])
    m.graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(LABELS)]))
    meta = contract.decode({p.key: p.value for p in m.metadata_props})
    contract.write(m, dict(meta, outputs=["logits", "probabilities"]))
    onnx.save(m, str(out))
    return str(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny toolkit exports (no torch): fp32, raw-input (uint8 NHWC), with probabilities, and foreign
    (no toolkit metadata). Same weights in all of them."""
    d = tmp_path_factory.mktemp("models")
    resize = {"preprocess": PRE.to_dict()}
    fp32 = write_tiny_model(d / "flowers.onnx", labels=LABELS, meta=resize)
    return {
        "fp32": fp32,
        "raw": write_tiny_model(d / "flowers.raw.onnx", labels=LABELS, raw=True, meta=resize),
        "probs": _with_probabilities(fp32, d / "flowers.probs.onnx"),
        "foreign": write_tiny_model(d / "foreign.onnx", labels=LABELS, meta=dict.fromkeys(tiny_metadata())),
    }


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory):
    """(net, path): a VGG11 (toolkit.train.model) exported with torch.onnx, with the contract's metadata."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    try:
        from toolkit.train.model import build_model
        net = build_model("vgg11", len(LABELS), head="gap", input_size=PRE.crop)
        last = [m for m in net.head if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.normal_(last.weight, 0.0, 1.0)   # spread the logits so top-1 is never a near-tie
    except ImportError:  # toolkit.train.model not there: a tiny conv net does the same job
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, len(LABELS)))
    net.eval()
    path = str(tmp_path_factory.mktemp("torch_model") / "flowers.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, PRE.crop, PRE.crop),), path, input_names=["input"],
                          output_names=["logits"], dynamic_axes={n: {0: "batch"} for n in ("input", "logits")},
                          opset_version=17, dynamo=False)
    m = onnx.load(path)
    contract.write(m, dict(tiny_metadata(PRE.crop, LABELS), preprocess=PRE.to_dict(), arch="vgg11"))
    onnx.save(m, path)
    return net, path


def _photo(w=64, h=48, seed=0):
    """A smooth 'photo' (gradients + blobs) so JPEG/WebP compression keeps it recognisable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for ch in range(3):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        img[..., ch] = 127 + 120 * np.sin(xx / rng.uniform(4, 12) + ch) * np.cos(yy / rng.uniform(4, 12)) \
            * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (w * h))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    out = {}
    base = _photo(64, 48, 1)
    out["rgb_jpeg"] = d / "rgb.jpg"
    base.save(out["rgb_jpeg"], quality=92)
    out["gray_png"] = d / "gray.png"
    _photo(50, 70, 2).convert("L").save(out["gray_png"])
    rgba = _photo(64, 64, 3).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    rgba.putalpha(Image.fromarray(alpha, "L"))
    out["rgba_png"] = d / "rgba.png"
    rgba.save(out["rgba_png"])
    out["palette_png"] = d / "palette.png"
    _photo(60, 60, 4).convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(out["palette_png"])
    g16 = (np.asarray(_photo(48, 40, 5).convert("L"), np.uint16) * 257).astype(np.uint16)
    out["png16"] = d / "sixteen.png"
    Image.fromarray(g16).save(out["png16"])
    out["cmyk_jpeg"] = d / "cmyk.jpg"
    _photo(64, 48, 6).convert("CMYK").save(out["cmyk_jpeg"], quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    out["exif_jpeg"] = d / "exif6.jpg"
    _photo(80, 40, 7).save(out["exif_jpeg"], quality=95, exif=exif.tobytes())
    out["one_px"] = d / "one.png"
    Image.new("RGB", (1, 1), (200, 30, 60)).save(out["one_px"])
    out["webp"] = d / "photo.webp"
    _photo(64, 48, 8).save(out["webp"], quality=90)
    return {k: str(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------
# Torch-free import
# ------------------------------------------------------------------------------------------

# The torch-free import rule for every runtime module is tests/test_layout.py's.


# ------------------------------------------------------------------------------------------
# Parity with PyTorch, on real files of many modes and formats
# ------------------------------------------------------------------------------------------

def test_predictor_matches_pytorch_on_odd_images(torch_model, images):
    import torch

    net, path = torch_model
    p = Predictor(path, device="cpu")
    assert p.labels == LABELS and p.preprocess == PRE and p.provider == "CPUExecutionProvider"
    assert p.precision == "fp32" and p.input_spec["raw"] is False and p.metadata["arch"] == "vgg11"
    paths = list(images.values())
    with torch.no_grad():
        ref = net(torch.from_numpy(PRE.batch(paths))).numpy()
    got = p.logits(p.prepare(paths))
    assert got.shape == (len(paths), len(LABELS))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
    assert (got.argmax(1) == ref.argmax(1)).all()
    preds = p.predict(paths, top_k=2)
    assert [r[0]["index"] for r in preds] == ref.argmax(1).tolist()
    for r in preds:
        assert [set(x) for x in r] == [{"label", "score", "index"}] * 2
        assert r[0]["score"] >= r[1]["score"] and 0.0 <= r[1]["score"] <= 1.0
        assert r[0]["label"] == LABELS[r[0]["index"]] and isinstance(r[0]["score"], float)


def test_odd_modes_convert_like_training(models, images):
    p = Predictor(models["fp32"], device="cpu")
    # EXIF orientation 6 is applied: the 80x40 stored image is used upright (40x80).
    stored = np.asarray(Image.open(images["exif_jpeg"]))   # pixels as stored, no EXIF attached
    assert stored.shape[:2] == (40, 80)
    upright = Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270)
    assert upright.size == (40, 80)
    np.testing.assert_array_equal(p.prepare(images["exif_jpeg"]), p.prepare(upright))
    # 16-bit greyscale is scaled to 8 bits, not clipped at 255 (which would be a white image).
    batch16 = p.prepare(images["png16"])
    assert batch16.std() > 0.1
    # 1x1 and palette images give a full crop.
    assert p.prepare([images["one_px"], images["palette_png"]]).shape == (2, 3, PRE.crop, PRE.crop)


def test_input_kinds_give_identical_results(models, images):
    p = Predictor(models["fp32"], device="cpu", batch_size=2)
    path = images["rgb_jpeg"]
    with open(path, "rb") as f:
        data = f.read()
    pil = Image.open(path)
    arr = np.asarray(Image.open(path).convert("RGB"))
    from pathlib import Path
    first = p.predict(path, top_k=3)
    assert len(first) == 3
    for single in (Path(path), data, io.BytesIO(data), pil, arr):
        assert p.predict(single, top_k=3) == first
    listed = p.predict([path, data, pil, arr, Path(path)], top_k=3)   # batch_size=2: batched in 3 runs
    assert listed == [first] * 5
    assert p.predict(np.stack([arr, arr]), top_k=3) == [first] * 2      # a 4-D array is a list
    assert p.predict([], top_k=3) == []


def test_raw_input_and_probabilities_outputs(models, images):
    paths = [images["rgb_jpeg"], images["gray_png"], images["cmyk_jpeg"]]
    fp32 = Predictor(models["fp32"], device="cpu")
    raw = Predictor(models["raw"], device="cpu")
    assert raw.raw and raw.input_spec["layout"] == "NHWC"
    batch = raw.prepare(paths)
    assert batch.dtype == np.uint8 and batch.shape == (3, PRE.crop, PRE.crop, 3)
    np.testing.assert_allclose(raw.logits(batch), fp32.logits(fp32.prepare(paths)), rtol=1e-3, atol=1e-3)
    assert [r[0]["index"] for r in raw.predict(paths)] == [r[0]["index"] for r in fp32.predict(paths)]

    probs = Predictor(models["probs"], device="cpu")
    logits = probs.logits(probs.prepare(paths))
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)   # the graph's own output
    got = probs.predict(paths, top_k=len(LABELS))
    for row, exp_row in zip(got, expected):
        for pred in row:
            assert pred["score"] == pytest.approx(float(exp_row[pred["index"]]), rel=1e-4, abs=1e-6)


def test_bad_inputs_are_user_errors(models, images, tmp_path):
    p = Predictor(models["fp32"], device="cpu")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageError) as e:
        p.predict(str(bad))
    assert e.value.kind in ("corrupt", "unsupported") and str(bad) in str(e.value)
    with pytest.raises(ImageError, match=r"images\[1\]"):
        p.predict([images["rgb_jpeg"], b"garbage"])
    with pytest.raises(ImageError) as e:
        p.predict(b"")
    assert e.value.kind == "empty"
    with pytest.raises(UserError, match="top_k"):
        p.predict(images["rgb_jpeg"], top_k=0)
    small = Predictor(models["fp32"], device="cpu", max_pixels=100)
    with pytest.raises(ImageError) as e:
        small.predict(images["rgb_jpeg"])
    assert e.value.kind == "too_large"
    with pytest.raises(UserError, match="expected"):
        p.logits(np.zeros((2, 32, 32, 3), np.float32))   # wrong layout


def test_api_misuse_is_one_error_saying_what_was_wrong(models, images, tmp_path):
    """Each was a raw Python or ORT error (or NaN scores in an arbitrary order) before."""
    from hostile_images import scan_bomb, truncated_jpeg

    p, raw = Predictor(models["fp32"], device="cpu"), Predictor(models["raw"], device="cpu")
    closed = Image.new("RGB", (10, 10))
    closed.close()
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for image, error, message in [(Image.new("RGB", (0, 0)), ImageError, "0x0 has no pixels"),
                                  (closed, ImageError, "was it closed"),
                                  (str(fifo), ImageError, r"not a regular file \(a FIFO\)"),
                                  (truncated_jpeg(), ImageError, "truncated JPEG"),
                                  (scan_bomb(), ImageError, "scans")]:
        with pytest.raises(error, match=message):
            p.predict(image)
    for model, batch, message in [
            (p, np.zeros((1, 3, 64, 64), np.float32), r"batch of shape \(1, 3, 64, 64\); expected Nx3x32x32"),
            (p, np.zeros((1, 4, 32, 32), np.float32), "expected Nx3x32x32"),
            (raw, np.zeros((1, 31, 32, 3), np.uint8), "expected Nx32x32x3 uint8"),
            (p, np.full((2, 3, 32, 32), np.nan, np.float32), "NaN or infinite"),
            (p, np.pad(np.zeros((1, 3, 32, 31), np.float32), ((0, 0),) * 3 + ((0, 1),), constant_values=np.inf),
             "NaN or infinite")]:
        for call in (model.logits, model.probabilities, model.predict_batch):
            with pytest.raises(UserError, match=message):
                call(batch)
    with open(models["fp32"], "rb") as fh:   # the file's bytes: the message held all of them (95 MB for VGG16)
        blob = fh.read()
    for args, kwargs, message in [((blob,), {}, "model: a bytes; expected the path of an ONNX model"),
                                  ((None,), {}, "model: a NoneType; expected the path"),
                                  ((models["fp32"],), {"max_pixels": 0}, "max_pixels: 0; expected a positive"),
                                  ((models["fp32"],), {"max_pixels": "10"}, "max_pixels: '10'; expected")]:
        with pytest.raises(UserError, match=message) as info:
            Predictor(*args, device="cpu", **kwargs)
        assert len(str(info.value)) < 200


# ------------------------------------------------------------------------------------------
# Provider truth
# ------------------------------------------------------------------------------------------

def _cuda_really_loads(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor(path, device="cuda", allow_fallback=True).provider == "CUDAExecutionProvider"


def test_cpu_and_auto_providers(models, recwarn):
    assert Predictor(models["fp32"], device="cpu", threads=1).provider == "CPUExecutionProvider"
    auto = Predictor(models["fp32"])
    assert auto.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert auto.provider == auto.session.session.get_providers()[0]   # the InferenceSession behind the adapter
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]   # auto means auto: no warning
    with pytest.raises(UserError, match="device"):
        Predictor(models["fp32"], device="tpu")
    with pytest.raises(UserError, match="threads"):
        Predictor(models["fp32"], device="cpu", threads=0)


def test_cuda_unavailable_is_an_error_unless_fallback_allowed(models, capfd):
    if _cuda_really_loads(models["fp32"]):
        pytest.skip("CUDA loads on this machine; the unavailable path can't be exercised")
    capfd.readouterr()
    with pytest.raises(UserError) as e:
        Predictor(models["fp32"], device="cuda")
    msg = str(e.value)
    assert msg.startswith("CUDA requested but onnxruntime could not load it (")
    assert "onnxruntime-gpu" in msg and "--allow-fallback" in msg and "\n" not in msg
    out, err = capfd.readouterr()
    assert "onnxruntime" not in out + err, "ORT's own log noise reached the user"
    with pytest.warns(RuntimeWarning, match="CUDA requested but not available"):
        p = Predictor(models["fp32"], device="cuda", allow_fallback=True)
    assert p.provider == "CPUExecutionProvider"
    assert len(p.predict(np.zeros((8, 8, 3), np.uint8), top_k=1)) == 1
    with pytest.raises(UserError, match="TensorRT requested"):
        Predictor(models["fp32"], device="tensorrt")
    # evaluate has no --allow-fallback: its message offers the CPU instead
    from toolkit.runtime.onnx_eval import engine_session
    with pytest.raises(UserError) as e:
        engine_session(models["fp32"], None, "cuda", None)
    assert "--allow-fallback" not in str(e.value) and str(e.value).endswith("; or evaluate with --device cpu")


# ------------------------------------------------------------------------------------------
# Wrong models
# ------------------------------------------------------------------------------------------

def test_wrong_model_files(models, tmp_path):
    with pytest.raises(UserError, match="not a toolkit export: no 'labels' metadata"):
        Predictor(models["foreign"], device="cpu")
    with pytest.raises(UserError, match="no such file"):
        Predictor(tmp_path / "missing.onnx", device="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf at all \x00\x01")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        Predictor(junk, device="cpu")
    mismatch = write_tiny_model(tmp_path / "mismatch.onnx", labels=LABELS, meta={"labels": ["a", "b"]})
    with pytest.raises(UserError, match="4 outputs but 2 labels"):
        Predictor(mismatch, device="cpu")


# ------------------------------------------------------------------------------------------
# toolkit predict
# ------------------------------------------------------------------------------------------

@pytest.fixture()
def folder(tmp_path, images):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i, name in enumerate(["rgb_jpeg", "gray_png", "webp"]):
        src = images[name]
        dst = root / ("sub" if i == 1 else "") / os.path.basename(src)
        dst.write_bytes(open(src, "rb").read())
    (root / ".hidden" / "secret.jpg").write_bytes(open(images["rgb_jpeg"], "rb").read())
    (root / ".dot.png").write_bytes(open(images["gray_png"], "rb").read())
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_collect_images(folder, tmp_path):
    paths, problems = collect_images([str(folder)])
    names = sorted(os.path.relpath(p, folder) for p in paths)
    assert names == ["broken.jpg", "photo.webp", "rgb.jpg", os.path.join("sub", "gray.png")]
    paths, _ = collect_images([str(folder)], recursive=False)
    assert "gray.png" not in {os.path.basename(p) for p in paths}
    paths, problems = collect_images([str(folder / "*.jpg"), str(folder / "rgb.jpg"), str(tmp_path / "nope.png"),
                                      str(folder / "**" / "*.png")])
    assert sorted(os.path.basename(p) for p in paths) == ["broken.jpg", "gray.png", "rgb.jpg"]   # no duplicates
    assert problems == [(str(tmp_path / "nope.png"), "no such file or folder")]
    # a symlink loop under a '**' glob lists each file once; a FIFO named directly is decoding's to refuse
    loop = tmp_path / "loop"
    (loop / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(loop / "sub" / "a.png")
    os.symlink("..", loop / "sub" / "up")
    os.mkfifo(tmp_path / "pipe.jpg")
    paths, problems = collect_images([str(loop / "**" / "*.png"), str(tmp_path / "pipe.jpg")])
    assert [os.path.basename(p) for p in paths] == ["a.png", "pipe.jpg"] and problems == []


def test_predict_command_table_skips_corrupt(models, folder, capsys):
    rc = predict_command(models["fp32"], [str(folder)], top_k=2, device="cpu", batch_size=2)
    out, err = capsys.readouterr()
    assert rc == 0
    assert "broken.jpg" in err and "skipped" in err and "Traceback" not in err
    lines = out.strip().splitlines()
    assert lines[0].startswith("image") and len(lines) == 1 + 3
    assert all(any(lb in ln for lb in LABELS) for ln in lines[1:])


def test_predict_command_csv_and_json(models, folder, images, capsys):
    glob_arg = str(folder / "**" / "*.*")   # a quoted glob: expanded by the command itself
    assert predict_command(models["fp32"], [glob_arg], top_k=3, format="csv", device="cpu") == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "rank", "label", "score", "index", "accepted", "ood_score"]
    assert len(rows) == 3 * 3 and {r["rank"] for r in rows} == {"1", "2", "3"}
    assert all(r["label"] == LABELS[int(r["index"])] and 0 <= float(r["score"]) <= 1 for r in rows)
    assert "broken.jpg" in err

    assert predict_command(models["fp32"], (images["rgb_jpeg"], images["cmyk_jpeg"]), top_k=1, format="json",
                           device="cpu") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["provider"] == "CPUExecutionProvider" and len(doc["sha256"]) == 64
    assert [r["path"] for r in doc["results"]] == [images["rgb_jpeg"], images["cmyk_jpeg"]]
    p = Predictor(models["fp32"], device="cpu")
    assert doc["results"][0]["predictions"][0]["label"] == p.predict(images["rgb_jpeg"], top_k=1)[0]["label"]


def test_predict_command_failures(models, folder, tmp_path, capsys):
    assert predict_command(models["fp32"], [str(folder / "broken.jpg")], device="cpu") == 1
    assert "broken.jpg" in capsys.readouterr().err
    with pytest.raises(UserError, match="no images found"):
        predict_command(models["fp32"], [str(tmp_path / "nothing*.jpg")], device="cpu")
    with pytest.raises(UserError, match="no images given"):
        predict_command(models["fp32"], [], device="cpu")
    with pytest.raises(UserError, match="format"):
        predict_command(models["fp32"], [str(folder)], format="xml")


def test_predict_command_newest_export_and_progress(models, tmp_path, monkeypatch, capsys):
    exports = tmp_path / "exports"
    exports.mkdir()
    old, new, twin = exports / "old.onnx", exports / "new.onnx", exports / "new.int8.onnx"
    for f in (old, new, twin):
        f.write_bytes(open(models["fp32"], "rb").read())
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    os.utime(twin, (3_000_000, 3_000_000))   # twins are never chosen implicitly
    many = tmp_path / "many"
    many.mkdir()
    for i in range(55):
        Image.new("RGB", (6, 5), (i * 4, 100, 200 - i * 3)).save(many / f"img{i:02d}.png")
    monkeypatch.chdir(tmp_path)
    assert predict_command(None, "many", top_k=1, format="csv", device="cpu", batch_size=16) == 0
    out, err = capsys.readouterr()
    assert os.path.join("exports", "new.onnx") in err
    assert "55/55" in err   # progress on stderr for more than 50 images
    assert len(out.strip().splitlines()) == 1 + 55


# ------------------------------------------------------------------------------------------
# Cold start helper
# ------------------------------------------------------------------------------------------

def test_time_cold_start(models):
    t = time_cold_start(models["fp32"], "cpu")
    assert t["provider"] == "CPUExecutionProvider" and t["heavy_modules"] == []
    assert all(t[k] > 0 for k in ("import_s", "session_s", "first_predict_s"))


def test_evaluate_offers_the_cpu_only_for_a_device_that_failed(tmp_path):
    """A file that cannot load on the CPU was told to 'evaluate with --device cpu'."""
    from toolkit.runtime.onnx_eval import engine_session
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(UserError) as e:
        engine_session(str(junk), None, "cpu", None)
    assert "--device cpu" not in str(e.value)


def test_predict_into_a_closed_pipe_ends_quietly(models, folder):
    """`toolkit predict ... | head -2` ended in a BrokenPipeError traceback once head had its lines."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "predict", models["fp32"], str(folder), "--device",
                             "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err


def test_embedders_bad_arguments_are_one_clear_error(tmp_path):
    """Found embedding the Predictor from Python: uint8 pixels given to a float model ran (confident wrong
    answers); allow_fallback='false' fell back; a list's bad item was numbered within its batch; a numpy
    float32 threshold was refused; 1-D logits, warmup(-1) and an empty batch were raw numpy/engine errors;
    max_pixels did not apply to PIL images; a small limit read "over the limit of 0.0"."""
    model = write_tiny_model(tmp_path / "m.onnx", crop=32)
    p = Predictor(model, batch_size=4)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    pixels = np.stack([p.preprocess.pixels(image).transpose(2, 0, 1)] * 2)   # uint8 NCHW, not normalised
    with pytest.raises(UserError, match="batch dtype uint8; this model expects float pixels normalised"):
        p.predict_batch(pixels)
    with pytest.raises(UserError, match="allow_fallback: 'false'; expected True or False"):
        Predictor(model, allow_fallback="false")
    bad = np.zeros((8, 8, 2), np.uint8)
    with pytest.raises(ImageError, match=r"^images\[8\]: "):   # the 9th item, in the third batch of 4
        p.predict([image] * 8 + [bad])
    with pytest.raises(ImageError, match=r"^images\[40\]: "):
        Predictor(model).predict([image] * 40 + [bad])
    with pytest.raises(UserError, match="has no 'ood' metadata"):   # a number, read as one ("expected a number")
        p.check_rejection(np.float32(1.8))
    with pytest.raises(UserError, match=r"logits of shape \(3,\); expected \(N, 3\)"):
        p.accept(p.logits(p.prepare(image))[0])
    with pytest.raises(UserError, match="batch_size: -1; expected a positive whole number"):
        p.warmup(-1)
    assert p.logits(p.prepare([])).shape == (0, 3) and p.predict_batch(p.prepare([])) == []
    lazy = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(lazy)
    with pytest.raises(ImageError, match=r"40x40 is 1600 pixels, over the limit of 100 pixels"):
        Predictor(model, max_pixels=100).predict(Image.open(lazy))
    with pytest.raises(ImageError, match="over the limit of 100 pixels"):
        Predictor(model, max_pixels=100).predict(image)


def test_engine_options_and_single_strings_are_read_as_meant(tmp_path):
    """EngineOptions(openvino={...}) was an AttributeError when OpenVINO opened, a cache_dir that is a file a
    FileExistsError; formats="PNG" and load(path, "train.epochs=1") were split into letters."""
    from toolkit import recipe as recipe_mod
    from toolkit.runtime.engines import EngineOptions, OpenVinoOptions

    with pytest.raises(UserError, match=r"openvino: a dict; expected OpenVinoOptions\(hint="):
        EngineOptions(openvino={"hint": "THROUGHPUT"})
    with pytest.raises(UserError, match="allow_fallback: 'false'; expected True or False"):
        EngineOptions(allow_fallback="false")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="cache_dir: .*a-file' is a file; expected a folder"):
        OpenVinoOptions(cache_dir=str(tmp_path / "a-file"))
    model = write_tiny_model(tmp_path / "m.onnx", crop=32)
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(png)
    assert Predictor(model, formats="PNG").formats == ("PNG",) and Predictor(model, formats="PNG").predict(str(png))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: digits}\nmodel: {weights: none}\ntrain: {strategy: scratch}\n")
    assert recipe_mod.load(str(recipe), "train.epochs=1").train.epochs == 1
