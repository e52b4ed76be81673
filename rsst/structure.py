"""Structural groups (SPEC §1): which arena elements exist only to produce one output unit.

A *unit* is a layer (or a pair of layers) whose outputs can be removed one by one: a conv's output
channels (conv weight row, bias, and the γ/β of the BatchNorm that directly follows it), an
attention block's heads (q, k, v rows of ``qkv`` with their biases, and ``proj`` columns), an MLP's
neurons (``fc1`` row and bias, ``fc2`` column), a ViT's embedding width (`embed_unit`: one
dimension of the residual stream across every tensor that writes or reads it). Each unit is
stored as flat index tensors into the arena, built once, so scoring and masking are
scatter/gather ops, not loops over elements.

With ``groups="coupled"`` (``--groups coupled``, CNNs) the channel graph of `rsst.graph` joins
the convs whose outputs share channels — summed into one residual stream, or tied by a
depthwise conv — into one unit: group *c* holds row *c* of every such conv (and its bias and
BatchNorm γ/β, the stem's too when it writes the stream) and column *c* of every layer reading
them, so a dead group is exactly what compaction removes. Other convs keep their per-layer unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from rsst.arena import Arena
from rsst.choices import GROUP_MODES, PRUNE_SCOPES, STRUCTURE_KINDS
from rsst.errors import UserError
from rsst.graph import ChannelSet, analyze, coupled_sets
from rsst.models.stream_norm import use_stream_norms

KINDS = STRUCTURE_KINDS
#: --groups: one conv's output channels, or channel sets coupled by the graph
GROUPS = GROUP_MODES
#: --prune-scope: SPEC §1's default scope, or widened by the stem and/or the classifier
SCOPES = PRUNE_SCOPES


@dataclass
class Unit:
    """One layer's structural groups as flat arena indices."""

    kind: str
    name: str
    num_groups: int
    weight_index: torch.Tensor  # prunable weight elements of the unit
    weight_group: torch.Tensor  # their group ids
    member_index: torch.Tensor  # every element of the unit's groups (weights, biases, BN γ/β)
    member_group: torch.Tensor
    module: nn.Module  # conv (channel), proj (head) or fc2 (neuron): where the activation is read
    head_dim: int = 0
    #: a coupled group set (``--groups coupled``): every conv whose output channel c is group c
    #: (their activations are scored together), and the names of all member layers
    modules: list[nn.Module] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    @property
    def activation_modules(self) -> list[nn.Module]:
        """Where the unit's activations are read: every coupled conv, else `module` alone."""
        return self.modules or [self.module]


@dataclass
class Structure:
    """The prunable scope and the units of a model, for one arena."""

    prunable: torch.Tensor  # flat bool: prunable weight elements
    prunable_names: list[str]
    units: list[Unit] = field(default_factory=list)
    note: str = ""

    @property
    def kinds(self) -> list[str]:
        return sorted({u.kind for u in self.units}, key=KINDS.index)

    def group_alive(self, unit: Unit, mask: torch.Tensor) -> torch.Tensor:
        """Bool [C]: a group is alive when any of its prunable weights is alive in ``mask``."""
        alive = torch.zeros(unit.num_groups, dtype=torch.int32, device=mask.device)
        alive.scatter_reduce_(0, unit.weight_group, mask[unit.weight_index].int(), "amax")
        return alive.bool()

    def sparsity(self, mask: torch.Tensor) -> dict[str, float]:
        """Fraction of groups dead in ``mask`` per kind (channels, heads, neurons)."""
        result: dict[str, float] = {}
        for kind in self.kinds:
            units = [u for u in self.units if u.kind == kind]
            total = sum(u.num_groups for u in units)
            dead = sum(int((~self.group_alive(u, mask)).sum()) for u in units)
            result[kind] = dead / total if total else 0.0
        return result

    def per_unit(self, mask: torch.Tensor) -> dict[str, dict[str, int]]:
        """Alive / total groups of each unit."""
        return {
            u.name: {"kind": u.kind, "alive": int(self.group_alive(u, mask).sum()),
                     "total": u.num_groups}
            for u in self.units
        }

    def remain_weight(self, mask: torch.Tensor) -> float:
        """Fraction of prunable weights alive in ``mask``."""
        return float((mask & self.prunable).sum()) / max(int(self.prunable.sum()), 1)


