"""The INT8 ladder's last rung: a short quantization-aware fine-tune (QAT) of a copy of the checkpoint's model.

toolkit/export/int8.py runs it when no post-training setting meets the budget and the agreement gate, and
--int8-qat-steps is above 0. The copy trains with quantization simulated in its forward pass the way ONNX
Runtime's static QDQ quantizer (toolkit/export/quantize.py) will quantize it, so that it learns weights
whose rounding costs little; then the fake quantization is removed, and the float weights go through the
same ORT quantization as any other setting (int8.py). Simulated with torch.ao.quantization's FakeQuantize
(straight-through gradients):
- the weight of every Conv2d and Linear: int8, symmetric in [-127, 127] (ORT's symmetric int8 range), one
  scale per output channel or per tensor as the setting. Per channel, the rounding is the same before and
  after ORT folds BatchNorm into the conv (folding scales each output channel), so the unfolded weight is
  simulated;
- activations: uint8, one affine scale per tensor, min/max ranges observed on the calibration images (ORT's
  minmax calibration) and then held: the input of every Conv2d and Linear, and the output of every
  BatchNorm2d (the folded conv's output; timm's BatchNormAct2d includes the activation, as ORT fuses it).
BatchNorm statistics and dropout stay in eval mode: the statistics are what ORT folds. The loss is the mean
squared error to the FP32 model's logits on the same images: the twin is judged by its drop from the FP32
file and by taking its accept/reject decisions, which read the logits' energy (their logsumexp), which a
softmax (and a KL loss) leaves free. AdamW at QAT_LR, QAT_BATCH images a step from a seeded sample of at
most QAT_IMAGES training images through the eval preprocessing. The calibration that ORT runs afterwards
is minmax over the same images, as simulated here, so the rung quantizes with minmax and every layer
quantized (toolkit/export/int8.py).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import (FakeQuantize, MinMaxObserver, MovingAverageMinMaxObserver,
                                   MovingAveragePerChannelMinMaxObserver)
from torch.nn.utils import parametrize

from toolkit.preprocess import Preprocess

QAT_LR = 3e-5  # small: the checkpoint is already trained, the fine-tune only adapts it to the rounding
QAT_BATCH = 32
QAT_IMAGES = 2048  # training images held in memory (uint8) for the fine-tune, a seeded sample


def weight_fake_quant(per_channel: bool) -> FakeQuantize:
    """ORT's int8 weights: symmetric, [-127, 127], scale from the current weights (averaging constant 1)."""
    if per_channel:
        return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0, quant_min=-127,
                            quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    return FakeQuantize(observer=MovingAverageMinMaxObserver, averaging_constant=1.0, quant_min=-127,
                        quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)


def activation_fake_quant() -> FakeQuantize:
    """ORT's uint8 activations: one affine scale per tensor over the observed min/max (0 included)."""
    return FakeQuantize(observer=MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


class Simulated:
    """Fake quantization attached to a model (weights by parametrization, activations by hooks); detach()
    leaves the model as it was, with its current float weights."""

    def __init__(self, model: nn.Module, per_channel: bool):
        self.layers, self.hooks, self.activations, self.weights = [], [], [], []
        for module in list(model.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self.weights.append(weight_fake_quant(per_channel))
                parametrize.register_parametrization(module, "weight", self.weights[-1])
                self.layers.append(module)
                fq = self._activation()
                self.hooks.append(module.register_forward_pre_hook(lambda _m, args, fq=fq: (fq(args[0]),) + args[1:]))
            elif isinstance(module, nn.BatchNorm2d):
                fq = self._activation()
                self.hooks.append(module.register_forward_hook(lambda _m, _args, out, fq=fq: fq(out)))

    def _activation(self) -> FakeQuantize:
        self.activations.append(activation_fake_quant())
        return self.activations[-1]

    def observe_only(self) -> None:
        """Ranges only, the float model running (what ORT's calibration sees)."""
        for fq in self.activations + self.weights:
            fq.disable_fake_quant()
            fq.enable_observer()

    def simulate(self) -> None:
        """Quantize in the forward pass: activation ranges held, weight scales following the weights."""
        for fq in self.activations:
            fq.disable_observer()
        for fq in self.activations + self.weights:
            fq.enable_fake_quant()

    def detach(self) -> None:
        for hook in self.hooks:
            hook.remove()
        for module in self.layers:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def fine_tune(model: nn.Module, pixels: np.ndarray, calib: np.ndarray, preprocess: Preprocess, steps: int,
              per_channel: bool, seed: int = 0) -> tuple[nn.Module, dict]:
    """A copy of `model` fine-tuned `steps` steps under simulated INT8 on `pixels` (uint8 training images),
    activation ranges from `calib` (uint8); returns it (float weights, no fake quantization) and the numbers."""
    t = time.perf_counter()
    teacher = model.eval()
    student = copy.deepcopy(model).float().eval()  # eval: BatchNorm statistics and dropout stay as trained
    for p in student.parameters():
        p.requires_grad_(True)
    sim = Simulated(student, per_channel)
    sim.observe_only()
    with torch.no_grad():
        for start in range(0, len(calib), QAT_BATCH):
            student(torch.from_numpy(preprocess.normalize(calib[start:start + QAT_BATCH])))
    sim.simulate()
    optimizer = torch.optim.AdamW(student.parameters(), lr=QAT_LR, weight_decay=0.0)
    rng, losses = np.random.default_rng(seed), []
    for _ in range(int(steps)):
        x = torch.from_numpy(preprocess.normalize(pixels[rng.choice(len(pixels), min(QAT_BATCH, len(pixels)),
                                                                    replace=False)]))
        with torch.no_grad():
            target = teacher(x)
        loss = F.mse_loss(student(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    sim.detach()
    student.eval()
    tail = losses[-10:] or [float("nan")]
    return student, {"steps": int(steps), "lr": QAT_LR, "batch_size": QAT_BATCH, "images": int(len(pixels)),
                     "loss_first": losses[0] if losses else None, "loss_last10": float(np.mean(tail)),
                     "seconds": round(time.perf_counter() - t, 3)}
