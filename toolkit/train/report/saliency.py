"""Grad-CAM (Selvaraju et al. 2017) on a checkpoint's model: where in the image the predicted class's score
comes from. The layer is the last convolution whose grid is at least 7 on its short side (a 2x2 grid, VGG's
last at 32 px, smears the map over the whole crop), found by running the batch, so it works for every family
of toolkit.train.model without a per-family table. Why Grad-CAM over the plain input gradient (also here,
for that measurement: tests/bench_saliency.py): docs/report.md."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def grad_cam(model: torch.nn.Module, images: torch.Tensor, classes: list[int], min_grid: int = 7) -> np.ndarray:
    """float32 N x H x W maps in [0, 1] (H x W of `images`), one per image for its class in `classes`.
    The layer: the last convolution whose grid is at least `min_grid` on its short side (else the finest)."""
    if len(images) == 0:
        return np.zeros((0,) + tuple(images.shape[2:]), np.float32)
    grids: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        if output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
            grids.append(output)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)  # a graph even when every weight is frozen
            logits = model(x)
            if not grids:
                raise ValueError("the model has no convolution with a spatial output")
            # The grid as the forward pass left it: an in-place activation after the conv is taken in.
            fine = [g for g in grids if min(g.shape[2:]) >= min_grid]
            activations = fine[-1] if fine else max(grids, key=lambda g: g.shape[2] * g.shape[3])
            score = logits.gather(1, torch.as_tensor(classes, device=logits.device)[:, None]).sum()
            (gradients,) = torch.autograd.grad(score, activations)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).cpu().numpy().astype(np.float32)


def input_gradient(model: torch.nn.Module, images: torch.Tensor, classes: list[int]) -> np.ndarray:
    """The plain saliency map (Simonyan et al. 2013): |d score / d pixel|, max over channels, in [0, 1].
    Measured against Grad-CAM by tests/bench_saliency.py (docs/report.md)."""
    model.eval()
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        score = model(x).gather(1, torch.as_tensor(classes, device=x.device)[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, x)
    sal = gradients.abs().amax(dim=1)
    return (sal / sal.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]).cpu().numpy().astype(np.float32)


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 H x W x 3: the image under a jet-like heat map of `cam` (red: where the score comes from)."""
    heat = np.stack([np.clip(1.5 - np.abs(4 * cam - 3), 0, 1), np.clip(1.5 - np.abs(4 * cam - 2), 0, 1),
                     np.clip(1.5 - np.abs(4 * cam - 1), 0, 1)], axis=-1) * 255
    return np.clip((1 - alpha) * pixels.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)
