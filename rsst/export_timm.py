"""``rsst export --form timm``: a file that stock timm loads, with no rsst installed.

rsst wraps a timm model as ``TimmWrapper(normalize, net)``, so its state_dict keys carry a
``net.`` prefix, a masked export adds ``<param>.mask`` tensors, and the input normalization is
two buffers. The timm form writes exactly the stock keys and the metadata holds the
``timm.create_model`` arguments and the mean/std to apply (`USAGE`). A ViT is written compacted:
each block's head count, head width and MLP width are in ``timm.blocks``, and the recipe swaps
in stock timm ``Attention`` / ``Linear`` modules of those sizes before loading (timm's
``create_model`` takes one head count for all blocks). Other timm models keep dense shapes with
pruned weights zero. Export checks that the stock model built by the recipe gives the rsst
model's logits before it writes anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsst.errors import UserError

USAGE = """\
import json, timm, torch
from safetensors import safe_open
from safetensors.torch import load_file

meta = safe_open(FILE, "pt").metadata()
model = timm.create_model(**json.loads(meta["timm.create_model"]))
for block, width in zip(model.blocks, json.loads(meta.get("timm.blocks", "[]"))):
    # a compacted ViT block: its own head count and MLP width, stock timm modules
    dim = block.attn.qkv.in_features
    block.attn = timm.layers.Attention(dim, width["num_heads"], attn_head_dim=width["head_dim"],
                                       qkv_bias=width["qkv_bias"])
    block.mlp.fc1 = torch.nn.Linear(dim, width["mlp_hidden"])
    block.mlp.fc2 = torch.nn.Linear(width["mlp_hidden"], dim)
model.load_state_dict(load_file(FILE))
model.eval()
mean, std = (torch.tensor(json.loads(meta[k])).view(1, 3, 1, 1) for k in ("timm.mean", "timm.std"))
logits = model((x - mean) / std)  # x: images in [0, 1], shape (N, 3, H, W)"""


def _stock_model(args: dict[str, Any], blocks: list[dict[str, Any]]) -> nn.Module:
    """What `USAGE` builds: ``timm.create_model(**args)`` with each listed block resized."""
    import timm

    model = timm.create_model(**args)
    for block, width in zip(getattr(model, "blocks", []), blocks, strict=False):
        dim = block.attn.qkv.in_features
        block.attn = timm.layers.Attention(dim, width["num_heads"],
                                           attn_head_dim=width["head_dim"],
                                           qkv_bias=width["qkv_bias"])
        block.mlp.fc1 = nn.Linear(dim, width["mlp_hidden"])
        block.mlp.fc2 = nn.Linear(width["mlp_hidden"], dim)
    return model


_VIT_PART = re.compile(r"net(\.blocks\.\d+\.(attn|mlp\.fc1|mlp\.fc2|norm1|norm2)"
                       r"|\.patch_embed\.proj|\.norm|\.fc_norm|\.norm_pre|\.head)?")


def stock_compactable(plan_modules: dict[str, Any]) -> bool:
    """True when every module the compaction plan shrinks is one `USAGE` can resize (a ViT
    block's attention or MLP linears) or one ``create_model(embed_dim=...)`` makes narrower
    (the embedding width: tokens, patch embedding, norms, classifier input), so the timm form
    can be written compacted."""
    return all(_VIT_PART.fullmatch(name) for name in plan_modules)


def block_widths(net: nn.Module) -> list[dict[str, Any]]:
    """Per block of a (compacted) timm ViT: head count, head width, qkv bias, MLP width."""
    widths = []
    for block in getattr(net, "blocks", []):
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        if attn is None or mlp is None or not hasattr(mlp, "fc1"):
            return []
        widths.append({"num_heads": int(attn.num_heads), "head_dim": int(attn.head_dim),
                       "qkv_bias": attn.qkv.bias is not None,
                       "mlp_hidden": int(mlp.fc1.out_features)})
    return widths