# -- index helpers --------------------------------------------------------------------------------
def _rows(arena: Arena, name: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of whole rows (dim 0 slices) of parameter ``name``; group = position in rows."""
    slot = arena.slots[name]
    row_size = slot.numel // slot.shape[0]
    within = torch.arange(row_size, device=arena.device)
    index = slot.offset + rows[:, None] * row_size + within[None, :]
    group = torch.arange(len(rows), device=arena.device)[:, None].expand_as(index)
    return index.reshape(-1), group.reshape(-1)


def _cols(arena: Arena, name: str, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of whole columns (dim 1 slices) of a 2-D parameter ``name``."""
    slot = arena.slots[name]
    n_rows, n_cols = slot.shape[0], slot.numel // slot.shape[0]
    r = torch.arange(n_rows, device=arena.device)
    index = slot.offset + r[None, :] * n_cols + cols[:, None]
    group = torch.arange(len(cols), device=arena.device)[:, None].expand_as(index)
    return index.reshape(-1), group.reshape(-1)


def _cat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# -- CNN: conv output channels ------------------------------------------------------------------
def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Conv module name → the BatchNorm2d that directly consumes its output.

    Found with torch.fx where the model traces; otherwise by module order (a BN right after the
    conv in ``named_modules`` with matching width), which holds for conventional CNN code.
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
        pairs: dict[str, str] = {}
        for node in graph.nodes:
            if node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d):
                users = list(node.users)
                if (len(users) == 1 and users[0].op == "call_module"
                        and isinstance(modules.get(users[0].target), nn.BatchNorm2d)):
                    pairs[str(node.target)] = str(users[0].target)
        return pairs
    except Exception:  # noqa: BLE001 - any trace failure falls back to module order
        pairs = {}
        names = list(modules)
        for i, name in enumerate(names[:-1]):
            conv, nxt = modules[name], modules[names[i + 1]]
            if (isinstance(conv, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d)
                    and nxt.num_features == conv.out_channels):
                pairs[name] = names[i + 1]
        return pairs


def _conv_units(model: nn.Module, arena: Arena, prunable_convs: list[str]) -> list[Unit]:
    modules = dict(model.named_modules())
    bns = conv_bn_pairs(model)
    units = []
    for name in prunable_convs:
        conv = modules[name]
        channels = torch.arange(conv.out_channels, device=arena.device)
        weight = _rows(arena, f"{name}.weight", channels)
        members = [weight]
        if conv.bias is not None and f"{name}.bias" in arena.slots:
            members.append(_rows(arena, f"{name}.bias", channels))
        bn = bns.get(name)
        if bn is not None:
            for p in ("weight", "bias"):
                if f"{bn}.{p}" in arena.slots:
                    members.append(_rows(arena, f"{bn}.{p}", channels))
        index, group = _cat(members)
        units.append(Unit("channel", name, conv.out_channels, weight[0], weight[1], index, group,
                          conv))
    return units


