"""``rsst export`` / ``rsst eval`` / ``rsst.load``: a run's result as a real model file.

An export is one safetensors file (no pickle anywhere) whose tensors are a state_dict and whose
metadata says how to rebuild the module around it:

- ``--masked``: the dense state_dict with pruned elements zero, plus ``<param>.mask`` (uint8);
- ``--compact``: the state_dict of the physically smaller network (see `rsst.compact`), whose
  shapes are rebuilt from ``rsst.compact`` (kept indices per module).

Metadata keys: ``rsst.format_version``, ``rsst.form`` (masked | compact), ``rsst.arch``,
``rsst.num_classes``, ``rsst.input_size``, ``rsst.patch_size``, ``rsst.mean``, ``rsst.std``,
``rsst.method``, ``rsst.state``, ``rsst.sparsity``, ``rsst.structure`` (kept channel / head /
neuron indices per layer, what stayed and why), ``rsst.params`` and ``rsst.flops`` (dense and
compact totals; flops are multiply-accumulates for one input), ``rsst.compact`` (the plan),
``rsst.config`` (the run's full config), ``rsst.check`` (max |Δlogit| compact vs masked, measured
at export). A run's own ``state_XX/weights.safetensors`` has the same layout minus ``rsst.form``
and loads as a masked export.

Other forms (``--form``): ``timm`` (stock timm keys, `rsst.export_timm`), ``hf`` (a timm /
Hugging Face folder, `rsst.export_hf`), ``onnx`` and ``pt2`` (traced graphs checked by loading
them back, `rsst.export_graph`).

Files are written to a temporary name in the destination folder and renamed, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsst import statefile
from rsst.errors import UserError
from rsst.statefile import (  # the state-file reader; re-exported under their old names here
    FORMAT_VERSION,
    ModelSpec,
    masked_state,
    read_file,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: forms `rsst.load` reads back (safetensors files with rsst metadata)
LOADABLE_FORMS = ("masked", "compact", "timm")  # timm: stock keys, see rsst.export_timm
#: every ``--form``: hf is a folder (rsst.export_hf), onnx / pt2 traced graphs
#: (rsst.export_graph)
FORMS = (*LOADABLE_FORMS, "hf", "onnx", "pt2")
_REEXPORT = statefile.REEXPORT


# ---------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------


def model_spec(meta: dict[str, str], path: Path | str) -> ModelSpec:
    """The model contract a file's metadata states (`ModelSpec.from_metadata`)."""
    return ModelSpec.from_metadata(meta, path)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str,
               arch: str, assign: bool) -> None:
    """load_state_dict with the mismatch turned into one actionable line."""
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "shape mismatch")
        raise UserError(f"{path}: its tensors do not match the architecture in its metadata "
                        f"(rsst.arch={arch}): {detail[:200]}; {_REEXPORT}") from None


def _build(spec: ModelSpec, state: dict[str, torch.Tensor], plan_modules: dict[str, Any] | None,
           path: Path | str) -> nn.Module:
    """The module for ``state``: built on the meta device (no init cost) and filled by assign;
    models with buffers outside the state_dict are built for real instead."""
    from rsst.compact import apply_plan

    def shaped(device: str) -> nn.Module:
        model = spec.create(device)
        if plan_modules:
            try:
                apply_plan(model, plan_modules)
            except (KeyError, ValueError, TypeError) as exc:
                raise UserError(f"{path}: its rsst.compact plan and tensors do not match the "
                                f"architecture in its metadata (rsst.arch={spec.arch}): {exc}; "
                                f"{_REEXPORT}") from None
        return model

    model = shaped("meta")
    _load_into(model, state, path, spec.arch, assign=True)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        model = shaped("cpu")
        _load_into(model, state, path, spec.arch, assign=False)
    from rsst.models.stream_norm import has_dead_stream_dims, use_stream_norms

    if has_dead_stream_dims(model):  # an embed-pruned ViT: norms over its live width
        use_stream_norms(model)
    spec.attach(model)
    return model.eval()


