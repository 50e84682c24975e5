"""Backbones + heads, pretrained weights, layer groups, freezing and discriminative learning rates.

A `Classifier` is torchvision's VGG `features` Sequential (indices unchanged, so torchvision state
dicts load as `features.N.*`) followed by one of two heads:

    classic  Flatten -> Linear(512*(s/32)^2, hidden) -> ReLU -> Dropout -> Linear(hidden, classes)
             (the flatten fixes the input size s, a multiple of 32)
    gap      AdaptiveAvgPool2d(1) -> Flatten -> Dropout -> Linear(512, classes)   (any input >= 32)

Layer groups: VGG's features split at each MaxPool into five conv blocks, block1 (next to the
image) .. block5, plus the head. Each group gets its own learning rate (head = train.lr, each block
= the next block's rate x train.lr_decay, or explicit train.group_lrs) and is trainable or frozen
per strategy and epoch. Frozen groups keep requires_grad False and their BatchNorm layers in eval
mode, so their weights and running statistics stay bit-identical.
"""
from __future__ import annotations

import math

import os
import re
from typing import Any, Iterable, Mapping, Optional, Union
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from toolkit.errors import UserError
from toolkit.recipe import ARCHS, GROUPS

HEADS = ("classic", "gap")
CHECKPOINT_FORMAT = "toolkit-checkpoint/1"
# Number of 3x3 convs in each VGG config: used to tell the user which VGG a state dict looks like.
_ARCH_BY_CONVS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
_BN = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d and SyncBatchNorm


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """VGG features + a small head. Attributes: arch, head_type, input_size, num_classes.

    `frozen` is the set of groups that `set_trainable` froze; `train()` keeps their BatchNorm
    layers in eval mode (running statistics untouched), so a training loop can call
    `model.train()` every epoch without undoing the freeze.
    """

    def __init__(self, arch: str, features: nn.Sequential, head: nn.Sequential, head_type: str,
                 input_size: int, num_classes: int):
        super().__init__()
        self.arch, self.head_type = arch, head_type
        self.input_size, self.num_classes = input_size, num_classes
        self.features = features
        self.head = head
        self.block_of = _feature_blocks(features)  # features index -> conv block number (1..5)
        self.frozen: set[str] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode:
            apply_frozen_bn_eval(self)
        return self


def _feature_blocks(features: nn.Sequential) -> dict[int, int]:
    """Map each index of VGG's features to its block: a block ends with (and includes) a MaxPool."""
    out, block = {}, 1
    for i, module in enumerate(features):
        out[i] = block
        if isinstance(module, nn.MaxPool2d):
            block += 1
    if block != 6:
        raise ValueError(f"expected VGG features with 5 max-pools, found {block - 1}")
    return out


def _vgg_features(arch: str) -> nn.Sequential:
    """torchvision's `features` for `arch`, initialised as torchvision's VGG initialises it.

    The model is built on the meta device: VGG's 120M-parameter classifier (which we drop) is
    never allocated or initialised, so building a model costs milliseconds, not seconds.
    """
    with torch.device("meta"):
        vgg = torchvision.models.get_model(arch, weights=None, init_weights=False)
    features = vgg.features.to_empty(device="cpu")
    for m in features.modules():
        if isinstance(m, nn.Conv2d):  # same init as torchvision.models.VGG
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # weight 1, bias 0, fresh running statistics
    return features


