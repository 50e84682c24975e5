"""The ONNX file contract: the metadata every toolkit export carries, written, read and checked here.

An exported model is self-describing: a Predictor, `toolkit evaluate MODEL.onnx`, serve-local, the
benchmark and the Triton writer need nothing but the .onnx file. Its `metadata_props` hold:

    key                 value (strings are stored as-is, everything else as JSON)
    toolkit_format      "1", or "2" when preprocess.fit is not crop (format_for); required. A newer number
                        than FORMAT_VERSION means "upgrade toolkit"
    labels              required: JSON list of class names, one per logit, in output order (non-empty, str, distinct)
    names               JSON object {"0": label, ...} (the same labels keyed by index, for other tools)
    preprocess          required: JSON object, PreprocessSpec.to_dict() (read back as a PreprocessSpec):
                        resize, crop, interpolation, mean, std (+ channel_order RGB, layout NCHW, value_range [0, 1]);
                        decode (draft | full; absent in files written before draft decoding: full);
                        fit (crop | letterbox | squash; absent in files written before fit modes: crop).
                        Checked: 1 <= crop <= resize <= 8192, mean finite, std finite and positive
    input               JSON object: name, dtype (float32 | uint8), layout (NCHW | NHWC), shape, raw (bool;
                        true = uint8 NHWC pixels in, normalisation inside the graph)
    outputs             JSON list of output names: ["logits"] or ["logits", "probabilities"]
    precision           fp32 | fp16 | int8 (fp32 when absent)
    toolkit_version     the toolkit that wrote the file
    source_run, checkpoint, checkpoint_sha256   where the weights came from
    recipe              JSON object: the training recipe (lets `toolkit evaluate` find the data)
    metrics             JSON object: the checkpoint's validation metrics
    arch, head          the backbone and head names
    quantization        JSON object, INT8 twins only: how it was calibrated
    temperature         optional: a JSON number T, finite and > 0, fitted on validation for THIS file's logits
                        (each twin its own); the Predictor's scores are softmax(logits / T). Absent: T = 1
    ood                 optional: JSON object, the "unknown" answer: score (max_prob | energy, toolkit.calibration),
                        threshold (a number, not NaN; accept when score >= it), accept_rate (in (0, 1]: the share
                        of validation images it accepts), and bf16 ({temperature, threshold}, optional): the
                        values refitted for the file read in BF16 by OpenVINO. Absent: every image is accepted

Versioning: the format changes only when an existing key changes meaning; new optional keys don't
change it. `preprocess.fit` did: a reader from before fit modes would centre-crop a letterbox file and
answer wrongly without a word, so a file that does not crop is written as format "2" and such a reader
refuses it with "upgrade toolkit"; a cropping file stays "1" and runs everywhere. A reader accepts
every version up to FORMAT_VERSION and refuses a newer one.

Reading is in two steps: `decode` (every value JSON-decoded where it looks like JSON: what
Predictor.metadata holds) and `from_props` (validation into a ModelContract). A missing or malformed
key is a ContractError naming the file, the key and what was expected. Before any value is JSON-decoded
its size (VALUE_LIMITS: per key, from 16 characters for `precision` to 16 MB for `labels`; 64 KB for a
key not in the table; 40 MB for all values together) and nesting depth (64) are checked, so a hostile
file cannot exhaust memory or json's recursion, nor make /v1/model answer megabytes; `labels` holds at
most 100,000 names of at most 1,000 characters (toolkit.limits).

`check_model_file(path)` runs before an engine loads a file: in a file that claims to be an export it
refuses oversized metadata, tensors stored as external data and control flow (toolkit.contract_graph,
which skims the file: no tensor data is read, from the file or beside it).
No torch here, and not even onnx at import time (onnx is imported where a file or proto is handled).
See docs/architecture.md.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.contract_graph import check_graph, read_skeleton
from toolkit.errors import UserError
from toolkit.limits import (MAX_LABEL_CHARS, MAX_LABELS, MAX_METADATA_CHARS, MAX_METADATA_DEPTH,
                            MAX_PREPROCESS_SIDE)

__all__ = ["FORMAT_VERSION", "format_for", "ContractError", "check_calibration", "ModelContract", "PreprocessSpec",
           "encode", "write", "decode", "from_props", "read_file", "raw_props", "props_of", "from_session", "check_model_file",
           "PREPROCESS_KEYS", "INTERPOLATION_NAMES", "DECODE_MODES", "FIT_MODES", "VALUE_LIMITS", "OOD_SCORES"]

FORMAT_VERSION = "2"  # the newest this toolkit reads; it writes format_for(preprocess)
_FORMATS = ("1", "2")

# What PreprocessSpec.from_dict needs (the other keys of to_dict have defaults).
PREPROCESS_KEYS = ("resize", "crop", "interpolation", "mean", "std")
# The resize filters (toolkit.preprocess maps each to Pillow's) and the JPEG decode modes (see
# toolkit.preprocess: draft lets libjpeg scale while decoding; full decodes every pixel).
INTERPOLATION_NAMES = ("nearest", "bilinear", "bicubic", "lanczos")
DECODE_MODES = ("draft", "full")
# How the image becomes the square input (toolkit.preprocess.Preprocess.resize_crop): crop resizes the short
# side to `resize` and centre-crops; letterbox fits the long side to `crop` and pads the rest with the mean
# colour; squash resizes both sides to `crop`. Files without the key predate fit modes and keep crop.
FIT_MODES = ("crop", "letterbox", "squash")
# The "unknown" answer's scores (toolkit.calibration computes them; higher = more like the training classes).
OOD_SCORES = ("max_prob", "energy")
FILE_PRECISIONS = ("fp32", "fp16", "int8")  # what a file's `precision` metadata may say
_EXPECT_FILE = "expected an .onnx file written by toolkit export"
# Keys whose presence says "this file is a toolkit export" (so the export rules apply to it).
_CLAIM_KEYS = ("toolkit_format", "labels", "preprocess")

_KB, _MB = 1024, 1024 * 1024
# The most characters each stored value may have. Sized far above what export writes, far below harm:
# the class names may be many (MAX_LABELS of up to MAX_LABEL_CHARS), a recipe file is at most 1 MB
# (toolkit.recipe.reading), and the short strings /v1/model shows are a few dozen characters.
VALUE_LIMITS = {
    "labels": MAX_METADATA_CHARS, "names": MAX_METADATA_CHARS,
    "recipe": 2 * _MB, "metrics": 1 * _MB, "quantization": 64 * _KB,
    "preprocess": 4 * _KB, "input": 4 * _KB, "outputs": 4 * _KB,
    "source_run": 4 * _KB, "checkpoint": 4 * _KB,  # paths (PATH_MAX is 4096)
    "toolkit_format": 16, "precision": 16, "toolkit_version": 64, "checkpoint_sha256": 128,
    "arch": 256, "head": 256, "temperature": 64, "ood": 4 * _KB,
}
OTHER_VALUE_LIMIT = 64 * _KB  # a key the contract doesn't define (another tool's note)
TOTAL_METADATA_LIMIT = 40 * _MB  # every key and value together


class ContractError(UserError):
    """A model whose metadata breaks the ONNX file contract; the message names the file and the key."""


def _number_list(values: Any, key: str, positive: bool) -> tuple:
    """Three finite numbers (positive ones for std), or a UserError naming preprocess.<key>."""
    ok = (isinstance(values, (list, tuple)) and len(values) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and (v > 0 or not positive) for v in values))
    if not ok:
        raise UserError(f"preprocess.{key}: {str(values)[:80]}; expected three finite "
                        f"{'positive ' if positive else ''}numbers (R, G, B)")
    return tuple(float(v) for v in values)


def _side(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PREPROCESS_SIDE:
        raise UserError(f"preprocess.{key}: {repr(value)[:40]}; expected a whole number of pixels from 1 to "
                        f"{MAX_PREPROCESS_SIDE}")
    return value


@dataclass(frozen=True)
class PreprocessSpec:
    """The eval preprocessing a model file states (its `preprocess` key), typed and checked once.

    toolkit.preprocess.Preprocess is this spec plus the pixel work (it subclasses it, with the recipe's
    defaults), built from it with `Preprocess.from_spec`. Every value is checked on construction:
    1 <= crop <= resize <= MAX_PREPROCESS_SIDE, mean finite, std finite and positive, a known filter,
    decode mode and fit mode; a bad one is a UserError naming preprocess.<key>.
    """

    resize: int  # shorter side after the resize, pixels
    crop: int  # the square center crop: the network's input
    interpolation: str  # resize filter, one of INTERPOLATION_NAMES
    mean: tuple  # per channel (R, G, B), of pixels scaled to [0, 1]
    std: tuple  # per channel (R, G, B)
    decode: str = "full"  # how JPEGs decode, one of DECODE_MODES (files without the key predate draft)
    fit: str = "crop"  # how the image becomes the square input, one of FIT_MODES (files without it: crop)
    channel_order: str = field(default="RGB", init=False)
    layout: str = field(default="NCHW", init=False)
    value_range: tuple = field(default=(0.0, 1.0), init=False)

    def __post_init__(self):
        object.__setattr__(self, "mean", _number_list(self.mean, "mean", positive=False))
        object.__setattr__(self, "std", _number_list(self.std, "std", positive=True))
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATION_NAMES:
            raise UserError(f"preprocess.interpolation: {str(self.interpolation)[:40]!r}; expected one of "
                            f"{', '.join(INTERPOLATION_NAMES)}")
        if not isinstance(self.decode, str) or self.decode not in DECODE_MODES:
            raise UserError(f"preprocess.decode: {str(self.decode)[:40]!r}; expected one of "
                            f"{', '.join(DECODE_MODES)}")
        if not isinstance(self.fit, str) or self.fit not in FIT_MODES:
            raise UserError(f"preprocess.fit: {str(self.fit)[:40]!r}; expected one of {', '.join(FIT_MODES)}")
        _side(self.resize, "resize")
        _side(self.crop, "crop")
        if self.crop > self.resize:
            raise UserError(f"preprocess.crop: {self.crop} with resize {self.resize}; expected crop <= resize")

    def to_dict(self) -> dict:
        """What export writes into the model file (JSON-ready: lists, not tuples)."""
        d = asdict(self)
        d["mean"], d["std"], d["value_range"] = list(self.mean), list(self.std), list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict):
        """Rebuild from to_dict()'s form, every value type-checked (it comes from a model file). A dict
        without `decode` was written before draft decoding existed, so it decodes in full; one without
        `fit` before fit modes existed, so it centre-crops."""
        if d.get("channel_order", "RGB") != "RGB" or d.get("layout", "NCHW") != "NCHW":
            raise UserError(f"preprocess: unsupported channel order/layout {str(d.get('channel_order'))[:20]}/"
                            f"{str(d.get('layout'))[:20]}; expected RGB/NCHW")
        return cls(resize=d["resize"], crop=d["crop"], interpolation=d["interpolation"],
                   mean=d["mean"], std=d["std"], decode=d.get("decode", "full"), fit=d.get("fit", "crop"))


@dataclass
class ModelContract:
    """The checked metadata of one exported model."""

    labels: list  # class names, one per logit
    preprocess: PreprocessSpec  # the eval preprocessing (toolkit.preprocess.Preprocess.from_spec runs it)
    input: dict | None  # the input spec (name, dtype, layout, shape, raw); None in files that lack it
    outputs: list | None  # output names; None in files that lack it
    precision: str  # fp32, fp16 or int8
    meta: dict = field(default_factory=dict)  # every key, JSON-decoded (what Predictor.metadata is)
    temperature: float | None = None  # the calibration T of this file; None: not calibrated (T = 1)
    ood: dict | None = None  # {score, threshold, accept_rate[, bf16]}; None: no "unknown" answer

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)


# ------------------------------------------------------------------------------------------------
# Writing

def encode(meta: dict) -> dict[str, str]:
    """Metadata values as stored: strings as-is, everything else JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.items()}


