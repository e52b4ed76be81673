"""The study file: which runs a study holds, read and checked before anything is written.

```toml
[study]
name = "cifar10-resnet20"      # a label for reports
seeds = [0, 1]                 # or a count: seeds = 2 means [0, 1]

[base]                         # settings of every run: the `rsst run` flags with - → _
dataset = "cifar10"            # (a preset = "NAME" here applies that recipe first)

[grid]                         # every combination of these lists is one experiment
method = ["rsst", "refill"]

[method.rsst]                  # settings for the runs of one method only
reg_granularity = 1.0

[[variant]]                    # the grid is crossed with every variant (none: one, empty)
fillback_rate = 0.0
[[variant]]
fillback_rate = 0.5

[controls]                     # after the runs: controls of each run's ticket (rsst ticket)
kinds = ["reinit", "shuffle"]
state = "last"                 # or a state number
methods = ["rsst", "refill"]   # default: every method of the study

[slurm]                        # --executor slurm: partition, time_min, gpus_per_node,
time_min = 600                 # cpus_per_task, mem_gb, account, qos, constraint
```

Each combination is resolved like ``rsst run`` resolves its flags (defaults ← preset ← base ←
method table ← grid ← variant) and validated; its identity (`rsst.study.identity`) names its
folder. Every mistake is a `UserError` naming the table, the key and the fix.
"""

from __future__ import annotations

import difflib
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from rsst.config import RunConfig, build_config, coerce, field_types
from rsst.errors import UserError
from rsst.study.executors import SLURM_KEYS
from rsst.study.identity import identity_hash, identity_name, identity_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TABLES = ("study", "base", "grid", "method", "variant", "controls", "slurm")
STUDY_KEYS = ("name", "seeds")
#: run settings a study decides itself
STUDY_OWNED = {"seed": "[study] seeds", "out": "rsst study --out"}


@dataclass(frozen=True)
class Experiment:
    """One identity of a study: a resolved config (seed and out unset) and its folder name."""

    name: str
    config: RunConfig
    settings: dict[str, Any]
    hash: str
    #: the keys the grid and the variant set for it (for labels and messages)
    varied: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    name: str
    seeds: list[int]
    experiments: list[Experiment]
    #: [controls]: kinds, state, methods (empty: no controls); [slurm]: submitit options
    controls: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)


def _fail(where: str, message: str) -> UserError:
    return UserError(f"study file {where}: {message}")


def _unknown(where: str, table: str, key: str, valid: list[str]) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return _fail(where, f"[{table}] has unknown key {key!r}: {hint}valid keys are the "
                 "`rsst run` flags with - → _")


def _settings(where: str, table: str, data: Any, *, lists: bool = False) -> dict[str, Any]:
    """A table of run settings, each key known and each value (or list item) of its type."""
    if not isinstance(data, dict):
        raise _fail(where, f"[{table}] must be a table of settings")
    hints = field_types()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in STUDY_OWNED:
            raise _fail(where, f"[{table}] sets {key}: a study sets it through "
                        f"{STUDY_OWNED[key]}; remove {key} from [{table}]")
        if key not in hints:
            raise _unknown(where, table, key, list(hints))
        if key == "preset" and table != "base":
            raise _fail(where, f"[{table}] sets preset: a preset is the starting recipe of "
                        "every run; set it in [base]")
        values = value if lists else [value]
        if lists and (not isinstance(value, list) or not value):
            what = "an empty list gives no runs" if value == [] else "it must be a list"
            raise _fail(where, f"[grid] {key} = {value!r}: {what}; give a list of one or more "
                        f"values, e.g. {key} = [{_example(key)}]")
        try:
            checked = [coerce(key, v, hints[key]) for v in values]
        except TypeError as exc:
            raise _fail(where, f"[{table}] {exc}") from None
        out[key] = checked if lists else checked[0]
    return out


def _example(key: str) -> str:
    default = getattr(RunConfig(), key)
    return repr(default) if not isinstance(default, str) else f'"{default}"'


