"""`toolkit` command line: each command is a few lines over a library function.

Light module: nothing heavy is imported until a command runs, so `toolkit predict` and
`toolkit serve-local` work on an edge box without torch.
"""
from __future__ import annotations

import os
import re
import sys

from toolkit.errors import RankZeroError, UserError
from toolkit.limits import DEFAULT_MAX_PIXELS


def _as_list(value, kind=str) -> list:
    """fire hands '1,8,32' over as a tuple and 'fp32' as a str; accept both, and 'a,b' strings."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v for v in str(value).split(",") if v.strip()]
    try:
        return [kind(str(v).strip()) if kind is not str else str(v).strip() for v in items]
    except ValueError:
        raise UserError(f"{value!r}: expected a comma-separated list of {kind.__name__} values") from None


def train(recipe: str, *overrides: str, set: str | None = None, resume: bool = False, overwrite: bool = False,
          nproc: int = 1):
    """Train from a recipe. Overrides: KEY=VALUE after the recipe (e.g. train.epochs=3) or --set KEY=VALUE.
    --nproc N: distributed data-parallel training in N processes on this machine (torchrun --standalone)."""
    from toolkit import recipe as recipe_mod

    extra = [str(o) for o in overrides] + (str(set).split() if set else [])
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"--nproc {nproc!r}: expected a whole number of processes, at least 1")
    if nproc > 1 and "WORLD_SIZE" in os.environ:
        raise UserError("--nproc: already running under torchrun; drop --nproc (torchrun's --nproc-per-node sets it)")
    if nproc > 1:
        recipe_mod.load(recipe, extra)  # a bad recipe fails here, once, not in every process
        from toolkit.train.distributed import launch

        argv = ["train", str(recipe), *extra] + (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])
        code = launch(nproc, argv)
        if code:
            sys.exit(code)
        return
    from toolkit.train.loop import train as run_training

    run_training(recipe_mod.load(recipe, extra), resume=resume, overwrite=overwrite)


def evaluate(target: str | None = None, recipe: str | None = None, split: str = "val",
             batch_size: int = 32, device: str = "auto", json: bool = False, engine: str = "onnxruntime",
             precision: str | None = None):
    """Top-1, top-5, per-class accuracy and confusion matrix of a checkpoint, run or .onnx file on a split.
    --engine openvino [--precision bf16]: an .onnx file on OpenVINO, against ONNX Runtime FP32."""
    from toolkit.train.evaluate import evaluate_command

    evaluate_command(target, recipe=recipe, split=split, batch_size=batch_size, device=device, as_json=json,
                     engine=engine, precision=precision)


def export(run: str | None = None, out: str | None = None, opset: int = 17, fp16: bool = False,
           int8: bool = False, raw_input: bool = False, probabilities: bool = False, dynamic_hw: bool = False,
           calib_images: int = 64, calib_method: str | None = None, keep_fp32: str | None = None,
           int8_budget: float = 1.0, per_channel: bool | None = None, int8_search: bool = True,
           parity_images: int = 16, ir_version: int | None = None, bf16_check: bool = False,
           format: str = "onnx", max_batch_size: int = 32, instances: int = 1, instance_kind: str = "auto",
           queue_delay_us: int = 100, model_version: int = 1):
    """Export a run (default: the newest) to one verified, self-describing ONNX file, or with --format triton
    to a Triton Inference Server model repository (--out: its folder, default exports/triton)."""
    from toolkit.export import ExportOptions, TritonOptions, export_run, export_triton

    options = ExportOptions(run=run, opset=opset, fp16=fp16, int8=int8, raw_input=raw_input,
                            probabilities=probabilities, dynamic_hw=dynamic_hw, calib_images=calib_images,
                            calib_method=calib_method, keep_fp32=tuple(_as_list(keep_fp32)), int8_budget=int8_budget,
                            per_channel=per_channel, int8_search=int8_search, parity_images=parity_images,
                            ir_version=ir_version, bf16_check=bf16_check)
    if format == "onnx":
        export_run(options, out=out)
    elif format == "triton":
        export_triton(options, TritonOptions(repo=out, max_batch_size=max_batch_size, instances=instances,
                                             instance_kind=instance_kind, queue_delay_us=queue_delay_us,
                                             model_version=model_version))
    else:
        raise UserError(f"--format {format!r}: expected onnx (one file) or triton (a Triton model repository)")


def predict(*paths: str, top_k: int = 5, format: str = "table", device: str = "auto",
            threads: int | None = None, allow_fallback: bool = False, batch_size: int = 32, recursive: bool = True,
            engine: str = "onnxruntime", precision: str | None = None):
    """Predict images: toolkit predict [MODEL.onnx] IMAGES... (files, folders, globs)."""
    from toolkit.runtime.predict import predict_command

    paths = [str(p) for p in paths]
    model = paths.pop(0) if paths and paths[0].endswith(".onnx") else None  # else: the newest export
    if not paths:
        raise UserError("predict: no images given; expected toolkit predict [MODEL.onnx] IMAGE_OR_FOLDER...")
    code = predict_command(model, paths, top_k=top_k, format=format, device=device, threads=threads,
                           allow_fallback=allow_fallback, batch_size=batch_size, recursive=recursive,
                           engine=engine, precision=precision)
    if code:
        sys.exit(code)


def serve_local(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
                threads: int | None = None, allow_fallback: bool = False, max_batch: int = 16,
                max_wait_ms: float = 5, max_body_mb: float = 10, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_concurrency: int = 64, top_k: int = 5, engine: str = "onnxruntime", precision: str | None = None,
                header_timeout: float = 10, body_timeout: float = 30, keep_alive: float = 5,
                max_connections: int = 128):
    """Serve an export (default: the newest) over HTTP on this machine."""
    from toolkit.runtime.serve import ServeOptions, serve

    serve(ServeOptions(model=model, host=host, port=port, device=device, threads=threads,
                       allow_fallback=allow_fallback, max_batch=max_batch, max_wait_ms=max_wait_ms,
                       max_body_mb=max_body_mb, max_pixels=max_pixels, max_concurrency=max_concurrency,
                       top_k=top_k, engine=engine, precision=precision, header_timeout=header_timeout,
                       body_timeout=body_timeout, keep_alive=keep_alive, max_connections=max_connections))


def benchmark(model: str | None = None, *overrides: str, batch_sizes="1,8,32", precision="fp32", device="cpu",
              engine="onnxruntime", torch: bool = False, compile: bool = False, duration: float | None = None,
              iterations: int | None = None, warmup: int | None = None, rounds: int | None = None,
              threads: int | None = None, data: str | None = None, split: str = "val", model_only: bool = False,
              isolate: bool = True, checkpoint: str | None = None, train: str | None = None,
              batch_size: int | None = None, out_dir: str | None = None, pareto_batch: int | None = None):
    """Throughput and latency of an export (default: the newest), or of training with --train RECIPE
    (KEY=VALUE overrides after it apply to that recipe). More .onnx files after MODEL: compare them
    in the same rounds, top-1 (--data) against img/s with Pareto marks at --pareto-batch."""
    if train:
        from toolkit.train.benchmark import run_train_benchmark

        extra = [str(model)] if model else []  # `--train R KEY=VALUE`: fire hands the first override over as MODEL
        run_train_benchmark(train, overrides=extra + [str(o) for o in overrides], batch_size=batch_size,
                                  device=_as_list(device)[0] if device else None, duration=duration,
                                  iterations=iterations, warmup=warmup, rounds=rounds or 3, threads=threads,
                                  out_dir=out_dir)
        return
    others = [str(o) for o in overrides if not str(o).endswith(".onnx")]
    if others:
        raise UserError(f"benchmark: unexpected arguments {others}; expected more .onnx exports to compare, "
                        "or KEY=VALUE overrides with --train")
    from toolkit.runtime.benchmark import BenchmarkOptions, compare_models, run_benchmark

    loader = None  # the PyTorch backends come from the torch side: the runtime never imports it
    if torch or compile:
        from toolkit.train.torch_backend import load_torch_backends as loader
    options = BenchmarkOptions(
        batch_sizes=_as_list(batch_sizes, int), precision=_as_list(precision), device=_as_list(device),
        engine=_as_list(engine), torch=torch,
        compile=compile, duration=duration, iterations=iterations, warmup=warmup, rounds=rounds or 5,
        threads=threads, data=data, split=split, end_to_end=not model_only, isolate=isolate, checkpoint=checkpoint,
        out_dir=out_dir)
    if overrides:
        compare_models([model, *map(str, overrides)], options, pareto_batch=pareto_batch, torch_backends=loader)
    elif pareto_batch is not None:
        raise UserError("benchmark: --pareto-batch goes with several models (toolkit benchmark A.onnx B.onnx ...)")
    else:
        run_benchmark(model, options, torch_backends=loader)


def demo(*overrides: str, seeds="0,1,2", labels_per_class=None, quick: bool = False, out_dir=None,
         imagenet: bool = False, steps: int = 40):
    """The offline transfer-learning demo on scikit-learn's digits: transfer vs scratch.
    --imagenet: real ImageNet EfficientNet-Lite0 against the same net from scratch, on Fashion-MNIST
    (default labels per class 1,5,20; --steps: optimizer steps per run).
    KEY=VALUE overrides apply to all its recipes (e.g. model.arch=vgg11)."""
    overrides = [str(o) for o in overrides]
    if imagenet:
        from toolkit.train.demo_imagenet import ImagenetDemoOptions, run_imagenet_demo

        run_imagenet_demo(ImagenetDemoOptions(
            seeds=_as_list(seeds, int), labels_per_class=_as_list(labels_per_class or "1,5,20", int),
            steps=int(steps), quick=quick, out_dir=out_dir or "runs/demo-imagenet", overrides=overrides))
        return
    from toolkit.train.demo import run_demo

    run_demo(seeds=_as_list(seeds, int), labels_per_class=_as_list(labels_per_class or "1,3,10", int), quick=quick,
             out_dir=out_dir or "runs/demo", overrides=overrides)


COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "export": export,
    "predict": predict,
    "serve-local": serve_local,
    "benchmark": benchmark,
    "demo": demo,
}


BOOL_WORDS = {"true": "True", "yes": "True", "1": "True", "false": "False", "no": "False", "0": "False"}
FLAG = re.compile(r"--?[A-Za-z]")  # what fire reads as a flag: --name, and -n or -name (not -1)


def _options(command) -> tuple[list[str], set[str]]:
    """(the command's option names, the true/false ones among them), spelled with underscores."""
    import inspect

    params = inspect.signature(command).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    switches = {p.name for p in params if isinstance(p.default, bool) or "bool" in str(p.annotation)}
    return names, switches


def _switch_off(name: str, switches: set[str]) -> str | None:
    """'no_resume' or 'noresume' -> 'resume' when that is a true/false option (fire's --noflag, and --no-flag)."""
    for prefix in ("no_", "no"):
        if name.startswith(prefix) and name[len(prefix):] in switches:
            return name[len(prefix):]
    return None


def _spell_out_flags(argv: list[str]) -> list[str]:
    """`--resume` -> `--resume=True`, `--overwrite=false` and `--no-overwrite` -> `--overwrite=False`, for
    the command's true/false options.

    fire reads `--flag VALUE` as the flag's value, so `toolkit train R --resume train.epochs=30` would
    turn the override into the value of --resume (and `predict --allow-fallback img.jpg` would swallow
    the image); and it reads `--overwrite=false` as the string 'false', which is true. Spelled out, a
    bare flag is only a flag and a written value means what it says."""
    command = COMMANDS.get(argv[0]) if argv else None
    if command is None:
        return argv
    _, switches = _options(command)
    out = [argv[0]]
    for arg in argv[1:]:
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if arg.startswith("--") and not eq and _switch_off(key, switches) and key not in switches:
            arg = f"--{_switch_off(key, switches)}=False"
        elif arg.startswith("--") and key in switches:
            if eq and value.lower() not in BOOL_WORDS:
                raise UserError(f"--{name}={value}: expected --{name} alone, or --{name}=true / --{name}=false")
            arg = f"--{name}={BOOL_WORDS[value.lower()] if eq else 'True'}"
        out.append(arg)
    return out


def _check_flags(argv: list[str]) -> None:
    """The command must exist and every flag must name one of its options, before anything runs.

    fire hands an unknown --flag on to the command's result and complains only after the command has
    run (`serve-local --max-concurency 2` served with the defaults, `predict --formt json` printed a
    table first), so a misspelling is caught here, with the nearest option, as the recipes do."""
    import difflib

    if not argv or argv[0].startswith("-"):
        return  # `toolkit`, `toolkit --help`: fire's own listing
    command = COMMANDS.get(argv[0])
    if command is None:
        near = difflib.get_close_matches(argv[0], list(COMMANDS), n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UserError(f"{argv[0]!r}: no such command; {hint}expected one of {', '.join(COMMANDS)}")
    names, switches = _options(command)
    for arg in argv[1:]:
        if arg == "--":
            break  # fire's own flags (--trace, --verbose, ...) follow a bare --
        if not FLAG.match(arg):
            continue
        flag = arg.partition("=")[0]
        key = flag.lstrip("-").replace("-", "_")
        if len(key) == 1 and not flag.startswith("--"):  # fire's short flag: the one option with that initial
            starts = [n for n in names if n.startswith(key)]
            if key == "h" or len(starts) == 1:
                continue
            if starts:
                options = ", ".join("--" + n.replace("_", "-") for n in starts)
                raise UserError(f"{flag}: ambiguous for {argv[0]} ({options}); write the option out")
        elif key in names or key == "help" or _switch_off(key, switches):
            continue
        near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"did you mean --{near[0].replace('_', '-')}? " if near else ""
        raise UserError(f"{flag}: {argv[0]} has no such option; {hint}`toolkit {argv[0]} --help` lists them")


def main(argv: list[str] | None = None) -> None:
    import fire

    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        _check_flags(argv)
        argv = _spell_out_flags(argv)
        fire.Fire(COMMANDS, command=argv, name="toolkit")
    except RankZeroError:
        sys.exit(2)  # torchrun: rank 0 has printed this error already
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