def write(model_proto, meta: dict) -> None:
    """Replace the metadata of `model_proto` with `meta` (encoded), and mark toolkit as the producer."""
    from onnx import helper

    del model_proto.metadata_props[:]
    helper.set_model_props(model_proto, encode(meta))
    model_proto.producer_name = "toolkit"
    model_proto.doc_string = f"toolkit export of {meta.get('source_run') or meta.get('checkpoint')}"


# ------------------------------------------------------------------------------------------------
# Reading

# A JSON string literal (escapes included), and the step each bracket takes the nesting depth.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _nesting(text: str) -> int:
    """How deep the lists and objects of a JSON text nest, counted without parsing it (so a hostile value
    cannot reach json's recursion limit). Brackets inside string literals don't count."""
    if text.count("[") + text.count("{") <= MAX_METADATA_DEPTH:
        return 0  # too few brackets to go too deep
    brackets = re.findall(r"[\[\]{}]", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(_DEPTH_STEP[b] for b in brackets), default=0)


def _size(chars: int) -> str:
    if chars >= _MB:
        return f"{chars / _MB:.1f} MB".replace(".0 MB", " MB")
    return f"{chars / _KB:.1f} KB".replace(".0 KB", " KB") if chars >= _KB else f"{chars} characters"


def check_sizes(props: dict[str, str], where: str = "model") -> None:
    """Every stored value within its key's limit (VALUE_LIMITS), and all of them within
    TOTAL_METADATA_LIMIT: a ContractError naming `where` and the key. Nothing is decoded."""
    total = 0
    for key, value in props.items():
        limit = VALUE_LIMITS.get(key, OTHER_VALUE_LIMIT)
        if len(value) > limit:
            raise ContractError(f"{where}: {key[:80]!r} metadata is {_size(len(value))}; expected at most "
                                f"{_size(limit)} for this key")
        total += len(key) + len(value)
    if total > TOTAL_METADATA_LIMIT:
        raise ContractError(f"{where}: the metadata is {_size(total)} in all ({len(props)} keys); expected at "
                            f"most {_size(TOTAL_METADATA_LIMIT)}")


