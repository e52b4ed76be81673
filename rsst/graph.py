"""The channel graph of a CNN: one torch.fx analysis of which tensors share a channel dimension.

The traced graph is split into *channel spaces*: a conv's (or linear's) output together with
everything that reaches it through channel-wise ops (BatchNorm, ReLU, pooling, flatten after a
global pool, depthwise convs, residual additions). Channel *c* of a space is one thing
everywhere in it: row *c* of every conv writing into it (its *producers*), of every BatchNorm
and depthwise conv on it, and column *c* of every conv / linear layer reading it (its
*consumers*). Residual additions and depthwise convs are what couple several layers into one
space.

Both users read the same analysis: `rsst.structure` builds ``--groups coupled`` units from
`coupled_sets`, and `rsst.compact.cnn` decides per space which channels it can remove. So every
channel a coupled group kills is one compaction removes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Dropout,
                 nn.Identity)
_ADD_FUNCS = (operator.add, torch.add)
_RELU_FUNCS = (F.relu, torch.relu)
#: node kinds whose output keeps the channel layout of their main input
CHANNELWISE = ("dw", "bn", "pass", "relu", "avgpool_pad", "flatten")


def pair(v: Any) -> tuple[int, int]:
    """A conv/pool size argument (int or pair) as a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class Spaces:
    """Union-find over graph nodes: nodes in one set share their channel dimension."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] is not x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[ra] = rb


def node_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """conv | dw | bn | linear | pass | relu | avgpool_pad | add | flatten | other."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, nn.Conv2d):
            if m.groups == 1:
                return "conv"
            if m.groups == m.in_channels == m.out_channels:
                return "dw"
            return "other"
        if isinstance(m, nn.BatchNorm2d):
            return "bn"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and _pooled(main_input(node)):
            return "flatten"
        if isinstance(m, nn.AvgPool2d) and pair(m.padding) != (0, 0):
            return "avgpool_pad"  # zero padding averaged in: only a zero channel stays constant
        if isinstance(m, _PASS_MODULES):
            return "pass"
        return "other"
    if node.op == "call_function":
        if node.target in _ADD_FUNCS and len(node.args) == 2 and not node.kwargs and all(
                isinstance(a, torch.fx.Node) for a in node.args):
            shapes = [shape(a) for a in node.args]
            if shapes[0] is not None and shapes[0] == shapes[1] == shape(node):
                return "add"
            return "other"
        if node.target in _RELU_FUNCS:
            return "relu"
        if node.target is torch.flatten and _flattens_pooled(node):
            return "flatten"
        return "other"
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target == "flatten" and _flattens_pooled(node):
            return "flatten"
        return "other"
    return "other"


def shape(node: Any) -> tuple[int, ...] | None:
    """The propagated output shape of a node (None when unknown)."""
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _flattens_pooled(node: torch.fx.Node) -> bool:
    """flatten(x, 1) of an [B, C, 1, 1] tensor keeps channel c at feature c."""
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return start == 1 and _pooled(node.args[0])


def _pooled(node: Any) -> bool:
    """The node is an [B, C, 1, 1] tensor (globally pooled)."""
    s = shape(node)
    return s is not None and len(s) == 4 and s[2:] == (1, 1)


def main_input(node: torch.fx.Node) -> torch.fx.Node | None:
    arg = node.args[0] if node.args else None
    return arg if isinstance(arg, torch.fx.Node) else None


