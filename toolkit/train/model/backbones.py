"""The network: torchvision's VGG `features` plus one of two small heads, as a `Classifier`.

The features Sequential keeps torchvision's indices, so torchvision state dicts load as `features.N.*`.
The head is built here; pretrained weights are loaded by toolkit.train.model.weights.
"""
from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from toolkit.errors import UserError
from toolkit.recipe import ARCHS, HEADS


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
            from toolkit.train.model.groups import apply_frozen_bn_eval  # groups imports this module

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
