"""`toolkit report`'s flags: each field is a flag, its comment the help (toolkit.flags). Standard library only."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportOptions:
    recipe: str | None = None  # with an .onnx file: the recipe of the data (default: the one in its metadata)
    split: str = "val"  # the split to score (an empty val split falls back to test)
    top: int = 12  # images in the top-losses gallery, each with its Grad-CAM (from a checkpoint)
    mislabels: bool = False  # rank likely mislabelled training images (out-of-fold confidence) and show the top
    batch_size: int = 32  # images per forward pass
    device: str = "auto"  # auto, cpu, cuda or cuda:N (a checkpoint's forward passes and Grad-CAM)
    out_dir: str | None = None  # where report.html and report.json go
        # (default: the run folder; for MODEL.onnx, the folder MODEL_report/ beside it)
