"""Shared test helpers: tiny learnable image folders, tiny recipes (vgg11, 32 px, CPU, no network) and
tiny ONNX models that follow the ONNX file contract (toolkit.contract), built without torch."""
import os
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Subprocesses started by tests import the checkout under test, installed or not.
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40)]


def make_image_folder(root, classes=3, per_class=8, size=(48, 40), splits=None, seed=0) -> str:
    """root/[split/]class_k/img_i.jpg: each class a colour with noise, so a tiny net can learn it."""
    rng = np.random.default_rng(seed)
    for split in splits or [None]:
        for k in range(classes):
            folder = os.path.join(root, split, f"class_{k}") if split else os.path.join(root, f"class_{k}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                base = np.array(COLOURS[k % len(COLOURS)], np.float32)
                pixels = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"img_{i}.jpg"), quality=90)
    return str(root)


def tiny_recipe(tmp_path, image_root, **sections) -> dict:
    """A raw recipe dict for a seconds-long CPU run; `sections` update it key by key."""
    raw = {
        "name": "tiny", "seed": 0, "out_dir": str(tmp_path / "runs"),
        "data": {"source": "folder", "root": str(image_root), "val_fraction": 0.25, "workers": 0},
        "preprocess": {"resize": 32, "crop": 32},
        "model": {"arch": "vgg11", "weights": "none", "head": "classic", "hidden": 32},
        "train": {"strategy": "scratch", "epochs": 2, "batch_size": 4, "lr": 0.01, "lr_decay": 1.0,
                  "deterministic": True, "device": "cpu"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def write_recipe(path, raw) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh)
    return str(path)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images")


# ------------------------------------------------------------------------------------------------
# Tiny ONNX models (onnx.helper only: no torch, so the runtime tests run on the base install)

TINY_SEED = 0


def _tiny_layers(first, weights):
    """The float body of tiny_graph from tensor `first` (NCHW, normalised) to `logits`."""
    from onnx import helper

    return [
        helper.make_node("Conv", [first, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]


def _make_model(nodes, inputs, outputs, weights):
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "tiny", inputs, outputs,
                              [numpy_helper.from_array(a, name) for name, a in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _centre_logits(weights, crop, rng):
    """Set the Gemm bias to minus the logits of the mean feature over smooth random images, so that
    different images get different top-1 classes (random weights alone give every image one class)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    weights["b3"] = np.zeros(len(weights["b3"]), np.float32)
    probe = _make_model(_tiny_layers("input", weights),
                        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, crop, crop])],
                        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])], weights)
    coarse = rng.standard_normal((16, 3, 4, 4)).astype(np.float32)
    images = np.kron(coarse, np.ones((1, 1, -(-crop // 4), -(-crop // 4)), np.float32))[:, :, :crop, :crop]
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    weights["b3"] = -session.run(["logits"], {"input": np.ascontiguousarray(images)})[0].mean(0)


def tiny_graph(crop=32, classes=3, raw=False, batch="batch"):
    """Conv(3->8, 3x3) ReLU MaxPool Conv(8->8, 3x3) ReLU GlobalAveragePool Flatten Gemm(8->classes): no metadata.

    Multiply-accumulates per image (what the benchmark's FLOP count checks):
    crop*crop*8*3*9 + (crop//2)**2*8*8*9 + 8*classes. raw=True takes uint8 NHWC pixels and normalises
    inside the graph (Cast, Transpose, Sub, Div with the ImageNet mean/std of toolkit.preprocess first);
    its logits equal the float model's on the same pixels. `batch` is the batch dimension: a name or an int.
    The weights are fixed (seeded), so two calls give the same model.
    """
    from onnx import TensorProto, helper

    from toolkit.preprocess import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(TINY_SEED)
    shapes = {"w1": (0.5, 8, 3, 3, 3), "b1": (0.1, 8), "w2": (0.3, 8, 8, 3, 3), "b2": (0.1, 8),
              "w3": (2.0, classes, 8), "b3": (0.0, classes)}
    weights = {name: (rng.standard_normal(shape) * scale).astype(np.float32)
               for name, (scale, *shape) in shapes.items()}
    _centre_logits(weights, crop, rng)
    nodes, first = [], "input"
    if raw:
        weights["mean"] = (np.asarray(IMAGENET_MEAN, np.float32) * 255).reshape(1, 3, 1, 1)
        weights["std"] = (np.asarray(IMAGENET_STD, np.float32) * 255).reshape(1, 3, 1, 1)
        nodes = [helper.make_node("Cast", ["input"], ["as_float"], to=TensorProto.FLOAT),
                 helper.make_node("Transpose", ["as_float"], ["nchw"], perm=[0, 3, 1, 2]),
                 helper.make_node("Sub", ["nchw", "mean"], ["centred"]),
                 helper.make_node("Div", ["centred", "std"], ["normalised"])]
        first = "normalised"
    image = (helper.make_tensor_value_info("input", TensorProto.UINT8, [batch, crop, crop, 3]) if raw else
             helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, crop, crop]))
    return _make_model(nodes + _tiny_layers(first, weights), [image],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], weights)


def tiny_metadata(crop=32, labels=("class_0", "class_1", "class_2"), raw=False, precision="fp32",
                  batch="batch") -> dict:
    """The metadata toolkit export writes (toolkit.contract), with test values for provenance."""
    from toolkit.preprocess import Preprocess

    shape = [batch, crop, crop, 3] if raw else [batch, 3, crop, crop]
    return {
        "toolkit_format": "1", "labels": list(labels), "names": {str(i): n for i, n in enumerate(labels)},
        "preprocess": Preprocess(resize=crop + 4, crop=crop).to_dict(),
        "input": {"name": "input", "dtype": "uint8" if raw else "float32", "layout": "NHWC" if raw else "NCHW",
                  "shape": shape, "raw": raw},
        "outputs": ["logits"], "precision": precision, "toolkit_version": "0.1.0",
        "source_run": "runs/tiny", "checkpoint": "runs/tiny/checkpoints/best.pt", "checkpoint_sha256": "0" * 64,
        "recipe": {}, "metrics": {"val_top1": 0.5}, "arch": "tiny", "head": "gap",
    }


def write_tiny_model(path, crop=32, classes=3, raw=False, labels=None, precision="fp32", meta=None,
                     batch="batch") -> str:
    """Write a tiny, valid toolkit export (tiny_graph + tiny_metadata via toolkit.contract.write) to `path`.

    labels: class names (default class_0..; when given, `classes` is len(labels)). precision only labels
    the file (the graph stays float32, like a precision twin copied for a test). meta: keys merged over
    the default metadata; a key set to None is left out (meta={"labels": None} makes a foreign model).
    The preprocessing is Preprocess(resize=crop + 4, crop=crop). Returns str(path)."""
    import onnx

    from toolkit import contract

    labels = list(labels) if labels is not None else [f"class_{i}" for i in range(classes)]
    proto = tiny_graph(crop, len(labels), raw, batch)
    merged = {**tiny_metadata(crop, labels, raw, precision, batch), **(meta or {})}
    contract.write(proto, {k: v for k, v in merged.items() if v is not None})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny fp32 toolkit export (3 classes, 32 px) shared by a test module; don't modify the file."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model") / "tiny.onnx")
