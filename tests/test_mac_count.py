"""rsst's MAC counter (`rsst.compact.count`) against torch's own FLOP counter
(``torch.utils.flop_counter.FlopCounterMode``), dense and compacted.

Both count the same operations: convolutions, linear layers (``addmm``) and the attention
matmuls (``bmm``), at 2 FLOPs per multiply-accumulate, and neither counts BatchNorm, LayerNorm,
activations, pooling, softmax or residual additions. So MACs == FLOPs / 2 exactly: the
tolerance is zero. One setting differs: on CPU timm's fused attention runs an op
(``_scaled_dot_product_flash_attention_for_cpu``) that FlopCounterMode does not count, so the
ViT is measured with ``fused_attn = False``, whose two explicit matmuls torch counts itself.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import pruned_model
from torch.utils.flop_counter import FlopCounterMode

from rsst.compact.count import count_macs
from rsst.compact.plan import apply_plan, plan_compaction


def torch_macs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # explicit q·kᵀ and attn·v matmuls (see module doc)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize(("arch", "size", "kw"), [
    ("resnet20", 8, {}), ("vgg16_bn", 32, {}), ("mobilenet", 8, {}),
    ("vit_tiny", 16, {"patch_size": 4}),
])
def test_macs_equal_half_of_torch_flops_dense_and_compacted(arch, size, kw):
    dense, _ = pruned_model(arch, img_size=size, **kw)
    compact = apply_plan(copy.deepcopy(dense), plan_compaction(dense).modules).eval()
    input_size = (3, size, size)
    counted = {name: sum(count_macs(model, input_size).values())
               for name, model in (("dense", dense), ("compact", compact))}
    assert counted["compact"] < counted["dense"]  # the compaction removed something
    assert counted["dense"] == torch_macs(dense, input_size)
    assert counted["compact"] == torch_macs(compact, input_size)
