"""The study file: which runs a study holds, read and checked before anything is written.

```toml
name = "cifar10-resnet20"      # a label for reports
[base]                         # settings of every run: the `rsst run` flags with - → _
preset = "cifar10-resnet20"    # (a preset applies that recipe first)
data_dir = "~/data/cifar10"
[grid]                         # lists expand as a cartesian product; seed gives replicates
method = ["rsst", "refill", "imp"]
seed = [0, 1, 2]
[[variants]]                   # optional: more runs, each crossed with [grid]; lists expand too
method = "snip"
target_remain = [0.5, 0.2, 0.1]
controls = ["reinit", "shuffle"]   # optional: controls of every state ≥ 1 of these runs
```
The study runs the grid's combinations and, per ``[[variants]]`` entry, the grid crossed with
that entry (its settings replace the grid's); combinations that resolve to the same settings are
one experiment. Without ``seed`` in [grid] every experiment runs with seed 0.

An older spelling is accepted too (one study file uses one spelling, never both): a ``[study]``
table (``name``, ``seeds = [0, 1]`` or a count), ``[[variant]]`` tables that *replace* the plain
grid (the grid is crossed with every variant), ``[method.NAME]`` tables of settings for one
method's runs, a ``[controls]`` table (``kinds``, ``state`` a number or "last", ``methods``) and a
``[slurm]`` table (partition, time_min, gpus_per_node, gpus_per_run, cpus_per_task, mem_gb,
account, qos, constraint), also allowed beside the issue's spelling.

Each combination is resolved like ``rsst run`` resolves its flags (defaults ← preset ← base ←
method table ← grid ← variant) and validated; its identity (`rsst.study.identity`) names its
folder. Every mistake is a `UserError` naming the table, the key and the fix.
"""

from __future__ import annotations

import dataclasses
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

TABLES = ("study", "base", "grid", "method", "variants", "variant", "controls", "slurm")
#: keys of the file's top level that are no table
TOP_KEYS = ("name",)
STUDY_KEYS = ("name", "seeds")
#: run settings a study decides itself
STUDY_OWNED = {"seed": "[grid] seed = [0, 1]", "out": "rsst study --out"}


@dataclass(frozen=True)
class Experiment:
    """One identity of a study: a resolved config (seed and out unset) and its folder name."""

    name: str
    config: RunConfig
    settings: dict[str, Any]
    hash: str
    #: the keys the grid and the variant set for it (for labels and messages)
    varied: dict[str, Any] = field(default_factory=dict)
    #: controls (reinit, shuffle) to run for every ticket of each of its runs
    controls: tuple[str, ...] = ()

    @property
    def ticket_states(self) -> list[int]:
        """The states a variant's controls test: every state ≥ 1 (state 0 is dense); a
        one-state run (a one-shot baseline pruned at initialization) its state 0."""
        return list(range(1, self.config.states)) if self.config.states > 1 else [0]


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


def _is_list_setting(key: str) -> bool:
    return "list" in str(field_types()[key])


def _settings(where: str, table: str, data: Any, *, lists: str = "no") -> dict[str, Any]:
    """A table of run settings, each key known and each value (or list item) of its type.

    ``lists``: "no" (one value per key), "yes" (every value a list of values: [grid]) or
    "maybe" (a list is a list of values, except a single value of a list setting such as
    milestones: [[variants]]); with "yes" and "maybe" every value comes back as a list."""
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
        if lists == "yes" and (not isinstance(value, list) or not value):
            what = "an empty list gives no runs" if value == [] else "it must be a list"
            raise _fail(where, f"[{table}] {key} = {value!r}: {what}; give a list of one or "
                        f"more values, e.g. {key} = [{_example(key)}]")
        expand = lists == "yes" or (lists == "maybe" and isinstance(value, list) and (
            not _is_list_setting(key) or (bool(value) and isinstance(value[0], list))))
        if expand and value == []:
            raise _fail(where, f"[{table}] {key} = []: an empty list gives no runs; give one "
                        f"value or a list of values, e.g. {key} = [{_example(key)}]")
        values = value if expand else [value]
        try:
            checked = [coerce(key, v, hints[key]) for v in values]
        except TypeError as exc:
            raise _fail(where, f"[{table}] {exc}") from None
        out[key] = checked if lists != "no" else checked[0]
    return out


