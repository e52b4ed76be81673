"""``rsst export --form onnx`` and ``--form pt2``: the compacted network as a traced graph.

Both take images in [0, 1], shape (batch, C, H, W) with any batch size (the input normalization
is inside the graph) and return logits. ``onnx`` is written by ``torch.onnx.export`` (the dynamo
exporter, which needs ``onnxscript``) and checked in onnxruntime; ``pt2`` is
``torch.export.save`` of the ``torch.export`` program (load with ``torch.export.load(FILE)
.module()``) and checked by loading it back. Each check runs a batch of another size than the
one traced and records max |Δlogit| against the rsst model: in the ONNX file's metadata
(``rsst.check``, next to the other ``rsst.*`` keys) or the .pt2 archive's ``rsst.json`` extra
file, and in the export result. Files are written to a temporary name, checked, then renamed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsst.atomic import atomic_write
from rsst.errors import UserError, install_hint

ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
_TRACE_BATCH, _CHECK_BATCH = 2, 3


def require_onnx() -> None:
    """UserError naming the missing packages of the ``onnx`` extra, before any work is done."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--form onnx needs {', '.join(missing)} (not installed): "
                        f"{install_hint('onnx')}, or pick another --form")


def _example(input_size: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, *input_size, generator=torch.Generator().manual_seed(seed))


def _compare(reference: nn.Module, run: Any, input_size: tuple[int, ...], what: str
             ) -> dict[str, Any]:
    """max |Δlogit| of ``run(x)`` against ``reference(x)``; a mismatch is an rsst bug."""
    x = _example(input_size, _CHECK_BATCH, 1)
    with torch.no_grad():
        ref = reference(x)
    got = torch.as_tensor(run(x))
    diff = float((ref - got).abs().max())
    scale = float(ref.abs().max())
    if got.shape != ref.shape or not diff <= 1e-3 * max(scale, 1.0):
        raise RuntimeError(f"the {what} model differs from the rsst model by {diff:.3g} in its "
                           "logits: this is a bug in rsst.export_graph, please report it")
    return {"max_abs_logit_diff": diff, "logit_scale": scale, "checked_with": what,
            "batch": _CHECK_BATCH}


def write_onnx(out: Path, model: nn.Module, input_size: tuple[int, ...],
               meta: dict[str, str]) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``out``, checked in onnxruntime; returns the check."""
    import onnx
    import onnxruntime as ort

    model = model.eval()
    program = torch.onnx.export(model, (_example(input_size, _TRACE_BATCH, 0),), dynamo=True,
                                dynamic_shapes=({0: "batch"},), input_names=["images"],
                                output_names=["logits"], verbose=False)
    check: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        program.save(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        check.update(_compare(model, lambda x: session.run(None, {name: x.numpy()})[0],
                              input_size, "onnxruntime"))
        proto = onnx.load(str(tmp))
        props = dict(meta, **{"rsst.form": "onnx", "rsst.check": json.dumps(check)})
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(tmp))

    atomic_write(out, write)
    return check


def write_pt2(out: Path, model: nn.Module, input_size: tuple[int, ...],
              meta: dict[str, str]) -> dict[str, Any]:
    """``torch.export`` ``model`` to a .pt2 archive at ``out``, checked by loading it back."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(model, (_example(input_size, _TRACE_BATCH, 0),),
                                      dynamic_shapes=({0: batch},))
    check: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        torch.export.save(program, str(tmp))
        loaded = torch.export.load(str(tmp)).module()
        check.update(_compare(model, lambda x: loaded(x).detach(), input_size,
                              "torch.export.load"))
        info = dict(meta, **{"rsst.form": "pt2", "rsst.check": json.dumps(check)})
        torch.export.save(program, str(tmp), extra_files={"rsst.json": json.dumps(info)})

    atomic_write(out, write, suffix=".tmp.pt2")  # torch.export wants the .pt2 ending
    return check
