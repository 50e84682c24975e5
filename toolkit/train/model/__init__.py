"""Backbones + heads, pretrained weights, layer groups, freezing and discriminative learning rates.

A `Classifier` is a backbone (any torchvision VGG, MobileNetV3, EfficientNet-B0, ResNet-18/50,
ConvNeXt-Tiny, or timm's EfficientNet-Lite0; toolkit.recipe.archs lists them) kept unit by unit as
`features`, followed by one of two heads:

    classic  Flatten -> Linear(512*(s/32)^2, hidden) -> ReLU -> Dropout -> Linear(hidden, classes)
             (VGG only; the flatten fixes the input size s, a multiple of 32)
    gap      AdaptiveAvgPool2d(1) -> Flatten -> Dropout -> Linear(features, classes)   (any input >= 32)

Layer groups: five blocks, block1 (next to the image) .. block5, plus the head: VGG splits at each
MaxPool, the other families by stride (families.py). Each group gets its own learning rate (head =
train.lr, each block = the next block's rate x train.lr_decay, or explicit train.group_lrs) and is
trainable or frozen per strategy and epoch. Frozen groups keep requires_grad False and their
BatchNorm layers in eval mode, so their weights and running statistics stay bit-identical.

Modules: backbones (Classifier, build_model, build_from_recipe), families (each arch's units and blocks),
groups (layer groups, freezing, learning rates, optimizer parameter groups, the group table), weights
(load_weights: imagenet, .pth, checkpoint; model_from_checkpoint: a trained model back from its checkpoint).
"""
from toolkit.recipe import ARCHS, GROUPS, HEADS
from toolkit.train.model.backbones import Classifier, build_from_recipe, build_model
from toolkit.train.model.groups import (apply_frozen_bn_eval, group_learning_rates, group_of,
                                        group_params, lr_scale, optimizer_param_groups, param_group_table,
                                        set_trainable, trainable_from, trainable_groups)
from toolkit.train.model.weights import CHECKPOINT_FORMAT, load_weights, model_from_checkpoint

__all__ = [
    "ARCHS", "GROUPS", "HEADS", "Classifier", "build_from_recipe", "build_model", "apply_frozen_bn_eval",
    "group_learning_rates", "group_of", "group_params", "lr_scale", "optimizer_param_groups",
    "param_group_table", "set_trainable", "trainable_from", "trainable_groups", "CHECKPOINT_FORMAT",
    "load_weights", "model_from_checkpoint",
]
