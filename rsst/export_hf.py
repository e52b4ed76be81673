"""``rsst export --form hf``: a Hugging Face / timm model folder.

The folder is what timm's ``save_for_hf`` writes — ``config.json`` (architecture, ``model_args``,
``pretrained_cfg`` with the input size, mean/std and ``crop_pct`` 1.0) and ``model.safetensors``
— plus the model card as ``README.md``. ``timm.create_model("local-dir:FOLDER",
pretrained=True)`` rebuilds it, and timm's eval transform (``resolve_data_config`` +
``create_transform``) feeds it exactly what rsst's evaluation fed the run: crop_pct 1.0 resizes
an image of the trained size to itself, so the centre crop keeps every pixel.

- timm models (``vit_*``, ``timm:<name>``): the stock architecture, stock keys, dense shapes with
  pruned weights zero (timm's ``create_model`` takes one head count for all blocks; for a
  physically smaller ViT use ``--form timm``); loads with timm alone.
- rsst CNNs and embed-pruned ViTs (whose LayerNorms skip the pruned width, which stock timm
  cannot express at dense shapes): architecture ``rsst_model`` (`rsst.timm_models`) with the
  compaction plan in
  ``model_args``, so the folder holds the compacted network; loading needs
  ``import rsst.timm_models`` first. The input normalization is inside the model, so the
  folder's mean/std are 0/1 and timm's transform only scales pixels to [0, 1].

``config.json``'s ``pretrained_cfg`` describes this model, not the one its architecture was
first published with: timm's inherited ``tag``, ``license`` and hub addresses are replaced by
rsst's (tag ``rsst-<method>-state<N>``, the card's license). For the ``rsst_model`` form its
``rsst.architecture`` lists every layer's compacted width (channels, features, heads).

The folder is built in a temporary folder beside ``-o``, loaded back through timm and checked
against the rsst model, then renamed into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsst.errors import UserError


def check_folder_output(out: str | Path, form: str) -> Path:
    """``-o`` for a folder form: a new folder in an existing parent."""
    out = Path(out)
    if out.is_file():
        raise UserError(f"-o {out} is a file, but --form {form} writes a folder: pass a new "
                        "folder name")
    if out.exists():
        raise UserError(f"-o {out} already exists: --form {form} writes a new folder; remove it "
                        "or pass another name")
    if not out.parent.is_dir():
        raise UserError(f"the folder of -o {out} does not exist: create {out.parent} first or "
                        "write somewhere else")
    return out


def _stock_hf_model(dense: nn.Module, state_dict: dict[str, torch.Tensor], spec: Any
                    ) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """A stock timm model holding the masked weights, its pretrained_cfg set for export; the
    mean/std are the ones the rsst model applies (its normalization buffers)."""
    from rsst.export_timm import timm_create_args

    mean = tuple(float(v) for v in dense.normalize.mean.flatten())
    std = tuple(float(v) for v in dense.normalize.std.flatten())
    args = timm_create_args(dense, spec.num_classes, spec.input_size, mean, std)
    args["pretrained_cfg_overlay"]["crop_pct"] = 1.0
    args["pretrained_cfg_overlay"]["crop_mode"] = "center"
    import timm

    model = timm.create_model(**args)
    model.load_state_dict({k[len("net."):]: v for k, v in state_dict.items()
                           if k.startswith("net.")}, strict=True)
    return model.eval(), mean, std


def _rsst_hf_model(compact: nn.Module, plan_modules: dict[str, Any], spec: Any) -> nn.Module:
    """The compacted rsst model as timm's ``rsst_model`` (normalization inside: mean 0, std 1)."""
    import timm

    from rsst import timm_models

    c, h, w = spec.input_size
    cfg = {"architecture": timm_models.ARCH, "input_size": (c, h, w), "crop_pct": 1.0,
           "crop_mode": "center", "interpolation": "bicubic", "mean": (0.0, 0.0, 0.0),
           "std": (1.0, 1.0, 1.0), "num_classes": spec.num_classes}
    model = timm.create_model(timm_models.ARCH, pretrained_cfg=cfg, arch=spec.arch,
                              num_classes=spec.num_classes, img_size=h,
                              patch_size=spec.patch_size, mean=list(spec.mean),
                              std=list(spec.std), compact=plan_modules or None)
    model.load_state_dict(compact.state_dict(), strict=True)
    return model.eval()


