"""`toolkit` command line (fire): each command is a few lines over a library function. evaluate, export, predict,
serve-local, benchmark and report take their flags, defaults and help from the options dataclasses they fill
(`@options`, toolkit/flags.py), imported only when the command is named; train and demo pass their few flags on."""
from __future__ import annotations

import sys

from toolkit.errors import (AbandonedWorkError, RankZeroError, Terminated, UserError, exit_now, missing_extra,
                            sigterm_as_interrupt)
from toolkit.flags import check, check_arguments, options, spell_out
from toolkit.parsing import parse_list


def train(recipe: str, *overrides: str, set: str | None = None, resume: bool = False, overwrite: bool = False,
          nproc: int = 1):
    """Train from a recipe. Overrides: KEY=VALUE after the recipe (e.g. train.epochs=3) or --set KEY=VALUE
    (as often as needed). --nproc N: distributed data-parallel training in N processes on this machine
    (torchrun --standalone).

    Args:
        set: one KEY=VALUE override (as often as needed), as after the recipe
        resume: continue the stopped run of this recipe exactly where it stopped (docs/training.md)
        overwrite: remove the run of the same name first
        nproc: processes of distributed data-parallel training on this machine
    """
    from toolkit.train.loop import train_command

    extra = [str(o) for o in overrides] + ([str(set)] if set else [])  # main() turns each --set into an override
    if code := train_command(recipe, extra, resume=resume, overwrite=overwrite, nproc=nproc):
        sys.exit(code)


def _sets_as_overrides(argv: list[str]) -> list[str]:
    """train's `--set KEY=VALUE` -> `KEY=VALUE`: fire keeps only the last of a repeated flag."""
    if not argv or argv[0] != "train":
        return argv
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--set" and rest:
            out.append(rest.pop(0))
        elif arg.startswith("--set="):
            out.append(arg[len("--set="):])
        else:
            out.append(arg)
    return out


@options("toolkit.runtime.ood_eval:EvaluateOptions")
def evaluate(target: str | None = None, **given):
    """Top-1, top-5, per-class accuracy, confusion matrix, ECE, NLL and accept rate of a checkpoint, run or .onnx
    file on a split. --engine openvino [--precision bf16]: an .onnx file on OpenVINO, against ONNX Runtime FP32."""
    from toolkit.train.evaluate import evaluate_command

    evaluate_command(target, **{("as_json" if k == "json" else k): v for k, v in given.items()})


@options("toolkit.export.options:ExportOptions", "toolkit.export.triton:TritonOptions",
         "toolkit.export.web:WebOptions", "toolkit.export.tflite:TfliteOptions", skip=("repo", "folder", "list_files"))
def export(run, *, format: str = "onnx", **given):
    """Export a run (default: the newest) to one verified, self-describing ONNX file; with --format: a Triton
    model repository, a static web folder checked in headless chromium, or a verified .tflite file for LiteRT
    and MediaPipe (--out: the folder for triton and web, default exports/triton or exports/<name>-web).

    Args:
        format: onnx (one file and its twins), triton (a Triton model repository), web (a static folder), tflite
    """
    from toolkit.export.formats import export_as

    with sigterm_as_interrupt():   # a killed export removes its temp files, as an interrupted one does
        export_as(format, run, given)


@options("toolkit.runtime.predict:PredictOptions")
def predict(*paths: str, **given):
    """Predict images: toolkit predict [MODEL.onnx] IMAGES... (files, folders, globs)."""
    from toolkit.runtime.predict import model_and_images, predict_command

    if code := predict_command(*model_and_images(paths), **given):
        sys.exit(code)


@options("toolkit.runtime.serve.options:ServeOptions")
def serve_local(model, **given):
    """Serve an export (default: the newest) over HTTP on this machine."""
    from toolkit.runtime.serve import serve

    serve(model, **given)


@options("toolkit.runtime.benchmark.options:BenchmarkOptions", "toolkit.export.bench_targets:TargetOptions",
         skip=("end_to_end",))
def benchmark(model: str | None = None, *more: str, train: str | None = None, batch_size: int | None = None,
              pareto_batch: int | None = None, model_only: bool = False, **given):
    """Throughput and latency of an export (default: the newest), or of training with --train RECIPE
    (KEY=VALUE overrides after it apply to that recipe). More .onnx files after MODEL: compare them
    in the same rounds, top-1 (--data) against img/s with Pareto marks at --pareto-batch.

    Args:
        train: a recipe: time its training step and data loader instead (--batch-size: its batch size)
        batch_size: with --train: the batch size (default: the recipe's)
        pareto_batch: with several models: the batch size of the Pareto marks (default: the largest)
        model_only: time the model alone, not also JPEG decode + preprocess + inference + top-5
    """
    from toolkit.export.bench_targets import split_options, target_backends
    from toolkit.runtime.benchmark import BenchmarkOptions, compare_models, run_benchmark

    if batch_size is not None and not train:   # an export's sizes are --batch-sizes: this one timed nothing
        raise UserError(f"--batch-size {batch_size} goes with --train RECIPE; for an export, --batch-sizes "
                        f"{batch_size}")
    targets, given = split_options(given)  # --web, --tflite: the same model on its other targets
    asked = BenchmarkOptions(**given, end_to_end=not model_only)
    others = [str(o) for o in more if not str(o).endswith(".onnx")]
    if train:
        from toolkit.train.benchmark import run_train_benchmark

        timing = {k: v for k, v in given.items() if k in ("duration", "iterations", "warmup", "rounds", "threads",
                                                           "out_dir")}  # the rest: run_train_benchmark's defaults
        run_train_benchmark(train, overrides=[str(o) for o in (model, *more) if o], batch_size=batch_size,
                            device=parse_list(asked.device)[0], **timing)
    elif others:
        raise UserError(f"benchmark: unexpected arguments {others}; expected more .onnx exports to compare, "
                        "or KEY=VALUE overrides with --train")
    elif pareto_batch is not None and not more:
        raise UserError("benchmark: --pareto-batch goes with several models (toolkit benchmark A.onnx B.onnx ...)")
    elif more and (targets.web or targets.tflite):
        raise UserError("benchmark: --web and --tflite go with one model (the ONNX file they were exported with)")
    else:
        loader = None  # the PyTorch backends come from the torch side, handed over: the runtime never imports it
        if asked.torch or asked.compile:
            from toolkit.train.torch_backend import load_torch_backends as loader
        with target_backends(targets, loader) as loader:  # + the browser's and LiteRT's, where asked for
            compare_models([model, *more], asked, pareto_batch=pareto_batch, torch_backends=loader) if more else \
                run_benchmark(model, asked, torch_backends=loader)


