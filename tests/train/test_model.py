"""toolkit.train.model: heads, layer groups, discriminative LRs, freezing, weight loading (CPU, tiny, offline)."""
import os
import urllib.error
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn

from toolkit.train import model as M
from toolkit.train.model.families import vgg_features
from toolkit.errors import UserError


def cfg(**kw):
    """A train config like recipe.TrainConfig, with only the keys model.py reads."""
    base = dict(strategy="finetune", trainable_blocks=[1, 2, 3, 4, 5], freeze_epochs=0, lr=0.01,
                lr_decay=0.5, group_lrs=None)
    base.update(kw)
    return SimpleNamespace(**base)


def features_equal(a, b):
    sa, sb = a.features.state_dict(), b.features.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_gap_head_any_input_size(arch):
    m = M.build_model(arch, 3, head="gap", input_size=32).eval()
    with torch.no_grad():
        for size in (32, 64, 96):
            assert m(torch.randn(2, 3, size, size)).shape == (2, 3)
    assert (m.arch, m.head_type, m.input_size, m.num_classes) == (arch, "gap", 32, 3)


def test_classic_head_fixes_input_size():
    m = M.build_model("vgg11", 4, head="classic", input_size=64, hidden=16).eval()
    assert [type(x) for x in m.head] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert m.head[1].in_features == 512 * 2 * 2 and m.head[1].out_features == 16
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 4)
        with pytest.raises(RuntimeError):
            m(torch.randn(2, 3, 96, 96))
    with pytest.raises(UserError, match="multiple of 32"):
        M.build_model("vgg11", 4, head="classic", input_size=48)


def test_bad_arch_and_head_are_user_errors():
    with pytest.raises(UserError, match="model.arch"):
        M.build_model("resnet7", 2)
    with pytest.raises(UserError, match="model.head"):
        M.build_model("vgg11", 2, head="mlp")


def test_features_keep_torchvision_layout():
    with torch.device("meta"):
        tv = torchvision.models.get_model("vgg11_bn", weights=None)
    m = M.build_model("vgg11_bn", 2, head="gap", input_size=32)
    tv_keys = {k: v.shape for k, v in tv.state_dict().items() if k.startswith("features.")}
    ours = {f"features.{k}": v.shape for k, v in m.features.state_dict().items()}
    assert ours == tv_keys


def test_build_from_recipe():
    from toolkit.recipe import from_dict
    recipe = from_dict({"data": {"source": "digits"}, "preprocess": {"resize": 64, "crop": 64},
                        "model": {"arch": "vgg11", "weights": "none", "hidden": 8, "dropout": 0.1},
                        "train": {"strategy": "scratch"}})
    m = M.build_from_recipe(recipe, 5)
    assert (m.arch, m.head_type, m.input_size, m.num_classes) == ("vgg11", "classic", 64, 5)
    assert m.head[1].out_features == 8 and m.head[3].p == 0.1 and m.freeze_bn is False
    frozen = from_dict({"data": {"source": "digits"}, "model": {"arch": "resnet18", "weights": "none"},
                        "train": {"strategy": "scratch", "freeze_bn": True}})
    assert M.build_from_recipe(frozen, 5).freeze_bn is True  # training, benchmark --train and DDP alike


def test_batchnorm_from_random_weights_follows_the_batches_at_torchs_rate():
    """torchvision's MobileNetV3 keeps BatchNorm statistics at momentum 0.01; from random weights a short run
    then evaluated at chance (train top-1 70%, validation 10% on the distillation demo)."""
    from toolkit import recipe as recipe_mod

    def momenta(weights):
        recipe = recipe_mod.from_dict({"model": {"arch": "mobilenet_v3_small", "weights": weights, "head": "gap"},
                                       "train": {"strategy": "scratch" if weights == "none" else "finetune"},
                                       "preprocess": {"resize": 32, "crop": 32}}, check_paths=False)
        return {m.momentum for m in M.build_from_recipe(recipe, 3).modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta("none") == {0.1}
    assert momenta("imagenet") == {0.01}  # pretrained statistics move slowly, as torchvision trained them



# ---------------------------------------------------------------------------------- groups
@pytest.mark.parametrize("arch,head", [("vgg11", "classic"), ("vgg11_bn", "gap"), ("vgg16_bn", "gap")])
def test_groups_cover_every_parameter_once(arch, head):
    m = M.build_model(arch, 3, head=head, input_size=32)
    groups = M.group_params(m)
    assert tuple(groups) == M.GROUPS and all(groups.values())
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters()}
    # each block ends with its max-pool: block k has 2**(k-1) * 64 output channels (capped at 512)
    for k in range(1, 6):
        assert groups[f"block{k}"][0].shape[0] == min(64 * 2 ** (k - 1), 512)