def _as_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in float32 (masks and integer buffers as they are).

    A file converted to float16 / bfloat16 (or float64) is a legitimate export; widening it is
    exact for half precision, and it keeps the model in one dtype with the float32 inputs rsst
    feeds it (a half model would fail on them, and on CPU many half kernels are missing).
    """
    return {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v
            for k, v in tensors.items()}


def _nonfinite_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors holding NaN or ±infinity (a diverged run's weights)."""
    return [k for k, v in tensors.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the runnable model stored in an rsst export (or a run's state file), in eval mode.

    Architecture from the metadata (registry or ``timm:`` name), compacted shapes from the
    ``rsst.compact`` plan, weights from the tensors, in float32 whatever precision the file
    holds (call ``.half()`` on the result for half-precision inference). A folder is read as an
    ``rsst export --form hf`` folder (`rsst.export_hf.load_hf_folder`). The model carries its
    contract ``rsst_spec`` (`rsst.statefile.ModelSpec`; also as ``rsst_arch``,
    ``rsst_num_classes``, ``rsst_input_size``, ``rsst_patch_size``) and ``rsst_metadata``. A
    file whose floating tensors hold NaN or infinity is a `UserError` naming them.
    """
    path = Path(path)
    if path.is_dir():  # an `rsst export --form hf` folder
        from rsst.export_hf import load_hf_folder

        return load_hf_folder(path, device)
    tensors, meta = read_file(path)
    tensors = _as_float32(tensors)
    bad = _nonfinite_names(tensors)
    if bad:  # such a model computes NaN: no accuracy to report, no network to hand out
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{path}: tensor(s) {shown} hold NaN or infinity (the weights "
                        "diverged or the file was damaged); use a state saved before that or "
                        f"retrain (a lower --lr), then {_REEXPORT}")
    spec = model_spec(meta, path)
    form = meta.get(statefile.FORM, "masked")
    if form not in LOADABLE_FORMS:
        raise UserError(f"{path}: rsst.form={form!r} is not masked, compact or timm; {_REEXPORT}")
    plan_modules = None
    if form == "compact" or (form == "timm" and meta.get("timm.compacted") == "true"):
        try:
            plan = json.loads(meta["rsst.compact"])
            plan_modules = dict(plan["modules"])
        except (KeyError, ValueError, TypeError, json.JSONDecodeError):
            raise UserError(f"{path}: a compact export without a valid rsst.compact plan; "
                            f"{_REEXPORT}") from None
    if form == "timm":
        from rsst.export_timm import load_timm_export

        model = load_timm_export(path, tensors, spec, _build, plan_modules).to(device)
        model.rsst_metadata = meta
        return model
    state, _ = masked_state(tensors, path)
    model = _build(spec, state, plan_modules, path)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot move the model to {device} ({exc}); pass device='cpu'") from None
    model.rsst_metadata = meta
    return model


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def _state_metric(record: dict[str, Any]) -> float | None:
    """Accuracy of the weights a state saved (after the RSST cut when there was one): val,
    else test."""
    value = statefile.accuracy(record, "val")
    return value if value is not None else statefile.accuracy(record, "test")


def resolve_state(run_dir: str | Path, state: str | int = "last") -> tuple[int, Path]:
    """(state index, its weights file) for ``state`` = N, ``last`` or ``best`` (highest val
    accuracy of the saved weights; ties go to the later, sparser state)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist: pass the directory `rsst run` "
                        "printed")
    states = statefile.finished_states(run_dir)
    if not states:
        raise UserError(f"{run_dir} has no finished state (no state_XX/weights.safetensors): "
                        "pass an rsst run directory, or let the run finish a state first")
    choice = str(state).strip().lower()
    if choice == "last":
        index = states[-1]
    elif choice == "best":
        scored = []
        for s in states:
            record = statefile.read_state_record(run_dir, s)
            if record is None:
                continue
            metric = _state_metric(record)
            if metric is not None:
                scored.append((metric, s))
        if not scored:
            raise UserError(f"{run_dir}: no state recorded a validation or test accuracy, so "
                            "there is no best one; pass --state N or --state last")
        index = max(scored)[1]
    else:
        try:
            index = int(choice)
        except ValueError:
            raise UserError(f"--state {state!r}: pass a state number, last or best") from None
        if index not in states:
            have = ", ".join(str(s) for s in states)
            raise UserError(f"state {index} is not in {run_dir} (finished states: {have}); pass "
                            "--state with one of them, last or best")
    return index, statefile.state_weights(run_dir, index)


@dataclass
class ExportResult:
    path: Path
    form: str
    state: int
    rows: list[dict[str, Any]]
    notes: list[str]
    params: dict[str, int]
    flops: dict[str, int]
    max_abs_diff: float
    file_bytes: int
    check: dict[str, Any] | None = None  # hf / onnx / pt2: the load-back check of the output


#: the file ending each traced form needs: the loaders (onnxruntime, torch.export.load) and
#: users recognise a file by it
GRAPH_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}


