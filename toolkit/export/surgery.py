"""Graph surgery: small in-place edits of ONNX protos that the exporters and ORT's tools leave to us."""
from __future__ import annotations


def toposort(graph) -> None:
    """Sort nodes topologically in place (onnxruntime's float16 converter appends its input casts
    at the end of the node list, which ORT accepts but the ONNX checker rejects)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle or a dangling input: " + rest[0].name)
        pending = rest
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def drop_unused_domains(model_proto) -> None:
    """ORT's optimiser declares a dozen com.microsoft.* domains it didn't use; keep the used ones."""
    used = {n.domain for n in model_proto.graph.node} | {""}
    keep = [op for op in model_proto.opset_import if op.domain in used or op.domain == "ai.onnx"]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(keep)


def unquantize_outputs(model_proto) -> list[str]:
    """Remove the QuantizeLinear -> DequantizeLinear pair that ORT's QDQ quantizer puts on graph outputs.

    Logits rounded to 256 levels would turn close classes into ties; the last layer's int8 arithmetic
    stays, only its output is left in float. Returns the outputs that were changed."""
    graph = model_proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    changed, drop = [], []
    for out in graph.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(consumers.get(q.output[0], [])) != 1:
            continue
        source = q.input[0]
        src_node = producer.get(source)
        if src_node is None or any(o.name == source for o in graph.output):
            continue
        for i, name in enumerate(src_node.output):
            if name == source:
                src_node.output[i] = out.name
        for c in consumers.get(source, []):
            for i, name in enumerate(c.input):
                if name == source:
                    c.input[i] = out.name
        drop += [q, dq]
        changed.append(out.name)
    if drop:
        keep = [n for n in graph.node if all(n is not d for d in drop)]
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for n in graph.node for i in n.input}
        inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        info = [v for v in graph.value_info if v.name not in {d.output[0] for d in drop}]
        del graph.value_info[:]
        graph.value_info.extend(info)
    return changed


# The ops whose float weights ORT's WeightBiasQuantization quantizes when their input 0 comes from a DequantizeLinear.
WEIGHT_QUANTIZED_AT_LOAD = ("Conv", "ConvTranspose", "Gemm")


def float_inputs(model_proto, names) -> int:
    """Feed the named nodes (the ones kept in FP32) float input, not a DequantizeLinear's; returns how many
    inputs were rewired.

    A Conv/ConvTranspose/Gemm with float weights whose input 0 comes from a DequantizeLinear looks to ORT
    like a quantized node that lacks quantized weights: its WeightBiasQuantization transformer quantizes
    them at session load, symmetric int8 with one scale per tensor. The "FP32" first conv of
    EfficientNet-Lite0 ran that way (its folded-BatchNorm channels span 0.15 to 239: top-1 78.8% -> 22.8%,
    docs/export.md). The node reads the float tensor before the QuantizeLinear instead, clipped to the
    range that pair represents: the quantizer drops a Relu/Clip in front of a QuantizeLinear and lets the
    QuantizeLinear saturate, so the clip is that activation. Pairs nothing else reads are removed."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    added, rewired = [], 0
    for node in graph.node:
        if node.name not in names or node.op_type not in WEIGHT_QUANTIZED_AT_LOAD:
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        lo, hi = _quantized_range(q, inits)
        clip = f"{node.name}_float_input"
        graph.initializer.extend([numpy_helper.from_array(lo, clip + "_min"),
                                  numpy_helper.from_array(hi, clip + "_max")])
        added.append(helper.make_node("Clip", [q.input[0], clip + "_min", clip + "_max"], [clip], name=clip))
        node.input[0] = clip
        rewired += 1
    graph.node.extend(added)
    toposort(graph)
    _drop_unread(graph, ("QuantizeLinear", "DequantizeLinear"))
    return rewired


def _quantized_range(q, inits):
    """The float range a QuantizeLinear (per-tensor) represents: [(qmin - zp) * scale, (qmax - zp) * scale]."""
    import numpy as np

    scale = np.float32(inits[q.input[1]])
    zp = inits[q.input[2]] if len(q.input) > 2 and q.input[2] else np.uint8(0)
    info = np.iinfo(zp.dtype)
    return (np.array((info.min - int(zp)) * scale, np.float32), np.array((info.max - int(zp)) * scale, np.float32))


def _drop_unread(graph, op_types) -> None:
    """Remove nodes of op_types whose outputs nothing reads (repeated: a Q feeding only a dropped DQ), then
    the initializers no node reads any more (their scales and zero points)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        drop = [n for n in graph.node if n.op_type in op_types and not any(o in read for o in n.output)]
        if not drop:
            inits = [t for t in graph.initializer if t.name in read]
            del graph.initializer[:]
            graph.initializer.extend(inits)
            return
        keep = [n for n in graph.node if all(n is not d for d in drop)]
        del graph.node[:]
        graph.node.extend(keep)


def strip_debug_metadata(model_proto) -> None:
    """The dynamo exporter stores stack traces (this machine's file paths) on every node."""
    for node in model_proto.graph.node:
        keep = [p for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)



def unshare_initializers(model_proto) -> int:
    """Give every Conv/Gemm its own weight and bias tensors; returns how many copies were made.

    The exporter merges initializers with equal values (an untrained model's all-zero conv biases
    become one tensor). A bias shared by several convs keeps ORT from fusing their QDQ patterns into
    quantized convs, and INT8 then runs slower than FP32.
    """
    from onnx import numpy_helper

    inits = {init.name: init for init in model_proto.graph.initializer}
    seen: set = set()
    copies = 0
    for node in model_proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = numpy_helper.from_array(numpy_helper.to_array(inits[name]), f"{name}__{node.name or copies}")
                model_proto.graph.initializer.append(copy)
                node.input[i] = copy.name
                copies += 1
            seen.add(name)
    return copies