def _example(key: str) -> str:
    default = getattr(RunConfig(), key)
    return repr(default) if not isinstance(default, str) else f'"{default}"'


def _seeds(where: str, value: Any, key: str = "[study] seeds") -> list[int]:
    count_ok = key == "[study] seeds"
    if count_ok and isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _fail(where, f"{key} = {value}: give a count ≥ 1 or a list such as [0, 1]")
        return list(range(value))
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                       for s in value)):
        raise _fail(where, f"{key} = {value!r}: give a list of seeds ≥ 0, e.g. [0, 1]"
                    + (", or a count, e.g. 2" if count_ok else ""))
    if len(set(value)) != len(value):
        raise _fail(where, f"{key} = {value!r} repeats a seed; list each once")
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


def _check_top(where: str, data: dict[str, Any]) -> None:
    for key, value in data.items():
        if key in TOP_KEYS:
            continue
        if key not in TABLES:
            what = f"table [{key}]" if isinstance(value, dict | list) else f"key {key!r}"
            raise _fail(where, f"unknown {what}: the top level holds name = \"...\" "
                        "and the tables " + ", ".join(f"[{t}]" for t in TABLES))
    if "variant" in data and "variants" in data:
        raise _fail(where, "both [[variants]] and [[variant]]: write every variant as "
                    "[[variants]]")
    if "name" in data and isinstance(data.get("study"), dict) and "name" in data["study"]:
        raise _fail(where, "name is given twice (top level and [study]); keep the top-level "
                    "name")
    if "name" in data and not isinstance(data["name"], str):
        raise _fail(where, f"name = {data['name']!r}: give a string, e.g. name = \"my-study\"")


def _study_seeds(where: str, head: dict[str, Any], grid_seed: Any) -> list[int]:
    if grid_seed is not None and "seeds" in head:
        raise _fail(where, "seeds are given twice ([grid] seed and [study] seeds); keep "
                    "[grid] seed")
    if grid_seed is not None:
        return _seeds(where, grid_seed, "[grid] seed")
    if "seeds" in head:
        return _seeds(where, head["seeds"])
    return [RunConfig().seed]


def _control_kinds(where: str, table: str, value: Any) -> tuple[str, ...]:
    from rsst.controls import CONTROLS

    if (not isinstance(value, list) or not value
            or not all(isinstance(k, str) and k in CONTROLS for k in value)):
        raise _fail(where, f"[{table}] controls = {value!r}: give a list of "
                    f"{' and/or '.join(CONTROLS)}, e.g. controls = [\"reinit\", \"shuffle\"]")
    return tuple(dict.fromkeys(value))


def _variants(where: str, data: dict[str, Any]
              ) -> tuple[list[tuple[dict[str, Any], tuple[str, ...]]], bool]:
    """The variants, lists expanded, each with its controls; and whether the grid runs alone
    too ([[variants]] add runs to the grid's; the older [[variant]] replace them)."""
    plural = "variants" in data
    key = "variants" if plural else "variant"
    raw = data.get(key, [] if plural else [{}])
    if not isinstance(raw, list) or not raw or not all(isinstance(v, dict) for v in raw):
        raise _fail(where, f"{key} must be an array of tables: write [[{key}]] above each "
                    "variant's settings")
    out: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    for i, variant in enumerate(raw):
        table = f"{key} {i + 1}"
        variant = dict(variant)
        kinds = (_control_kinds(where, table, variant.pop("controls"))
                 if "controls" in variant else ())
        settings = _settings(where, table, variant, lists="maybe")
        names = list(settings)
        for combo in itertools.product(*(settings[k] for k in names)):
            out.append((dict(zip(names, combo, strict=True)), kinds))
    return out, plural


