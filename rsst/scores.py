"""Saliency scores of the pruning-at-initialization baselines, computed on a plain model.

Each function takes an ``nn.Module`` and the names of the weights to score and returns one tensor
per name (the weight's shape). Nothing here knows the arena, the masks' encoding or the run: the
methods in `rsst.methods` turn these into one score per arena element, and the tests compare them
with an independent float64 re-implementation.

- `snip_scores` (Lee et al. 2019): |θ ⊙ Σ_b ∂L_b/∂θ|.
- `grasp_scores` (Wang et al. 2020): S = −θ ⊙ H g, g = Σ_b ∂L_b/∂θ at temperature T (logits / T),
  H g by double backprop; GraSP removes the HIGHEST S.
- `synflow_scores` (Tanaka et al. 2020): |θ ⊙ ∂R/∂θ|, R = Σ f_|θ|(1), data-free; `synflow_iterate`
  iterates it with the exponential schedule, re-masking between iterations.

SNIP and GraSP score with BatchNorm in the mode each reference implementation used — SNIP in
eval mode (running statistics: snip-public feeds ``is_train=False`` when it prunes), GraSP in
training mode (batch statistics: alecwangcq/GraSP scores a copy of the freshly built, training-mode
network) — or the other one on request (``train=``). Either way every buffer is restored
afterwards, so scoring leaves the model exactly as it found it; gradients are taken with
``torch.autograd.grad``, never accumulated into ``.grad``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from rsst.models.base import Normalize

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def _scoring_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """``model`` in train (or eval) mode, buffers (BN running stats) restored on exit; attention
    on the math kernel so that double backprop works (the fused kernels are once-differentiable).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train(train)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])


