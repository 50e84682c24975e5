"""Accept/reject agreement of an export's twins and engines with its FP32 file, on a whole split (not a test).

Export checks agreement on at most 600 validation images (docs/export.md); this measures it on any split of
the run's data, each file at its own T and threshold from its metadata, as the Predictor decides:

    python tests/split_agreement.py exports/NAME.onnx --split test

Lists the raw, FP16 and INT8 twins found beside the file, and the FP32 file on OpenVINO (FP32 and the BF16
read) where openvino is installed: the share of images on which each takes the FP32 file's decision, how many
differ, and the top-1 agreement.
"""
import argparse
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolkit import calibration  # noqa: E402
from toolkit.artifacts import twin_path  # noqa: E402
from toolkit.runtime.onnx_eval import onnx_outputs  # noqa: E402


def decisions(path: str, split: str, engine=None, precision=None) -> tuple:
    """(accepted per image, top-1 per image) of one file on one engine, at the file's own T and threshold."""
    out = onnx_outputs(path, split=split, engine=engine, precision=precision)
    model = out.model
    if not model.ood:
        raise SystemExit(f"{path}: no ood metadata (calibration was skipped at export): nothing to compare")
    scores = calibration.ood_score(out.logits, model.temperature or 1.0, model.ood["score"])
    return scores >= model.ood["threshold"], out.logits.argmax(1)


def candidates(path: str) -> list:
    """(name, file, engine, precision) of every twin beside `path` and, with openvino, its OpenVINO reads."""
    found = [(kind, twin_path(path, kind), None, None) for kind in ("raw", "fp16", "int8")
             if os.path.isfile(twin_path(path, kind))]
    if importlib.util.find_spec("openvino"):
        found += [("openvino fp32", path, "openvino", None), ("openvino bf16", path, "openvino", "bf16")]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the FP32 .onnx file of an export")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    args = parser.parse_args(argv)
    ref_accept, ref_top1 = decisions(args.model, args.split)
    print(f"{args.model} on {args.split}: {len(ref_accept)} images, FP32 accepts {ref_accept.mean():.1%}")
    print("| file / engine | decisions agree | differ | top-1 agree |\n|---|---|---|---|")
    for name, path, engine, precision in candidates(args.model):
        accept, top1 = decisions(path, args.split, engine, precision)
        print(f"| {name} | {np.mean(accept == ref_accept):.2%} | {int(np.sum(accept != ref_accept))} | "
              f"{np.mean(top1 == ref_top1):.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