def timm_create_args(wrapper: nn.Module, num_classes: int, input_size: tuple[int, int, int],
                     mean: tuple[float, ...], std: tuple[float, ...],
                     narrowed: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``timm.create_model`` that rebuild ``wrapper.net``; the
    pretrained_cfg overlay makes ``timm.data.resolve_data_config`` report rsst's mean/std.
    ``narrowed``: an embed-pruned ViT, built at its own ``embed_dim`` (one head per block
    there, so any width divides; `USAGE` then sets every block's heads)."""
    net = wrapper.net
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise UserError("this timm model does not name its architecture (no pretrained_cfg); "
                        "export --masked and load it with rsst.load")
    args: dict[str, Any] = {"model_name": name, "pretrained": False, "num_classes": num_classes}
    patch = getattr(getattr(net, "patch_embed", None), "patch_size", None)
    if patch is not None:
        args["img_size"] = int(input_size[1])
        args["patch_size"] = int(patch[0] if isinstance(patch, tuple | list) else patch)
    if narrowed:
        args["embed_dim"], args["num_heads"] = int(net.embed_dim), 1
    args["pretrained_cfg_overlay"] = {"mean": list(mean), "std": list(std),
                                      "input_size": list(input_size), "num_classes": num_classes}
    return args


def timm_export_body(dense: nn.Module, state_dict: dict[str, torch.Tensor], arch: str,
                     num_classes: int, input_size: tuple[int, int, int],
                     mean: tuple[float, ...], std: tuple[float, ...], narrowed: bool = False
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(stock state_dict, ``timm.*`` metadata) of an rsst timm model (``dense``: the masked
    or the compacted one, ``state_dict`` its tensors), checked: the stock model built from the
    metadata alone gives the same logits on normalized input."""
    if not (hasattr(dense, "net") and hasattr(dense, "normalize")):
        raise UserError(f"--form timm needs a timm architecture (vit_tiny / vit_small / vit_base "
                        f"or timm:<name>); {arch} is rsst's own model: export --masked or "
                        "--compact and load it with rsst.load")
    stock = {k[len("net."):]: v for k, v in state_dict.items() if k.startswith("net.")}
    # the normalization the weights were trained behind (the model's buffers) is the truth
    mean = tuple(float(v) for v in dense.normalize.mean.flatten())
    std = tuple(float(v) for v in dense.normalize.std.flatten())
    args = timm_create_args(dense, num_classes, input_size, mean, std, narrowed)
    blocks = block_widths(dense.net)
    model = _stock_model(args, blocks).eval()
    model.load_state_dict(stock, strict=True)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        x = torch.rand(2, *input_size, generator=torch.Generator().manual_seed(0))
        ref, got = dense(x), model((x - mean_t) / std_t)
    diff = float((ref - got).abs().max())
    if not diff <= 1e-4 * max(float(ref.abs().max()), 1.0):
        raise RuntimeError(f"the stock timm model differs from the rsst model by {diff:.3g} in "
                           "its logits: this is a bug in rsst.export_timm, please report it")
    meta = {"timm.create_model": json.dumps(args), "timm.mean": json.dumps(list(mean)),
            "timm.std": json.dumps(list(std)), "timm.input_size": json.dumps(list(input_size)),
            "timm.usage": USAGE, "timm.check": json.dumps({"max_abs_logit_diff": diff})}
    if blocks:
        meta["timm.blocks"] = json.dumps(blocks)
    return stock, meta


def load_timm_export(path: str | Path, tensors: dict[str, torch.Tensor], spec: Any,
                     build: Any, plan_modules: dict[str, Any] | None) -> nn.Module:
    """The rsst module (normalization in front) of a timm-form export, for `rsst.load`;
    ``plan_modules``: the compaction plan of a compacted (ViT) timm export."""
    state = {f"net.{k}": v for k, v in tensors.items()}
    state["normalize.mean"] = torch.tensor(list(spec.mean), dtype=torch.float32).view(1, -1, 1, 1)
    state["normalize.std"] = torch.tensor(list(spec.std), dtype=torch.float32).view(1, -1, 1, 1)
    return build(spec, state, plan_modules, path)
