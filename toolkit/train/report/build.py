"""Builds and writes report.json and report.html: the command, the sections gathered, the end of training's
report (write_after_training: a failure there is one warning line)."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time

from toolkit import artifacts
from toolkit.datasets.splits import SPLITS
from toolkit.errors import UserError
from toolkit.train.plots import confusion_figure
import toolkit.train.report.content as content
import toolkit.train.report.images as images
import toolkit.train.report.page as page
from toolkit.train.report.options import ReportOptions
from toolkit.train.report.outputs import Outputs, from_checkpoint, from_onnx

def report_command(target: str | None = None, **given) -> dict:
    """`toolkit report [RUN | CHECKPOINT | MODEL.onnx]`: the newest run when none is named."""
    opts = ReportOptions(**given)
    if target is None:
        target = artifacts.newest_run()
        print(f"report of the newest run: {target}")
    started = time.perf_counter()
    data = build_report(str(target), opts)
    print(f"report: {data['files']['html']} and report.json ({time.perf_counter() - started:.1f}s)")
    return data


def gather(target: str, opts: ReportOptions, dataset=None) -> Outputs:
    if isinstance(opts.top, bool) or not isinstance(opts.top, int) or opts.top < 0:
        raise UserError(f"--top {opts.top!r}: expected a whole number of images, 0 or more")
    if isinstance(opts.batch_size, bool) or not isinstance(opts.batch_size, int) or opts.batch_size < 1:
        raise UserError(f"--batch-size {opts.batch_size!r}: expected a positive whole number of images per pass")
    if opts.split not in SPLITS:
        raise UserError(f"--split {opts.split!r}: expected one of {', '.join(SPLITS)}")
    if opts.out_dir and (problem := artifacts.folder_problem(opts.out_dir)):
        raise UserError(f"--out-dir {opts.out_dir!r}: {problem}; expected a writable folder for the report")
    if not opts.out_dir and target.endswith(".onnx") and (problem := artifacts.folder_problem(_beside(target))):
        raise UserError(f"{_beside(target)}: {problem}; expected a folder for the report there, or --out-dir DIR")
    if target.endswith(".onnx"):
        return from_onnx(target, opts.recipe, opts.split, opts.batch_size)
    if opts.recipe is None and os.path.isdir(target) and not os.path.isdir(os.path.join(target, "checkpoints")):
        raise UserError(f"{target}: not a run folder (no checkpoints/ in it); expected runs/<name>/ from toolkit "
                        "train, a checkpoint .pt or an exported .onnx file")
    return from_checkpoint(target, opts.recipe, opts.split, opts.batch_size, opts.device, dataset)


def _beside(target: str) -> str:
    """Where an .onnx file's report goes by default: beside it (its run's folder holds the checkpoint's own)."""
    return os.path.splitext(target)[0] + "_report"


def build_report(target: str, opts: ReportOptions, dataset=None) -> dict:
    """Score, gather the sections, write report.json and report.html; returns report.json's content.
    `dataset`: the data set listing when the caller has it (the end of training: no second scan)."""
    out = gather(target, opts, dataset)
    out_dir = opts.out_dir or (_beside(target) if target.endswith(".onnx") else out.run_dir or _beside(target))
    data = {"run": out.run_dir, "model": out.source, "split": out.split, "labels": out.labels,
            "notes": list(out.notes), "calibration": content.calibration(out),
            "unreadable": [list(u) for u in out.unreadable], "class_counts": content.class_counts(out)}
    pictures = {"gallery": {}, "thumbs": {}}
    if out.logits is not None:
        probs = content.softmax(out.logits, data["calibration"]["temperature"])
        data["scores"] = content.scores(out)
        data["top_losses"] = content.top_losses(out, probs, opts.top)
        pictures["gallery"], data["saliency"] = content.gallery_pictures(out, data["top_losses"])
        pictures["confusion"] = confusion_picture(data)
    data["data_health"] = content.data_health(out.run_dir, getattr(out.dataset, "health", None))
    data["mislabels"] = content.mislabels(out, opts.mislabels, opts.top)
    pictures["thumbs"] = thumbnails(data, out.recipe.data.max_pixels)
    if out.run_dir and os.path.isfile(os.path.join(out.run_dir, "curves.png")):
        pictures["curves"] = images.png_file_uri(os.path.join(out.run_dir, "curves.png"))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise artifacts.write_failure(out_dir, exc) from None
    data["files"] = {"html": os.path.join(out_dir, "report.html"), "json": os.path.join(out_dir, "report.json")}
    html = page.page(data, pictures)   # before either file: a page that fails leaves the old pair as it was
    artifacts.atomic_write(data["files"]["json"], json.dumps(data, indent=1) + "\n")
    artifacts.atomic_write(data["files"]["html"], html)
    return data


def confusion_picture(data: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = confusion_figure(plt, data["scores"]["confusion"], data["labels"],
                           f"{data['split']} confusion (top-1 {data['scores']['top1']:.1f}%)")
    try:
        return images.figure_uri(fig)
    finally:
        plt.close(fig)


def thumbnails(data: dict, max_pixels: int) -> dict:
    """{path: data: URI} of the image paths named in the data health and mislabel sections (up to page.THUMBS)."""
    found: list = []

    def walk(value):
        if isinstance(value, (dict, list)):
            for v in value.values() if isinstance(value, dict) else value:
                walk(v)
        elif isinstance(value, str) and value.lower().endswith(images.EXTENSIONS) and value not in found:
            found.append(value)

    walk(data["mislabels"].get("rows", []))
    # every section's image entries, nested ones too (exact groups' items, near pairs' and leaks' a and b);
    # not the unreadable files: they have no picture to spend the budget on
    walk({k: v for k, v in data["data_health"].get("sections", {}).items() if k != "unreadable"})
    uris = {path: images.file_uri(path, max_pixels) for path in found[:page.THUMBS]}
    return {path: uri for path, uri in uris.items() if uri}


def write_after_training(run_dir: str, say=print, dataset=None) -> None:
    """The report at the end of `toolkit train`: never fails training; a failure is one warning line."""
    try:
        data = build_report(run_dir, ReportOptions(top=8), dataset)
        say(f"  report      {data['files']['html']}")
    except Exception as exc:  # noqa: BLE001 - the run is saved; the report is a convenience on top
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"warning: the run report was not written ({type(exc).__name__}: {first}); "
              f"try: toolkit report {shlex.quote(run_dir)}", file=sys.stderr)
