"""Layer groups (block1..block5 and head), freezing, discriminative learning rates, optimizer groups.

Every backbone splits into five blocks, block1 (next to the image) .. block5, plus the head: VGG at each
MaxPool, the other families by stride (toolkit.train.model.families); a Classifier's `block_of` holds it. Each group gets its own learning rate and is trainable or frozen per strategy and epoch.
Frozen groups keep requires_grad False and their BatchNorm layers in eval mode, so their weights and
running statistics stay bit-identical.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Union

from torch import nn

from toolkit.errors import UserError
from toolkit.recipe import GROUPS
from toolkit.train.model.backbones import BATCH_NORM, unwrap


def group_of(model: nn.Module, name: str) -> str:
    """Layer group of a parameter or module name, e.g. 'features.7.weight' -> 'block3'.

    Needs the model because the same index is a different block in vgg11 and vgg11_bn.
    Wrapper prefixes ('module.', '_orig_mod.') are ignored.
    """
    parts = [p for p in name.split(".") if p not in ("module", "_orig_mod")]
    if parts and parts[0] == "head":
        return "head"
    if len(parts) >= 2 and parts[0] == "features" and parts[1].isdigit():
        return f"block{unwrap(model).block_of[int(parts[1])]}"
    raise ValueError(f"{name!r} is not in a layer group (expected features.N.* or head.*)")


def group_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{group: [parameters]} in GROUPS order; every parameter is in exactly one group."""
    model = unwrap(model)
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
    model = unwrap(model)
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
    unwrap(model).frozen_bn_eval(frozen)


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


def _leaves_and_blocks(modules: list[nn.Module]) -> list[nn.Module]:
    """Sequentials opened up (torchvision's Conv2dNormActivation, a stage of blocks); other modules kept."""
    out: list[nn.Module] = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            out += _leaves_and_blocks(list(m))
        else:
            out.append(m)
    return out


def _block_text(m: nn.Module) -> str:
    """'InvertedResidual 16->24': a residual block by its class and its first conv's in, last conv's out."""
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    return f"{type(m).__name__} {convs[0].in_channels}->{convs[-1].out_channels}" if convs else type(m).__name__


def _describe_modules(modules: list[nn.Module]) -> str:
    """'conv 3->64 +bn, conv 64->64 +bn', 'BasicBlock 64->64 x2' ... consecutive repeats collapsed to 'x2'."""
    parts: list[str] = []
    for m in _leaves_and_blocks(modules):
        if isinstance(m, nn.Conv2d):
            parts.append(f"conv {m.in_channels}->{m.out_channels}")
        elif isinstance(m, BATCH_NORM) and parts:
            parts[-1] += " +bn"
        elif isinstance(m, nn.Linear):
            parts.append(f"linear {m.in_features}->{m.out_features}")
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            parts.append("avgpool")
        elif isinstance(m, nn.LayerNorm) and parts:
            parts[-1] += " +ln"
        elif any(True for _ in m.children()):
            parts.append(_block_text(m))
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
    model = unwrap(model)
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