def write_hf(out: Path, *, dense: nn.Module, compact: nn.Module,
             state_dict: dict[str, torch.Tensor], plan_modules: dict[str, Any], spec: Any,
             meta: dict[str, str], card: str) -> dict[str, Any]:
    """Write the folder (see module doc); returns the load-back check record."""
    from timm.models import save_for_hf

    from rsst.models.stream_norm import has_dead_stream_dims

    if hasattr(dense, "net") and hasattr(dense, "normalize") and not has_dead_stream_dims(dense):
        model, mean, std = _stock_hf_model(dense, state_dict, spec)
        reference, loader = dense, "timm"
    else:
        model, mean, std = _rsst_hf_model(compact, plan_modules, spec), (0.0,) * 3, (1.0,) * 3
        reference, loader = compact, "rsst.timm_models"
    from rsst import statefile as sf
    from rsst.model_card import card_license

    info = {key.removeprefix("rsst."): _meta_value(meta[key]) for key in (
        "rsst.arch", "rsst.method", "rsst.state", "rsst.sparsity", "rsst.format_version")
        if key in meta}
    if loader == "rsst.timm_models":
        info["architecture"] = {"arch": spec.arch, "num_classes": spec.num_classes,
                                "input_size": list(spec.input_size),
                                "layers": architecture(model)}
    run_config = sf.json_metadata(meta, sf.CONFIG, {}) or {}
    if run_config:  # what `rsst eval FOLDER` needs to rebuild the run's val split
        info["config"] = run_config
    license = card_license(run_config)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        save_for_hf(model, str(tmp), safe_serialization=True, model_config={"rsst": info})
        (tmp / "README.md").write_text(card)
        config = json.loads((tmp / "config.json").read_text())
        config["pretrained_cfg"] = describe_pretrained_cfg(config["pretrained_cfg"], meta,
                                                           license)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        check = _check_folder(tmp, reference, spec.input_size, mean, std)  # the final config
        check["loader"] = loader
        config["rsst"]["check"] = check
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return check


#: pretrained_cfg fields that name where timm's published weights came from: not this model's
INHERITED_FIELDS = ("hf_hub_id", "hf_hub_filename", "url", "file", "source", "origin_url",
                    "paper_ids", "paper_name", "notes", "hf_hub_revision", "state_dict")


def _meta_value(text: str) -> Any:
    """A metadata string as the value it encodes (numbers, JSON objects); text stays text."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def describe_pretrained_cfg(cfg: dict[str, Any], meta: dict[str, str], license: str
                            ) -> dict[str, Any]:
    """``pretrained_cfg`` of this model: the inherited tag, license and hub addresses replaced."""
    cfg = {k: v for k, v in cfg.items() if k not in INHERITED_FIELDS}
    cfg["tag"] = f"rsst-{meta.get('rsst.method', 'unknown')}-state{meta.get('rsst.state', '0')}"
    cfg["license"] = license
    return cfg


def architecture(model: nn.Module) -> dict[str, Any]:
    """Every layer's width in ``model``: convolutions (in / out channels, kernel, stride,
    groups), linear layers (in / out features), BatchNorms (channels), attention (heads, head
    width)."""
    layers: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            layers[name] = {"type": "conv", "in": m.in_channels, "out": m.out_channels,
                            "kernel": list(m.kernel_size), "stride": list(m.stride),
                            "groups": m.groups}
        elif isinstance(m, nn.Linear):
            layers[name] = {"type": "linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.BatchNorm2d):
            layers[name] = {"type": "bn", "channels": m.num_features}
        elif hasattr(m, "qkv") and hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            layers[name] = {"type": "attention", "heads": int(m.num_heads),
                            "head_dim": int(m.head_dim)}
    return layers


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_folder(folder: Path, reference: nn.Module, input_size: tuple[int, int, int],
                  mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """Load ``folder`` the way a user does and compare its logits with the rsst model's."""
    import timm

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.rand(3, *input_size, generator=torch.Generator().manual_seed(0))
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.no_grad():
        ref, got = reference(x), loaded((x - m) / s)
    diff = float((ref - got).abs().max())
    if not diff <= 1e-4 * max(float(ref.abs().max()), 1.0):
        raise RuntimeError(f"the model loaded back from the hf folder differs from the rsst "
                           f"model by {diff:.3g} in its logits: this is a bug in "
                           "rsst.export_hf, please report it")
    return {"max_abs_logit_diff": diff, "checked_with": "timm.create_model(local-dir)"}


