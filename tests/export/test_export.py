"""Export: metadata, the parity gate, FP16 / INT8 twins, bad input. Tiny VGG11s at 32 px, no training."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from toolkit.export import pipeline as export_mod  # noqa: E402
from toolkit.export import torch_graph  # noqa: E402
from toolkit import recipe as recipe_mod  # noqa: E402
from toolkit.artifacts import sha256_file  # noqa: E402
from toolkit.train.checkpoint import save_checkpoint  # noqa: E402
from toolkit.errors import UserError  # noqa: E402
from toolkit.runtime.onnx_eval import cpu_session, evaluate_onnx, read_metadata  # noqa: E402
from toolkit.preprocess import Preprocess  # noqa: E402

LABELS = ["cat", "dog", "fox"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------------------------
# Fixtures: a tiny image folder and runs built from build_from_recipe (random weights, no training)

def make_images(root, n_train=6, n_val=4, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, name in enumerate(LABELS):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                base = np.array([(ci * 90) % 256, 200 - ci * 60, 40 + ci * 70], np.float32)
                arr = np.clip(base + rng.normal(0, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(os.path.join(folder, f"{i}.png"))
    return str(root)


def make_run(runs_dir, data_root, name="tiny", head="gap", arch="vgg11", seed=0, recipe_patch=None):
    from toolkit.train.model import build_from_recipe

    raw = {"name": name, "out_dir": str(runs_dir), "data": {"root": str(data_root), "workers": 0},
           "preprocess": {"resize": 40, "crop": 32},
           "model": {"arch": arch, "weights": "none", "head": head, "hidden": 16, "dropout": 0.0},
           "train": {"strategy": "scratch", "epochs": 1}}
    rec = recipe_mod.from_dict(raw, check_paths=False)
    torch.manual_seed(seed)
    model = build_from_recipe(rec, len(LABELS))
    with torch.no_grad():  # spread the logits: an untrained head gives near-ties everywhere
        list(model.head.modules())[-1].weight.mul_(30)
    recipe_dict = recipe_mod.to_dict(rec)
    if recipe_patch:
        recipe_patch(recipe_dict)
    state = {"model": model.state_dict(), "labels": list(LABELS), "recipe": recipe_dict,
             "metrics": {"val_top1": 41.5, "val_top5": 100.0}, "epoch": 1, "step": 3, "best_top1": 41.5}
    run_dir = os.path.join(str(runs_dir), name)
    save_checkpoint(os.path.join(run_dir, "checkpoints", "best.pt"), state)
    save_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"), state)
    return run_dir


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def full_export(tmp_path_factory, data_root):
    """One export with every option on: fp16, int8 (head kept fp32), raw input, probabilities, dynamic H/W."""
    base = tmp_path_factory.mktemp("full")
    run_dir = make_run(base / "runs", data_root, name="full", head="gap")
    report = export_mod.export_run(run_dir, exports_dir=str(base / "exports"), runs_dir=str(base / "runs"),
                                   fp16=True, int8=True, keep_fp32=("head",), raw_input=True, probabilities=True,
                                   dynamic_hw=True, int8_budget=100.0, calib_images=8, quiet=True)
    return {"base": base, "run": run_dir, "report": report, "path": report["model"]}


def _onnx_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".onnx")) if os.path.isdir(folder) else []


def _meta(path):
    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


# ------------------------------------------------------------------------------------------------
# The happy path

def test_metadata_round_trips(full_export):
    path, run_dir = full_export["path"], full_export["run"]
    ckpt = os.path.join(run_dir, "checkpoints", "best.pt")
    assert path.endswith(os.path.join("exports", "full.onnx"))
    assert not os.path.exists(path + ".data")  # one file, no external data
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert model.opset_import[0].version == 17

    meta = _meta(path)
    assert meta["toolkit_format"] == "1"
    assert json.loads(meta["labels"]) == LABELS
    assert json.loads(meta["names"]) == {"0": "cat", "1": "dog", "2": "fox"}
    pre = json.loads(meta["preprocess"])
    assert Preprocess.from_dict(pre) == Preprocess(resize=40, crop=32)
    assert pre["channel_order"] == "RGB" and pre["layout"] == "NCHW" and pre["value_range"] == [0.0, 1.0]
    assert json.loads(meta["input"]) == {"name": "input", "dtype": "float32", "layout": "NCHW",
                                         "shape": ["batch", 3, "height", "width"], "raw": False}
    assert json.loads(meta["outputs"]) == ["logits", "probabilities"]
    assert meta["precision"] == "fp32"
    assert meta["checkpoint"] == ckpt and meta["checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["source_run"] == run_dir
    assert meta["arch"] == "vgg11" and meta["head"] == "gap"
    assert json.loads(meta["metrics"])["val_top1"] == 41.5
    assert json.loads(meta["recipe"])["model"]["arch"] == "vgg11"
    import toolkit
    assert meta["toolkit_version"] == toolkit.__version__
    # The same values through the light reader (ORT's metadata map), JSON decoded.
    light = read_metadata(path)
    assert light["labels"] == LABELS and light["input"]["raw"] is False


def test_parity_at_every_batch_size_and_report(full_export):
    report = full_export["report"]
    on_disk = json.load(open(report["report"]))
    assert on_disk["parity"]["fp32"]["max_abs_diff"] == report["parity"]["fp32"]["max_abs_diff"]
    fp32 = report["parity"]["fp32"]
    for bs in ("1", "2", "7", "16"):
        entry = fp32["batch_sizes"][bs]
        assert entry["close"] and entry["top1_agreement"] == 1.0
        assert entry["n_real"] == int(bs) and entry["n_random"] == int(bs)
        assert entry["max_abs_diff"] <= 1e-4
    assert "2@64x96" in fp32["batch_sizes"]  # dynamic H/W exercised at another size
    assert fp32["real_inputs"] == 26 and report["parity_data"]["real_images"] == 12
    assert fp32["probabilities_match"] is True
    assert set(report["files"]) == {"fp32", "raw", "fp16", "int8"}
    assert report["timings"]["total_s"] > 0 and report["opset"] == 17 and report["exporter"] == "torchscript"


def test_onnx_matches_torch_on_a_real_image(full_export, data_root):
    """Independent of the gate: the file, the checkpoint and Preprocess agree on one image."""
    from toolkit.train.model import model_from_checkpoint

    model, _ = model_from_checkpoint(os.path.join(full_export["run"], "checkpoints", "best.pt"))
    x = Preprocess(resize=40, crop=32).batch([os.path.join(data_root, "val", "dog", "0.png")])
    got = cpu_session(full_export["path"]).run(["logits"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_raw_input_twin(full_export, data_root):
    raw_path = full_export["report"]["files"]["raw"]["path"]
    assert raw_path.endswith("full.raw.onnx")
    meta = read_metadata(raw_path)
    assert meta["input"] == {"name": "input", "dtype": "uint8", "layout": "NHWC",
                             "shape": ["batch", "height", "width", 3], "raw": True}
    pre = Preprocess(resize=40, crop=32)
    from toolkit.preprocess import open_image

    pixels = np.stack([pre.resize_crop(open_image(os.path.join(data_root, "val", c, "1.png"))) for c in LABELS])
    raw_logits = cpu_session(raw_path).run(["logits"], {"input": pixels})[0]
    float_logits = cpu_session(full_export["path"]).run(["logits"], {"input": pre.normalize(pixels)})[0]
    np.testing.assert_allclose(raw_logits, float_logits, rtol=1e-4, atol=1e-5)
    assert full_export["report"]["parity"]["raw"]["top1_agreement"] == 1.0


def test_a_letterbox_export_passes_parity_and_every_runtime_letterboxes(tmp_path, data_root):
    """fit: letterbox travels in the metadata of the file and its raw twin; the parity gate, evaluate and
    the Predictor (float and raw input) all see letterboxed pixels (the raw twin takes the pixels after
    the fit, so it needs nothing in its graph)."""
    from toolkit.inference import Predictor

    run_dir = make_run(tmp_path / "runs", data_root, name="lb",
                       recipe_patch=lambda r: r["preprocess"].update(fit="letterbox"))
    report = export_mod.export_run(run_dir, exports_dir=str(tmp_path / "exports"), runs_dir=str(tmp_path / "runs"),
                                   raw_input=True, quiet=True)
    raw_path = report["files"]["raw"]["path"]
    for path in (report["model"], raw_path):
        assert json.loads(_meta(path)["preprocess"])["fit"] == "letterbox"
        assert _meta(path)["toolkit_format"] == "2"  # a reader from before fit modes refuses it
    assert report["parity_data"]["real_images"] == 12
    assert all(report["parity"][kind]["top1_agreement"] == 1.0 for kind in ("fp32", "raw"))
    pre = Preprocess(resize=40, crop=32, fit="letterbox")
    images = [os.path.join(data_root, "val", c, f"{i}.png") for c in LABELS for i in range(4)]
    pixels = np.stack([pre.pixels(p) for p in images])
    assert (pixels[:, :2] == pre.pad_colour).all()  # 48x40 -> 32x27: two rows of pad on top
    float_model, raw_model = Predictor(report["model"], device="cpu"), Predictor(raw_path, device="cpu")
    assert float_model.preprocess == raw_model.preprocess == pre
    assert np.array_equal(raw_model.prepare(images), pixels)
    np.testing.assert_allclose(raw_model.logits(raw_model.prepare(images)),
                               float_model.logits(float_model.prepare(images)), rtol=1e-4, atol=1e-5)
    targets = np.repeat(np.arange(len(LABELS)), 4)
    logits = cpu_session(report["model"]).run(["logits"], {"input": pre.normalize(pixels)})[0]
    result = evaluate_onnx(report["model"])
    assert result["n"] == 12 and result["top1"] == pytest.approx(100 * np.mean(logits.argmax(1) == targets))


def test_fp16_twin_loads_and_runs_on_cpu_with_float32_io(full_export):
    path = full_export["report"]["files"]["fp16"]["path"]
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert _meta(path)["precision"] == "fp16"
    session = cpu_session(path)
    assert session.get_providers() == ["CPUExecutionProvider"]
    out = session.run(None, {"input": np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)})
    assert out[0].dtype == np.float32 and out[0].shape == (3, 3)
    fp16 = full_export["report"]["parity"]["fp16"]
    assert fp16["top1_agreement"] >= export_mod.FP16_MIN_AGREEMENT and fp16["close"]
    assert os.path.getsize(path) < 0.6 * full_export["report"]["files"]["fp32"]["bytes"]


def test_int8_twin_gate_computed_and_head_kept_fp32(full_export):
    info = full_export["report"]["int8"]
    assert info["split"] == "val" and info["n"] == 12 and info["calib_images"] == 8
    assert info["format"] == "QDQ" and info["per_channel"] is True and info["calib_method"] == "minmax"
    assert info["top1_drop"] == pytest.approx(info["fp32_top1"] - info["int8_top1"])
    assert info["excluded_nodes"] and all("head" in n for n in info["excluded_nodes"])
    path = full_export["report"]["files"]["int8"]["path"]
    model = onnx.load(path)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    gemm = [n for n in model.graph.node if n.name in info["excluded_nodes"]]
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert gemm and all(n.input[1] in floats for n in gemm)  # the head's weights stay float32
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers["logits"].op_type == "Gemm"  # the output isn't rounded to 256 levels by a Q/DQ pair
    assert producers["probabilities"].op_type == "Softmax"
    meta = read_metadata(path)
    assert meta["precision"] == "int8" and meta["quantization"]["keep_fp32"] == ["head"]
    # evaluate MODEL.onnx: the same numbers as the gate measured.
    result = evaluate_onnx(path)
    assert result["n"] == 12 and result["top1"] == pytest.approx(info["int8_top1"])
    assert len(result["confusion"]) == 3 and sum(map(sum, result["confusion"])) == 12
    assert set(result["per_class"]) == set(LABELS) and 0 <= result["top5"] <= 100


def test_evaluate_onnx_uses_metadata_recipe_and_other_splits(full_export):
    fp32 = evaluate_onnx(full_export["path"], split="train")
    assert fp32["n"] == 18 and fp32["split"] == "train"
    fp32_val = evaluate_onnx(full_export["path"])
    assert fp32_val["top1"] == pytest.approx(full_export["report"]["int8"]["fp32_top1"])
    with pytest.raises(UserError, match="split"):
        evaluate_onnx(full_export["path"], split="nope")


# ------------------------------------------------------------------------------------------------
# Gates that fail for real

def test_perturbed_model_fails_parity_and_leaves_no_file(tmp_path, data_root, monkeypatch):
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = make_run(runs, data_root, name="bad")
    os.makedirs(exports)
    older = exports / "bad.onnx"
    older.write_bytes(b"an older export")
    real_export = torch_graph.torch_export

    def perturbed(module, *args, **kwargs):  # an exporter that gets the weights slightly wrong
        module = copy.deepcopy(module)
        with torch.no_grad():
            list(module.head.modules())[-1].weight.mul_(1.05)
        return real_export(module, *args, **kwargs)

    monkeypatch.setattr(torch_graph, "torch_export", perturbed)
    with pytest.raises(UserError) as err:
        export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), fp16=True, quiet=True)
    msg = str(err.value)
    assert "parity gate failed" in msg and "bad.onnx" in msg
    assert "differ by up to" in msg and "\n" not in msg
    assert older.read_bytes() == b"an older export"  # untouched
    assert _onnx_files(exports) == ["bad.onnx"] and not os.path.exists(exports / "bad.report.json")
    assert not [f for f in os.listdir(exports) if f.startswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# Newest run, fallbacks, stale twins

def test_zero_argument_exports_the_newest_run(tmp_path, data_root, capsys):
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    old = make_run(runs, data_root, name="older", head="classic")
    new = make_run(runs, data_root, name="newer", head="classic", seed=1)
    t = os.path.getmtime(os.path.join(new, "checkpoints", "last.pt"))
    os.utime(os.path.join(old, "checkpoints", "last.pt"), (t - 100, t - 100))
    report = export_mod.export_run(exports_dir=str(exports), runs_dir=str(runs))
    out = capsys.readouterr().out
    assert f"exporting newest run: {new} (checkpoints/best.pt)" in out
    assert report["model"] == str(exports / "newer.onnx") and _onnx_files(exports) == ["newer.onnx"]
    meta = read_metadata(report["model"])
    assert meta["head"] == "classic" and meta["input"]["shape"] == ["batch", 3, 32, 32]
    session = cpu_session(report["model"])
    for bs in (1, 5):  # batch axis dynamic, H/W fixed
        assert session.run(["logits"], {"input": np.zeros((bs, 3, 32, 32), np.float32)})[0].shape == (bs, 3)


def test_missing_data_falls_back_to_random_tensors_with_a_note(tmp_path, data_root, capsys):
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = make_run(runs, data_root, name="nodata",
                       recipe_patch=lambda r: r["data"].update(root=str(tmp_path / "gone")))
    report = export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs))
    out = capsys.readouterr().out
    assert "note: could not load the run's data" in out and "random tensors only" in out
    assert report["parity_data"]["real_images"] == 0 and report["parity"]["fp32"]["real_inputs"] == 0
    assert report["parity"]["fp32"]["top1_agreement"] == 1.0
    with pytest.raises(UserError, match="--int8: could not load the run's data"):
        export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), int8=True, quiet=True)


def test_stale_twin_of_another_checkpoint_is_removed(tmp_path, data_root):
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = make_run(runs, data_root, name="twin", head="classic")
    first = export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), fp16=True, quiet=True)
    assert _onnx_files(exports) == ["twin.fp16.onnx", "twin.onnx"]
    assert first["parity"]["fp16"]["close"]
    make_run(runs, data_root, name="twin", head="classic", seed=5)  # retrained: new weights
    second = export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), quiet=True)
    assert second["removed_stale_twins"] == [str(exports / "twin.fp16.onnx")]
    assert _onnx_files(exports) == ["twin.onnx"]


# ------------------------------------------------------------------------------------------------
# Bad input: one line each, nothing written

def _fails(match, tmp_path, **kwargs):
    kwargs.setdefault("exports_dir", str(tmp_path / "exports"))
    kwargs.setdefault("runs_dir", str(tmp_path / "runs"))
    with pytest.raises(UserError) as err:
        export_mod.export_run(quiet=True, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    assert _onnx_files(tmp_path / "exports") == []
    return msg


def test_no_runs_yet(tmp_path):
    _fails("no runs yet", tmp_path)


def test_run_without_checkpoint(tmp_path):
    os.makedirs(tmp_path / "runs" / "empty")
    _fails("has no checkpoint", tmp_path, run=str(tmp_path / "runs" / "empty"))
    _fails("no run has a checkpoint yet", tmp_path)


def test_corrupt_and_truncated_checkpoints(tmp_path, data_root):
    run_dir = make_run(tmp_path / "runs", data_root, name="c")
    best = os.path.join(run_dir, "checkpoints", "best.pt")
    whole = open(best, "rb").read()
    open(best, "wb").write(whole[: len(whole) // 2])
    _fails("corrupt or truncated checkpoint", tmp_path, run=run_dir)
    open(best, "wb").write(b"not a checkpoint at all")
    _fails("not a PyTorch checkpoint", tmp_path, run=run_dir)


def test_unknown_architecture(tmp_path, data_root):
    run_dir = make_run(tmp_path / "runs", data_root, name="arch",
                       recipe_patch=lambda r: r["model"].update(arch="resnet7"))
    msg = _fails("unknown architecture 'resnet7'", tmp_path, run=run_dir)
    assert "vgg16" in msg


def test_opset_too_new_and_too_old(tmp_path, data_root):
    run_dir = make_run(tmp_path / "runs", data_root, name="op")
    top = export_mod.ort_max_opset()
    assert top >= 17
    _fails(f"--opset {top + 1}: too new for the installed ONNX Runtime", tmp_path, run=run_dir, opset=top + 1)
    _fails("--opset 5: too old", tmp_path, run=run_dir, opset=5)
    _fails("per-channel INT8", tmp_path, run=run_dir, opset=12, int8=True)


def test_output_path_not_writable(tmp_path, data_root, monkeypatch):
    run_dir = make_run(tmp_path / "runs", data_root, name="w")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def must_not_run(*a, **k):
        raise AssertionError("slow work started before the output path was checked")

    monkeypatch.setattr(torch_graph, "torch_export", must_not_run)
    _fails(f"model.onnx: cannot write there ({blocker} is not a folder)", tmp_path, run=run_dir,
           out=str(blocker / "model.onnx"))
    _fails("expected a path ending in .onnx", tmp_path, run=run_dir, out=str(tmp_path / "model.txt"))
    # a folder that does not exist yet: the message shows how to name it (a trailing slash makes it)
    _fails(f"--out {tmp_path / 'v2'}/", tmp_path, run=run_dir, out=str(tmp_path / "v2"))


def test_option_errors(tmp_path, data_root):
    run_dir = make_run(tmp_path / "runs", data_root, name="opt", head="classic")
    _fails("only a gap head", tmp_path, run=run_dir, dynamic_hw=True)
    _fails("--calib-method 'kl'", tmp_path, run=run_dir, int8=True, calib_method="kl")
    _fails("--keep-fp32 only applies with --int8", tmp_path, run=run_dir, keep_fp32=("head",))
    _fails("--int8-budget only applies with --int8", tmp_path, run=run_dir, int8_budget=2.0)
    _fails("--int8-budget inf: expected a finite number", tmp_path, run=run_dir, int8=True, int8_budget=float("inf"))
    _fails("--parity-images 0: expected a whole number", tmp_path, run=run_dir, parity_images=0)


def test_unknown_keep_fp32_layer(tmp_path, data_root):
    run_dir = make_run(tmp_path / "runs", data_root, name="k")
    _fails("--keep-fp32 'nosuchlayer'", tmp_path, run=run_dir, int8=True, keep_fp32=("nosuchlayer",),
           calib_images=3)


# ------------------------------------------------------------------------------------------------
# Through the command line

def test_cli_export_and_its_bad_input(tmp_path, data_root):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "toolkit", "export"]
    bad = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: runs/: no runs yet") and "Traceback" not in bad.stderr
    make_run(tmp_path / "runs", data_root, name="cli", head="classic")
    ok = subprocess.run(cmd + ["--fp16"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "exporting newest run: runs/cli (checkpoints/best.pt)" in ok.stdout
    assert _onnx_files(tmp_path / "exports") == ["cli.fp16.onnx", "cli.onnx"]
    assert os.path.isfile(tmp_path / "exports" / "cli.report.json")


def test_onnx_eval_is_light():
    code = ("import sys, toolkit.runtime.onnx_eval; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'albumentations', 'cv2')]; print(heavy); sys.exit(1 if heavy else 0)")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shared_initializers_are_unshared_before_quantization():
    """Zero biases merged into one tensor by the exporter must not reach quantize_static shared."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from toolkit.export.surgery import unshare_initializers

    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y1"], name="c1"),
             helper.make_node("Conv", ["y1", "w", "b"], ["y2"], name="c2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 2, 4, 4])], [w, b])
    model = helper.make_model(graph)
    assert unshare_initializers(model) == 2
    inputs = [list(n.input[1:]) for n in model.graph.node]
    assert inputs[0] != inputs[1] and len({*inputs[0], *inputs[1]}) == 4
    onnx.checker.check_model(model)


# ------------------------------------------------------------------------------------------------
# Faults: a full disk, and what an export killed with -9 left behind (issue 18, item 9)

def _disk_full_after(fraction_written: bytes):
    """A writer that puts a few bytes on the disk, then finds it full."""
    import errno

    def write(*args, **kwargs):
        path = next((a for a in args if isinstance(a, (str, os.PathLike)) and str(a).endswith(".onnx")), None)
        if path is not None:
            with open(path, "wb") as fh:
                fh.write(fraction_written)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_disk_full_is_one_error_naming_the_file_and_the_disk(tmp_path, data_root, monkeypatch):
    """--int8 gave an OSError traceback from quantize.py; a plain export blamed the checkpoint."""
    import onnxruntime.quantization as ort_quant

    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = make_run(runs, data_root, name="full")
    with monkeypatch.context() as patch:
        patch.setattr(ort_quant, "quantize_static", _disk_full_after(b"half a model"))
        with pytest.raises(UserError) as err:
            export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), int8=True,
                                  int8_search=False, quiet=True)
    msg = str(err.value)
    assert f"{exports / 'full.int8.onnx'}: could not write it (No space left on device); the disk holding " \
           f"{exports} is full, " in msg and " MB free: free some space there" in msg, msg
    assert "nothing was published" in msg and "\n" not in msg
    assert os.listdir(exports) == []  # no file under a final name, no temp file, no quantization folder

    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", _disk_full_after(b"\x08\x07"))
        with pytest.raises(UserError) as err:
            export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs), quiet=True)
    msg = str(err.value)
    assert msg.startswith(f"{exports / 'full.onnx'}: could not write it (No space left on device); the disk"), msg
    assert ".pt" not in msg and "checkpoint" not in msg and "torch.onnx.export failed" not in msg, msg
    assert os.listdir(exports) == []


