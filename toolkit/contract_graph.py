"""What the graph of a toolkit export may hold, checked before any engine loads it (toolkit.contract uses it).

toolkit export writes one self-contained file of feed-forward operators. Two things it never writes are
refused in a file that claims to be an export, because each lets a file do harm that no metadata check
sees:
- tensors stored as external data: the engine would read whatever file the tensor names, of any size
  (a 2 GiB "initializer" beside a 1 KB model), before anything else could look;
- control flow (Loop, If, Scan, SequenceMap: any node that carries a subgraph): a Loop whose trip count
  is 2**62 runs for ever on the first prediction, and an engine cannot cancel a running graph.
The file is skimmed (read_skeleton), not loaded: its tensor data is never read. onnx is imported only
when a file is read.
"""
from __future__ import annotations

import os

from toolkit.errors import UserError

# The ONNX operators that run a subgraph; any node with a graph-valued attribute is refused as well.
CONTROL_FLOW_OPS = ("Loop", "If", "Scan", "SequenceMap")
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL
_GRAPH, _GRAPHS, _TENSOR, _TENSORS = 5, 10, 4, 9  # onnx.AttributeProto.AttributeType values
_SMALL_TENSOR = 64 * 1024  # an initializer up to this size is parsed whole (faster than skimming in Python)


class Skeleton:
    """What the checks need of a model file, read without reading its tensor data (see read_skeleton)."""

    def __init__(self):
        self.producer = ""
        self.props: dict[str, str] = {}  # metadata_props
        self.nodes: list = []  # onnx.NodeProto of the main graph and of every local function
        self.tensors: list = []  # (name, stored outside the file?, location) of every stored tensor


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


class _Reader:
    """pread through a small block cache: a graph's many small messages cost a few reads, and a tensor's
    data is skipped, never read."""

    BLOCK = 8192

    def __init__(self, fd: int):
        self.fd, self.start, self.block = fd, 0, b""

    def read(self, offset: int, size: int) -> bytes:
        end = offset + size
        if self.start <= offset and end <= self.start + len(self.block):
            return self.block[offset - self.start:end - self.start]
        if size >= self.BLOCK:
            return os.pread(self.fd, size, offset)
        self.start, self.block = offset, os.pread(self.fd, self.BLOCK, offset)
        return self.block[:size]


def _fields(fd: _Reader, start: int, end: int):
    """(field number, value) of each field of the protobuf message in bytes start..end of file `fd`, read
    a field head at a time: an int for a varint, (offset, size) for a length-delimited field
    (its bytes left unread), None for a fixed-size one."""
    pos = start
    while pos < end:
        head = fd.read(pos, 20)  # the key and a varint value or length: 10 bytes at most each
        key, used = _varint(head, 0)
        number, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            value, used = _varint(head, used)
        elif wire == 2:
            size, used = _varint(head, used)
            value, used = (pos + used, size), used + size
        elif wire in (1, 5):
            used += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire}")  # groups: read_skeleton falls back to a full parse
        pos += used
        if pos > end:
            raise ValueError("truncated protobuf field")
        yield number, value


def _read(fd: _Reader, span: tuple[int, int]) -> bytes:
    offset, size = span
    data = fd.read(offset, size)
    if len(data) != size:
        raise ValueError("truncated protobuf field")
    return data


def _tensor_info(tensor) -> tuple[str, bool, str]:
    location = next((e.value for e in tensor.external_data if e.key == "location"), "another file")
    return tensor.name, tensor.data_location == _EXTERNAL or len(tensor.external_data) > 0, location


def _skim_tensor(fd: _Reader, span: tuple[int, int], onnx) -> tuple[str, bool, str]:
    """_tensor_info of a TensorProto, its data left unread."""
    number = onnx.TensorProto.DESCRIPTOR.fields_by_name
    name, external, location = "", False, "another file"
    for field, value in _fields(fd, span[0], span[0] + span[1]):
        if field == number["data_location"].number and isinstance(value, int):
            external = external or value == _EXTERNAL
        elif not isinstance(value, tuple):
            continue  # a wire type this field never has: protobuf keeps it as an unknown field too
        elif field == number["name"].number:
            name = _read(fd, value).decode("utf-8", "replace")
        elif field == number["external_data"].number:
            entry = onnx.StringStringEntryProto.FromString(_read(fd, value))
            external = True
            location = entry.value if entry.key == "location" else location
    return name, external, location


def _add_nodes(skeleton: Skeleton, nodes) -> None:
    for node in nodes:
        skeleton.nodes.append(node)
        for attr in node.attribute:  # Constant-style tensors
            tensors = [attr.t] if attr.type == _TENSOR else list(attr.tensors) if attr.type == _TENSORS else []
            skeleton.tensors.extend(_tensor_info(t) for t in tensors)


