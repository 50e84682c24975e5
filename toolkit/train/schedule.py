"""Learning-rate schedules: the rate is a pure function of the step, so restoring the step restores it."""
from __future__ import annotations

import math


def lr_factor(step: int, phase_start: int, phase_steps: int, schedule: str, warmup_steps: int) -> float:
    """Multiplier on each group's base rate at `step`, within a phase of `phase_steps` steps."""
    t = step - phase_start
    if schedule == "constant" or phase_steps <= 1:
        return 1.0
    if schedule == "onecycle":
        # Warm up over the first 25% from 1/25 of the peak, then cosine-anneal to ~0 (Smith's one-cycle).
        up = max(1, int(0.25 * phase_steps))
        if t < up:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * t / up)) / 2
        frac = (t - up) / max(1, phase_steps - up)
        return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * min(frac, 1.0))) / 2
    # cosine with linear warm-up
    if t < warmup_steps:
        return (t + 1) / (warmup_steps + 1)
    frac = (t - warmup_steps) / max(1, phase_steps - warmup_steps)
    return (1 + math.cos(math.pi * min(frac, 1.0))) / 2


class LrSchedule:
    """Sets every group's rate for a step. A fine-tune's frozen epochs are one phase, the rest another,
    each with its own warm-up and decay."""

    def __init__(self, t, steps_per_epoch: int):
        self.t, self.steps_per_epoch = t, steps_per_epoch
        freeze = t.freeze_epochs if t.strategy == "finetune" else 0
        self.boundary = freeze * steps_per_epoch

    def phase_of(self, step: int) -> tuple[int, int]:
        """(first step, length) of the phase `step` is in."""
        if step < self.boundary:
            return 0, self.boundary
        return self.boundary, self.t.epochs * self.steps_per_epoch - self.boundary

    def apply(self, optimizer, step: int) -> None:
        start, length = self.phase_of(step)
        factor = lr_factor(step, start, length, self.t.schedule, int(self.t.warmup_epochs * self.steps_per_epoch))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