def test_temp_files_of_a_killed_export_are_removed_at_the_next_export(tmp_path, data_root, capsys):
    """kill -9 during export left hidden .tmp-*.onnx and .tmp-quant-*/ for ever. The next export removes
    those whose owner process has ended and that are old; a live export's files and young ones stay."""
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = make_run(runs, data_root, name="m", head="classic")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead, live = ended.pid, os.getppid()
    two_hours_ago, two_days_ago = time.time() - 7200, time.time() - 2 * 86400
    os.makedirs(exports)
    for name, when in [(f".tmp-m-fp32-pid{dead}-a1b2c3.onnx", two_hours_ago),
                       (f".tmp-quant-pid{dead}-d4e5f6", two_hours_ago),
                       (".tmp-m-fp32-k9x8y7.onnx", two_days_ago),  # no owner in the name: an older toolkit's
                       (f".tmp-m-fp16-pid{live}-g7h8i9.onnx", two_hours_ago),  # its owner still runs
                       (f".tmp-m-raw-pid{dead}-j1k2l3.onnx", time.time()),  # young
                       (".tmp-m-int8-m4n5o6.onnx", two_hours_ago),  # no owner, not a day old
                       (".tmp-notes.txt", two_days_ago),  # not an export's temp file
                       # the work folders of --format web, tflite and triton (they were never removed)
                       (f".tmp-web-pid{dead}-p1q2r3", two_hours_ago), (f".tmp-tflite-pid{dead}-s4t5u6", two_hours_ago),
                       (f".tmp-triton-pid{dead}-v7w8x9", two_hours_ago)]:
        path = exports / name
        if not name.endswith((".onnx", ".txt")):
            os.makedirs(path)
            (path / "preprocessed.onnx").write_bytes(b"x" * 1000)
        else:
            path.write_bytes(b"x" * 1000)
        os.utime(path, (when, when))
    export_mod.export_run(run_dir, exports_dir=str(exports), runs_dir=str(runs))
    out = capsys.readouterr().out
    assert f"removed 6 temp file(s) left in {exports} by an export that was killed" in out, out
    left = sorted(f for f in os.listdir(exports) if f.startswith(".tmp-"))
    assert left == sorted([f".tmp-m-fp16-pid{live}-g7h8i9.onnx", f".tmp-m-raw-pid{dead}-j1k2l3.onnx",
                           ".tmp-m-int8-m4n5o6.onnx", ".tmp-notes.txt"]), left
    assert os.path.isfile(exports / "m.onnx") and os.path.isfile(exports / "m.report.json")