@options("toolkit.train.report.options:ReportOptions")
def report(run=None, **given):
    """Report of a run (default: the newest), a checkpoint or an .onnx file: report.html and report.json."""
    from toolkit.train.report import report_command

    report_command(run, **given)


def demo(*overrides: str, seeds=None, labels_per_class=None, quick: bool = False, out_dir: str | None = None,
         imagenet: bool = False, steps: int | None = None, distill: bool = False, workers: int | None = None):
    """The offline transfer-learning demo on scikit-learn's digits: transfer vs scratch (seeds 0,1,2; labels per
    class 1,3,10). --imagenet: real ImageNet EfficientNet-Lite0 against the same net from scratch, on Fashion-MNIST
    (labels per class 1,5,20; --steps: both arms' step cap; each run stops when validation stops improving;
    --workers: runs at once, one torch thread each, default one per core).
    --distill: small students learn from a Lite0 teacher on Fashion-MNIST, with and without unlabelled photos
    (20 labels per class; --steps: per student run; --workers as above). KEY=VALUE overrides apply to all its
    recipes.

    Args:
        seeds: the seeds of each arm, e.g. 0,1,2
        labels_per_class: the labelled images per class of each row, e.g. 1,3,10
        quick: a smaller budget, to see it run
        out_dir: where its runs go (default: runs/demo, runs/demo-imagenet or runs/demo-distill)
        imagenet: ImageNet EfficientNet-Lite0 against the same net from scratch, on Fashion-MNIST
        steps: with --imagenet or --distill: each run's step cap
        distill: small students learn from a Lite0 teacher, with and without unlabelled photos
        workers: with --imagenet or --distill: runs at once (default: one per core)
    """
    from toolkit.train.demo import demo_command

    demo_command([str(o) for o in overrides], seeds=seeds, labels_per_class=labels_per_class, quick=quick,
                 out_dir=out_dir, imagenet=imagenet, steps=steps, distill=distill, workers=workers)


COMMANDS = {"train": train, "evaluate": evaluate, "export": export, "predict": predict,
            "serve-local": serve_local, "benchmark": benchmark, "report": report,
            "demo": demo}


def _help(argv: list[str]) -> str | None:
    """The help `toolkit`, `toolkit --help` or `toolkit COMMAND --help` (or -h) asks for; None otherwise.
    Written by toolkit/cli_help.py, not fire: fire's listed one-letter flags it then could not use."""
    own = argv[1:argv.index("--") if "--" in argv else None]   # fire's own flags follow a bare --
    if argv and argv[0] not in ("--help", "-h") and "--help" not in own and "-h" not in own:
        return None
    from toolkit.cli_help import command_help, overview

    return overview("toolkit", COMMANDS) if not argv or argv[0] in ("--help", "-h") else \
        command_help("toolkit", argv[0], COMMANDS[argv[0]])


def main(argv: list[str] | None = None) -> None:
    import warnings

    import fire

    # Fire tries each argument as a Python literal: a path such as vgg16-224.int8.onnx made the compiler
    # print "<unknown>:1: SyntaxWarning: invalid decimal literal" before the command ran.
    warnings.filterwarnings("ignore", category=SyntaxWarning, module="<unknown>")
    # Pillow's DecompressionBombWarning (89 MP on): the image's own max_pixels check decides, in one line.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # A warning is one `warning: ...` line, as errors are one `error: ...` line: not Python's file:line form
    # with the source line under it.
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        check(COMMANDS, argv)
        if (text := _help(argv)) is not None:
            print(text, end="")
            return
        argv = spell_out(COMMANDS, _sets_as_overrides(argv))
        check_arguments(COMMANDS, argv)
        fire.Fire(COMMANDS, command=argv, name="toolkit")
    except RankZeroError:
        sys.exit(2)  # torchrun: rank 0 has printed this error already
    except (UserError, ModuleNotFoundError) as exc:
        if not isinstance(exc, UserError) and (exc := missing_extra(exc)) is None:
            raise  # not a package an extra brings: a bug, shown as one
        print(f"error: {exc}", file=sys.stderr)
        (exit_now if isinstance(exc, AbandonedWorkError) else sys.exit)(2)
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, Terminated) else "interrupted", file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except BrokenPipeError:   # `toolkit predict ... | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit's flush
        sys.exit(0)
