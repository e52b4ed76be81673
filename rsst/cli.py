"""The ``rsst`` command line: parsing and pretty errors only; the work lives in the library."""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.2x runs on its own copy of click, older typer on click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, UsageError

from rsst import __version__
from rsst.config import PANELS, RunConfig, Setting, field_types
from rsst.errors import UserError, is_shown

#: Width of output that goes to a pipe or a file: wide enough that no table cell is cut.
LOG_WIDTH = 200


def make_console(*, stderr: bool = False) -> Console:
    """A rich console that, off a terminal and without $COLUMNS, is LOG_WIDTH wide.

    Rich falls back to 80 columns when the output is not a terminal and then shortens table
    cells to ``100.…``; a log or a pipe must keep every number whole.
    """
    probe = Console(stderr=stderr)
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(stderr=stderr, width=LOG_WIDTH)


def _shown_type(metavar: str | None) -> Callable[[Any], str | None]:
    return lambda ctx: metavar


class _NoBoolMetavar:
    """Flags (``--x/--no-x``, ``--help``) take no value, so help shows no ``<bool>`` for them;
    an option's own metavar (``--milestones EPOCH,EPOCH``) is shown instead of its type."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            if param.metavar is not None and hasattr(param, "display_type_rich"):
                param.display_type_rich = _shown_type(param.metavar or None)
        return params


class RsstGroup(_NoBoolMetavar, TyperGroup):
    pass


class RsstCommand(_NoBoolMetavar, TyperCommand):
    pass


app = typer.Typer(
    name="rsst",
    help="Structured lottery-ticket pruning (RSST, Refill, IMP and baselines) for image "
    "classifiers, with a fused Triton update.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    cls=RsstGroup,
)
console = make_console()
err_console = make_console(stderr=True)


class Suite(str, Enum):
    update = "update"
    step = "step"
    train = "train"
    inference = "inference"
    all = "all"


class BenchDevice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _version(value: bool) -> None:
    if value:
        console.print(f"rsst {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Structured lottery-ticket pruning for image classifiers."""


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command(
    cls=RsstCommand,
    epilog="Examples:\n\n"
    "  rsst bench --suite update                       # per-step update, every backend\n\n"
    "  rsst bench --suite update --device cuda --json-out update.json\n\n"
    "  rsst bench --suite update --models resnet20,vit_small --quick\n\n"
    "  rsst bench --suite step --device cuda --plot step.png   # RSST overhead over dense\n\n"
    "  rsst bench --suite all --device cpu --json > bench_cpu.json   # tables go to stderr",
)
def bench(
    suite: Suite = typer.Option(Suite.update, help="Which suite to run."),
    device: BenchDevice = typer.Option(BenchDevice.auto, help="Device to time on."),
    models: str = typer.Option(
        "", help="Comma-separated models (default: resnet20,resnet18,vit_tiny,vit_small; the "
        "update suite adds vit_base on CUDA)."
    ),
    model: Path | None = typer.Option(None, "--model", help="inference suite: an export "
                                      "(.safetensors) or a run directory to time dense vs "
                                      "compact."),
    json_stdout: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout "
                                     "(the tables go to stderr)."),
    json_path: Path | None = typer.Option(None, "--json-out", help="Also write the results as "
                                          "JSON to this file."),
    plot: Path | None = typer.Option(None, help="Write a bar chart (PNG; needs matplotlib)."),
    quick: bool = typer.Option(False, help="Fewer repeats, for a smoke test."),
) -> None:
    """Time the pruning work side by side: fused Triton kernel vs torch vs eager vs the
    research code's per-layer loop ("seed"). Reports ms per step, achieved GB/s and ratios;
    `step` times whole training steps against dense training, `train` the real engine's
    epoch throughput with and without torch.compile."""
    from rsst.loop import resolve_device
    from rsst_bench import SUITES, run_suites

    chosen = list(SUITES) if suite is Suite.all else [suite.value]
    if plot is not None and "step" not in chosen:
        _fail("--plot draws the step suite: add --suite step or --suite all")
    model_list = [m.strip() for m in models.split(",") if m.strip()] or None
    if model is not None:
        if chosen != ["inference"]:
            _fail("--model is for --suite inference; add --suite inference")
        if not model.exists():
            _fail(f"--model {model} does not exist: pass an export file or a run directory")
        model_list = [str(model), *(model_list or [])]
    doc = run_suites(chosen, resolve_device(device.value), models=model_list,
                     json_path=json_path, console=err_console if json_stdout else console,
                     quick=quick, plot_path=plot)
    if json_stdout:
        from rsst_bench.common import json_document

        print(json_document(doc["env"], doc["results"]), end="")