def parse_study(data: dict[str, Any], where: str = "<study>") -> Study:
    _check_top(where, data)
    head = data.get("study", {})
    if not isinstance(head, dict):
        raise _fail(where, "[study] must be a table with name and seeds")
    for key in head:
        if key not in STUDY_KEYS:
            raise _fail(where, f"[study] has unknown key {key!r}: valid keys are "
                        f"{', '.join(STUDY_KEYS)}")
    grid_raw = data.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise _fail(where, "[grid] must be a table of lists, e.g. method = [\"rsst\", \"imp\"]")
    grid_raw = dict(grid_raw)
    seeds = _study_seeds(where, head, grid_raw.pop("seed", None))
    name = data.get("name", head.get("name", Path(where).stem))
    if not isinstance(name, str):
        raise _fail(where, f"[study] name = {name!r}: give a string")
    base = _settings(where, "base", data.get("base", {}))
    grid = _settings(where, "grid", grid_raw, lists="yes")
    per_method = data.get("method", {})
    if not isinstance(per_method, dict):
        raise _fail(where, "[method] must hold one table per method, e.g. [method.rsst]")
    method_tables = {m: _settings(where, f"method.{m}", t) for m, t in per_method.items()}
    variants, plural = _variants(where, data)
    for name_, value in (("controls", data.get("controls", {})),
                         ("slurm", data.get("slurm", {}))):
        if not isinstance(value, dict):
            raise _fail(where, f"[{name_}] must be a table")
    for key in data.get("slurm", {}):
        if key not in SLURM_KEYS:
            raise _fail(where, f"[slurm] has unknown key {key!r}: valid keys are "
                        f"{', '.join(SLURM_KEYS)}")

    experiments = _expand(where, base, grid, method_tables, variants, plural)
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
            method_tables: dict[str, dict[str, Any]],
            variants: list[tuple[dict[str, Any], tuple[str, ...]]], plural: bool
            ) -> list[Experiment]:
    """The experiments: with [[variants]] (``plural``) the grid alone, then the grid crossed
    with each variant, equal results merged (their controls joined); with [[variant]] the grid
    crossed with each variant, and two equal ones are a mistake."""
    preset = base.get("preset")
    keys = list(grid)
    experiments: list[Experiment] = []
    seen: dict[str, int] = {}
    used_methods: set[str] = set()
    combos = [dict(zip(keys, combo, strict=True))
              for combo in itertools.product(*(grid[k] for k in keys))]
    order = ([(c, ({}, ())) for c in combos] if plural else []) + [
        (c, v) for c in combos for v in variants]
    for combo, (variant, kinds) in order:
        varied = {**combo, **variant}
        method = varied.get("method", base.get("method", RunConfig().method))
        used_methods.add(method)
        overrides = {**base, **method_tables.get(method, {}), **varied}
        overrides.pop("preset", None)
        label = _label(method, varied)
        try:
            config = build_config(preset=preset, overrides=overrides)
        except UserError as exc:
            raise _fail(where, f"run {label}: {exc}") from None
        name = identity_name(config)
        if name in seen:
            first = experiments[seen[name]]
            if not plural:
                raise _fail(where, f"runs {_label(method, first.varied)} and {label} are the "
                            "same experiment (identical settings); drop one of them")
            joined = tuple(dict.fromkeys(first.controls + kinds))
            experiments[seen[name]] = dataclasses.replace(first, controls=joined)
            continue
        seen[name] = len(experiments)
        experiments.append(Experiment(name=name, config=config,
                                      settings=identity_settings(config),
                                      hash=identity_hash(config), varied=varied,
                                      controls=kinds))
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
    identity, settings that differ from the defaults, its controls), so
    ``rsst study DIR/study.toml`` reruns exactly these runs. Written by tomli-w, so any Unicode
    value round-trips."""
    document: dict[str, Any] = {"study": {"name": study.name, "seeds": list(study.seeds)}}
    extra = {k: v for k, v in study.base.items() if k == "cache_dir"}
    if extra:
        document["base"] = extra
    for table in ("controls", "slurm"):
        values = getattr(study, table)
        if values:
            document[table] = dict(values)
    variants = []
    for exp in study.experiments:
        variant = dict(exp.settings)
        if exp.controls:
            variant["controls"] = list(exp.controls)
        variants.append(variant)
    if variants:
        document["variant"] = variants
    header = "# the resolved study written by `rsst study`: one [[variant]] per experiment\n"
    return header + tomli_w.dumps(document)


__all__ = ["Experiment", "Study", "parse_study", "read_study", "resolved_study_toml"]