def _skim_graph(skeleton: Skeleton, fd: _Reader, span: tuple[int, int], onnx) -> None:
    number = onnx.GraphProto.DESCRIPTOR.fields_by_name
    for field, value in _fields(fd, span[0], span[0] + span[1]):
        if not isinstance(value, tuple):
            continue  # see _skim_tensor
        if field == number["node"].number:
            _add_nodes(skeleton, [onnx.NodeProto.FromString(_read(fd, value))])
        elif field == number["initializer"].number and value[1] <= _SMALL_TENSOR:
            skeleton.tensors.append(_tensor_info(onnx.TensorProto.FromString(_read(fd, value))))
        elif field == number["initializer"].number:
            skeleton.tensors.append(_skim_tensor(fd, value, onnx))
        elif field == number["sparse_initializer"].number:
            sparse = onnx.SparseTensorProto.FromString(_read(fd, value))
            skeleton.tensors.extend([_tensor_info(sparse.values), _tensor_info(sparse.indices)])


def skeleton_of(model_proto) -> Skeleton:
    """The Skeleton of a parsed onnx.ModelProto (the slow path, when skimming fails)."""
    skeleton = Skeleton()
    skeleton.producer = model_proto.producer_name
    skeleton.props = {p.key: p.value for p in model_proto.metadata_props}
    _add_nodes(skeleton, model_proto.graph.node)
    for function in model_proto.functions:
        _add_nodes(skeleton, function.node)
    skeleton.tensors.extend(_tensor_info(t) for t in model_proto.graph.initializer)
    for sparse in model_proto.graph.sparse_initializer:
        skeleton.tensors.extend([_tensor_info(sparse.values), _tensor_info(sparse.indices)])
    return skeleton


def read_skeleton(path: str) -> Skeleton:
    """read_skim, or where that fails (what a skim does not follow: protobuf groups, say) onnx.load
    without external data. Raises what onnx.load raises when the file is not ONNX."""
    try:
        return read_skim(path)
    except Exception:  # anything the skim can't follow: let the full parser judge
        import onnx

        return skeleton_of(onnx.load(path, load_external_data=False))


def read_skim(path: str) -> Skeleton:
    """The producer, metadata, nodes and stored tensors of an ONNX file. Field heads are read with pread
    and the initializers' data skipped, so a 100 MB model costs a few hundred small reads, not a 100 MB
    copy (onnx.load copies every tensor, twice). ValueError (or protobuf's DecodeError) if it is not ONNX."""
    import onnx

    number = onnx.ModelProto.DESCRIPTOR.fields_by_name
    skeleton = Skeleton()
    handle = os.open(path, os.O_RDONLY)
    try:
        fd = _Reader(handle)
        for field, value in _fields(fd, 0, os.fstat(handle).st_size):
            if not isinstance(value, tuple):
                continue  # see _skim_tensor
            if field == number["producer_name"].number:
                skeleton.producer = _read(fd, value).decode("utf-8", "replace")
            elif field == number["metadata_props"].number:
                entry = onnx.StringStringEntryProto.FromString(_read(fd, value))
                skeleton.props[entry.key] = entry.value
            elif field == number["graph"].number:
                _skim_graph(skeleton, fd, value, onnx)
            elif field == number["functions"].number:
                _add_nodes(skeleton, onnx.FunctionProto.FromString(_read(fd, value)).node)
    finally:
        os.close(handle)
    return skeleton


def check_graph(skeleton: Skeleton, where: str, error: type = UserError) -> None:
    """Refuse external data and control flow in a file that claims to be a toolkit export (`error`, naming
    `where`, the tensor or node, and why). Call it before an engine loads the file."""
    external = next((t for t in skeleton.tensors if t[1]), None)
    if external is not None:
        raise error(f"{where}: tensor {external[0][:80]!r} is stored as external data ({external[2][:80]!r}); "
                    "expected one self-contained file, as toolkit export writes (nothing was loaded)")
    node = next((n for n in skeleton.nodes if n.op_type in CONTROL_FLOW_OPS
                 or any(a.type in (_GRAPH, _GRAPHS) for a in n.attribute)), None)
    if node is not None:
        raise error(f"{where}: has a {node.op_type[:40]} node ({node.name[:80]!r}); toolkit export never writes "
                    f"control flow ({', '.join(CONTROL_FLOW_OPS)}), so this file was edited after export and is "
                    "refused (a loop in it could run for ever)")