RUN_EPILOG = """Examples:

  rsst run                                      # RSST on resnet20, synthetic data, 3 states

  rsst run --method refill --dataset cifar10 --data-dir ~/data/cifar10 --train-subset 5000

  rsst run --preset cifar10-resnet20 --data-dir ~/data/cifar10   # Structure-LTH recipe

  rsst run --config runs/old/config.toml --lr 0.05              # rerun with one change

  rsst run --resume runs/rsst-resnet20-synthetic-20261123-120000
"""


#: Fields the `run` command handles itself rather than as config overrides.
_RUN_SPECIAL = ("out", "preset")
_RUN_PANEL = "Run directory"
#: Longer choice lists would be folded mid-name in the type column of the help.
_LONGEST_CHOICE_COLUMN = 40


def _choice_enum(name: str, choices: Sequence[str]) -> type[Enum]:
    """A str Enum of the choices: typer turns it into a ``click.Choice`` (help and completion)."""
    return Enum(f"{name.title().replace('_', '')}Choice", {c: c for c in choices}, type=str)


def _option_help(meta: Setting) -> str:
    span = meta.range_text()
    if not span:
        return meta.help
    return f"{meta.help.rstrip('.')}; {'in ' if span[0] in '([' else ''}{span}."


def _config_option(f: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    """The `rsst run` option of one `RunConfig` field, built from its `Setting`."""
    meta: Setting = f.metadata["setting"]
    default = f.default if f.default is not dataclasses.MISSING else None
    flag = "--" + f.name.replace("_", "-")
    kwargs: dict[str, Any] = dict(help=_option_help(meta), rich_help_panel=meta.panel)
    if default is None and meta.shown_default is not None:
        kwargs["show_default"] = meta.shown_default
    choices = meta.choice_list()
    optional = type(None) in typing.get_args(annotation)
    base = next(a for a in typing.get_args(annotation) if a is not type(None)) if optional \
        else annotation
    if choices is not None:
        kind: Any = _choice_enum(f.name, choices)
        default = None if default is None else kind(default)
        decls = [flag]
        if len("|".join(choices)) > _LONGEST_CHOICE_COLUMN:  # listed in the help, which wraps
            kwargs["metavar"] = f"<{f.name}>"
            kwargs["help"] += " One of: " + ", ".join(choices) + "."
    elif base is bool:
        kind, decls = bool, [f"{flag}/--no-{flag[2:]}"]
    elif typing.get_origin(base) is list:  # milestones: "80,120"
        kind, decls = str, [flag]
        kwargs["metavar"] = "EPOCH,EPOCH"
    else:
        kind, decls = base, [flag]
    option = typer.Option(default, *decls, **kwargs)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind if default is not None else kind | None)