def _decode_value(key: str, value: str, where: str) -> Any:
    if value[:1] in "[{\"":
        if _nesting(value) > MAX_METADATA_DEPTH:
            raise ContractError(f"{where}: {key[:80]!r} metadata nests deeper than {MAX_METADATA_DEPTH} levels; "
                                "expected the flat JSON toolkit export writes")
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def decode(props: dict[str, str], where: str = "model") -> dict:
    """Every value JSON-decoded where it is JSON (a list, an object or a quoted string); others stay str.
    A value over its size limit or nested over MAX_METADATA_DEPTH is a ContractError naming `where`
    and the key, checked before json sees it (and so is every value's size: check_sizes)."""
    check_sizes(props, where)
    return {k: _decode_value(k, v, where) for k, v in props.items()}


def format_for(preprocess: dict) -> str:
    """The toolkit_format a file with this preprocessing is written as: "1" while it centre-crops (every
    toolkit reads it the same way), "2" when its fit mode is one older readers would silently ignore."""
    return "1" if preprocess.get("fit", "crop") == "crop" else "2"


def _check_format(props: dict, where: str) -> None:
    fmt = props.get("toolkit_format")
    if fmt is None:
        raise ContractError(f"{where}: not a toolkit export: no 'toolkit_format' metadata; expected "
                            f"toolkit_format {FORMAT_VERSION!r}, written by toolkit export")
    if fmt in _FORMATS:
        return
    if fmt.isdigit() and int(fmt) > int(FORMAT_VERSION):
        raise ContractError(f"{where}: toolkit_format {fmt!r} is not supported by this toolkit; expected "
                            f"{FORMAT_VERSION!r} (upgrade toolkit to run it)")
    raise ContractError(f"{where}: 'toolkit_format' metadata is {fmt[:40]!r}; expected {FORMAT_VERSION!r}")


