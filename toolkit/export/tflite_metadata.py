"""TFLite model metadata that MediaPipe Tasks' ImageClassifier reads: the input's normalisation (mean and
std on 0-255 pixels), the RGB image content, and the labels file, one class per output index.

Written straight from the metadata schema (mediapipe/tasks/metadata/metadata_schema.fbs, file identifier
"M001") with the flatbuffers package, because the schema's Python writers ship only inside mediapipe,
whose wheels pin numpy 1 and protobuf 4. The metadata buffer goes into the model's `metadata` list
under "TFLITE_METADATA"; the labels file is appended to the .tflite as a zip archive (the layout the
tflite_support / MediaPipe metadata populators write and their readers expect). Light: flatbuffers and
ai_edge_litert's generated TFLite schema, no torch.
"""
from __future__ import annotations

import io
import zipfile

LABELS_FILE = "labels.txt"
METADATA_NAME = "TFLITE_METADATA"
MIN_PARSER_VERSION = "1.0.0"  # the oldest metadata parser that reads every field written here
# Enum values and union member numbers of metadata_schema.fbs.
_RGB, _IMAGE_PROPERTIES, _NORMALIZATION_OPTIONS, _TENSOR_AXIS_LABELS = 1, 2, 1, 2


def _table(builder, slots: list) -> int:
    """One flatbuffer table; slots: (slot, kind, value) with kind 'offset', 'byte' or 'uint'."""
    builder.StartObject(max(s for s, _, _ in slots) + 1 if slots else 0)
    for slot, kind, value in slots:
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "byte":
            builder.PrependInt8Slot(slot, value, 0)
        else:
            builder.PrependUint32Slot(slot, value, 0)
    return builder.EndObject()


def _vector(builder, offsets: list) -> int:
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return builder.EndVector()


def _floats(builder, values) -> int:
    builder.StartVector(4, len(values), 4)
    for v in reversed(list(values)):
        builder.PrependFloat32(float(v))
    return builder.EndVector()


def metadata_bytes(name: str, description: str, mean255, std255, crop: int, n_classes: int) -> bytes:
    """The ModelMetadata flatbuffer of an image classifier with one RGB input and one score output."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    s = b.CreateString
    norm = _table(b, [(0, "offset", _floats(b, mean255)), (1, "offset", _floats(b, std255))])
    unit = _table(b, [(0, "byte", _NORMALIZATION_OPTIONS), (1, "offset", norm)])
    size = _table(b, [(0, "uint", crop), (1, "uint", crop)])
    image = _table(b, [(0, "byte", _RGB), (1, "offset", size)])
    content = _table(b, [(0, "byte", _IMAGE_PROPERTIES), (1, "offset", image)])
    input_meta = _table(b, [(0, "offset", s("image")), (1, "offset", s(f"RGB image, {crop}x{crop}, NHWC")),
                            (3, "offset", content), (4, "offset", _vector(b, [unit]))])
    labels = _table(b, [(0, "offset", s(LABELS_FILE)), (1, "offset", s("one class name per output index")),
                        (2, "byte", _TENSOR_AXIS_LABELS)])
    output_meta = _table(b, [(0, "offset", s("logits")), (1, "offset", s(f"a score for each of {n_classes} classes")),
                             (6, "offset", _vector(b, [labels]))])
    subgraph = _table(b, [(2, "offset", _vector(b, [input_meta])), (3, "offset", _vector(b, [output_meta]))])
    model = _table(b, [(0, "offset", s(name)), (1, "offset", s(description)), (3, "offset", _vector(b, [subgraph])),
                       (7, "offset", s(MIN_PARSER_VERSION))])
    b.Finish(model, file_identifier=b"M001")
    return bytes(b.Output())


def attach(model: bytes, metadata: bytes, labels: list) -> bytes:
    """The .tflite bytes with `metadata` as its TFLITE_METADATA buffer and labels.txt zipped onto the end."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = list(metadata)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata = [m for m in (tree.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    b = flatbuffers.Builder(len(model) + len(metadata) + 1024)
    b.Finish(tree.Pack(b), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as archive:  # stored: readers map it in place
        archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in labels))
    return out.getvalue()


def read_labels(path: str) -> list:
    """The labels file zipped into a .tflite written by `attach`."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(LABELS_FILE).decode("utf-8").splitlines()
