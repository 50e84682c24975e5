"""`toolkit predict [MODEL] IMAGES...`: classify files, folders and globs with a Predictor.

Results go to stdout as a table, CSV (path,rank,label,score,index,accepted,ood_score) or JSON; messages and progress go to
stderr. Unreadable images are reported and skipped. Light module (no torch).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from toolkit import artifacts
from toolkit.errors import UserError
from toolkit.parsing import parse_bool
from toolkit.preprocess import IMAGE_EXTENSIONS, ImageError
from toolkit.runtime.decode_pool import DecodePool
from toolkit.runtime.engines import parse_engine, parse_precision
from toolkit.runtime.image_files import collect_images
from toolkit.runtime.predictor import Predictor

__all__ = ["PredictOptions", "predict_command", "predict_stream", "model_and_images", "collect_images",
           "IMAGE_EXTENSIONS", "FORMATS"]

FORMATS = ("table", "csv", "json")


# --------------------------------------------------------------------------------------------
# Options, progress and output

@dataclass
class PredictOptions:
    """What `toolkit predict` was asked for (its command-line options)."""

    top_k: int = 5  # predictions shown per image (at most the number of classes)
    format: str = "table"  # stdout format: table, csv or json
    device: str = "auto"  # auto, cpu, cuda[:N] or tensorrt[:N] (toolkit.runtime.session)
    threads: int | None = None  # ONNX Runtime intra-op threads; None: its own choice
    allow_fallback: bool = False  # run on the CPU, with a warning, when the device asked for can't load
    batch_size: int = 32  # images decoded and run per inference call
    recursive: bool = True  # look into sub-folders of folder arguments
    engine: str = "onnxruntime"  # onnxruntime or openvino (toolkit.runtime.engines)
    precision: str | None = None  # fp32 or bf16 (bf16: openvino only); None: fp32
    threshold: float | None = None  # the OOD score threshold instead of the model's own (docs/inference.md)
    reject: bool = True  # answer "unknown" below the threshold; --reject false: always the best label

    def __post_init__(self):
        fmt = str(self.format).lower()
        if fmt not in FORMATS:
            raise UserError(f"format: {self.format!r}; expected one of {', '.join(FORMATS)}")
        self.format = fmt
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise UserError(f"top_k: {self.top_k!r}; expected a positive whole number")
        self.engine = parse_engine(self.engine)
        self.precision = parse_precision(self.precision, self.engine)


class _Progress:
    """One in-place line on stderr when it is a terminal; a line every ~10% otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.next_pct = 10

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        line = f"predict: {done}/{self.total} images  {rate:.1f} img/s  ETA {eta:.0f}s"
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
        elif done * 100 >= self.next_pct * self.total or done == self.total:
            while self.next_pct <= done * 100 / self.total:
                self.next_pct += 10
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _Results:
    """Writes predictions to stdout in the chosen format: table and CSV row by row, JSON at the end."""

    def __init__(self, fmt: str, predictor: Predictor, paths: list[str], k: int):
        self.fmt, self.predictor, self.k, self.out = fmt, predictor, k, sys.stdout
        self.rows: list[dict] = []
        self.path_w = min(max(len(p) for p in paths), 60)
        self.label_w = min(max(len(lb) for lb in predictor.labels), 30)
        if fmt == "csv":
            self.csv = csv.writer(self.out, lineterminator="\n")
            self.csv.writerow(["path", "rank", "label", "score", "index", "accepted", "ood_score"])
        elif fmt == "table":
            head = f"{'image':<{self.path_w}}" + "".join(f"  {'#' + str(r):<{self.label_w}} {'score':>6}"
                                                         for r in range(1, k + 1))
            print(head.rstrip(), file=self.out)

    def add(self, path: str, preds: list[dict]) -> None:
        if self.fmt == "csv":
            score = "" if preds.ood_score is None else f"{preds.ood_score:.6f}"   # the image's, on each of its rows
            for rank, p in enumerate(preds, 1):
                self.csv.writerow([path, rank, p["label"], f"{p['score']:.6f}", p["index"], preds.accepted, score])
        elif self.fmt == "json":
            score = None if preds.ood_score is None else round(preds.ood_score, 6)   # as the scores are
            self.rows.append({"path": path, "answer": preds.text(), "accepted": preds.accepted,
                              "ood_score": score, "predictions": [
                {"rank": r, "label": p["label"], "score": round(p["score"], 6), "index": p["index"]}
                for r, p in enumerate(preds, 1)]})
        else:
            w = self.label_w
            cells = "".join(f"  {p['label'][:w]:<{w}} {p['score']:>6.1%}" for p in preds)
            shown = path if len(path) <= self.path_w else "..." + path[-(self.path_w - 3):]
            answer = "" if preds.accepted else f"  {preds.text()}"  # "unknown (best guess: rose 0.41)"
            print(f"{shown:<{self.path_w}}{cells}{answer}", file=self.out)

    def finish(self) -> None:
        if self.fmt == "json":
            p = self.predictor
            json.dump({"model": p.path, "sha256": p.sha256, "provider": p.provider, "engine": p.engine,
                       "inference_precision": p.inference_precision, "top_k": self.k,
                       "results": self.rows}, self.out, indent=2)
            self.out.write("\n")
        self.out.flush()


# --------------------------------------------------------------------------------------------
# The command