def _check_labels(meta: dict, props: dict, where: str) -> list:
    labels = meta["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ContractError(f"{where}: 'labels' metadata is {props['labels'][:80]!r}; expected a JSON list of "
                            "class names")
    if len(labels) > MAX_LABELS:
        raise ContractError(f"{where}: 'labels' metadata has {len(labels)} class names; expected at most "
                            f"{MAX_LABELS}")
    long = next((x for x in labels if len(x) > MAX_LABEL_CHARS), None)
    if long is not None:
        raise ContractError(f"{where}: 'labels' metadata has a class name of {len(long)} characters "
                            f"({long[:40]!r}...); expected at most {MAX_LABEL_CHARS}")
    seen: set = set()
    twice = next((x for x in labels if x in seen or seen.add(x)), None)
    if twice is not None:   # two outputs with one name: an answer could not say which class it meant
        raise ContractError(f"{where}: 'labels' metadata names {twice[:40]!r} twice; expected distinct class names")
    return labels


def _check_preprocess(meta: dict, where: str) -> PreprocessSpec:
    pre = meta.get("preprocess")
    if pre is None:
        raise ContractError(f"{where}: not a toolkit export: no 'preprocess' metadata; expected the JSON eval "
                            "preprocessing (resize, crop, interpolation, mean, std) written by toolkit export")
    if not isinstance(pre, dict):
        raise ContractError(f"{where}: 'preprocess' metadata is {str(pre)[:80]!r}, not a JSON object; expected the "
                            "JSON eval preprocessing (resize, crop, interpolation, mean, std) written by toolkit export")
    missing = [k for k in PREPROCESS_KEYS if k not in pre]
    if missing:
        raise ContractError(f"{where}: 'preprocess' metadata is incomplete (no {', '.join(missing)}); expected "
                            "resize, crop, interpolation, mean and std")
    try:
        return PreprocessSpec.from_dict(pre)
    except UserError as exc:
        raise ContractError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(f"{where}: 'preprocess' metadata is malformed ({str(exc)[:80]!r}); expected resize, "
                            "crop, interpolation, mean and std as toolkit export writes them") from None