def _run_parameters() -> list[inspect.Parameter]:
    """One option per `RunConfig` field plus --config, --resume and --overwrite, ordered by
    help panel (`PANELS`) so ``--help`` shows the panels in that order."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    hints = field_types()
    options = [(_RUN_PANEL, inspect.Parameter("config", keyword, annotation=Path | None,
                                              default=typer.Option(
        None, "--config", help="A config.toml (from a run dir); flags given beside it override "
        "it.", rich_help_panel=_RUN_PANEL, dir_okay=False, show_default="none")))]
    options += [(f.metadata["setting"].panel, _config_option(f, hints[f.name]))
                for f in dataclasses.fields(RunConfig)]
    options += [
        (_RUN_PANEL, inspect.Parameter("resume", keyword, annotation=Path | None,
                                       default=typer.Option(
            None, help="Continue the run in this directory.", rich_help_panel=_RUN_PANEL,
            show_default="none"))),
        (_RUN_PANEL, inspect.Parameter("overwrite", keyword, annotation=bool,
                                       default=typer.Option(
            False, help="Replace an existing run directory.", rich_help_panel=_RUN_PANEL))),
        *((_RUN_PANEL, p) for p in _logger_parameters()),
    ]
    options.sort(key=lambda item: PANELS.index(item[0]))  # stable: field order within a panel
    ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                            annotation=typer.Context)
    return [ctx, *(param for _, param in options)]


def _logger_parameters() -> list[inspect.Parameter]:
    """--logger (repeatable) and the W&B names: run options that are not config fields."""
    keyword = inspect.Parameter.KEYWORD_ONLY

    def option(name: str, annotation: Any, *decls: str, **kw: Any) -> inspect.Parameter:
        return inspect.Parameter(name, keyword, annotation=annotation, default=typer.Option(
            None, *decls, rich_help_panel=_RUN_PANEL, show_default="none", **kw))

    return [
        option("logger", list[str] | None, "--logger", help="Also log to tensorboard | wandb | "
               "csv (repeatable; extras rsst\\[tensorboard], rsst\\[wandb])."),
        option("wandb_project", str | None, "--wandb-project", help="W&B project (default "
               "rsst)."),
        option("wandb_entity", str | None, "--wandb-entity", help="W&B entity (team or user)."),
        option("wandb_name", str | None, "--wandb-name", help="W&B run name (default: the run "
               "directory's name)."),
    ]


def _parse_milestones(text: str) -> list[int]:
    try:
        return [int(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise UserError(f"--milestones {text!r}: give comma-separated epochs, e.g. 80,120"
                        ) from None


def _given_overrides(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The config fields whose flag was given on the command line (defaults do not count)."""
    given: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        source = ctx.get_parameter_source(f.name)
        if f.name in _RUN_SPECIAL or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = values[f.name]
        if isinstance(value, Enum):
            value = value.value
        if f.name == "milestones" and value is not None:
            value = _parse_milestones(value)
        given[f.name] = value
    return given


def _run(ctx: typer.Context, **values: Any) -> None:
    """Run a pruning method (RSST, Refill, IMP or a baseline) and write a run directory.

    Each state trains, evaluates, prunes the lowest-scoring weights globally (--rate, or at once
    to --target-remain for the one-shot baselines) and, unless --structure none, regroups them
    into whole channels / heads / neurons (--criteria). RSST fades the weights it will drop with a
    growing L2 penalty (--schedule, --reg-granularity) before cutting. --method lists them all.
    Settings layer as defaults ← --config file ← --preset ← flags given here.
    """
    from rsst.config import build_config
    from rsst.loop import run as run_loop

    given = _given_overrides(ctx, values)
    config, resume, out = values["config"], values["resume"], values["out"]
    preset = values["preset"].value if values["preset"] is not None else None
    logging = {"loggers": values["logger"] or [], "logger_options": {
        k: values[k] for k in ("wandb_project", "wandb_entity", "wandb_name")}}
    if resume is not None:
        if given or config is not None or preset is not None:
            _fail("--resume continues a run with its saved config.toml; drop the other flags")
        run_loop(build_config(overrides={}), resume=resume, console=console, **logging)
        return
    run_config = build_config(config_file=config, preset=preset, overrides=given)
    run_loop(run_config, out=Path(out) if out is not None else None,
             overwrite=values["overwrite"], console=console, **logging)