# -- CNN: coupled channel sets (--groups coupled) -------------------------------------------------
def _channel_slices(arena: Arena, name: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of parameter ``name`` sliced along ``dim`` (0: output rows, 1: input
    columns); group = the channel. Works for NCHW and NHWC slots alike."""
    slot = arena.slots[name]
    local = replace(slot, offset=0).shaped(torch.arange(slot.numel, device=arena.device))
    per = (local + slot.offset).movedim(dim, 0)
    per = per.reshape(per.shape[0], -1)
    group = torch.arange(per.shape[0], device=arena.device)[:, None].expand_as(per)
    return per.reshape(-1), group.reshape(-1)


def _coupled_unit(cs: ChannelSet, modules: dict[str, nn.Module], arena: Arena,
                  prunable: set[str]) -> Unit:
    """One group per channel of a coupled set: rows of every conv writing it (weight, bias),
    γ/β of every BatchNorm on it, and the input columns of every layer reading it.

    The prunable weights among those (conv rows and consumer columns in the prunable scope) are
    the unit's ``weight_index``: they give its density ``d`` and its remain/magnitude scores.
    """
    members, weights = [], []
    for conv in cs.convs:
        for p in ("weight", "bias"):
            if f"{conv}.{p}" in arena.slots:
                part = _channel_slices(arena, f"{conv}.{p}", 0)
                members.append(part)
                if f"{conv}.{p}" in prunable:
                    weights.append(part)
    for bn in cs.batchnorms:
        for p in ("weight", "bias"):
            if f"{bn}.{p}" in arena.slots:
                members.append(_channel_slices(arena, f"{bn}.{p}", 0))
    for layer in cs.consumers:
        if f"{layer}.weight" in arena.slots:
            part = _channel_slices(arena, f"{layer}.weight", 1)
            members.append(part)
            if f"{layer}.weight" in prunable:
                weights.append(part)
    weight_index, weight_group = _cat(weights)
    index, group = _cat(members)
    convs = [modules[c] for c in cs.convs]
    return Unit("channel", cs.convs[0], cs.width, weight_index, weight_group, index, group,
                convs[0], modules=convs,
                layers=cs.convs + cs.batchnorms + cs.consumers)


def _coupled_conv_units(model: nn.Module, arena: Arena, prunable_convs: list[str],
                        prunable: set[str]) -> list[Unit]:
    """Units for ``--groups coupled``: one per coupled channel set (a residual stream, a conv
    with its depthwise conv), today's per-layer unit for every other prunable conv."""
    graph, why = analyze(model)
    if graph is None:
        raise UserError(f"--groups coupled needs rsst's channel graph of the model, but {why}; "
                        "use --groups per-layer")
    modules = dict(model.named_modules())
    set_of = {conv: cs for cs in coupled_sets(graph) for conv in cs.convs}
    units: list[Unit] = []
    done: set[int] = set()
    for name in prunable_convs:
        cs = set_of.get(name)
        if cs is None:
            raise UserError(f"--groups coupled: {name} is a grouped conv, whose channels rsst's "
                            "channel graph does not model; use --groups per-layer")
        if cs.opaque:
            raise UserError(f"--groups coupled: the output channels of {', '.join(cs.convs[:3])} "
                            f"go through {cs.opaque}, which rsst's channel graph does not "
                            "model; use --groups per-layer")
        if not cs.coupled:
            units += _conv_units(model, arena, [name])
        elif id(cs) not in done:
            done.add(id(cs))
            units.append(_coupled_unit(cs, modules, arena, prunable))
    return units


# -- ViT: heads and MLP neurons -----------------------------------------------------------------
def attention_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "proj", None), nn.Linear) and hasattr(m, "num_heads")]


def mlp_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "fc1", None), nn.Linear)
            and isinstance(getattr(m, "fc2", None), nn.Linear)]


def _head_unit(name: str, attn: nn.Module, arena: Arena) -> Unit:
    heads = int(attn.num_heads)
    embed = attn.qkv.out_features // 3
    d = embed // heads
    dev = arena.device
    # rows of q, k and v sections for each head: section*E + h*d + i
    rows = (torch.arange(3, device=dev)[None, :, None] * embed
            + torch.arange(heads, device=dev)[:, None, None] * d
            + torch.arange(d, device=dev)[None, None, :])  # [H, 3, d]
    rows_flat = rows.reshape(-1)
    head_of_row = torch.arange(heads, device=dev).repeat_interleave(3 * d)
    qkv_i, qkv_g = _rows(arena, f"{name}.qkv.weight", rows_flat)
    qkv_g = head_of_row[qkv_g]
    cols = torch.arange(heads * d, device=dev)
    proj_i, proj_g = _cols(arena, f"{name}.proj.weight", cols)
    proj_g = torch.div(proj_g, d, rounding_mode="floor")
    weight_index, weight_group = torch.cat([qkv_i, proj_i]), torch.cat([qkv_g, proj_g])
    members = [(weight_index, weight_group)]
    if attn.qkv.bias is not None and f"{name}.qkv.bias" in arena.slots:
        bi, bg = _rows(arena, f"{name}.qkv.bias", rows_flat)
        members.append((bi, head_of_row[bg]))
    index, group = _cat(members)
    return Unit("head", name, heads, weight_index, weight_group, index, group, attn.proj,
                head_dim=d)