def _optional(meta: dict, key: str, kind: type, expected: str, where: str) -> Any:
    value = meta.get(key)
    if value is not None and not isinstance(value, kind):
        raise ContractError(f"{where}: {key!r} metadata is {str(value)[:80]!r}; expected {expected}")
    return value


def from_props(props: dict[str, str], where: str) -> ModelContract:
    """Check raw metadata (key -> stored string) against the contract. `where` names the file in errors."""
    props = dict(props or {})
    if "labels" not in props:
        raise ContractError(f"{where}: not a toolkit export: no 'labels' metadata; expected an ONNX file written "
                            "by toolkit export (metadata keys toolkit_format, labels, preprocess, input)")
    _check_format(props, where)
    meta = decode(props, where)
    labels = _check_labels(meta, props, where)
    preprocess = _check_preprocess(meta, where)
    spec = _optional(meta, "input", dict, "a JSON object (name, dtype, layout, shape, raw)", where)
    outputs = _optional(meta, "outputs", list, 'a JSON list of output names (["logits", ...])', where)
    precision = _optional(meta, "precision", str, "fp32, fp16 or int8", where) or "fp32"
    if precision not in FILE_PRECISIONS:
        raise ContractError(f"{where}: 'precision' metadata is {precision!r}; expected {', '.join(FILE_PRECISIONS)}")
    temperature = _check_temperature(meta.get("temperature"), "temperature", where)
    if temperature is not None:
        meta["temperature"] = temperature
    return ModelContract(labels=labels, preprocess=preprocess, input=spec, outputs=outputs, precision=precision,
                         meta=meta, temperature=temperature, ood=_check_ood(meta.get("ood"), where))


