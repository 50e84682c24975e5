"""Evaluation time with and without BatchNorm folded (toolkit.train.model.fold), side by side (not a test).

Per arch: random weights whose BatchNorms hold statistics of their own, `--images` random images in
batches of 32 in channels_last (as training's validation on a CPU), timed through `collect_logits` with
the folded twin and with the model as it is, interleaved in rounds so machine noise hits both alike.
Reported: the median seconds of each, their ratio and the largest logit difference.

    python tests/bench_eval_fold.py --archs efficientnet_lite0,efficientnet_b0,mobilenet_v3_small,resnet18,vgg11_bn
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolkit.runtime.benchmark.machine import machine_info  # noqa: E402
from toolkit.train import evaluate  # noqa: E402
from toolkit.train.model import fold  # noqa: E402
from toolkit.train.model.backbones import build_model  # noqa: E402


def model_with_statistics(arch: str, px: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, 10, input_size=px)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, px, px))
    return model.to(memory_format=torch.channels_last)


def timed(model, batches, folded: bool) -> tuple[float, torch.Tensor]:
    """Seconds of one collect_logits pass, the fold on or off; and its logits."""
    original = fold.folded_for_eval
    if not folded:
        fold.folded_for_eval = lambda m: m.eval()
    try:
        started = time.perf_counter()
        logits, _, _ = evaluate.collect_logits(model, batches, torch.device("cpu"), channels_last=True)
        return time.perf_counter() - started, torch.from_numpy(logits)
    finally:
        fold.folded_for_eval = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="efficientnet_lite0,resnet18")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    m = machine_info()
    print(f"{m.cpu}, {m.isa['summary']}, torch {torch.__version__}, {args.threads} thread(s), {args.images} images "
          f"at {args.px} px, batch 32, channels_last, median of {args.rounds} interleaved rounds\n")
    print("| arch | as it is (s) | folded (s) | folded / as it is | max logit diff |\n|---|---|---|---|---|")
    for arch in args.archs.split(","):
        model = model_with_statistics(arch, args.px)
        images = torch.randn(args.images, 3, args.px, args.px)
        batches = [(images[i:i + 32], torch.zeros(len(images[i:i + 32]), dtype=torch.long))
                   for i in range(0, args.images, 32)]
        timed(model, batches, True), timed(model, batches, False)  # warm-up: the trace, oneDNN's kernels
        plain, folded = [], []
        for _ in range(args.rounds):
            seconds, reference = timed(model, batches, False)
            plain.append(seconds)
            seconds, logits = timed(model, batches, True)
            folded.append(seconds)
        a, b = statistics.median(plain), statistics.median(folded)
        print(f"| {arch} | {a:.3f} | {b:.3f} | {b / a:.2f} | {float((logits - reference).abs().max()):.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
