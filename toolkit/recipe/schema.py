"""Recipe schema: the allowed values and the dataclasses a recipe YAML file is read into.

Loading and KEY=VALUE overrides are in toolkit.recipe.load, value checks in toolkit.recipe.check.
No torch here (see docs/architecture.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from toolkit.preprocess import DECODE_MODES, DEFAULT_MAX_PIXELS, FIT_MODES, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS
from toolkit.recipe.archs import ARCH_TABLE

ARCHS = tuple(ARCH_TABLE)  # VGG (torchvision), MobileNetV3, EfficientNet-B0, ResNet, ConvNeXt, EfficientNet-Lite0
SOURCES = ("folder", "flowers102", "digits", "fashion_mnist")
HEADS = ("classic", "gap")
STRATEGIES = ("linear-probe", "finetune", "scratch")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("uniform", "balanced")
LR_SCALINGS = ("none", "linear", "sqrt")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")
DISTILL_CACHE = ("auto", "always", "never")
GROUPS = ("block1", "block2", "block3", "block4", "block5", "head")


@dataclass
class DataConfig:
    """recipe `data`: where the images come from and how they are split."""
    source: str = "folder"  # folder | flowers102 | digits
    root: str = "data"  # folder: the image folder; flowers102: where to download it
    download: bool = True  # flowers102: fetch it when missing
    val_fraction: float = 0.2  # held out of train when there is no val/ split
    test_fraction: float = 0.0  # held out of train when there is no test/ split
    classes: Optional[list] = None  # keep only these classes (folder names, or digits 0-9)
    labels_per_class: Optional[int] = None  # keep at most N training images per class
    image_size: int = 32  # digits: the size the 8x8 scans are rendered at
    skip_corrupt: bool = False  # skip unreadable images (reported) instead of stopping
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above this are refused before decoding
    workers: int = 2  # data-loader worker processes
    split_seed: int = 0  # seed of the train/val/test split and the label subsampling
    dedupe: bool = False  # drop exact and near duplicate images (all but one of each group) before the split
    unlabeled: Optional[str] = None  # a folder of photos without labels: only train.teacher labels them


@dataclass
class PreprocessConfig:
    """recipe `preprocess`: the eval transform (toolkit.preprocess.Preprocess), also written into the ONNX file."""
    resize: int = 256  # shorter side, pixels
    crop: int = 224  # square center crop: the network's input size
    interpolation: str = "bilinear"  # resize filter: nearest | bilinear | bicubic | lanczos
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))  # per channel (R, G, B), pixels scaled to 0-1
    std: list = field(default_factory=lambda: list(IMAGENET_STD))  # per channel (R, G, B)
    decode: str = "draft"  # JPEGs: draft (libjpeg scales by 1/2-1/8 while decoding, short side >= resize) | full
    fit: str = "crop"  # crop (short side to resize, centre crop) | letterbox (whole image, mean-colour pad) | squash


@dataclass
class ModelConfig:
    """recipe `model`: backbone, starting weights and head."""
    arch: str = "vgg16"  # one of ARCHS (docs/models.md): any torchvision VGG, or a small edge backbone
    weights: str = "imagenet"  # imagenet | none | a .pth state dict | a toolkit checkpoint (.pt)
    head: Optional[str] = None  # classic (VGG only): Flatten-hidden-ReLU-Dropout; gap: pooled; unset: the arch's
    hidden: Optional[int] = None  # classic head's hidden width (VGG only; unset: 512)
    dropout: float = 0.5  # dropout before the head's last linear layer


@dataclass
class TrainConfig:
    """recipe `train`: strategy, optimiser, schedule and the run's safety limits."""
    strategy: str = "finetune"  # linear-probe | finetune | scratch
    trainable_blocks: list = field(default_factory=lambda: [1, 2, 3, 4, 5])  # finetune: conv blocks that train
    freeze_epochs: int = 0  # finetune: head-only epochs before the blocks unfreeze
    freeze_bn: bool = False  # keep every BatchNorm layer's running statistics as loaded (eval mode) while training
    epochs: int = 10  # passes over the training split
    batch_size: int = 32  # the global batch: under torchrun it is split across the processes
    optimizer: str = "sgd"  # sgd (with momentum) | adamw
    fused_optimizer: bool = False  # the optimizer's fused kernel (CPU, CUDA): ~4x faster steps, other rounding
    lr: float = 0.01  # the head's learning rate
    lr_decay: float = 0.5  # each block's rate = the next block's rate x this (discriminative LRs)
    group_lrs: Optional[dict] = None  # or explicit rates, e.g. {block1: 1e-4, head: 1e-2}
    lr_scaling: str = "none"  # none | linear | sqrt: scale every rate by (batch_size / lr_reference_batch)^1 or ^0.5
    lr_reference_batch: Optional[int] = None  # the global batch the rates above were chosen for
    momentum: float = 0.9  # sgd (Nesterov) momentum; adamw ignores it
    weight_decay: float = 5e-4  # on weights only: biases and BatchNorm parameters get none
    schedule: str = "onecycle"  # onecycle | cosine (with warmup_epochs) | constant
    warmup_epochs: float = 1.0  # cosine: linear warm-up length
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0 <= x < 1
    class_weights: str = "none"  # none | balanced: loss weight of class c = images / (classes x images of c)
    sampler: str = "uniform"  # uniform (each image once per epoch) | balanced (drawn with replacement, classes equally)
    grad_clip: Optional[float] = None  # max gradient norm
    amp: str = "auto"  # auto (CUDA: bf16 where supported, else fp16; CPU: bf16 where faster) | bf16 | fp16 (CUDA) | off
    channels_last: bool = True  # CUDA; on CPU for the archs it trains faster (toolkit/train/device.py)
    device: str = "auto"  # auto | cpu | cuda | mps
    eval_every: int = 1  # validate every N epochs (and after the last)
    save_every: int = 1  # rewrite last.pt every N epochs: a kill -9 loses at most this many
    early_stopping: Optional[int] = None  # stop after N validations without a better val top-1
    nan_patience: int = 3  # stop after this many non-finite steps
    tensorboard: bool = True  # event files in runs/<name>/tb/ when the tensorboard package is installed
    deterministic: bool = False  # bit-reproducible kernels (slower)
    sync_batchnorm: bool = False  # distributed, _bn archs, CUDA: BatchNorm statistics over the global batch
    dist_timeout: float = 1800  # distributed: seconds a process waits for the others before giving up
    teacher: Optional[str] = None  # distillation: a run folder (its best.pt, else last.pt) or a checkpoint (.pt)
    distill_alpha: float = 0.5  # with a teacher: weight of the teacher's KL term; the label loss gets 1 - alpha
    distill_temperature: float = 4.0  # with a teacher: both nets' logits are softened by this T (KL x T^2)
    distill_cache: str = "auto"  # auto (cache when augmentation is deterministic) | always | never: teacher logits


@dataclass
class Recipe:
    """A whole recipe file."""
    name: str = "run"  # the run folder: <out_dir>/<name>/
    seed: int = 0  # model init, shuffling and augmentation
    out_dir: str = "runs"  # where run folders are made
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: Optional[dict] = None  # albumentations' own serialised Compose; null = the default
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out_dir, self.name)


# The string-valued keys and their allowed values (checked by toolkit.recipe.check).
CHOICES = {
    "data.source": SOURCES, "preprocess.interpolation": tuple(INTERPOLATIONS), "preprocess.decode": DECODE_MODES,
    "preprocess.fit": FIT_MODES,
    "model.arch": ARCHS,
    "model.head": HEADS, "train.strategy": STRATEGIES, "train.optimizer": OPTIMIZERS,
    "train.schedule": SCHEDULES, "train.lr_scaling": LR_SCALINGS, "train.amp": AMP_MODES, "train.device": DEVICES,
    "train.class_weights": CLASS_WEIGHTS, "train.sampler": SAMPLERS, "train.distill_cache": DISTILL_CACHE,
}