def _decode(predictor: Predictor, path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return predictor.prepare_one(path), None
    except ImageError as exc:
        msg = str(exc)
        return None, msg if msg.startswith(path) else f"{path}: {msg}"
    except Exception as exc:  # a decoder bug must not stop a folder run
        return None, f"{path}: cannot read image ({type(exc).__name__}: {exc})"


def _resolve_model(model: str | None) -> str:
    """An explicit .onnx file, or the newest export (in exports/ or in the folder given)."""
    if model is not None and not os.path.isdir(model):
        return model
    model = artifacts.newest_export() if model is None else artifacts.newest_export(model)
    print(f"predict: using the newest export {model}", file=sys.stderr)
    return model


def _image_paths(images: Sequence[str] | str, recursive: bool) -> tuple[list[str], list]:
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    images = [os.fspath(i) for i in images]
    if not images:
        raise UserError("predict: no images given; expected image files, folders or globs, "
                        "e.g. toolkit predict exports/flowers.onnx photos/")
    paths, problems = collect_images(images, recursive=recursive)
    for arg, problem in problems:
        print(f"skipped {arg}: {problem}", file=sys.stderr)
    if not paths:
        raise UserError(f"predict: no images found in {', '.join(images)}; expected image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}), folders or globs")
    return paths, problems


def _load_predictor(model: str, o: PredictOptions) -> Predictor:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor(model, device=o.device, threads=o.threads, allow_fallback=o.allow_fallback,
                              batch_size=o.batch_size, engine=o.engine, precision=o.precision)
    for w in caught:   # one plain line each (the fallback warning), not Python's source-line format
        print(f"predict: warning: {w.message}", file=sys.stderr)
    return predictor


def _chunks(outcomes, size: int):
    """Lists of `size` consecutive (item, value, error) outcomes (the last may be shorter)."""
    chunk = []
    for outcome in outcomes:
        chunk.append(outcome)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_stream(predictor: Predictor, sources: Iterable, top_k: int, batch_size: int, pool: DecodePool,
                   timings: dict | None = None, threshold: float | None = None,
                   reject: bool = True) -> Iterator[tuple]:
    """(source, Prediction, None) or (source, None, its error message) per source, in input order: each
    batch of `batch_size` sources (less the unreadable ones) runs on the engine while `pool` decodes the
    next. `timings["model_s"]` gains the seconds spent in the engine (the pool's decode_s has the rest).
    threshold, reject: the "unknown" answer, as in Predictor.predict_batch."""
    timings = {} if timings is None else timings
    timings.setdefault("model_s", 0.0)
    for chunk in _chunks(pool.ordered(lambda s: _decode(predictor, s), sources, ahead=batch_size), batch_size):
        arrays = [arr for _, (arr, err), _ in chunk if err is None]
        start = time.perf_counter()
        preds = iter(predictor.predict_batch(np.stack(arrays), top_k, threshold, reject) if arrays else ())
        timings["model_s"] += time.perf_counter() - start
        for source, (_, err), _ in chunk:
            yield (source, None, err) if err is not None else (source, next(preds), None)


def _predict_paths(predictor: Predictor, paths: list[str], o: PredictOptions, results: _Results) -> tuple[int, int]:
    """Decode on every core while the engine runs, write every result -> (predicted, failed)."""
    progress = _Progress(len(paths), enabled=len(paths) > 50)
    predicted = failed = 0
    with DecodePool() as pool:
        stream = predict_stream(predictor, paths, results.k, o.batch_size, pool, threshold=o.threshold,
                                reject=parse_bool(o.reject, "--reject"))
        for done, (path, preds, err) in enumerate(stream, 1):
            if err is None:
                predicted += 1
                results.add(path, preds)
            else:
                failed += 1
                if progress.tty:
                    sys.stderr.write("\r\x1b[K")
                print(f"skipped {err}", file=sys.stderr, flush=True)
            if done % o.batch_size == 0 or done == len(paths):
                results.out.flush()
                progress.update(done)
    progress.close()
    return predicted, failed


def model_and_images(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """`toolkit predict [MODEL.onnx] IMAGES...`'s arguments -> (the model or None for the newest, the images)."""
    paths = [str(p) for p in args]
    model = paths.pop(0) if paths and paths[0].endswith(".onnx") else None
    if not paths:
        raise UserError("predict: no images given; expected toolkit predict [MODEL.onnx] IMAGE_OR_FOLDER...")
    return model, paths


def predict_command(model: str | None = None, images: Sequence[str] | str = (), **options) -> int:
    """`toolkit predict [MODEL] IMAGES...`: classify files, folders and globs; results on stdout as a
    table, CSV (path,rank,label,score,index,accepted,ood_score) or JSON; messages and progress on stderr.
    Unreadable images are reported and skipped. Returns 0 if at least one image was predicted, else 1.
    options: PredictOptions fields."""
    o = PredictOptions(**options)
    model = _resolve_model(model)
    paths, problems = _image_paths(images, o.recursive)
    predictor = _load_predictor(model, o)
    predictor.check_rejection(o.threshold, parse_bool(o.reject, "--reject"))   # before any output is written
    k = min(o.top_k, len(predictor.labels))
    print(f"predict: {len(paths)} image(s) with {os.path.basename(predictor.path)} on {predictor.runs_on}",
          file=sys.stderr)
    results = _Results(o.format, predictor, paths, k)
    t0 = time.perf_counter()
    predicted, failed = _predict_paths(predictor, paths, o, results)
    results.finish()
    elapsed = time.perf_counter() - t0
    rate = predicted / elapsed if elapsed > 0 else 0.0
    skipped = failed + len(problems)
    print(f"predict: {predicted} predicted, {failed} unreadable skipped in {elapsed:.2f}s ({rate:.1f} img/s, "
          f"decode + preprocess + inference) on {predictor.runs_on}"
          + (f"; {skipped} skipped in all" if problems else ""), file=sys.stderr)
    return 0 if predicted else 1