def _seeds(where: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _fail(where, f"[study] seeds = {value}: give a count ≥ 1 or a list such as "
                        "[0, 1]")
        return list(range(value))
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                       for s in value)):
        raise _fail(where, f"[study] seeds = {value!r}: give a list of seeds ≥ 0, e.g. [0, 1], "
                    "or a count, e.g. 2")
    if len(set(value)) != len(value):
        raise _fail(where, f"[study] seeds = {value!r} repeats a seed; list each once")
    return list(value)


def read_study(path: str | Path) -> Study:
    """Parse, resolve and validate a study file; nothing is written."""
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"study file {path} does not exist; pass a study .toml (see studies/)"
                        ) from None
    except IsADirectoryError:
        raise UserError(f"study file {path} is a directory; pass the .toml file") from None
    except OSError as exc:
        raise UserError(f"study file {path} cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"study file {path} is not valid TOML ({exc}); fix it") from None
    return parse_study(data, where)


def parse_study(data: dict[str, Any], where: str = "<study>") -> Study:
    for table in data:
        if table not in TABLES:
            raise _fail(where, f"unknown table [{table}]: use "
                        + ", ".join(f"[{t}]" for t in TABLES))
    head = data.get("study", {})
    if not isinstance(head, dict):
        raise _fail(where, "[study] must be a table with name and seeds")
    for key in head:
        if key not in STUDY_KEYS:
            raise _fail(where, f"[study] has unknown key {key!r}: valid keys are "
                        f"{', '.join(STUDY_KEYS)}")
    if "seeds" not in head:
        raise _fail(where, "[study] has no seeds: add seeds = [0, 1] (or a count, seeds = 2)")
    seeds = _seeds(where, head["seeds"])
    name = head.get("name", Path(where).stem)
    if not isinstance(name, str):
        raise _fail(where, f"[study] name = {name!r}: give a string")
    base = _settings(where, "base", data.get("base", {}))
    grid = _settings(where, "grid", data.get("grid", {}), lists=True)
    per_method = data.get("method", {})
    if not isinstance(per_method, dict):
        raise _fail(where, "[method] must hold one table per method, e.g. [method.rsst]")
    method_tables = {m: _settings(where, f"method.{m}", t) for m, t in per_method.items()}
    variants_raw = data.get("variant", [{}])
    if not isinstance(variants_raw, list) or not variants_raw:
        raise _fail(where, "variant must be an array of tables: write [[variant]] per variant")
    variants = [_settings(where, f"variant {i + 1}", v) for i, v in enumerate(variants_raw)]
    for name_, value in (("controls", data.get("controls", {})),
                         ("slurm", data.get("slurm", {}))):
        if not isinstance(value, dict):
            raise _fail(where, f"[{name_}] must be a table")
    for key in data.get("slurm", {}):
        if key not in SLURM_KEYS:
            raise _fail(where, f"[slurm] has unknown key {key!r}: valid keys are "
                        f"{', '.join(SLURM_KEYS)}")

    experiments = _expand(where, base, grid, method_tables, variants)
    return Study(name=name, seeds=seeds, experiments=experiments,
                 controls=_controls(where, data.get("controls", {}), experiments),
                 slurm=dict(data.get("slurm", {})), base=base)


def _controls(where: str, raw: dict[str, Any], experiments: list[Experiment]
              ) -> dict[str, Any]:
    """[controls]: kinds (reinit, shuffle), state (a number or "last"), methods (default all)."""
    from rsst.controls import CONTROLS

    if not raw:
        return {}
    for key in raw:
        if key not in ("kinds", "state", "methods"):
            raise _fail(where, f"[controls] has unknown key {key!r}: valid keys are kinds, "
                        "state, methods")
    kinds = raw.get("kinds", list(CONTROLS))
    if (not isinstance(kinds, list) or not kinds
            or not all(isinstance(k, str) and k in CONTROLS for k in kinds)):
        raise _fail(where, f"[controls] kinds = {kinds!r}: give a list of "
                    f"{' and/or '.join(CONTROLS)}, e.g. kinds = [\"reinit\", \"shuffle\"]")
    state = raw.get("state", "last")
    if not (state == "last" or (isinstance(state, int) and not isinstance(state, bool)
                                and state >= 0)):
        raise _fail(where, f"[controls] state = {state!r}: give a state number ≥ 0 or \"last\"")
    used = [e.config.method for e in experiments]
    methods = raw.get("methods", sorted(set(used), key=used.index))
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise _fail(where, f"[controls] methods = {methods!r}: give a list of method names")
    for method in methods:
        if method not in used:
            raise _fail(where, f"[controls] methods names {method!r}, which no run of the study "
                        f"uses ({', '.join(sorted(set(used)))}); remove it")
    if isinstance(state, int):
        for exp in experiments:
            if exp.config.method in methods and state >= exp.config.states:
                raise _fail(where, f"[controls] state = {state}: run {exp.name} has "
                            f"{exp.config.states} states (0 to {exp.config.states - 1}); give "
                            "one of those or \"last\"")
    return {"kinds": kinds, "state": state, "methods": methods}


def _expand(where: str, base: dict[str, Any], grid: dict[str, list[Any]],
            method_tables: dict[str, dict[str, Any]], variants: list[dict[str, Any]]
            ) -> list[Experiment]:
    preset = base.get("preset")
    keys = list(grid)
    experiments: list[Experiment] = []
    seen: dict[str, dict[str, Any]] = {}
    used_methods: set[str] = set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        for variant in variants:
            varied = {**dict(zip(keys, combo, strict=True)), **variant}
            method = varied.get("method", base.get("method", RunConfig().method))
            used_methods.add(method)
            overrides = {**base, **method_tables.get(method, {}), **varied}
            overrides.pop("preset", None)
            label = _label(method, varied)
            try:
                config = build_config(preset=preset, overrides=overrides)
            except UserError as exc:
                raise _fail(where, f"run {label}: {exc}") from None
            hash_ = identity_hash(config)
            name = identity_name(config)
            if name in seen:
                raise _fail(where, f"runs {_label(method, seen[name])} and {label} are the same "
                            "experiment (identical settings); drop one of them")
            seen[name] = varied
            experiments.append(Experiment(name=name, config=config,
                                          settings=identity_settings(config), hash=hash_,
                                          varied=varied))
    unused = sorted(set(method_tables) - used_methods)
    if unused:
        raise _fail(where, f"[method.{unused[0]}] applies to no run (the runs use "
                    f"{', '.join(sorted(used_methods))}); add {unused[0]} to [grid] method or "
                    "remove the table")
    return experiments


def _label(method: str, varied: dict[str, Any]) -> str:
    rest = " ".join(f"{k}={v}" for k, v in varied.items() if k != "method")
    return f"{method} {rest}".strip()


def resolved_study_toml(study: Study) -> str:
    """The study as a study file that names every experiment explicitly (one [[variant]] per
    identity, settings that differ from the defaults), so ``rsst study DIR/study.toml`` reruns
    exactly these runs. Written by tomli-w, so any Unicode value round-trips."""
    document: dict[str, Any] = {"study": {"name": study.name, "seeds": list(study.seeds)}}
    extra = {k: v for k, v in study.base.items() if k == "cache_dir"}
    if extra:
        document["base"] = extra
    for table in ("controls", "slurm"):
        values = getattr(study, table)
        if values:
            document[table] = dict(values)
    if study.experiments:
        document["variant"] = [dict(exp.settings) for exp in study.experiments]
    header = "# the resolved study written by `rsst study`: one [[variant]] per experiment\n"
    return header + tomli_w.dumps(document)


__all__ = ["Experiment", "Study", "parse_study", "read_study", "resolved_study_toml"]