def test_group_of_depends_on_arch():
    plain = M.build_model("vgg11", 2, head="gap", input_size=32)
    bn = M.build_model("vgg11_bn", 2, head="gap", input_size=32)
    assert M.group_of(plain, "features.0.weight") == "block1"
    assert M.group_of(plain, "features.3.weight") == "block2"  # conv, relu, pool | conv
    assert M.group_of(bn, "features.3") == "block1"  # conv, bn, relu, pool
    assert M.group_of(bn, "features.4.weight") == "block2"
    assert M.group_of(bn, "module.head.3.bias") == "head"
    with pytest.raises(ValueError):
        M.group_of(bn, "classifier.0.weight")


def test_learning_rates_follow_decay_rule():
    lrs = M.group_learning_rates(cfg(lr=0.01, lr_decay=0.5))
    assert lrs["head"] == 0.01
    for k in range(1, 6):
        assert lrs[f"block{k}"] == pytest.approx(0.01 * 0.5 ** (6 - k))


def test_explicit_group_lrs_override():
    lrs = M.group_learning_rates(cfg(lr=0.01, lr_decay=0.1, group_lrs={"block1": 1e-5, "block4": 2e-3}))
    assert lrs["head"] == 0.01
    assert lrs["block5"] == pytest.approx(1e-3)
    assert lrs["block4"] == 2e-3 and lrs["block1"] == 1e-5
    assert lrs["block3"] == pytest.approx(2e-4) and lrs["block2"] == pytest.approx(2e-5)
    assert M.group_learning_rates(cfg(group_lrs={"head": 0.1}))["head"] == 0.1
    assert M.group_learning_rates({"lr": 1.0, "lr_decay": 1.0, "group_lrs": None}) == dict.fromkeys(M.GROUPS, 1.0)


def test_optimizer_groups_carry_rates_and_skip_decay_on_bias_and_bn():
    m = M.build_model("vgg11_bn", 3, head="gap", input_size=32)
    lrs = M.group_learning_rates(cfg(lr=0.02, lr_decay=0.25))
    groups = M.optimizer_param_groups(m, lrs, weight_decay=1e-3)
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    seen = []
    for g in opt.param_groups:
        layer = g["name"].split(".")[0]
        assert g["group"] == layer and g["lr"] == lrs[layer] and g["base_lr"] == lrs[layer]
        no_decay = g["name"].endswith(".no_decay")
        assert g["weight_decay"] == (0.0 if no_decay else 1e-3)
        assert all((p.ndim <= 1) == no_decay for p in g["params"])
        seen += [id(p) for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in m.parameters())
    assert {g["group"] for g in groups} == set(M.GROUPS)
    only = M.optimizer_param_groups(m, lrs, 0.0, groups={"head", "block5"})
    assert {g["group"] for g in only} == {"head", "block5"}


def test_trainable_groups_per_strategy_and_epoch():
    blocks = {f"block{k}" for k in range(1, 6)}
    assert M.trainable_groups(cfg(strategy="linear-probe"), 0) == {"head"}
    assert M.trainable_groups(cfg(strategy="linear-probe"), 9) == {"head"}
    assert M.trainable_groups(cfg(strategy="scratch", trainable_blocks=[5]), 0) == blocks | {"head"}
    ft = cfg(strategy="finetune", trainable_blocks=[4, 5], freeze_epochs=2)
    assert M.trainable_groups(ft, 0) == M.trainable_groups(ft, 1) == {"head"}
    assert M.trainable_groups(ft, 2) == M.trainable_groups(ft, 7) == {"head", "block4", "block5"}
    assert M.trainable_groups(cfg(freeze_epochs=0), 0) == blocks | {"head"}
    assert M.trainable_from(ft) == {"block1": None, "block2": None, "block3": None,
                                    "block4": 2, "block5": 2, "head": 0}


