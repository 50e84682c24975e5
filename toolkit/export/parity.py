"""The parity gate: ONNX Runtime (CPU) against PyTorch on real validation images of the run plus random
tensors, at batch sizes 1, 2, 7 and 16 (FP32: rtol 1e-3, atol 1e-4, top-1 agreement 100%)."""
from __future__ import annotations

import time

import numpy as np

from toolkit.artifacts import twin_path
from toolkit.errors import UserError
from toolkit.export.plan import ExportJob
from toolkit.export.staging import Staging
from toolkit.export.torch_graph import torch_logits
from toolkit.preprocess import Preprocess
from toolkit.runtime.onnx_eval import cpu_session, load_pixels

PARITY_BATCH_SIZES = (1, 2, 7, 16)
FP32_RTOL, FP32_ATOL = 1e-3, 1e-4


class Gate:
    """The inputs of the gate, and the PyTorch logits of each (computed once, shared by every file judged)."""

    def __init__(self, model, cases: list, probabilities: bool):
        self.model = model  # the reference: the checkpoint's float32 model
        self.cases = cases  # see parity_cases
        self.probabilities = probabilities  # the files have a probabilities output to check too
        self.ref_cache: dict = {}  # (case index, raw-normalised input?) -> torch logits

    def measure(self, path: str, raw: bool, rtol: float, atol_fn, session=None) -> dict:
        """Run every case through ORT (a CPU session on `path`, or `session`: anything with ORT's
        run(outputs, feed), e.g. the browser's) and PyTorch; the results, not yet judged."""
        return _parity(session or cpu_session(path), self, raw, rtol, atol_fn)  # a CPU session closes on return


def gate_fp32(job: ExportJob, staging: Staging, data, why) -> tuple[Gate, dict, dict]:
    """(the gate, its data notes, kind -> results) after judging the FP32 file and the raw-input one."""
    t = time.perf_counter()
    real, data_info = real_images(job, data, why)
    gate = Gate(job.model, parity_cases(real, job.preprocess, job.options.dynamic_hw), job.options.probabilities)
    parity: dict = {}
    for kind in [k for k in ("fp32", "raw") if k in staging.files]:
        raw = kind == "raw"
        parity[kind] = gate.measure(staging.files[kind], raw, FP32_RTOL, lambda s: FP32_ATOL)
        judge(parity[kind], "fp32, raw uint8 input" if raw else "fp32", twin_path(job.path, kind))
        job.say(f"parity {kind}: {parity_line(parity[kind])}")
    job.timings["parity_s"] = time.perf_counter() - t
    return gate, data_info, parity


def real_images(job: ExportJob, data, why) -> tuple[np.ndarray, dict]:
    """Up to parity_images images of the run's val split (else test, else train), and notes on them."""
    crop = job.preprocess.crop
    real = np.zeros((0, crop, crop, 3), np.uint8)
    data_info: dict = {"split": None, "real_images": 0, "note": None}
    if data is not None:
        split = "val" if data.val else "test" if data.test else "train"
        items = getattr(data, split)
        real, _, skipped = load_pixels(items, job.preprocess, job.recipe.data.max_pixels,
                                       limit=int(job.options.parity_images))
        data_info.update(split=split, real_images=int(len(real)), skipped=[f"{p}: {r}" for p, r in skipped])
        if split != "val":
            data_info["note"] = f"the run's data has no val split; parity used {split} images"
    if len(real) == 0:
        note = (f"could not load the run's data ({why})" if why else "the run's data has no readable images")
        data_info["note"] = note + "; parity gate used random tensors only"
        job.say(f"note: {data_info['note']}")
    return real, data_info


