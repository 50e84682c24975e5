"""Backbone families: each arch's layers as a flat list of units, in forward order, image first.

A unit keeps its name in the torchvision or timm model ('features.3', 'layer2', 'blocks.4'), so their
state dicts map onto a Classifier's `features.N.*` unit by unit (toolkit.train.model.weights).

Layer groups (the same five blocks + head for every family, see toolkit.recipe.archs):
    VGG        block k = the convs up to and including the k-th max-pool (torchvision's layout, as ever)
    the rest   block1 = the stem; every later unit goes to block k when its output is at 1/2^k of the
               input: ResNet conv1/bn1 | maxpool+layer1 | layer2 | layer3 | layer4; MobileNetV3,
               EfficientNet-B0 and Lite0 split their stages by stride the same way; ConvNeXt's stem
               patchifies straight to 1/4, so its block1 is the stem and blocks 2-5 its four stages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torchvision
from torch import nn

from toolkit.errors import UserError
from toolkit.recipe.archs import LITE_EXTRA, arch_info

_RESNET_UNITS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_LITE_UNITS = ("conv_stem", "bn1", *(f"blocks.{i}" for i in range(7)), "conv_head", "bn2")


@dataclass
class Backbone:
    """What a family builder returns."""
    units: list[tuple[str, nn.Module]]  # (name in the torchvision/timm model, module), in forward order
    head_norm: Optional[nn.Module] = None  # applied after pooling (ConvNeXt's LayerNorm2d), else None
    head_norm_source: str = ""  # its name in the torchvision model, so imagenet weights fill it
    block_of: dict[int, int] = field(default_factory=dict)  # unit index -> block number (1..5)
    channels: int = 0  # channels of the last unit's output: the head's input


def vgg_features(arch: str) -> nn.Sequential:
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


def vgg_blocks(features: nn.Sequential) -> dict[int, int]:
    """Map each index of VGG's features to its block: a block ends with (and includes) a MaxPool."""
    out, block = {}, 1
    for i, module in enumerate(features):
        out[i] = block
        if isinstance(module, nn.MaxPool2d):
            block += 1
    if block != 6:
        raise ValueError(f"expected VGG features with 5 max-pools, found {block - 1}")
    return out


def _timm_lite0() -> nn.Module:
    try:
        import timm  # the [lite] extra; only this arch needs it
    except ImportError:
        raise UserError(f"model.arch: efficientnet_lite0 is built by timm, which is not installed; "
                        f"{LITE_EXTRA}") from None
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _stride_blocks(units: list[tuple[str, nn.Module]]) -> tuple[dict[int, int], int]:
    """(unit -> block, output channels) from one 64 px forward in eval mode: the stem (unit 0) is block1,
    every other unit is block k when its output is at 1/2^k of the input."""
    size, x, block_of = 64, torch.zeros(1, 3, 64, 64), {}
    seq = nn.Sequential(*(m for _, m in units)).eval()
    with torch.no_grad():
        for i, unit in enumerate(seq):
            x = unit(x)
            block_of[i] = 1 if i == 0 else max(1, round(math.log2(size / x.shape[-1])))
    seq.train()
    if sorted(set(block_of.values())) != [1, 2, 3, 4, 5]:
        raise ValueError(f"expected units at strides 2..32, got blocks {sorted(set(block_of.values()))}")
    return block_of, int(x.shape[1])


def build_backbone(arch: str) -> Backbone:
    """The randomly initialised backbone of `arch` (torchvision's / timm's own init)."""
    family = arch_info(arch).family
    if family == "vgg":
        features = vgg_features(arch)
        return Backbone([(f"features.{i}", m) for i, m in enumerate(features)], block_of=vgg_blocks(features),
                        channels=512)
    head_norm, norm_source = None, ""
    if family == "lite":
        model = _timm_lite0()
        units = [(name, model.get_submodule(name)) for name in _LITE_UNITS]
    else:
        model = torchvision.models.get_model(arch, weights=None)
        if family == "resnet":
            units = [(name, model.get_submodule(name)) for name in _RESNET_UNITS]
        else:  # mobilenet, efficientnet, convnext: torchvision's `features` Sequential
            units = [(f"features.{i}", m) for i, m in enumerate(model.features)]
        if family == "convnext":
            head_norm, norm_source = model.classifier[0], "classifier.0"
    block_of, channels = _stride_blocks(units)
    return Backbone(units, head_norm, norm_source, block_of, channels)
