"""The training step, one for `toolkit train` (toolkit.train.loop) and `toolkit benchmark --train`
(toolkit.train.benchmark): forward under autocast, the loss, backward through the GradScaler, optional
gradient clipping, the optimizer step. The benchmark times exactly what training runs."""
from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.train import model as model_mod
from toolkit.train.distributed import IGNORE


def build_optimizer(model, t, groups) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over `groups`, each layer group at its discriminative rate.
    `train.fused_optimizer`: PyTorch's fused kernel where the weights are on a CPU or CUDA device (Lite0 on one
    CPU thread: an AdamW step 13 -> 3.3 ms). It rounds differently (~1e-7 a step), so a run is not
    bit-identical to the same recipe unfused: off by default, so that earlier runs reproduce."""
    param_groups = model_mod.optimizer_param_groups(model, model_mod.group_learning_rates(t), t.weight_decay,
                                                    groups=groups)
    devices = {p.device.type for p in model.parameters()}
    fused = {"fused": True} if t.fused_optimizer and devices <= {"cpu", "cuda"} else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0, **fused)
    return torch.optim.AdamW(param_groups, lr=t.lr, **fused)


class TrainStep:
    """One optimizer step over a batch. `forward` and `update` are apart so that the loop can decide in
    between (with the other ranks) to skip the update of a non-finite loss; `__call__` does both.

    The loss is summed, then scaled by `scale` (1 / images in the global batch, times the number of
    processes): DistributedDataParallel's average over ranks is then the mean over the global batch,
    however it was split. Padding targets (IGNORE) add nothing. `class_weights` (train.class_weights
    balanced) weight each image's loss by its class; they average 1 over the training images."""

    def __init__(self, model: nn.Module, optimizer, t, device: torch.device, autocast,
                 class_weights: torch.Tensor | None = None, channels_last: bool = False):
        self.model, self.optimizer, self.device, self.autocast = model, optimizer, device, autocast
        self.net = model  # what runs the forward pass: the model, or its DDP wrapper (see Dist.wrap)
        self.grad_clip = t.grad_clip
        self.channels_last = channels_last  # the batches' layout: the model's (device.use_channels_last)
        self.scaler = torch.amp.GradScaler("cuda", enabled=autocast is torch.float16)
        weight = None if class_weights is None else class_weights.to(device)  # train.class_weights
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing, reduction="sum",
                                             ignore_index=IGNORE)
        self.distill = None  # train.teacher: a toolkit.train.distill.Distiller, whose loss replaces the criterion

    def forward(self, images: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None):
        """(logits, summed loss, targets on the device). With `teacher_logits` (distillation), the loss is
        the Distiller's: label loss and the KL to the teacher, mixed."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            logits = self.net(images)
            if teacher_logits is None:
                loss = self.criterion(logits.float(), targets)
            else:
                loss = self.distill.loss(logits.float(), teacher_logits, targets, self.criterion)
        return logits, loss, targets

    def update(self, loss: torch.Tensor, scale: float) -> None:
        """Backward, (unscale and clip), optimizer step, gradients cleared."""
        self.scaler.scale(loss * scale).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.skip()

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One whole step on one process's batch; returns the summed loss."""
        _, loss, _ = self.forward(images, targets)
        self.update(loss, 1.0 / len(targets))
        return loss