def check_output_path(out: str | Path, form: str = "compact") -> Path:
    out = Path(out)
    suffix = GRAPH_SUFFIXES.get(form, ".safetensors")
    if out.is_dir():
        raise UserError(f"-o {out} is a folder: pass a file name such as "
                        f"{out / ('model' + suffix)}")
    if form in GRAPH_SUFFIXES and out.suffix.lower() != suffix:
        raise UserError(f"-o {out}: --form {form} writes a {suffix} file; pass a name ending in "
                        f"{suffix}, e.g. {out.with_suffix(suffix).name}")
    if not out.parent.is_dir():
        raise UserError(f"the folder of -o {out} does not exist: create {out.parent} first or "
                        "write somewhere else")
    return out


def _safe_write(out: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> int:
    """Write to a temp file beside ``out`` and rename it over; remove the temp file on failure."""
    try:
        statefile.save_tensors(out, tensors, meta)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}); pick a writable -o "
                        "path") from None
    return out.stat().st_size


def export_model(run_dir: str | Path, out: str | Path, *, state: str | int = "last",
                 form: str = "compact") -> ExportResult:
    """Export one state of a run as a masked or compact safetensors file (see module doc)."""
    from rsst.compact import (
        compact_state_dict,
        count_macs,
        count_params,
        layer_rows,
        plan_compaction,
    )

    if form not in FORMS:
        raise UserError(f"form {form!r}: pass --form {', '.join(FORMS)}")
    if form == "hf":
        from rsst.export_hf import check_folder_output

        out = check_folder_output(out, form)
    else:
        out = check_output_path(out, form)
    if form == "onnx":
        from rsst.export_graph import require_onnx

        require_onnx()
    index, source = resolve_state(run_dir, state)
    tensors, meta = read_file(source)
    spec = model_spec(meta, source)
    state_dict, masks = masked_state(_as_float32(tensors), source)
    dense = _build(spec, state_dict, None, source)

    plan = plan_compaction(dense, masks)
    compact_sd = compact_state_dict(dense, plan)
    compact = _build(spec, compact_sd, plan.modules, source)
    with torch.no_grad():
        x = torch.rand(4, *spec.input_size, generator=torch.Generator().manual_seed(0))
        ref, got = dense(x), compact(x)
    diff = float((ref - got).abs().max())
    scale = float(ref.abs().max()) + 1e-6
    if not diff <= 1e-4 * max(scale, 1.0):
        raise RuntimeError(f"compaction changed the logits by {diff:.3g} (logit scale "
                           f"{scale:.3g}): this is a bug in rsst.compact, please report it")
    rows = layer_rows(dense, compact, plan, spec.input_size)
    params = {"dense": count_params(dense), "compact": count_params(compact)}
    flops = {"dense": sum(count_macs(dense, spec.input_size).values()),
             "compact": sum(count_macs(compact, spec.input_size).values()), "unit": "MAC"}

    structure = {
        "kept": {u["layer"]: {"kind": u["kind"], "total": u["total"], "kept": u["kept"]}
                 for u in plan.units},
        "pruned": {u["layer"]: u["pruned"] for u in plan.units},
        "stayed": {u["layer"]: u["stayed"] for u in plan.units if u["stayed"]},
        "notes": plan.notes,
    }
    out_meta = {k: v for k, v in meta.items() if k.startswith("rsst.")}
    out_meta.update({
        statefile.FORMAT_KEY: str(FORMAT_VERSION),
        statefile.FORM: form,
        statefile.STATE: str(index),
        statefile.STRUCTURE: json.dumps(structure),
        "rsst.params": json.dumps(params),
        "rsst.flops": json.dumps(flops),
        "rsst.compact": json.dumps(plan.to_json()),
        "rsst.check": json.dumps({"max_abs_logit_diff": diff, "logit_scale": scale}),
        "rsst.source": str(source),
    })
    for key, default in ((statefile.METHOD, "unknown"), (statefile.SPARSITY, "{}"),
                         (statefile.CONFIG, "{}")):
        out_meta.setdefault(key, default)
    if form in ("hf", "onnx", "pt2"):
        return _export_other(form, out, index, run_dir, out_meta, dense=dense, compact=compact,
                             state_dict=state_dict, plan=plan, spec=spec, rows=rows,
                             params=params, flops=flops, diff=diff)
    if form == "compact":
        body = compact_sd
    elif form == "timm":
        from rsst.export_timm import stock_compactable, timm_export_body

        shrink = stock_compactable(plan.modules)  # a ViT: written compacted, blocks resized
        body, timm_meta = timm_export_body(compact if shrink else dense,
                                           compact_sd if shrink else state_dict, spec.arch,
                                           spec.num_classes, spec.input_size, spec.mean, spec.std,
                                           narrowed=shrink and any(
                                               v["type"] == "embed" for v in plan.modules.values()))
        out_meta.update(timm_meta)
        out_meta["timm.compacted"] = "true" if shrink else "false"
    else:
        body = dict(state_dict)
        body.update({f"{k}.mask": (v != 0).to(torch.uint8) for k, v in masks.items()})
    # the model card (rsst.model_card): embedded, and written beside the file as FILE.md
    from rsst.model_card import model_card, write_card_beside

    card = model_card(out_meta, statefile.read_state_record(Path(run_dir), index), form=form,
                      export_command=f"rsst export {Path(run_dir)} --state {index} --form {form}"
                      f" -o {out.name}", units=plan.units, params=params, macs=flops)
    out_meta["rsst.model_card"] = card
    size = _safe_write(out, body, out_meta)
    write_card_beside(out, card)
    return ExportResult(out, form, index, rows, plan.notes, params, flops, diff, size)