def _neuron_unit(name: str, mlp: nn.Module, arena: Arena) -> Unit:
    hidden = mlp.fc1.out_features
    neurons = torch.arange(hidden, device=arena.device)
    fc1 = _rows(arena, f"{name}.fc1.weight", neurons)
    fc2 = _cols(arena, f"{name}.fc2.weight", neurons)
    weight_index, weight_group = _cat([fc1, fc2])
    members = [(weight_index, weight_group)]
    if mlp.fc1.bias is not None and f"{name}.fc1.bias" in arena.slots:
        members.append(_rows(arena, f"{name}.fc1.bias", neurons))
    index, group = _cat(members)
    return Unit("neuron", name, hidden, weight_index, weight_group, index, group, mlp.fc2)


def vision_transformer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the timm ``VisionTransformer`` inside ``model``, or None."""
    for name, m in model.named_modules():
        if all(hasattr(m, a) for a in ("patch_embed", "blocks", "head", "embed_dim")):
            return name, m
    return None


def _lastdim(arena: Arena, name: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of a parameter ``[..., width]``; group = position along the last dim."""
    slot = arena.slots[name]
    flat = torch.arange(slot.numel, device=arena.device)
    return slot.offset + flat, flat % width


def embed_unit(model: nn.Module, arena: Arena) -> Unit:
    """The ViT embedding width as groups: dimension *e* of the residual stream.

    Members of group *e*: row *e* of the patch embedding (weight and bias), entry *e* of the
    class / register tokens and the position embedding, of every LayerNorm over the stream
    (``norm1``, ``norm2``, the final ``norm``, ``fc_norm``, ``norm_pre``) and of the layer-scale
    gammas, column *e* of every ``qkv`` and ``fc1`` (what blocks read), row *e* and bias *e* of
    every ``proj`` and ``fc2`` (what blocks write), and column *e* of the classifier.
    The group's prunable weights — what its share alive ``d`` counts, and what decides whether
    the group is alive — are those in the default prunable scope: its ``qkv`` / ``fc1`` columns
    and ``proj`` / ``fc2`` rows in every block. The activation criteria read the stream where
    the final norm reads it.
    """
    found = vision_transformer(model)
    if found is None:
        raise UserError("--structure embed needs a timm VisionTransformer (vit_tiny, vit_small, "
                        "vit_base, vit_tiny_research); drop embed for this model")
    root, vit = found
    prefix = f"{root}." if root else ""
    width = int(vit.embed_dim)
    if getattr(vit, "attn_pool", None) is not None or getattr(vit, "dist_token", None) is not None:
        raise UserError("--structure embed supports ViTs with a class token or average pooling, "
                        "not attention pooling or distillation tokens; drop embed")
    all_rows = torch.arange(width, device=arena.device)
    weights, members = [], []
    for name, m in vit.named_modules():
        full = f"{prefix}{name}"
        if isinstance(m, nn.Linear) and name.endswith(("attn.qkv", "mlp.fc1")):
            weights.append(_cols(arena, f"{full}.weight", all_rows))
        elif isinstance(m, nn.Linear) and name.endswith(("attn.proj", "mlp.fc2")):
            weights.append(_rows(arena, f"{full}.weight", all_rows))
            if m.bias is not None:
                members.append(_rows(arena, f"{full}.bias", all_rows))
        elif isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (width,):
            members += [_rows(arena, f"{full}.{p}", all_rows) for p in ("weight", "bias")
                        if getattr(m, p, None) is not None]
    for p in ("cls_token", "reg_token", "pos_embed"):
        if getattr(vit, p, None) is not None and f"{prefix}{p}" in arena.slots:
            members.append(_lastdim(arena, f"{prefix}{p}", width))
    for name, _ in vit.named_parameters():
        if name.endswith(("ls1.gamma", "ls2.gamma")):
            members.append(_rows(arena, f"{prefix}{name}", all_rows))
    members.append(_rows(arena, f"{prefix}patch_embed.proj.weight", all_rows))
    if vit.patch_embed.proj.bias is not None:
        members.append(_rows(arena, f"{prefix}patch_embed.proj.bias", all_rows))
    if isinstance(vit.head, nn.Linear):
        members.append(_cols(arena, f"{prefix}head.weight", all_rows))
    weight_index, weight_group = _cat(weights)
    index, group = _cat([(weight_index, weight_group), *members])
    return Unit("embed", f"{prefix}embed".lstrip("."), width, weight_index, weight_group,
                index, group, vit.norm)