def test_a_checkpoint_saved_inside_an_epoch_is_said(tmp_path, data_root):
    """An interrupted run (last.pt only, stopped at a batch) exported without a word that it was never validated."""
    import dataclasses as dc
    from toolkit.export.options import ExportOptions
    from toolkit.export.plan import plan_export
    from toolkit.train.checkpoint import load_checkpoint
    from toolkit.train.state import RunState

    run_dir = make_run(tmp_path / "runs", data_root, name="cut")
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    state = load_checkpoint(last)
    state["run_state"] = dc.asdict(RunState(epoch=0, step_in_epoch=2, global_step=2))
    save_checkpoint(last, state)
    os.remove(os.path.join(run_dir, "checkpoints", "best.pt"))
    said = []
    plan_export(ExportOptions.of(run=run_dir, exports_dir=str(tmp_path / "exports")), said.append)
    assert any(line.startswith(f"note: {last} was saved inside epoch 1 (after batch 2) and never validated")
               for line in said), said


def test_a_long_output_name_gets_temp_files_the_file_system_takes(tmp_path):
    """--out with a legal 245-character name failed with "File name too long" on its temp file (~37 more)."""
    from toolkit.export.staging import Staging

    path = str(tmp_path / ("L" * 245 + ".onnx"))
    with Staging(path, None) as staging:
        tmp = staging.new("fp32")
        assert os.path.isfile(tmp) and len(os.path.basename(tmp)) < 200
    assert os.listdir(tmp_path) == []


def test_stale_temps_of_a_folder_not_made_yet_are_none():
    from toolkit.export.staging import remove_stale_temps

    assert remove_stale_temps("/nonexistent/exports/triton-parent", print) == []


def test_a_file_size_limit_is_not_called_a_full_disk(tmp_path):
    """Under `ulimit -f` (or FAT32's 4 GB) export said the disk was full, with 39 GB free."""
    import errno

    from toolkit.export.staging import writing

    with pytest.raises(UserError) as info:
        with writing(str(tmp_path / "m.onnx")):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    text = str(info.value)
    assert "(File too large)" in text and "larger than the file system or a limit" in text and "full" not in text
    with pytest.raises(UserError, match="the disk holding .* is full"):
        with writing(str(tmp_path / "m.onnx")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
