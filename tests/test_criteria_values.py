"""The activation criteria of SPEC §3 checked by value against an independent float64 computation
(a double copy of the model, its weights masked by U, activations and their gradients read with
hooks), not only by which group wins: Σ|a·∂L/∂a| (not |Σ a·∂L/∂a|), each ViT head's own
contiguous slice ``h·d:(h+1)·d`` of the attention output, each MLP neuron's own feature."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import VIT_EMBED, VIT_HEADS, VIT_HIDDEN, SmallCNN, calibration, tiny_vit
from torch import nn

from rsst.arena import Arena
from rsst.criteria import group_scores
from rsst.pruning import magnitude_prune
from rsst.structure import build_structure

HEADS, HIDDEN = VIT_HEADS, VIT_HIDDEN
HEAD_DIM = VIT_EMBED // VIT_HEADS


def reference_activations(model: nn.Module, arena: Arena, unstructured: torch.Tensor,
                          batches, layers: dict[str, tuple[str, bool]]):
    """Per batch, {unit: (a, ∂L/∂a)} in float64: ``layers`` maps a unit name to the module whose
    output (False) or input (True) is the unit's activation."""
    reference = copy.deepcopy(model).double().eval()
    masked = (arena.weight * unstructured).double()
    with torch.no_grad():
        for name, slot in arena.slots.items():
            reference.get_parameter(name).copy_(slot.shaped(masked))
    modules = dict(reference.named_modules())
    results = []
    for x, y in batches:
        seen: dict[str, torch.Tensor] = {}

        def keep(unit: str, a: torch.Tensor, seen: dict[str, torch.Tensor] = seen) -> None:
            a.retain_grad()
            seen[unit] = a

        hooks = []
        for unit, (module, is_input) in layers.items():
            if is_input:
                hooks.append(modules[module].register_forward_pre_hook(
                    lambda _m, inp, unit=unit: keep(unit, inp[0])))
            else:
                hooks.append(modules[module].register_forward_hook(
                    lambda _m, _i, out, unit=unit: keep(unit, out)))
        nn.functional.cross_entropy(reference(x.double()), y).backward()
        for h in hooks:
            h.remove()
        results.append({u: (a.detach(), a.grad) for u, a in seen.items()})
    return results


def _scores(model, arena, structure, unstructured, batches, criteria):
    scores = group_scores(criteria, model, structure, arena, unstructured, batches)
    assert all(s.dtype == torch.float64 for s in scores.values())
    return scores


def test_cnn_saliency_is_the_sum_of_absolute_taylor_terms():
    torch.manual_seed(0)
    model = SmallCNN()
    arena = Arena(model)
    structure = build_structure(model, arena)
    batches = calibration(3)
    u = magnitude_prune(arena.weight, arena.hard_mask, structure.prunable, 0.3)
    ref = reference_activations(model, arena, u, batches,
                                {"conv_a": ("conv_a", False), "conv_b": ("conv_b", False)})
    scores = _scores(model, arena, structure, u, batches, "saliency")
    for unit in ("conv_a", "conv_b"):
        # Σ over batches, images and pixels of |a·∂L/∂a|, per output channel
        want = sum((a * g).abs().sum(dim=(0, 2, 3)) for a, g in (r[unit] for r in ref))
        torch.testing.assert_close(scores[unit], want, rtol=1e-4, atol=1e-9)
        # the terms really have mixed signs, so |Σ| would be a different number
        signed = sum((a * g).sum(dim=(0, 2, 3)) for a, g in (r[unit] for r in ref))
        assert (signed.abs() < 0.9 * want).any()


@pytest.mark.parametrize("criteria", ["l1", "l2", "saliency"])
def test_vit_head_and_neuron_scores_by_value(criteria):
    model = tiny_vit(seed=1)
    arena = Arena(model)
    structure = build_structure(model, arena)
    with torch.no_grad():  # one head with a large output, so a wrong slicing moves the numbers
        arena.view("blocks.1.attn.qkv.weight")[2 * 24 + 8: 2 * 24 + 16] *= 8.0
    batches = calibration(2, size=16, classes=5)
    u = magnitude_prune(arena.weight, arena.hard_mask, structure.prunable, 0.4)
    layers = {}
    for b in range(2):
        layers[f"blocks.{b}.attn"] = (f"blocks.{b}.attn.proj", True)
        layers[f"blocks.{b}.mlp"] = (f"blocks.{b}.mlp.fc2", True)
    ref = reference_activations(model, arena, u, batches, layers)
    scores = _scores(model, arena, structure, u, batches, criteria)

    def reduce(values: torch.Tensor, per_head: bool) -> torch.Tensor:
        """Sum over batch and tokens; a head owns the contiguous features h·d … h·d+d-1."""
        summed = values.sum(dim=(0, 1))  # [features]
        if per_head:
            return torch.stack([summed[h * HEAD_DIM:(h + 1) * HEAD_DIM].sum()
                                for h in range(HEADS)])
        return summed

    for unit in layers:
        per_head = unit.endswith("attn")
        total = 0
        for batch in ref:
            a, g = batch[unit]
            term = {"l1": a.abs(), "l2": a.pow(2), "saliency": (a * g).abs()}[criteria]
            total = total + reduce(term, per_head)
        want = total.sqrt() if criteria == "l2" else total
        assert scores[unit].shape == ((HEADS,) if per_head else (HIDDEN,))
        torch.testing.assert_close(scores[unit], want, rtol=1e-4, atol=1e-9, msg=unit)
    # the planted head dominates its block: the values above are not all alike
    assert int(scores["blocks.1.attn"].argmax()) == 1
