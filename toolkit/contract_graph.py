"""What the graph of a toolkit export may hold, checked before any engine loads it (toolkit.contract uses it).

toolkit export writes one self-contained file of feed-forward operators. Two things it never writes are
refused in a file that claims to be an export, because each lets a file do harm that no metadata check
sees:
- tensors stored as external data: the engine would read whatever file the tensor names, of any size
  (a 2 GiB "initializer" beside a 1 KB model), before anything else could look;
- control flow (Loop, If, Scan, SequenceMap: any node that carries a subgraph): a Loop whose trip count
  is 2**62 runs for ever on the first prediction, and an engine cannot cancel a running graph.
Works on an onnx.ModelProto read without its external data; onnx itself is not imported here.
"""
from __future__ import annotations

from toolkit.errors import UserError

# The ONNX operators that run a subgraph; any node with a graph-valued attribute is refused as well.
CONTROL_FLOW_OPS = ("Loop", "If", "Scan", "SequenceMap")
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL
_GRAPH, _GRAPHS, _TENSOR, _TENSORS = 5, 10, 4, 9  # onnx.AttributeProto.AttributeType values


def _graph_tensors(graph):
    """The stored tensors of a graph: initializers, sparse initializers, and Constant-style attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node):
    for attr in node.attribute:
        if attr.type == _TENSOR:
            yield attr.t
        elif attr.type == _TENSORS:
            yield from attr.tensors


def _all_nodes(model_proto):
    """The nodes of the main graph and of every local function."""
    yield from model_proto.graph.node
    for function in model_proto.functions:
        yield from function.node


def _external_tensor(model_proto):
    """The first tensor stored outside the file, or None."""
    tensors = list(_graph_tensors(model_proto.graph))
    for function in model_proto.functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node))
    return next((t for t in tensors if t.data_location == _EXTERNAL or len(t.external_data)), None)


def _control_flow_node(model_proto):
    """The first node that runs a subgraph (Loop, If, Scan, ...), or None."""
    for node in _all_nodes(model_proto):
        if node.op_type in CONTROL_FLOW_OPS or any(a.type in (_GRAPH, _GRAPHS) for a in node.attribute):
            return node
    return None


def check_graph(model_proto, where: str, error: type = UserError) -> None:
    """Refuse external data and control flow in a file that claims to be a toolkit export (`error`, naming
    `where`, the tensor or node, and why). Call it before an engine loads the file."""
    tensor = _external_tensor(model_proto)
    if tensor is not None:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "another file")
        raise error(f"{where}: tensor {tensor.name[:80]!r} is stored as external data ({location[:80]!r}); "
                    "expected one self-contained file, as toolkit export writes (nothing was loaded)")
    node = _control_flow_node(model_proto)
    if node is not None:
        raise error(f"{where}: has a {node.op_type[:40]} node ({node.name[:80]!r}); toolkit export never writes "
                    f"control flow ({', '.join(CONTROL_FLOW_OPS)}), so this file was edited after export and is "
                    "refused (a loop in it could run for ever)")
