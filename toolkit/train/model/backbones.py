"""The network: a backbone (toolkit.train.model.families) plus one of two small heads, as a `Classifier`.

`features` is the backbone as a Sequential of units (VGG: torchvision's `features`, indices unchanged);
`source_names` keeps each unit's name in the torchvision/timm model, so their state dicts map onto it.
The head is built here; pretrained weights are loaded by toolkit.train.model.weights.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from toolkit.errors import UserError
from toolkit.recipe import ARCHS, HEADS
from toolkit.recipe.archs import CLASSIC_HIDDEN, FAMILY_NAMES, arch_info
from toolkit.train.model.families import Backbone, build_backbone

BATCH_NORM = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d and SyncBatchNorm


class Classifier(nn.Module):
    """Backbone units + a small head. Attributes: arch, family, head_type, input_size, num_classes;
    block_of (features index -> block 1..5), source_names (features index -> torchvision/timm name) and
    head_sources (torchvision name -> head index, for ConvNeXt's pretrained LayerNorm).

    `frozen` is the set of groups that `set_trainable` froze; `train()` keeps their BatchNorm
    layers in eval mode (running statistics untouched), so a training loop can call
    `model.train()` every epoch without undoing the freeze.
    """

    def __init__(self, arch: str, backbone: Backbone, head: nn.Sequential, head_type: str,
                 input_size: int, num_classes: int, head_sources: Optional[dict[str, str]] = None):
        super().__init__()
        self.arch, self.family, self.head_type = arch, arch_info(arch).family, head_type
        self.input_size, self.num_classes = input_size, num_classes
        self.features = nn.Sequential(*(m for _, m in backbone.units))
        self.head = head
        self.block_of = dict(backbone.block_of)  # features index -> block number (1..5)
        self.source_names = [name for name, _ in backbone.units]
        self.head_sources = dict(head_sources or {})
        self.frozen: set[str] = set()
        self.freeze_bn = False  # train.freeze_bn: every BatchNorm layer in eval mode, not only the frozen groups'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode:
            self.frozen_bn_eval()
        return self

    def frozen_bn_eval(self, frozen=None) -> None:
        """Put the BatchNorm layers of the frozen groups (default: self.frozen; every group with
        self.freeze_bn) in eval mode."""
        frozen = set(self.frozen if frozen is None else frozen)
        parts = [(f"block{self.block_of[i]}", unit) for i, unit in enumerate(self.features)] + [("head", self.head)]
        for group, part in parts:
            if self.freeze_bn or group in frozen:
                for module in part.modules():
                    if isinstance(module, BATCH_NORM):
                        module.eval()


def _check_args(arch: str, num_classes: int, head: str, input_size: int) -> None:
    if arch not in ARCHS:
        raise UserError(f"model.arch: {arch!r}; expected one of {', '.join(ARCHS)}")
    if head not in HEADS:
        raise UserError(f"model.head: {head!r}; expected one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise UserError(f"num_classes: {num_classes}; expected at least 1")
    family = arch_info(arch).family
    if head == "classic" and family != "vgg":
        raise UserError(f"model.head: classic with model.arch {arch}: the classic head is VGG-only; "
                        f"{FAMILY_NAMES[family]} uses the gap head")
    if input_size < 32:
        raise UserError(f"input size (preprocess.crop) {input_size}: {arch} halves it five times; "
                        "expected at least 32")
    if head == "classic" and input_size % 32:
        raise UserError(f"input size (preprocess.crop) {input_size}: the classic head flattens VGG's 1/32 "
                        "feature map, so it must be a multiple of 32 (or use model.head: gap)")


def build_model(arch: str, num_classes: int, head: Optional[str] = None, input_size: int = 224,
                hidden: Optional[int] = None, dropout: float = 0.5) -> Classifier:
    """A randomly initialised Classifier (load pretrained weights with `load_weights`).

    head None is the arch's default (classic for VGG, gap elsewhere); hidden None is 512."""
    head = head or (arch_info(arch).head if arch in ARCHS else "gap")
    _check_args(arch, num_classes, head, input_size)
    backbone = build_backbone(arch)
    head_sources = {}
    if head == "classic":
        side, hidden = input_size // 32, hidden or CLASSIC_HIDDEN
        layers = nn.Sequential(nn.Flatten(), nn.Linear(backbone.channels * side * side, hidden),
                               nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    elif backbone.head_norm is not None:  # ConvNeXt: pool, then its LayerNorm, as torchvision's classifier
        layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), backbone.head_norm, nn.Flatten(), nn.Dropout(dropout),
                               nn.Linear(backbone.channels, num_classes))
        head_sources = {backbone.head_norm_source: "1"}
    else:
        layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                               nn.Linear(backbone.channels, num_classes))
    # Head init: He-normal for the hidden layer (it feeds a ReLU); small weights on the output
    # layer so the first logits are near zero (uniform softmax, a sane first loss).
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    nn.init.normal_(linears[-1].weight, 0.0, 0.01)
    nn.init.zeros_(linears[-1].bias)
    return Classifier(arch, backbone, layers, head, input_size, num_classes, head_sources)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
SCRATCH_BN_MOMENTUM = 0.1  # torch's default; torchvision's MobileNetV3 sets 0.01, tuned for 600-epoch ImageNet runs


def build_from_recipe(recipe: Any, num_classes: int) -> Classifier:
    """The Classifier a recipe describes (input size = preprocess.crop, train.freeze_bn); no weights loaded.

    From random weights (model.weights: none), BatchNorm's running statistics follow at least at
    SCRATCH_BN_MOMENTUM: at torchvision MobileNetV3's 0.01, a run of a few hundred steps evaluates with
    statistics still near their initial values, at chance accuracy, however well it trains."""
    m = recipe.model
    model = build_model(m.arch, num_classes, head=m.head, input_size=recipe.preprocess.crop,
                        hidden=m.hidden, dropout=m.dropout)
    model.freeze_bn = recipe.train.freeze_bn
    if str(m.weights) == "none":
        for module in model.modules():
            if isinstance(module, BATCH_NORMS) and (module.momentum or 1) < SCRATCH_BN_MOMENTUM:
                module.momentum = SCRATCH_BN_MOMENTUM
    return model


def unwrap(model: nn.Module) -> Classifier:
    """The Classifier inside DistributedDataParallel (.module) or torch.compile (._orig_mod)."""
    while not isinstance(model, Classifier):
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"expected a toolkit Classifier, got {type(model).__name__}")
        model = inner
    return model