def build_model(arch: str, num_classes: int, head: str = "classic", input_size: int = 224,
                hidden: int = 512, dropout: float = 0.5) -> Classifier:
    """A randomly initialised Classifier (load pretrained weights with `load_weights`)."""
    if arch not in ARCHS:
        raise UserError(f"model.arch: {arch!r}; expected one of {', '.join(ARCHS)}")
    if head not in HEADS:
        raise UserError(f"model.head: {head!r}; expected one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise UserError(f"num_classes: {num_classes}; expected at least 1")
    if input_size < 32:
        raise UserError(f"input size (preprocess.crop) {input_size}: VGG halves it five times; "
                        "expected at least 32")
    if head == "classic":
        if input_size % 32:
            raise UserError(f"input size (preprocess.crop) {input_size}: the classic head flattens VGG's 1/32 "
                            "feature map, so it must be a multiple of 32 (or use model.head: gap)")
        side = input_size // 32
        layers = nn.Sequential(nn.Flatten(), nn.Linear(512 * side * side, hidden), nn.ReLU(inplace=True),
                               nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    else:
        layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                               nn.Linear(512, num_classes))
    # Head init: He-normal for the hidden layer (it feeds a ReLU); small weights on the output
    # layer so the first logits are near zero (uniform softmax, a sane first loss).
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    nn.init.normal_(linears[-1].weight, 0.0, 0.01)
    nn.init.zeros_(linears[-1].bias)
    return Classifier(arch, _vgg_features(arch), layers, head, input_size, num_classes)


def build_from_recipe(recipe: Any, num_classes: int) -> Classifier:
    """The Classifier a recipe describes (input size = preprocess.crop); no weights loaded."""
    m = recipe.model
    return build_model(m.arch, num_classes, head=m.head, input_size=recipe.preprocess.crop,
                       hidden=m.hidden, dropout=m.dropout)


# --------------------------------------------------------------------------------------------
# Layer groups, freezing, learning rates
# --------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> Classifier:
    """The Classifier inside DistributedDataParallel (.module) or torch.compile (._orig_mod)."""
    while not isinstance(model, Classifier):
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"expected a toolkit Classifier, got {type(model).__name__}")
        model = inner
    return model


def group_of(model: nn.Module, name: str) -> str:
    """Layer group of a parameter or module name, e.g. 'features.7.weight' -> 'block3'.

    Needs the model because the same index is a different block in vgg11 and vgg11_bn.
    Wrapper prefixes ('module.', '_orig_mod.') are ignored.
    """
    parts = [p for p in name.split(".") if p not in ("module", "_orig_mod")]
    if parts and parts[0] == "head":
        return "head"
    if len(parts) >= 2 and parts[0] == "features" and parts[1].isdigit():
        return f"block{_unwrap(model).block_of[int(parts[1])]}"
    raise ValueError(f"{name!r} is not in a layer group (expected features.N.* or head.*)")