def _with_signature(fn: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give ``fn(**values)`` the signature typer reads its options from."""
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return fn


run = app.command(name="run", cls=RsstCommand, epilog=RUN_EPILOG)(
    _with_signature(_run, _run_parameters()))


@app.command(
    cls=RsstCommand,
    epilog="Examples:\n\n"
    "  rsst export runs/my-run --state last --compact -o model.safetensors\n\n"
    "  rsst export runs/my-run --state best --masked -o masked.safetensors\n\n"
    "  rsst export runs/my-vit --form timm -o vit.safetensors   # loads with timm alone",
)
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `rsst run`."),
    out: Path = typer.Option(..., "-o", "--out", help="The .safetensors file to write."),
    state: str = typer.Option("last", help="Which state: a number, last, or best (highest val "
                              "accuracy)."),
    compact: bool = typer.Option(True, "--compact/--masked", help="Physically remove pruned "
                                 "channels/heads/neurons, or keep dense shapes plus masks."),
    form: str | None = typer.Option(None, help="masked | compact | timm (stock timm keys and "
                                    "create_model arguments: loads without rsst; ViTs and "
                                    "timm:<name>). Overrides --compact/--masked."),
) -> None:
    """Export a pruned state as safetensors (masked or physically compacted).

    Prints kept/total units, params and MACs per layer; load with rsst.load(FILE).
    """
    from rsst.export import export_model, export_table

    chosen = form or ("compact" if compact else "masked")
    result = export_model(run_dir, out, state=state, form=chosen)
    console.print(export_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if chosen == "timm":
        console.print("load without rsst: see the file's timm.usage metadata or README "
                      "(Export and eval)", highlight=False)
    elif result.params["compact"] == result.params["dense"]:
        console.print("[yellow]note:[/] nothing was removable: compaction needs whole channels/"
                      "heads/neurons pruned with their BatchNorm γ/β or biases zeroed (refill/"
                      "rsst); imp prunes single weights, so its export stays dense")
    console.print(f"wrote {result.path} ({result.file_bytes / 1e6:.2f} MB, {result.form}, state "
                  f"{result.state}; compact vs masked max |Δlogit| {result.max_abs_diff:.2g})")


@app.command(
    name="eval",
    cls=RsstCommand,
    epilog="Examples:\n\n  rsst eval model.safetensors --dataset cifar10 --data-dir ~/data/cifar10",
)
def evaluate(
    file: Path = typer.Argument(..., help="A .safetensors file from `rsst export` (or a run's "
                                "state_XX/weights.safetensors)."),
    dataset: str | None = typer.Option(None, help="Dataset (default: the run's, from the "
                                       "file's metadata)."),
    data_dir: str | None = typer.Option(None, help="Dataset folder (default: the run's)."),
    split: str = typer.Option("val", help="val (the run's own val split) | test."),
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    device: BenchDevice = typer.Option(BenchDevice.auto, help="Device to evaluate on."),
    cache_dir: str | None = typer.Option(None, help="Where decoded images are cached."),
    json_out: bool = typer.Option(False, "--json", help='Print {"accuracy", "loss", "n"} as '
                                  "JSON only."),
) -> None:
    """Accuracy and loss of an exported model on a dataset."""
    from rsst.atomic import json_text
    from rsst.export import evaluate_file

    result = evaluate_file(file, dataset=dataset, data_dir=data_dir, split=split,
                           batch_size=batch_size, device=device.value, cache_dir=cache_dir)
    if json_out:
        print(json_text({k: result[k] for k in ("accuracy", "loss", "n")}))
        return
    console.print(f"{file} ({result['form']}) on {result['dataset']} {result['split']}: "
                  f"accuracy {100 * result['accuracy']:.2f} %, loss {result['loss']:.4f}, "
                  f"n = {result['n']}", highlight=False)


@app.command(
    cls=RsstCommand,
    epilog="Examples:\n\n"
    "  rsst compare runs/*                                # every run under runs/\n\n"
    "  rsst compare runs/rsst-* runs/refill-* --x macs --plot compare.png\n\n"
    "  rsst compare runs --metric val_after_cut --json > compare.json",
)
def compare(
    run_dirs: list[str] = typer.Argument(..., help="Run directories, globs, folders "
                                         "holding runs, or study directories."),
    x: str = typer.Option("remain", "--x", help="x axis: remain (fraction of weights alive) | "
                          "sparsity (groups removed) | macs | params (compacted, vs dense)."),
    metric: str = typer.Option("val", help="val | test | val_after_cut (the network each "
                               "state delivers; RSST states otherwise show before and after "
                               "the cut)."),
    plot: Path | None = typer.Option(None, help="Write the accuracy-vs-sparsity plot here "
                                     "(.png or .svg; needs rsst\\[plot])."),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON only."),
    json_path: Path | None = typer.Option(None, "--json-out", help="Also write the comparison "
                                          "as JSON to this file."),
    force: bool = typer.Option(False, help="Compare runs on different datasets anyway."),
) -> None:
    """Accuracy against sparsity across runs, grouped by run identity: only runs that differ in
    their seed alone are pooled (mean ± std, n, 95 % interval); groups of one method are labelled
    by the settings that differ. Each group's winning ticket: its sparsest state within 0.5
    point of dense. A study directory (rsst study --out) stands for its runs and controls."""
    from rich.markup import escape

    from rsst.compare import compare_runs, comparison_tables, find_runs, to_json
    from rsst.plots import check_plot_path, plot_comparison, pyplot

    if plot is not None:
        check_plot_path(plot)
        pyplot()  # a missing extra fails before any work
    runs = find_runs(run_dirs, warn=lambda line: err_console.print(
        f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True))
    result = compare_runs(runs, x=x, metric=metric, force=force)
    if plot is not None:
        plot_comparison(result, plot)
    if json_path is not None:
        from rsst.atomic import atomic_write_text

        atomic_write_text(json_path, to_json(result) + "\n")
    if json_out:
        print(to_json(result))
        return
    for table in comparison_tables(result):
        console.print(table)
    if plot is not None:
        console.print(f"wrote {plot}")


@app.command(
    cls=RsstCommand,
    epilog="Examples:\n\n  rsst report runs/my-run                 # table + runs/my-run/report.png"
    "\n\n  rsst report runs/my-run --plot my-run.svg",
)
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `rsst run`."),
    plot: Path | None = typer.Option(None, help="Where to write the plot (.png or .svg; default "
                                     "RUN_DIR/report.png; needs rsst\\[plot])."),
) -> None:
    """One run: the per-state table, accuracy per state and the groups left per layer."""
    from rich.markup import escape

    from rsst.compare import load_single_run, run_kinds
    from rsst.log import state_table
    from rsst.plots import check_plot_path, plot_report, pyplot

    if plot is not None:
        check_plot_path(plot)
        pyplot()
    run = load_single_run(run_dir)
    console.print(state_table(run.records, run_kinds(run)))
    if plot is None:
        try:
            pyplot()
        except UserError as exc:
            err_console.print(f"[yellow]note:[/] no plot written: {escape(str(exc))}",
                              highlight=False)
            return
    target = plot_report(run.records, f"{run.method} · {run.arch} · {run.dataset} · {run_dir}",
                         plot or Path(run_dir) / "report.png")
    console.print(f"wrote {target}")


@app.command(
    cls=RsstCommand,
    epilog="Examples:\n\n"
    "  rsst study studies/cifar10-resnet20-reduced.toml --out studies/out/reduced\n\n"
    "  rsst study my-study.toml --out runs/my-study --workers 2   # two runs at a time\n\n"
    "  rsst study my-study.toml --out /scratch/study --executor slurm",
)
def study(
    study_file: Path = typer.Argument(..., help="A study file (.toml): seeds, base settings, "
                                      "grid, per-method tables, variants."),
    out: Path = typer.Option(..., "--out", help="The study directory (created; an existing "
                             "study directory is continued)."),
    workers: int = typer.Option(1, help="Runs at a time (local), or SLURM jobs at a time."),
    executor: str = typer.Option("local", help="local (child processes here) | slurm (one "
                                 "SLURM job per run through submitit; extra rsst\\[slurm])."),
    write_report: bool = typer.Option(False, "--report", help="Then write DIR/report.md, "
                                      "DIR/compare.json and DIR/compare.png (statistics over "
                                      "seeds, winning tickets, controls beside their tickets)."),
) -> None:
    """Run every method × setting × seed of a study file, each as its own `rsst run` process.

    Runs live in DIR/runs/<method>-<hash>/seed-<N>/, the hash naming the settings that differ
    from the defaults (DIR/runs/<method>-<hash>/identity.json lists them). Killed at any moment,
    the same command continues: finished runs are skipped, interrupted ones resumed.
    """
    from rsst.study.run import run_study

    outcome = run_study(study_file, out, workers=workers, executor=executor, console=console)
    if write_report:
        from rsst.study.report import write_report as write

        for path in write(out):
            console.print(f"wrote {path}", highlight=False)
    if outcome.failed:
        err_console.print(f"[bold red]error:[/] {len(outcome.failed)} of {len(outcome.tasks)} "
                          f"runs failed; their logs are DIR/runs/<experiment>/seed-<N>.log; "
                          f"fix the cause and run the same command again", highlight=False)
        raise typer.Exit(code=1)


@app.command(
    cls=RsstCommand,
    epilog="Examples:\n\n"
    "  rsst ticket runs/my-run --state 3 --control reinit\n\n"
    "  rsst ticket runs/my-run --state last --control shuffle --out runs/my-run-shuffled",
)
def ticket(
    run_dir: Path = typer.Argument(..., help="A run directory written by `rsst run`."),
    state: str = typer.Option(..., help="The state whose mask is the ticket: a number or last."),
    control: str = typer.Option(..., help="reinit (same mask, fresh initialization) | shuffle "
                                "(same counts per tensor, or per unit's groups in structured "
                                "runs, at random places; from the run's rewind point)."),
    seed: int | None = typer.Option(None, help="Seed of the control (default: the run's seed + "
                                    "10000 for reinit, the run's seed for shuffle).",
                                    show_default=False),
    out: Path | None = typer.Option(None, help="The control's run directory (default: "
                                    "RUN_DIR-<control>-stateNN beside the run).",
                                    show_default=False),
) -> None:
    """Lottery-ticket control of a state: train its mask reinitialized, or shuffled, for one
    state with the run's recipe. A ticket that its controls match is not a winning ticket."""
    from rsst.controls import run_control

    chosen: int | str = state
    if state != "last":
        try:
            chosen = int(state)
        except ValueError:
            _fail(f"--state {state!r}: give a state number or last")
    run_control(run_dir, chosen, control, seed=seed, out=out, console=console)


def _usage_line(exc: UsageError) -> str:
    """Click's usage error (and its "did you mean" hint) as one line, naming where help is."""
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return message + where


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: user mistakes, Click's usage errors included, become one line on
    stderr and exit code 2; bugs keep their traceback."""
    try:
        code = app(args=argv, prog_name="rsst", standalone_mode=False)
    except UserError as exc:  # exit 2; 3 when training diverged (rsst.errors)
        from rich.markup import escape

        if is_shown(exc):  # under torchrun: rank 0, or an error of this rank alone
            # escaped: a message such as "pip install 'rsst[plot]'" is text, not rich markup
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
        sys.exit(exc.exit_code)
    except UsageError as exc:
        err_console.print(f"[bold red]error:[/] {_usage_line(exc)}", highlight=False,
                          soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        err_console.print(f"[bold red]error:[/] {' '.join(exc.format_message().split())}",
                          highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