def _compare(ref: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> dict:
    """Closeness and top-1 agreement of `got` against `ref` (both N x classes).

    A top-1 flip between two classes whose reference logits differ by less than the tolerance is a
    numeric tie, counted under 'ties' and not as a disagreement."""
    n = len(ref)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    a_ref, a_got = ref.argmax(1), got.argmax(1)
    rows = np.arange(n)
    gap = ref[rows, a_ref] - ref[rows, a_got]
    tie = (a_ref != a_got) & (gap <= 2 * (atol + rtol * np.abs(ref[rows, a_ref])))
    mismatch = int(((a_ref != a_got) & ~tie).sum())
    return {"n": n, "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "close": bool(np.allclose(got, ref, rtol=rtol, atol=atol)),
            "top1_agreement": (n - mismatch) / n if n else 1.0, "ties": int(tie.sum()), "mismatches": mismatch}


def parity_cases(real: np.ndarray, preprocess: Preprocess, dynamic_hw: bool, seed: int = 0) -> list[dict]:
    """Inputs for the gate: per batch size, a batch of real images (cycled when there are fewer) and a
    batch of random inputs. Each case carries uint8 pixels (for a raw-input graph) and float32 NCHW."""
    rng = np.random.default_rng(seed)
    crop = preprocess.crop
    cases, offset = [], 0
    for bs in PARITY_BATCH_SIZES:
        if len(real):
            idx = (offset + np.arange(bs)) % len(real)
            offset += bs
            cases.append({"kind": "real", "bs": bs, "pixels": real[idx],
                          "x": preprocess.normalize(real[idx])})
        pixels = rng.integers(0, 256, (bs, crop, crop, 3), dtype=np.uint8)
        cases.append({"kind": "random", "bs": bs, "pixels": pixels,
                      # N(0, 1) tensors reach well outside the normalised image range on purpose
                      "x": rng.standard_normal((bs, 3, crop, crop)).astype(np.float32),
                      "x_raw": preprocess.normalize(pixels)})
    if dynamic_hw:
        h, w = crop + 32, crop + 64
        pixels = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        cases.append({"kind": "random", "bs": 2, "pixels": pixels, "hw": [h, w],
                      "x": rng.standard_normal((2, 3, h, w)).astype(np.float32),
                      "x_raw": preprocess.normalize(pixels)})
    return cases


def _parity(session, gate: Gate, raw: bool, rtol: float, atol_fn) -> dict:
    """Every case through ORT and PyTorch; per batch size and overall results (not yet judged)."""
    per_bs: dict = {}
    overall_ref, overall_got, kinds = [], [], []
    prob_ok = True
    probabilities = gate.probabilities
    outputs = ["logits", "probabilities"] if probabilities else ["logits"]
    for i, case in enumerate(gate.cases):
        x_ref = case["x_raw"] if raw and "x_raw" in case else case["x"]
        key = (i, raw and "x_raw" in case)
        if key not in gate.ref_cache:
            gate.ref_cache[key] = torch_logits(gate.model, x_ref)
        ref = gate.ref_cache[key]
        feed = case["pixels"] if raw else case["x"]
        result = session.run(outputs, {"input": feed})
        got = np.asarray(result[0], np.float32)
        if probabilities:
            soft = np.exp(ref - ref.max(1, keepdims=True))
            soft /= soft.sum(1, keepdims=True)
            prob_ok &= bool(np.allclose(result[1], soft, rtol=rtol, atol=1e-5))
        overall_ref.append(ref)
        overall_got.append(got)
        kinds += [case["kind"]] * len(ref)
        key_bs = str(case["bs"]) if "hw" not in case else f"{case['bs']}@{case['hw'][0]}x{case['hw'][1]}"
        per_bs.setdefault(key_bs, []).append((case["kind"], ref, got))
    scale = max(1e-6, float(max(np.abs(r).max() for r in overall_ref)))
    atol = atol_fn(scale)
    results = {}
    for key_bs, parts in per_bs.items():
        ref = np.concatenate([p[1] for p in parts])
        got = np.concatenate([p[2] for p in parts])
        cmp = _compare(ref, got, rtol, atol)
        cmp["n_real"] = sum(len(p[1]) for p in parts if p[0] == "real")
        cmp["n_random"] = sum(len(p[1]) for p in parts if p[0] == "random")
        results[key_bs] = cmp
    ref, got = np.concatenate(overall_ref), np.concatenate(overall_got)
    kinds_arr = np.asarray(kinds)
    total = _compare(ref, got, rtol, atol)
    real_mask = kinds_arr == "real"
    total.update({
        "rtol": rtol, "atol": atol, "batch_sizes": results,
        "max_abs_diff_real": float(np.abs(got[real_mask] - ref[real_mask]).max()) if real_mask.any() else None,
        "real_inputs": int(real_mask.sum()), "random_inputs": int((~real_mask).sum()),
        "max_abs_logit": float(np.abs(ref).max()),
    })
    if probabilities:
        total["probabilities_match"] = prob_ok
    return total


def parity_line(p: dict) -> str:
    real = f", real images {p['max_abs_diff_real']:.2e}" if p.get("max_abs_diff_real") is not None else ""
    return (f"max abs diff {p['max_abs_diff']:.2e}{real} over {p['real_inputs']} real + {p['random_inputs']} random "
            f"inputs, top-1 agreement {p['top1_agreement'] * 100:.1f}%")


def judge(p: dict, what: str, path: str, min_agreement: float = 1.0, runtime: str = "ONNX Runtime CPU") -> None:
    problems = []
    if not p["close"]:
        worst = max(p["batch_sizes"].items(), key=lambda kv: kv[1]["max_abs_diff"])
        problems.append(f"logits differ by up to {p['max_abs_diff']:.3g} (worst at batch {worst[0]}; allowed "
                        f"rtol {p['rtol']:g}, atol {p['atol']:.3g})")
    if p["top1_agreement"] < min_agreement:
        problems.append(f"top-1 agreement {p['top1_agreement'] * 100:.1f}% (expected at least "
                        f"{min_agreement * 100:g}%, {p['mismatches']} of {p['n']} inputs differ)")
    else:
        problems.append(f"top-1 agreement {p['top1_agreement'] * 100:.1f}%")
    if p.get("probabilities_match") is False:
        problems.append("the probabilities output is not softmax(logits)")
    if len(problems) > 1 or p["top1_agreement"] < min_agreement:
        raise UserError(f"parity gate failed for {path} ({what}, {runtime} vs PyTorch on "
                        f"{p['real_inputs']} real + {p['random_inputs']} random inputs): {'; '.join(problems)}; "
                        "nothing was written")