def _weights(model: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no parameter(s) {missing} in the model")
    return [params[n] for n in names]


def _summed_grads(model: nn.Module, weights: list[torch.Tensor], batches: Iterable[Batch],
                  temperature: float = 1.0) -> list[torch.Tensor]:
    """Σ_b ∂L_b/∂θ (L the mean cross-entropy of logits / temperature), no graph kept."""
    total = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        loss = F.cross_entropy(model(x) / temperature, y)
        for acc, g in zip(total, torch.autograd.grad(loss, weights), strict=True):
            acc.add_(g)
    return total


def snip_scores(model: nn.Module, names: Sequence[str], batches: Iterable[Batch],
                train: bool = False) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity |θ ⊙ Σ_b ∂L_b/∂θ| (gradients summed over the batches,
    then the absolute value, as the reference and the research code do); BatchNorm in eval
    mode unless ``train`` (the authors' code prunes with ``is_train=False``)."""
    weights = _weights(model, names)
    with _scoring_mode(model, train=train):
        grads = _summed_grads(model, weights, list(batches))
    return {n: (w.detach() * g).abs() for n, w, g in zip(names, weights, grads, strict=True)}


def grasp_scores(model: nn.Module, names: Sequence[str], batches: Iterable[Batch],
                 temperature: float = 200.0, train: bool = True) -> dict[str, torch.Tensor]:
    """GraSP's score S = −θ ⊙ H g over the named weights (H and g restricted to them).

    g = Σ_b ∂L_b/∂θ with logits divided by ``temperature`` (the reference's T = 200), then
    H g = ∂/∂θ Σ_b ⟨stopgrad(g), ∂L_b/∂θ⟩ by double backprop. GraSP removes the weights with the
    HIGHEST S (their removal reduces the gradient flow least); no absolute value is taken.
    BatchNorm in training mode unless ``train`` is False (the reference scores the network as
    built, in training mode).
    """
    weights = _weights(model, names)
    batches = list(batches)
    with _scoring_mode(model, train=train):
        g = _summed_grads(model, weights, batches, temperature)
        hg = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            loss = F.cross_entropy(model(x) / temperature, y)
            grad = torch.autograd.grad(loss, weights, create_graph=True)
            z = sum((gi * gr).sum() for gi, gr in zip(g, grad, strict=True))
            for acc, h in zip(hg, torch.autograd.grad(z, weights), strict=True):
                acc.add_(h)
    return {n: -(w.detach() * h) for n, w, h in zip(names, weights, hg, strict=True)}


def synflow_scores(model: nn.Module, masks: dict[str, torch.Tensor],
                   input_shape: Sequence[int], dtype: torch.dtype = torch.float64
                   ) -> dict[str, torch.Tensor]:
    """One SynFlow pass: every parameter and buffer replaced by its absolute value (the masked
    weights by |θ| ⊙ mask), BatchNorm in eval mode, input of ones, R = Σ outputs; returns
    |θ ⊙ ∂R/∂θ| for the weights named in ``masks``.

    Runs on copies in ``dtype`` (float64: the products of |θ| over ~20 layers overflow float32
    on deep networks), through ``torch.func.functional_call``: the model is not modified. An
    input `Normalize` is made the identity, so the ones reach the first layer as ones.
    """
    values: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        values[name] = p.detach().abs().to(dtype)
    for name, b in model.named_buffers():
        values[name] = b.detach().abs().to(dtype) if b.is_floating_point() else b
    for prefix, module in model.named_modules():
        if isinstance(module, Normalize):
            dot = f"{prefix}." if prefix else ""
            values[f"{dot}mean"] = torch.zeros_like(values[f"{dot}mean"])
            values[f"{dot}std"] = torch.ones_like(values[f"{dot}std"])
    leaves = {}
    for name, mask in masks.items():
        leaves[name] = (values[name] * mask.to(dtype)).requires_grad_(True)
        values[name] = leaves[name]
    device = next(iter(values.values())).device
    ones = torch.ones((1, *input_shape), dtype=dtype, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = torch.func.functional_call(model, values, (ones,))
            grads = torch.autograd.grad(out.sum(), list(leaves.values()))
    finally:
        model.train(was_training)
    return {n: (leaf.detach() * g).abs() for (n, leaf), g in zip(leaves.items(), grads,
                                                                 strict=True)}


def synflow_schedule(alive: int, keep: int, iterations: int) -> list[int]:
    """Alive counts after each of the ``iterations`` scorings: the exponential schedule
    round(alive · (keep/alive)^(k/n)), k = 1..n (the reference's ``sparsity**((k+1)/epochs)``
    measured from the weights alive now); the last is exactly ``keep``."""
    if iterations < 1:
        raise ValueError("iterations must be ≥ 1")
    if alive <= 0 or keep >= alive:
        return [alive] * iterations
    ratio = keep / alive
    counts = [round(alive * ratio ** (k / iterations)) for k in range(1, iterations)]
    return [*counts, keep]


def keep_highest(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], keep: int
                 ) -> dict[str, torch.Tensor]:
    """New masks keeping the ``keep`` alive elements of highest score, ranked jointly over all
    names (a stable sort: of equal scores, the earlier element in name, then flat order, goes)."""
    names = list(masks)
    flat_mask = torch.cat([masks[n].reshape(-1) for n in names])
    flat_score = torch.cat([scores[n].reshape(-1).to(torch.float64) for n in names])
    remove = int(flat_mask.sum()) - keep
    new = flat_mask.clone()
    if remove > 0:
        ranked = torch.where(flat_mask, flat_score, torch.full_like(flat_score, torch.inf))
        new[torch.argsort(ranked, stable=True)[:remove]] = False
    out, start = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = new[start:start + size].view(masks[n].shape)
        start += size
    return out


def synflow_iterate(model: nn.Module, masks: dict[str, torch.Tensor], keep: int,
                    iterations: int, input_shape: Sequence[int]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Iterations 1..n−1 of SynFlow's schedule (score, keep the highest, re-mask), then the n-th
    scoring: returns (the masks it was computed under, its scores). The caller makes the last
    cut itself (``keep`` elements of those masks by those scores)."""
    alive = int(sum(int(m.sum()) for m in masks.values()))
    counts = synflow_schedule(alive, keep, iterations)
    for count in counts[:-1]:
        masks = keep_highest(synflow_scores(model, masks, input_shape), masks, count)
    return masks, synflow_scores(model, masks, input_shape)


def random_scores(numel: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform [0, 1) scores drawn on the CPU from ``seed`` (the same on every device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(numel, generator=generator, dtype=torch.float64).to(device)