def _export_other(form: str, out: Path, index: int, run_dir: str | Path, meta: dict[str, str],
                  *, dense: nn.Module, compact: nn.Module, state_dict: dict[str, torch.Tensor],
                  plan: Any, spec: ModelSpec, rows: list[dict[str, Any]], params: dict[str, int],
                  flops: dict[str, Any], diff: float) -> ExportResult:
    """The hf folder or an onnx / pt2 file (each checked by loading it back)."""
    from rsst.model_card import model_card, write_card_beside

    meta = dict(meta, **{"rsst.form": form})
    card = model_card(meta, statefile.read_state_record(Path(run_dir), index), form=form,
                      export_command=f"rsst export {Path(run_dir)} --state {index} --form {form}"
                      f" -o {out.name}", units=plan.units, params=params, macs=flops)
    if form == "hf":
        from rsst.export_hf import write_hf

        check = write_hf(out, dense=dense, compact=compact, state_dict=state_dict,
                         plan_modules=plan.modules, spec=spec, meta=meta, card=card)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    else:
        from rsst.export_graph import write_onnx, write_pt2

        meta["rsst.model_card"] = card
        write = write_onnx if form == "onnx" else write_pt2
        try:
            check = write(out, compact, spec.input_size, meta)
        except OSError as exc:
            raise UserError(f"cannot write {out} ({exc.strerror or exc}); pick a writable -o "
                            "path") from None
        size = out.stat().st_size
        write_card_beside(out, card)
    return ExportResult(out, form, index, rows, plan.notes, params, flops, diff, size, check)


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------


def evaluate_file(path: str | Path, *, dataset: str | None = None, data_dir: str | None = None,
                  split: str = "val", batch_size: int = 256, device: str = "auto",
                  cache_dir: str | None = None) -> dict[str, Any]:
    """Accuracy and mean cross-entropy of an export on a dataset split.

    Without ``dataset`` the run's (from ``rsst.config``) is used; when the dataset is the run's,
    so are its ``val_split`` and ``seed``, so ``split="val"`` is exactly the images the run
    validated on. Without ``data_dir`` the run's data folder is used only when the file's run
    directory vouches for it (`trusted_run_data`); otherwise a dataset read from disk needs
    ``data_dir``. ``split="test"`` (and an explicit ``val/`` folder) is read on its own, without
    the training images.
    """
    from rsst.data import Batches, load_dataset, load_split

    if split not in ("val", "test"):
        raise UserError(f"--split {split!r}: pass val or test")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: pass a positive batch size")
    from rsst.distributed import resolve_device

    dev = resolve_device(device)
    model = load_model(path, dev)
    meta: dict[str, str] = model.rsst_metadata
    try:
        config = json.loads(meta.get(statefile.CONFIG, "{}")) or {}
    except json.JSONDecodeError:
        config = {}
    run_dataset = config.get("dataset")
    name = dataset or run_dataset or "synthetic"
    same = run_dataset is not None and _norm(name) == _norm(run_dataset)
    folder, cache = data_dir, cache_dir
    if same and (data_dir is None or cache_dir is None):
        trusted = trusted_run_data(Path(path), meta, config)
        if data_dir is None and trusted is not None:
            folder = trusted.get("data_dir")
        if cache_dir is None and trusted is not None:
            cache = trusted.get("cache_dir")
        if folder is None and config.get("data_dir") is not None and _norm(name) != "synthetic":
            raise UserError(
                f"{path} names the data folder {config['data_dir']} in its metadata, but the "
                "file is not inside the run directory that trained it, so rsst does not follow "
                f"a path from a model file: pass --data-dir (the {name} folder to evaluate on)")
    held_out = load_split(name, folder, split, cache_dir=cache)
    if held_out is not None:
        data: Any = held_out
        images = held_out.images
    else:
        data = load_dataset(name, folder, seed=int(config.get("seed", 0)) if same else 0,
                            val_split=config.get("val_split") if same else None, cache_dir=cache)
        images = data.val if split == "val" else data.test
    if data.num_classes != model.rsst_num_classes:
        raise UserError(f"dataset {name} has {data.num_classes} classes but the model predicts "
                        f"{model.rsst_num_classes}: pass the --dataset / --data-dir it was "
                        "trained on")
    if tuple(data.input_size) != tuple(model.rsst_input_size):
        raise UserError(f"dataset {name} has {data.input_size[1]}x{data.input_size[2]} images but "
                        f"the model takes {model.rsst_input_size[1]}x{model.rsst_input_size[2]}: "
                        "pass the dataset it was trained on")
    if images is None or len(images) == 0:
        other = "test" if split == "val" else "val"
        raise UserError(f"dataset {name} has no {split} split here: pass --split {other}"
                        + (" or a --val-split when running" if split == "val" else ""))
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in Batches(images, batch_size, device=dev):
            logits = model(x).float()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += int(y.shape[0])
    return {"accuracy": correct / seen, "loss": loss_sum / seen, "n": seen, "split": split,
            "dataset": data.name, "form": meta.get(statefile.FORM, "masked")}