def load_hf_folder(folder: Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an ``rsst export --form hf`` folder, in eval mode, taking images in [0, 1]
    like every model `rsst.load` returns (a stock-timm folder's mean/std are put in front as
    ``normalize``), with its ``rsst_spec`` and ``rsst_metadata`` (the run's config when the
    export recorded it). timm builds the architecture from ``config.json``; the weights come
    from ``model.safetensors`` alone (never a pickle, whatever else the folder holds)."""
    from collections import OrderedDict

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from rsst import statefile as sf
    from rsst.models.base import Normalize

    if any((folder / name).exists() for name in ("summary.json", "config.toml")) or any(
            folder.glob("state_*/weights.safetensors")):
        not_ours = (f"{folder} is a run directory: pass one of its state files "
                    f"({folder}/state_NN/weights.safetensors) or an export of it "
                    "(`rsst export RUN_DIR -o FILE.safetensors`)")
    else:
        not_ours = (f"{folder} is a folder but not an `rsst export --form hf` folder (no "
                    "config.json with an rsst section and a model.safetensors): pass such a "
                    "folder or the .safetensors file `rsst export` wrote")
    try:
        config = json.loads((folder / "config.json").read_text())
        info, pretrained = config["rsst"], config["pretrained_cfg"]
        arch, num_classes = str(info["arch"]), int(config["num_classes"])
        input_size = tuple(int(v) for v in pretrained["input_size"])
        mean = tuple(float(v) for v in pretrained["mean"])
        std = tuple(float(v) for v in pretrained["std"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(not_ours) from None
    weights = folder / "model.safetensors"
    if not weights.is_file() or len(input_size) != 3:
        raise UserError(not_ours)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{weights} is not a readable safetensors file ({exc}); re-export the "
                        "folder with `rsst export RUN_DIR --form hf -o FOLDER`") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise UserError(f"{weights}: tensor(s) {', '.join(bad[:5])} hold NaN or infinity (the "
                        "weights diverged or the file was damaged); export a sound state")
    import timm

    from rsst import timm_models

    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()}, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{folder}: timm cannot rebuild its model from config.json and "
                        f"model.safetensors ({detail}); re-export the folder with `rsst export "
                        "RUN_DIR --form hf -o FOLDER`") from None
    args = config.get("model_args") or {}
    if config.get("architecture") == timm_models.ARCH:  # the normalization is inside
        mean, std = tuple(args.get("mean", ())), tuple(args.get("std", ()))
    else:  # stock timm: it takes normalized inputs
        model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=model))
    patch = args.get("patch_size")
    sf.ModelSpec(arch, num_classes, input_size, None if patch is None else int(patch), mean,
                 std).attach(model)
    meta = {sf.FORM: "hf", sf.ARCH: arch, sf.NUM_CLASSES: str(num_classes)}
    if isinstance(info.get("config"), dict):
        meta[sf.CONFIG] = json.dumps(info["config"])
    model.rsst_metadata = meta
    try:
        return model.eval().to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot move the model to {device} ({exc}); pass device='cpu'") from None