def _describe(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short name of the op a node runs, for messages."""
    if node.op == "call_module":
        return f"{type(modules.get(str(node.target))).__name__} ({node.target})"
    if node.op in ("call_function", "call_method"):
        return getattr(node.target, "__name__", str(node.target))
    return node.op


@dataclass
class ChannelGraph:
    """The traced model as channel spaces.

    ``opaque``: spaces produced or used by something whose channel layout is not modelled, with
    that op's name; ``has_add``: spaces with a residual addition; ``consumers``: per space, the
    (conv / linear, input node) pairs that read it.
    """

    nodes: list[torch.fx.Node]
    kinds: dict[torch.fx.Node, str]
    modules: dict[str, nn.Module]
    spaces: Spaces
    opaque: dict[Any, str]
    has_add: set[Any]
    consumers: dict[Any, list[tuple[torch.fx.Node, torch.fx.Node]]]

    def members(self) -> dict[Any, list[torch.fx.Node]]:
        """Space root → its nodes, in graph order."""
        out: dict[Any, list[torch.fx.Node]] = {}
        for n in self.nodes:
            out.setdefault(self.spaces.find(n), []).append(n)
        return out


def trace(model: nn.Module) -> tuple[torch.fx.GraphModule | None, str]:
    """The fx graph with shapes propagated (one zero input of ``model.rsst_input_size``, in eval
    mode so no BatchNorm statistic moves), or None and the reason."""
    from torch.fx.passes.shape_prop import ShapeProp

    was_training = model.training
    try:
        model.eval()  # traced code that reads self.training (timm's BatchNormAct2d) bakes it in
        gm = torch.fx.symbolic_trace(model)
        size = tuple(getattr(model, "rsst_input_size", (3, 32, 32)))
        device = next(model.parameters()).device
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *size, device=device))
    except Exception as exc:  # noqa: BLE001 - any trace failure means: no graph, say why
        return None, f"the model does not trace with torch.fx ({type(exc).__name__})"
    finally:
        model.train(was_training)
    return gm, ""


def reused_modules(nodes: list[torch.fx.Node], modules: dict[str, nn.Module]) -> list[str]:
    """Conv / BN / linear modules called more than once: one call's channels cannot be cut alone."""
    calls: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    return sorted(k for k, v in calls.items() if v > 1 and isinstance(
        modules.get(k), nn.Conv2d | nn.BatchNorm2d | nn.Linear))


def channel_graph(nodes: list[torch.fx.Node], kinds: dict[torch.fx.Node, str],
                  modules: dict[str, nn.Module]) -> ChannelGraph:
    """Union nodes that share a channel dimension, then find each space's consumers."""
    spaces = Spaces()
    for n in nodes:
        spaces.find(n)
        if kinds[n] in CHANNELWISE and main_input(n) is not None:
            spaces.union(n, main_input(n))
        elif kinds[n] == "add":
            spaces.union(n, n.args[0])
            spaces.union(n, n.args[1])

    opaque: dict[Any, str] = {}
    has_add: set[Any] = set()
    consumers: dict[Any, list[tuple[torch.fx.Node, torch.fx.Node]]] = {}
    for n in nodes:
        root = spaces.find(n)
        if kinds[n] == "add":
            has_add.add(root)
        if kinds[n] in ("other", "linear"):
            # produced by something whose channel layout is not modelled
            opaque.setdefault(root, _describe(n, modules))
        for user in n.users:
            k = kinds[user]
            if k in CHANNELWISE and main_input(user) is n and len(user.args) <= 2 and not any(
                    isinstance(a, torch.fx.Node) for a in list(user.args[1:])
                    + list(user.kwargs.values())):
                continue
            if k == "add":
                continue
            if k in ("conv", "linear") and main_input(user) is n and len(user.args) == 1:
                s = shape(n)
                if k == "linear" and (s is None or len(s) != 2):
                    opaque.setdefault(root, _describe(user, modules))
                    continue
                consumers.setdefault(root, []).append((user, n))
                continue
            opaque.setdefault(root, _describe(user, modules))
    return ChannelGraph(nodes, kinds, modules, spaces, opaque, has_add, consumers)


def analyze(model: nn.Module) -> tuple[ChannelGraph | None, str]:
    """Trace ``model`` and split it into channel spaces; None and the reason when it cannot be."""
    modules = dict(model.named_modules())
    gm, why = trace(model)
    if gm is None:
        return None, why
    nodes = list(gm.graph.nodes)
    reused = reused_modules(nodes, modules)
    if reused:
        return None, f"modules called more than once ({', '.join(reused[:3])})"
    kinds = {n: node_kind(n, modules) for n in nodes}
    return channel_graph(nodes, kinds, modules), ""


@dataclass
class ChannelSet:
    """One channel space by module names: what a coupled group of it contains.

    ``producers``: groups=1 convs writing the space (their output rows); ``depthwise``: depthwise
    convs on it (rows); ``batchnorms``: BatchNorms on it (γ, β, running statistics);
    ``consumers``: convs / linear layers reading it (input columns). ``opaque``: the op that
    uses the space in a way the analysis does not model ("" when none).
    """

    width: int
    producers: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    residual: bool = False
    opaque: str = ""

    @property
    def convs(self) -> list[str]:
        return self.producers + self.depthwise

    @property
    def coupled(self) -> bool:
        """More than one conv shares the space (a residual stream, a depthwise conv)."""
        return len(self.convs) > 1


def coupled_sets(graph: ChannelGraph) -> list[ChannelSet]:
    """The channel spaces that convs write into, in graph order."""
    sets = []
    for root, group in graph.members().items():
        convs = [n for n in group if graph.kinds[n] in ("conv", "dw")]
        if not convs:
            continue
        m = graph.modules[str(convs[0].target)]
        s = ChannelSet(int(m.out_channels), residual=root in graph.has_add,
                       opaque=graph.opaque.get(root, ""))
        for n in group:
            bucket = {"conv": s.producers, "dw": s.depthwise, "bn": s.batchnorms}.get(
                graph.kinds[n])
            if bucket is not None:
                bucket.append(str(n.target))
        s.consumers = [str(user.target) for user, _ in graph.consumers.get(root, [])]
        sets.append(s)
    return sets
