"""Export parity for every backbone family: a 1-epoch run at 64 px on a tiny folder, then export_run with
its parity gate and FP16 twin; the file carries the arch's preprocessing and head. All but EfficientNet-Lite0
(folder.yaml's backbone, a few seconds) are in the slow tier."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import make_image_folder, tiny_recipe  # noqa: E402
from toolkit import recipe as recipe_mod  # noqa: E402
from toolkit.export import pipeline as export_mod  # noqa: E402
from toolkit.preprocess import Preprocess  # noqa: E402
from toolkit.recipe.archs import ARCH_TABLE  # noqa: E402
from toolkit.runtime.onnx_eval import cpu_session, read_metadata  # noqa: E402
from toolkit.train.loop import train  # noqa: E402

slow = pytest.mark.slow
ARCHS = [pytest.param("mobilenet_v3_small", marks=slow), "efficientnet_lite0", pytest.param("resnet18", marks=slow),
         pytest.param("mobilenet_v3_large", marks=slow), pytest.param("efficientnet_b0", marks=slow),
         pytest.param("resnet50", marks=slow), pytest.param("convnext_tiny", marks=slow)]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), classes=3, per_class=6, size=(72, 80))


@pytest.mark.parametrize("arch", ARCHS)
def test_export_parity_per_arch(tmp_path, image_root, arch):
    raw = tiny_recipe(tmp_path, image_root, name=arch,
                      preprocess={"resize": 72, "crop": 64},  # mean, std, interpolation: the arch's
                      model={"arch": arch, "weights": "none", "head": None, "hidden": None},
                      train={"epochs": 1, "batch_size": 6, "lr_decay": 0.5})
    train(recipe_mod.from_dict(raw), quiet=True)
    groups = (tmp_path / "runs" / arch / "param_groups.txt").read_text()
    assert all(g in groups for g in ("block1", "block5", "head")) and arch in groups
    report = export_mod.export_run(str(tmp_path / "runs" / arch), exports_dir=str(tmp_path / "exports"),
                                   runs_dir=str(tmp_path / "runs"), fp16=True, quiet=True)
    assert report["parity"]["fp32"]["top1_agreement"] == 1.0  # the gate passed and says so
    meta = read_metadata(report["model"])
    info = ARCH_TABLE[arch]
    assert (meta["arch"], meta["head"]) == (arch, "gap")
    pre = meta["preprocess"]
    assert (pre["crop"], pre["interpolation"], pre["mean"], pre["std"]) == (64, info.interpolation, list(info.mean),
                                                                            list(info.std))
    # the ONNX file gives the checkpoint's logits on a real image, through the arch's own transform
    from toolkit.train.model import model_from_checkpoint

    model, _ = model_from_checkpoint(str(tmp_path / "runs" / arch / "checkpoints" / "best.pt"))
    images = sorted(pathlib.Path(image_root).glob("**/*.jpg"))[:2]
    assert len(images) == 2  # the comparison runs on real images, never on none
    x = Preprocess.from_model(report["model"]).batch([str(p) for p in images])
    session = cpu_session(report["model"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model.float().eval()(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, atol=1e-3)
    assert "fp16" in report["files"]


@slow
def test_lite0_int8_keeps_its_tf_same_padding(tmp_path, image_root):
    """EfficientNet-Lite0's TF-"SAME" pads are computed from the input's shape; quantized, they came back one pixel
    short and shifted every stride-2 stage (the 32-point INT8 collapse). The INT8 twin must keep FP32's top-1."""
    import onnx

    from toolkit.export.quantize import Int8Setting, calibration_reader, prepare, quantize

    raw = tiny_recipe(tmp_path, image_root, name="lite0", preprocess={"resize": 72, "crop": 64},
                      model={"arch": "efficientnet_lite0", "weights": "none", "head": None, "hidden": None},
                      train={"epochs": 1, "batch_size": 6, "lr_decay": 0.5})
    train(recipe_mod.from_dict(raw), quiet=True)
    report = export_mod.export_run(str(tmp_path / "runs" / "lite0"), exports_dir=str(tmp_path / "exports"),
                                   runs_dir=str(tmp_path / "runs"), quiet=True)
    pre = Preprocess.from_model(report["model"])
    pixels = np.stack([pre.pixels(str(p)) for p in sorted(pathlib.Path(image_root).glob("**/*.jpg"))])
    prepared = prepare(report["model"], str(tmp_path), [], {})
    assert len(prepared.shape_nodes) > 100  # five stride-2 convs, each with its pad arithmetic
    out = str(tmp_path / "int8.onnx")
    quantize(prepared, Int8Setting(True, "minmax", False), calibration_reader(pixels, pre), out)
    shape_tensors = {o for n in onnx.load(prepared.path).graph.node if n.name in prepared.shape_nodes for o in n.output}
    assert not [n.name for n in onnx.load(out).graph.node if n.op_type == "QuantizeLinear"
                and n.input[0] in shape_tensors]
    fp32, int8 = (cpu_session(p).run(["logits"], {"input": pre.normalize(pixels)})[0] for p in (report["model"], out))
    centred = [a - a.mean(1, keepdims=True) for a in (fp32, int8)]
    assert np.corrcoef(centred[0].ravel(), centred[1].ravel())[0, 1] > 0.9
