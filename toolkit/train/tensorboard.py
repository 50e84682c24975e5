"""TensorBoard logs of a run in runs/<name>/tb/: per epoch the losses, top-1/top-5, the learning rate of each
layer group, and the validation confusion matrix as a picture. Only when the `tensorboard` package is
installed (pip install 'toolkit[tb]') and train.tensorboard is true; without the package training runs as
before, with one note line.
Open them with: tensorboard --logdir runs/<name>/tb"""
from __future__ import annotations

import os

from toolkit.train.plots import confusion_figure


def summary_writer_class():
    """torch's SummaryWriter, or None when the tensorboard package is missing (torch imports it lazily)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardLog:
    """One run's event files. `first_epoch`: a resumed run drops the events after its checkpoint's epoch."""

    def __init__(self, run_dir: str, labels: list, first_epoch: int = 0, say=print, enabled: bool = True):
        self.labels = list(labels)
        self.writer = None
        if not enabled:  # train.tensorboard: false
            return
        writer_class = summary_writer_class()
        if writer_class is None:
            say("note: no TensorBoard logs (the tensorboard package is not installed: pip install 'toolkit[tb]')")
            return
        self.writer = writer_class(os.path.join(run_dir, "tb"), purge_step=first_epoch + 1 if first_epoch else None)

    def log_epoch(self, record: dict, confusion: list | None) -> None:
        """metrics.jsonl's record of an epoch, and that epoch's validation confusion matrix (None: no eval)."""
        if self.writer is None:
            return
        epoch, add = record["epoch"], self.writer.add_scalar
        add("loss/train", record["train_loss"], epoch)
        add("top1/train", record["train_top1"], epoch)
        for key, tag in (("val_loss", "loss/val"), ("val_top1", "top1/val"), ("val_top5", "top5/val"),
                         ("val_mean_per_class", "mean_per_class/val")):
            if record.get(key) is not None:
                add(tag, record[key], epoch)
        for group, lr in record["lr"].items():
            add(f"lr/{group}", lr, epoch)
        if confusion is not None:
            self.add_confusion(confusion, epoch, record["val_top1"])
        self.writer.flush()

    def add_confusion(self, confusion: list, epoch: int, top1: float) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = confusion_figure(plt, confusion, self.labels, f"validation confusion, epoch {epoch} "
                                                            f"(top-1 {top1:.1f}%)")
        self.writer.add_figure("confusion/val", fig, epoch, close=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