def group_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{group: [parameters]} in GROUPS order; every parameter is in exactly one group."""
    model = _unwrap(model)
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        groups[group_of(model, name)].append(p)
    return groups


_REQUIRED = object()


def _get(cfg: Any, key: str, default: Any = _REQUIRED) -> Any:
    """A train-config value from a TrainConfig dataclass or a plain dict (a checkpoint's recipe); `default`
    for keys that older recipes lack."""
    if default is _REQUIRED:
        return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def group_learning_rates(train_cfg: Any) -> dict[str, float]:
    """Discriminative learning rates, one per group.

    head = train.lr; each block's rate = the next block's rate (toward the head) x train.lr_decay,
    so without overrides block k = lr * lr_decay**(6 - k). Keys in train.group_lrs override their
    group, and the blocks below an overridden group decay from its rate. With train.lr_scaling every
    rate is then scaled for the global batch: x (batch_size / lr_reference_batch), or its square root.
    """
    explicit = dict(_get(train_cfg, "group_lrs") or {})
    unknown = set(explicit) - set(GROUPS)
    if unknown:
        raise UserError(f"train.group_lrs: unknown group {sorted(unknown)[0]!r}; expected {', '.join(GROUPS)}")
    decay = float(_get(train_cfg, "lr_decay"))
    rates = {"head": float(explicit.get("head", _get(train_cfg, "lr")))}
    rate = rates["head"]
    for k in range(5, 0, -1):
        rate = float(explicit.get(f"block{k}", rate * decay))
        rates[f"block{k}"] = rate
    scale = lr_scale(train_cfg)
    return {g: rates[g] * scale for g in GROUPS}


def lr_scale(train_cfg: Any) -> float:
    """The learning-rate scaling rule's factor: 1 without one (and for recipes older than the rule)."""
    rule, reference = _get(train_cfg, "lr_scaling", "none") or "none", _get(train_cfg, "lr_reference_batch", None)
    if rule == "none" or not reference:
        return 1.0
    ratio = float(_get(train_cfg, "batch_size")) / float(reference)
    return ratio if rule == "linear" else math.sqrt(ratio)


def trainable_from(train_cfg: Any) -> dict[str, Optional[int]]:
    """{group: first (0-based) epoch it trains, or None if it never trains} for this strategy.

    linear-probe: head only. scratch: everything. finetune: the head from the start, the blocks in
    train.trainable_blocks after train.freeze_epochs head-only epochs.
    """
    strategy = _get(train_cfg, "strategy")
    out: dict[str, Optional[int]] = {g: None for g in GROUPS}
    out["head"] = 0
    if strategy == "scratch":
        out.update({g: 0 for g in GROUPS})
    elif strategy == "finetune":
        start = int(_get(train_cfg, "freeze_epochs") or 0)
        for b in _get(train_cfg, "trainable_blocks"):
            out[f"block{int(b)}"] = start
    elif strategy != "linear-probe":
        raise UserError(f"train.strategy: {strategy!r}; expected linear-probe, finetune or scratch")
    return out


def trainable_groups(train_cfg: Any, epoch: int) -> set[str]:
    """Groups that train during (0-based) `epoch`."""
    return {g for g, start in trainable_from(train_cfg).items() if start is not None and epoch >= start}


def set_trainable(model: nn.Module, groups: Iterable[str]) -> None:
    """Train exactly `groups`: requires_grad on their parameters, off (and grad cleared) elsewhere.

    Frozen groups' BatchNorm layers go to eval mode now and on every later `model.train()`, so
    their running statistics don't move either.
    """
    model = _unwrap(model)
    groups = set(groups)
    bad = groups - set(GROUPS)
    if bad:
        raise ValueError(f"unknown layer groups {sorted(bad)}; expected {GROUPS}")
    for name, params in group_params(model).items():
        for p in params:
            p.requires_grad_(name in groups)
            if name not in groups:
                p.grad = None  # so no optimizer (momentum, weight decay) touches it
    model.frozen = set(GROUPS) - groups
    if model.training:
        apply_frozen_bn_eval(model)


def apply_frozen_bn_eval(model: nn.Module, frozen: Optional[Iterable[str]] = None) -> None:
    """Put the BatchNorm layers of frozen groups (default: model.frozen) in eval mode.

    Classifier.train() calls this itself; call it directly only for a model you froze by hand.
    """
    model = _unwrap(model)
    frozen = set(model.frozen if frozen is None else frozen)
    for name, module in model.named_modules():
        if isinstance(module, _BN) and group_of(model, name) in frozen:
            module.eval()


def optimizer_param_groups(model: nn.Module, lrs: Mapping[str, float], weight_decay: float,
                           groups: Optional[Iterable[str]] = None) -> list[dict]:
    """Parameter groups for torch.optim: one per layer group (default: all six), split in two.

    '<group>' holds weights (with weight decay); '<group>.no_decay' holds biases and BatchNorm
    parameters (no weight decay). Each dict carries 'name', 'group' (the layer group), 'lr' and
    'base_lr' (the unscheduled rate). Pass every group that will train at some point of the run
    (the default, all, is fine): frozen parameters have no grad, so the optimizer skips them, and
    the optimizer never has to change mid-run.
    """
    wanted = set(GROUPS if groups is None else groups)
    out = []
    for name, params in group_params(model).items():
        if name not in wanted:
            continue
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for suffix, ps, wd in (("", decay, weight_decay), (".no_decay", no_decay, 0.0)):
            if ps:
                out.append({"params": ps, "name": name + suffix, "group": name, "lr": float(lrs[name]),
                            "base_lr": float(lrs[name]), "weight_decay": float(wd)})
    return out


def _describe_modules(modules: list[nn.Module]) -> str:
    """'conv 3->64 +bn, conv 64->64 +bn' ... consecutive repeats collapsed to 'x2'."""
    parts: list[str] = []
    for m in modules:
        if isinstance(m, nn.Conv2d):
            parts.append(f"conv {m.in_channels}->{m.out_channels}")
        elif isinstance(m, _BN) and parts:
            parts[-1] += " +bn"
        elif isinstance(m, nn.Linear):
            parts.append(f"linear {m.in_features}->{m.out_features}")
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            parts.append("avgpool")
    runs: list[list] = []
    for p in parts:
        if runs and runs[-1][0] == p:
            runs[-1][1] += 1
        else:
            runs.append([p, 1])
    return ", ".join(p if n == 1 else f"{p} x{n}" for p, n in runs)


def param_group_table(model: nn.Module, lrs: Mapping[str, float],
                      trainable: Union[Iterable[str], Mapping[str, Optional[int]]]) -> str:
    """Aligned text table: group | lr | params | trainable | layers, plus a total line.

    `trainable` is a set of group names (yes/no), or `trainable_from(train_cfg)` to show when each
    group starts training ('from epoch 3', epochs counted from 1).
    """
    model = _unwrap(model)
    if isinstance(trainable, Mapping):
        when = {g: "no" if s is None else "yes" if s == 0 else f"from epoch {s + 1}"
                for g, s in ((g, trainable.get(g)) for g in GROUPS)}
    else:
        on = set(trainable)
        when = {g: "yes" if g in on else "no" for g in GROUPS}
    modules: dict[str, list[nn.Module]] = {g: [] for g in GROUPS}
    for i, m in enumerate(model.features):
        modules[f"block{model.block_of[i]}"].append(m)
    modules["head"] = list(model.head)
    params = group_params(model)
    rows = [("group", "lr", "params", "trainable", "layers")]
    total = total_on = 0
    for g in GROUPS:
        n = sum(p.numel() for p in params[g])
        total += n
        total_on += n if when[g] != "no" else 0
        rows.append((g, f"{lrs[g]:.3g}", f"{n:,}", when[g], _describe_modules(modules[g])))
    rows.append(("total", "", f"{total:,}", "", f"{total_on:,} of them train"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]),
                 r[3].ljust(widths[3]), r[4]]
        lines.append("  ".join(cells).rstrip())
    title = f"{model.arch}, {model.head_type} head, input {model.input_size}px, {model.num_classes} classes"
    return title + "\n" + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


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