def test_param_group_table():
    m = M.build_model("vgg11", 3, head="gap", input_size=32)
    lrs = M.group_learning_rates(cfg())
    ft = cfg(trainable_blocks=[5], freeze_epochs=1)
    text = M.param_group_table(m, lrs, M.trainable_from(ft))
    lines = text.splitlines()
    assert lines[1].split()[:4] == ["group", "lr", "params", "trainable"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(M.GROUPS) | {"total"}
    assert "from epoch 2" in rows["block5"] and " no " in rows["block1"] and " yes " in rows["head"]
    assert "0.01" in rows["head"] and "0.000313" in rows["block1"]
    total = sum(p.numel() for p in m.parameters())
    assert f"{total:,}" in rows["total"]
    assert " yes " in M.param_group_table(m, lrs, {"block1", "head"}).splitlines()[2]


# ---------------------------------------------------------------------------------- freezing
def _step(m, opt, n=3):
    for _ in range(n):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(before, m, group):
    """True when every parameter and buffer of `group` is bit-identical to `before`."""
    now = m.state_dict()
    keys = [k for k in now if M.group_of(m, k) == group]
    assert keys
    return all(torch.equal(before[k], now[k]) for k in keys)


@pytest.mark.parametrize("arch,optimizer", [("vgg11_bn", "sgd"), ("vgg11", "adamw")])
def test_frozen_blocks_stay_bit_identical(arch, optimizer):
    torch.manual_seed(0)
    m = M.build_model(arch, 3, head="gap", input_size=32)
    train = cfg(strategy="finetune", trainable_blocks=[4, 5], freeze_epochs=1)
    groups = M.optimizer_param_groups(m, M.group_learning_rates(train), weight_decay=0.05)
    opt = (torch.optim.SGD(groups, lr=0.01, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(groups, lr=0.01))
    start = _snapshot(m)
    for epoch in range(2):
        M.set_trainable(m, M.trainable_groups(train, epoch))
        m.train()  # frozen BN layers stay in eval mode
        bns = [(M.group_of(m, n), mod.training) for n, mod in m.named_modules()
               if isinstance(mod, nn.BatchNorm2d)]
        assert all(training == (g in M.trainable_groups(train, epoch)) for g, training in bns)
        _step(m, opt)
        if epoch == 0:
            assert all(_same(start, m, f"block{k}") for k in range(1, 6))
            assert not _same(start, m, "head")
    assert all(_same(start, m, f"block{k}") for k in (1, 2, 3))
    assert not _same(start, m, "block4") and not _same(start, m, "block5")
    assert all(not p.requires_grad for k in (1, 2, 3) for p in M.group_params(m)[f"block{k}"])


def test_linear_probe_bn_running_stats_frozen():
    m = M.build_model("vgg11_bn", 3, head="gap", input_size=32)
    M.set_trainable(m, {"head"})
    m.train()
    before = _snapshot(m)
    opt = torch.optim.SGD(M.optimizer_param_groups(m, dict.fromkeys(M.GROUPS, 0.1), 0.01), momentum=0.9)
    _step(m, opt, n=2)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items() if k.startswith("features."))
    m.eval()
    assert not any(mod.training for mod in m.modules())


# ---------------------------------------------------------------------------------- weights
def _torchvision_state(arch):
    """A torchvision `arch` state dict: real (random) features, classifier shrunk to keep files small."""
    with torch.device("meta"):
        tv = torchvision.models.get_model(arch, weights=None)
    state = vgg_features(arch).state_dict()
    state = {f"features.{k}": v for k, v in state.items()}
    for k in tv.state_dict():
        if k.startswith("classifier."):
            state[k] = torch.randn(3)  # same keys as torchvision's; the model must ignore them
    assert state.keys() == tv.state_dict().keys()
    return state


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """TORCH_HOME in tmp_path and no network: a download attempt fails like an air-gapped machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_imagenet_weights_from_torch_hub_cache(offline_hub, arch):
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    cached = offline_hub / os.path.basename(urlparse(weights.url).path)
    state = _torchvision_state(arch)
    # torchvision's own _bn files predate num_batches_tracked: the loader must cope.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    m = M.build_model(arch, 3, head="gap", input_size=32)
    text = M.load_weights(m, "imagenet", arch)
    assert "imagenet" in text and str(cached) in text
    loaded = m.features.state_dict()
    assert all(torch.equal(loaded[k[len("features."):]], v) for k, v in state.items() if k.startswith("features."))


def test_imagenet_weights_missing_offline(offline_hub):
    m = M.build_model("vgg11", 3, head="gap", input_size=32)
    with pytest.raises(UserError) as info:
        M.load_weights(m, "imagenet", "vgg11")
    msg = str(info.value)
    assert "vgg11-8a719046.pth" in msg and str(offline_hub) in msg and "network is unreachable" in msg
    assert "\n" not in msg


def test_local_pth_full_and_features_only(tmp_path):
    state = _torchvision_state("vgg11")
    full, feats = tmp_path / "vgg11.pth", tmp_path / "features.pt"
    torch.save(state, full)
    torch.save({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}, feats)
    for path in (full, feats):
        m = M.build_model("vgg11", 3, head="gap", input_size=32)
        assert "features loaded" in M.load_weights(m, str(path), "vgg11")
        assert torch.equal(m.features[0].weight, state["features.0.weight"])


def test_local_pth_of_wrong_arch(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(_torchvision_state("vgg13_bn"), path)
    m = M.build_model("vgg11", 3, head="gap", input_size=32)
    with pytest.raises(UserError) as info:
        M.load_weights(m, str(path), "vgg11")
    msg = str(info.value)
    assert str(path) in msg and "vgg11" in msg and "looks like a vgg13_bn" in msg and "\n" not in msg


def test_corrupt_or_foreign_file(tmp_path):
    m = M.build_model("vgg11", 3, head="gap", input_size=32)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="could not be read"):
        M.load_weights(m, str(bad), "vgg11")
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, foreign)
    with pytest.raises(UserError, match="no VGG features"):
        M.load_weights(m, str(foreign), "vgg11")
    with pytest.raises(UserError, match="not a file"):
        M.load_weights(m, str(tmp_path / "missing.pth"), "vgg11")
    assert "no pretrained" in M.load_weights(m, "none", "vgg11")


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    src = M.build_model("vgg11", 5, head="gap", input_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"format": M.CHECKPOINT_FORMAT, "model": src.state_dict(), "labels": list("01234"),
                "recipe": {"model": {"arch": "vgg11", "head": "gap"}}, "epoch": 3}, path)
    return src, str(path)


def test_checkpoint_transfer_replaces_head_for_new_classes(source_checkpoint):
    src, path = source_checkpoint
    m = M.build_model("vgg11", 5, head="gap", input_size=32)
    new_head = {k: v.clone() for k, v in m.head.state_dict().items()}
    text = M.load_weights(m, path, "vgg11", labels=list("56789"))
    assert "head replaced (source classes 0-4 -> target classes 5-9)" in text
    assert features_equal(m, src)
    assert all(torch.equal(v, new_head[k]) for k, v in m.head.state_dict().items())


def test_checkpoint_same_classes_loads_head(source_checkpoint):
    src, path = source_checkpoint
    m = M.build_model("vgg11", 5, head="gap", input_size=32)
    assert "head loaded" in M.load_weights(m, path, "vgg11", labels=list("01234"))
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in m.state_dict().items())
    classic = M.build_model("vgg11", 5, head="classic", input_size=32, hidden=8)
    assert "source head does not fit" in M.load_weights(classic, path, "vgg11", labels=list("01234"))


def test_checkpoint_arch_mismatch(source_checkpoint):
    _, path = source_checkpoint
    m = M.build_model("vgg13", 5, head="gap", input_size=32)
    with pytest.raises(UserError, match="vgg11 checkpoint but model.arch is vgg13"):
        M.load_weights(m, path, "vgg13", labels=list("01234"))
