"""Evaluation with each BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, so it can be folded into the preceding
convolution's weights and bias (torch.nn.utils.fusion's arithmetic): the same logits to float rounding
(about 1e-6), and a Lite0 validation on one CPU thread spends a quarter less time (docs/training.md).
`folded_for_eval(model)` returns a twin that shares every other module with `model` and has its folded
weights refreshed from `model`'s current ones on each call, so a training loop can validate with it
after every epoch.

The twin is a torch.fx trace in which convolutions and BatchNorms stay whole modules. A model that
does not trace, or has no convolution -> BatchNorm pair, is evaluated as it is.
"""
from __future__ import annotations

import copy
import weakref

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

_TWINS: "weakref.WeakKeyDictionary[nn.Module, _Folded | None]" = weakref.WeakKeyDictionary()


class _WholeLayers(fx.Tracer):
    """Keeps every Conv2d and BatchNorm2d, subclasses included (timm's Conv2dSame, BatchNormAct2d), a leaf."""

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(module, name)


def _after_norm(bn: nn.Module) -> nn.Module | None:
    """What `bn` does after normalising (the part folding keeps); None: unknown, do not fold it."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)  # timm: batch_norm, then drop, then act
    return None


def _pairs(graph: fx.Graph, modules: dict) -> list[tuple[str, str]]:
    """(conv name, bn name) where the BatchNorm is the only reader of the convolution's output."""
    out = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if (isinstance(conv, nn.Conv2d) and len(source.users) == 1 and conv.out_channels == bn.num_features
                and _after_norm(bn) is not None):
            out.append((source.target, node.target))
    return out


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class _Folded:
    """The traced twin and, per pair, (the model's conv, the model's bn, the twin's own conv)."""

    def __init__(self, model: nn.Module, graph: fx.Graph, pairs: list):
        self.twin = fx.GraphModule(model, graph)  # leaves shared with `model`; parents are the twin's own
        self.pairs = []
        for conv_name, bn_name in pairs:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            own = copy.deepcopy(conv)
            _replace(self.twin, conv_name, own)
            _replace(self.twin, bn_name, _after_norm(bn))
            self.pairs.append((conv, bn, own))

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """The twin, its convolutions set from the model's current convolution and BatchNorm weights."""
        for conv, bn, own in self.pairs:
            own.weight, own.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                        bn.eps, bn.weight, bn.bias)
            own.weight.requires_grad_(False)
            own.bias.requires_grad_(False)
        return self.twin.eval()


def _build(model: nn.Module) -> _Folded | None:
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return None
    tracer = _WholeLayers()
    try:
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 -- any model fx cannot trace (control flow on values, ...) runs unfolded
        return None
    finally:
        tracer.root = None  # closures made while tracing keep the tracer alive until a gc: not the model too
    pairs = _pairs(graph, dict(model.named_modules()))
    return _Folded(model, graph, pairs) if pairs else None


def folded_for_eval(model: nn.Module) -> nn.Module:
    """`model` for inference with its BatchNorms folded (see the module docstring), in eval mode; `model`
    itself where nothing folds. The trace is made once per model and kept while the model lives."""
    model.eval()  # before the trace, which keeps the eval branch of every traced module (stochastic depth, ...)
    if model not in _TWINS:
        _TWINS[model] = _build(model)
    folded = _TWINS[model]
    return model if folded is None else folded.refresh()