def trusted_run_data(path: Path, meta: dict[str, str],
                     config: dict[str, Any]) -> dict[str, str] | None:
    """The run's ``data_dir`` / ``cache_dir`` when the run directory on disk vouches for them.

    A model file's metadata is whatever its author wrote, so its ``data_dir`` alone would let a
    downloaded file steer `rsst eval` to any folder (and its ``cache_dir`` to write anywhere).
    They are used only when the file is a run's own ``state_XX/weights.safetensors``, or an export
    whose ``rsst.source`` is one, and that run directory's ``config.toml`` names the same dataset
    and data folder; None otherwise.
    """
    candidates = [path]
    if meta.get("rsst.source"):
        candidates.append(Path(meta["rsst.source"]))
    for weights in candidates:
        if weights.name != "weights.safetensors" or not re.fullmatch(r"state_\d+",
                                                                       weights.parent.name):
            continue
        try:
            run = tomllib.loads((weights.parent.parent / "config.toml").read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        run = run.get("run", run)
        if not isinstance(run, dict):
            continue
        if (run.get("data_dir") == config.get("data_dir")
                and _norm(str(run.get("dataset", ""))) == _norm(str(config.get("dataset", "")))):
            return {k: str(run[k]) for k in ("data_dir", "cache_dir") if run.get(k) is not None}
    return None


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace("cifar-", "cifar")


# ---------------------------------------------------------------------------------------------
# the table `rsst export` prints
# ---------------------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def export_table(result: ExportResult) -> Any:
    """A rich table: per layer kept/total units, params and MACs before → after, and a total."""
    from rich.table import Table

    table = Table(title=f"rsst export · state {result.state} · {result.form}")
    table.add_column("layer", overflow="fold")
    for header in ("kept", "pruned", "params", "MACs"):
        table.add_column(header, justify="right", no_wrap=True)
    short = {"channel": "ch", "head": "heads", "neuron": "neur", "embed": "dims"}
    for row in result.rows:
        kept = ("" if row["total"] is None
                else f"{row['kept']}/{row['total']} {short.get(row['kind'], row['kind'])}")
        pruned = "" if row["pruned"] is None else str(row["pruned"])
        table.add_row(row["layer"], kept, pruned,
                      f"{_human(row['params_dense'])} → {_human(row['params_compact'])}",
                      f"{_human(row['macs_dense'])} → {_human(row['macs_compact'])}")
    p, f = result.params, result.flops
    table.add_row("[bold]total[/]", "", "", f"{_human(p['dense'])} → {_human(p['compact'])}",
                  f"{_human(f['dense'])} → {_human(f['compact'])}")
    table.caption = (f"params ×{p['dense'] / max(p['compact'], 1):.2f} smaller, MACs "
                     f"×{f['dense'] / max(f['compact'], 1):.2f} fewer (one input); "
                     "'pruned' = groups dead in the run's masks")
    return table