def _number(value: Any) -> float | None:
    """A JSON number (stored as text, or decoded) as a float; None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        return float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        return None


def _check_temperature(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    t = _number(value)
    if t is None or not math.isfinite(t) or t <= 0:
        raise ContractError(f"{where}: {key!r} metadata is {str(value)[:40]!r}; expected a finite positive "
                            "number (the calibration temperature)")
    return t


def _check_threshold(value: Any, key: str, where: str) -> float:
    t = _number(value)
    if t is None or math.isnan(t):
        raise ContractError(f"{where}: {key!r} metadata is {str(value)[:40]!r}; expected a number (the OOD "
                            "score threshold), not NaN")
    return t


def _check_ood(ood: Any, where: str) -> dict | None:
    """The `ood` metadata checked: score kind, threshold, accept rate, and the optional bf16 values."""
    if ood is None:
        return None
    if not isinstance(ood, dict) or ood.get("score") not in OOD_SCORES:
        raise ContractError(f"{where}: 'ood' metadata is {str(ood)[:80]!r}; expected a JSON object with score "
                            f"({' or '.join(OOD_SCORES)}), threshold and accept_rate")
    rate = _number(ood.get("accept_rate"))
    if rate is None or not 0 < rate <= 1:
        raise ContractError(f"{where}: 'ood.accept_rate' metadata is {str(ood.get('accept_rate'))[:40]!r}; "
                            "expected a number above 0 and at most 1")
    checked = {"score": ood["score"], "threshold": _check_threshold(ood.get("threshold"), "ood.threshold", where),
               "accept_rate": rate}
    bf16 = ood.get("bf16")
    if bf16 is not None:
        if not isinstance(bf16, dict):
            raise ContractError(f"{where}: 'ood.bf16' metadata is {str(bf16)[:80]!r}; expected a JSON object "
                                "with temperature and threshold")
        checked["bf16"] = {"temperature": _check_temperature(bf16.get("temperature"), "ood.bf16.temperature", where),
                           "threshold": _check_threshold(bf16.get("threshold"), "ood.bf16.threshold", where)}
        if checked["bf16"]["temperature"] is None:
            raise ContractError(f"{where}: 'ood.bf16' metadata has no temperature; expected temperature and "
                                "threshold")
    return checked


def check_calibration(temperature: Any, ood: Any, where: str) -> tuple[float | None, dict | None]:
    """(T, ood) checked as the file's metadata is (a run's calibration.json holds the same two keys)."""
    return _check_temperature(temperature, "temperature", where), _check_ood(ood, where)


def _load_proto(path: str):
    """The ModelProto of an ONNX file, without its external data."""
    import onnx

    if not os.path.isfile(path):
        raise ContractError(f"{path}: no such model file; {_EXPECT_FILE}")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception:  # protobuf raises its own types
        raise ContractError(f"{path}: not a readable ONNX file; {_EXPECT_FILE}") from None


def raw_props(path) -> dict[str, str]:
    """The stored metadata of an ONNX file (weights not loaded, nothing checked)."""
    return props_of(_load_proto(os.fspath(path)))


def check_model_file(path) -> None:
    """Before an engine loads `path`: if the file claims to be a toolkit export (contract metadata or
    producer "toolkit"), its metadata sizes (check_sizes) and its graph (no external data, no control
    flow: toolkit.contract_graph) must be what export writes; a ContractError otherwise. A file that
    is not ONNX, or makes no such claim, is left to the engine and the contract check after it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return  # missing, a folder or a FIFO (opening one would block): the caller and the engine say so
    try:
        skeleton = read_skeleton(path)
    except Exception:  # not a file, not ONNX (protobuf raises its own types)
        return  # the engine says why it can't read it, in its own words
    if skeleton.producer != "toolkit" and not any(key in skeleton.props for key in _CLAIM_KEYS):
        return
    check_sizes(skeleton.props, path)
    check_graph(skeleton, path, ContractError)


def props_of(model_proto) -> dict[str, str]:
    """The stored metadata of a loaded ModelProto, as a dict (nothing decoded or checked)."""
    return {p.key: p.value for p in model_proto.metadata_props}


def read_file(path) -> ModelContract:
    """The checked contract of an ONNX file, read without an ONNX Runtime session."""
    return from_props(raw_props(path), os.fspath(path))


def from_session(session, where: str) -> ModelContract:
    """The checked contract of a model already open in an onnxruntime.InferenceSession."""
    return from_props(dict(session.get_modelmeta().custom_metadata_map or {}), where)