def is_transformer(model: nn.Module) -> bool:
    return bool(attention_blocks(model))


def default_structure(model: nn.Module) -> str:
    return "head+neuron" if is_transformer(model) else "channel"


def scope_extras(model: nn.Module, scope: str) -> list[str]:
    """Weights a widened ``--prune-scope`` adds to SPEC §1's default scope: the stem (the first
    conv — a ViT's patch embedding — or else the first layer) for ``+stem``, the classifier (the
    last linear layer) for ``+classifier``, both for ``all``. They get no groups: pruned
    unstructured, the refill step leaves their U as is."""
    if scope not in SCOPES:
        raise UserError(f"unknown prune scope {scope!r}: choose one of {', '.join(SCOPES)} "
                        "(--prune-scope)")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    extras = []
    if scope in ("+stem", "all") and layers:
        convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
        extras.append(f"{convs[0] if convs else layers[0][0]}.weight")
    if scope in ("+classifier", "all"):
        linears = [n for n, m in layers if isinstance(m, nn.Linear)]
        if linears:
            extras.append(f"{linears[-1]}.weight")
    return extras


def build_structure(model: nn.Module, arena: Arena, structure: str = "auto",
                    scope: str = "default", groups: str = "per-layer") -> Structure:
    """Scope (SPEC §1, widened by ``scope``: see `scope_extras`) and units for ``structure``
    (channel, head, neuron, head+neuron, none); ``groups="coupled"`` joins the channels that
    residual additions and depthwise convs tie together into one group set (CNNs)."""
    if groups not in GROUPS:
        raise UserError(f"unknown --groups {groups!r}: choose one of {', '.join(GROUPS)}")
    if structure == "auto":
        structure = default_structure(model)
    kinds = set() if structure == "none" else set(structure.split("+"))
    transformer = is_transformer(model)
    if transformer:
        attn = attention_blocks(model)
        mlps = mlp_blocks(model)
        names = [f"{n}.{p}.weight" for n, _ in attn for p in ("qkv", "proj")]
        names += [f"{n}.{p}.weight" for n, _ in mlps for p in ("fc1", "fc2")]
        if groups == "coupled":
            raise UserError("--groups coupled is for CNNs' conv channels; this model is a "
                            "transformer: use --groups per-layer")
        if kinds & {"channel"}:
            raise UserError("--structure channel is for CNNs; this model is a transformer: use "
                            "head, neuron, embed (combined with +) or none")
        units = [_head_unit(n, m, arena) for n, m in attn] if "head" in kinds else []
        units += [_neuron_unit(n, m, arena) for n, m in mlps] if "neuron" in kinds else []
        if "embed" in kinds:
            units.append(embed_unit(model, arena))
            use_stream_norms(model)
    else:
        if kinds & {"head", "neuron", "embed"}:
            raise UserError(f"--structure {structure} needs a transformer; this model is a CNN: "
                            "use channel or none")
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        convs = [n for n in convs[1:] if f"{n}.weight" in arena.slots]  # the stem stays dense
        names = [f"{n}.weight" for n in convs]
        if "channel" not in kinds:
            units = []
        elif groups == "coupled":
            units = _coupled_conv_units(model, arena, convs,
                                        set(names) | set(scope_extras(model, scope)))
        else:
            units = _conv_units(model, arena, convs)
    names = [n for n in names if n in arena.slots]
    note = ""
    if not names:
        # no group definition for this model (e.g. an MLP-only timm model): prune the weights of
        # every conv / linear layer but the first and the last, unstructured
        layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        names = [f"{n}.weight" for n in layers[1:-1] if f"{n}.weight" in arena.slots]
        units = []
        if not names:
            raise UserError("rsst found no prunable layers in this model (it needs convs or "
                            "linear layers between the first and the classifier); pick another "
                            "--arch")
        if kinds:
            note = ("rsst has no structural group definition for this model: pruning its "
                    "conv/linear weights unstructured (IMP-style)")
    elif kinds and not units:
        note = "no structural groups found: pruning is unstructured"
    extras = [n for n in scope_extras(model, scope) if n in arena.slots and n not in names]
    names = names + extras
    return Structure(arena.element_mask(names), names, units, note)