def _features_of(state: Mapping[str, Any]) -> dict[str, Any]:
    """The features.* entries of a state dict, prefix stripped; also accepts a features-only dict."""
    state = _strip_wrappers(state)
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats and state and all(re.match(r"\d+\.", k) for k in state):
        feats = dict(state)  # saved as vgg.features.state_dict()
    return feats


def _load_features(model: Classifier, state: Mapping[str, Any], what: str) -> None:
    """Load VGG features from `state` or raise one UserError naming the first problem."""
    feats = _features_of(state)
    if not feats:
        keys = ", ".join(list(state)[:3]) or "none"
        raise UserError(f"model.weights: {what} holds no VGG features (features.N.*; its first keys: {keys}); "
                        f"expected a torchvision {model.arch} state dict")
    problems = _mismatch(feats, model.features.state_dict(), "features.")
    if problems:
        guess = _guess_arch(feats)
        hint = f"; it looks like a {guess} state dict" if guess and guess != model.arch else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"model.weights: {what} does not fit {model.arch}: {problems[0]}{more}{hint}")
    model.features.load_state_dict(feats)


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


def _load_imagenet(model: Classifier, arch: str) -> str:
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
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

    weights: 'imagenet' (torchvision's IMAGENET1K_V1, from/into torch hub's cache), 'none', a
    torchvision state dict file (.pth/.pt, full VGG or features only; its classifier is ignored),
    or a toolkit checkpoint (source-to-target transfer: features always, the head too when it has
    the same shapes and the same `labels` as the target). Every problem is a UserError.
    """
    model = _unwrap(model)
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
