"""`toolkit` command line: each command is a few lines over a library function.

Light module: nothing heavy is imported until a command runs, so `toolkit predict` and
`toolkit serve-local` work on an edge box without torch.
"""
from __future__ import annotations

import os
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
             batch_size: int = 32, device: str = "auto", json: bool = False):
    """Top-1, top-5, per-class accuracy and confusion matrix of a checkpoint, run or .onnx file on a split."""
    from toolkit.train.evaluate import evaluate_command

    evaluate_command(target, recipe=recipe, split=split, batch_size=batch_size, device=device, as_json=json)


def export(run: str | None = None, out: str | None = None, opset: int = 17, fp16: bool = False,
           int8: bool = False, raw_input: bool = False, probabilities: bool = False, dynamic_hw: bool = False,
           calib_images: int = 64, calib_method: str = "minmax", keep_fp32: str | None = None,
           int8_budget: float = 1.0, per_channel: bool = True, parity_images: int = 16, ir_version: int | None = None,
           format: str = "onnx", max_batch_size: int = 32, instances: int = 1, instance_kind: str = "auto",
           queue_delay_us: int = 100, model_version: int = 1):
    """Export a run (default: the newest) to one verified, self-describing ONNX file, or with --format triton
    to a Triton Inference Server model repository (--out: its folder, default exports/triton)."""
    from toolkit.export import ExportOptions, TritonOptions, export_run, export_triton

    options = ExportOptions(run=run, opset=opset, fp16=fp16, int8=int8, raw_input=raw_input,
                            probabilities=probabilities, dynamic_hw=dynamic_hw, calib_images=calib_images,
                            calib_method=calib_method, keep_fp32=tuple(_as_list(keep_fp32)), int8_budget=int8_budget,
                            per_channel=per_channel, parity_images=parity_images, ir_version=ir_version)
    if format == "onnx":
        export_run(options, out=out)
    elif format == "triton":
        export_triton(options, TritonOptions(repo=out, max_batch_size=max_batch_size, instances=instances,
                                             instance_kind=instance_kind, queue_delay_us=queue_delay_us,
                                             model_version=model_version))
    else:
        raise UserError(f"--format {format!r}: expected onnx (one file) or triton (a Triton model repository)")


def predict(*paths: str, top_k: int = 5, format: str = "table", device: str = "auto",
            threads: int | None = None, allow_fallback: bool = False, batch_size: int = 32, recursive: bool = True):
    """Predict images: toolkit predict [MODEL.onnx] IMAGES... (files, folders, globs)."""
    from toolkit.runtime.predict import predict_command

    paths = [str(p) for p in paths]
    model = paths.pop(0) if paths and paths[0].endswith(".onnx") else None  # else: the newest export
    if not paths:
        raise UserError("predict: no images given; expected toolkit predict [MODEL.onnx] IMAGE_OR_FOLDER...")
    code = predict_command(model, paths, top_k=top_k, format=format, device=device, threads=threads,
                           allow_fallback=allow_fallback, batch_size=batch_size, recursive=recursive)
    if code:
        sys.exit(code)


def serve_local(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
                threads: int | None = None, allow_fallback: bool = False, max_batch: int = 16,
                max_wait_ms: float = 5, max_body_mb: float = 10, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_concurrency: int = 64, top_k: int = 5):
    """Serve an export (default: the newest) over HTTP on this machine."""
    from toolkit.runtime.serve import ServeOptions, serve

    serve(ServeOptions(model=model, host=host, port=port, device=device, threads=threads,
                       allow_fallback=allow_fallback, max_batch=max_batch, max_wait_ms=max_wait_ms,
                       max_body_mb=max_body_mb, max_pixels=max_pixels, max_concurrency=max_concurrency,
                       top_k=top_k))


def benchmark(model: str | None = None, *overrides: str, batch_sizes="1,8,32", precision="fp32", device="cpu",
              torch: bool = False, compile: bool = False, duration: float | None = None,
              iterations: int | None = None, warmup: int | None = None, rounds: int | None = None,
              threads: int | None = None, data: str | None = None, split: str = "val", model_only: bool = False,
              isolate: bool = True, checkpoint: str | None = None, train: str | None = None,
              batch_size: int | None = None, out_dir: str | None = None):
    """Throughput and latency of an export (default: the newest), or of training with --train RECIPE
    (KEY=VALUE overrides after it apply to that recipe)."""
    if train:
        from toolkit.train.benchmark import run_train_benchmark

        extra = [str(model)] if model else []  # `--train R KEY=VALUE`: fire hands the first override over as MODEL
        run_train_benchmark(train, overrides=extra + [str(o) for o in overrides], batch_size=batch_size,
                                  device=_as_list(device)[0] if device else None, duration=duration,
                                  iterations=iterations, warmup=warmup, rounds=rounds or 3, threads=threads,
                                  out_dir=out_dir)
        return
    if overrides:
        raise UserError(f"benchmark: unexpected arguments {list(overrides)}; KEY=VALUE overrides go with --train")
    from toolkit.runtime.benchmark import BenchmarkOptions, run_benchmark

    run_benchmark(model, BenchmarkOptions(
        batch_sizes=_as_list(batch_sizes, int), precision=_as_list(precision), device=_as_list(device), torch=torch,
        compile=compile, duration=duration, iterations=iterations, warmup=warmup, rounds=rounds or 5,
        threads=threads, data=data, split=split, end_to_end=not model_only, isolate=isolate, checkpoint=checkpoint,
        out_dir=out_dir))


def demo(*overrides: str, seeds="0,1,2", labels_per_class="1,3,10", quick: bool = False, out_dir: str = "runs/demo"):
    """The offline transfer-learning demo on scikit-learn's digits: transfer vs scratch.
    KEY=VALUE overrides apply to all its recipes (e.g. model.arch=vgg11)."""
    from toolkit.train.demo import run_demo

    run_demo(seeds=_as_list(seeds, int), labels_per_class=_as_list(labels_per_class, int), quick=quick,
             out_dir=out_dir, overrides=[str(o) for o in overrides])


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


def _spell_out_flags(argv: list[str]) -> list[str]:
    """`--resume` -> `--resume=True`, `--overwrite=false` -> `--overwrite=False`, for the command's
    true/false options.

    fire reads `--flag VALUE` as the flag's value, so `toolkit train R --resume train.epochs=30` would
    turn the override into the value of --resume (and `predict --allow-fallback img.jpg` would swallow
    the image); and it reads `--overwrite=false` as the string 'false', which is true. Spelled out, a
    bare flag is only a flag and a written value means what it says."""
    import inspect

    command = COMMANDS.get(argv[0]) if argv else None
    if command is None:
        return argv
    flags = {name for name, p in inspect.signature(command).parameters.items() if isinstance(p.default, bool)}
    flags |= {name.replace("_", "-") for name in flags}
    out = [argv[0]]
    for arg in argv[1:]:
        name, eq, value = arg[2:].partition("=")
        if arg.startswith("--") and name in flags:
            if eq and value.lower() not in BOOL_WORDS:
                raise UserError(f"--{name}={value}: expected --{name} alone, or --{name}=true / --{name}=false")
            arg = f"--{name}={BOOL_WORDS[value.lower()] if eq else 'True'}"
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    import fire

    try:
        argv = _spell_out_flags(list(sys.argv[1:] if argv is None else argv))
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
