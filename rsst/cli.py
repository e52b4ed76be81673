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
from rsst.choices import (
    CNN_MODELS,
    DATASETS,
    EVAL_SPLITS,
    EXPORT_FORMS,
    LOGGERS,
    TIMM_PREFIX,
    VIT_MODELS,
)
from rsst.config import PANELS, RunConfig, Setting, config_toml, field_types
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


class _RsstHelp:
    """How rsst's commands lay out their help. Flags (``--x/--no-x``, ``--help``) take no value,
    so help shows no ``<bool>`` for them; an option's own metavar (``--milestones EPOCH,EPOCH``)
    is shown instead of its type; docstring paragraphs wrap at the terminal's width."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            if param.metavar is not None and hasattr(param, "display_type_rich"):
                param.display_type_rich = _shown_type(param.metavar or None)
        return params

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The help of an on/off flag shows ``--x`` alone, its default as on or off: a column
        of ``--no-x`` forms would squeeze the help text at 80 columns until choice names are
        cut. ``--no-x`` still parses (the ``run`` help says so)."""
        hidden = [(p, p.secondary_opts, p.show_default) for p in self.get_params(ctx)
                  if getattr(p, "is_flag", False) and p.secondary_opts]
        for param, negative, _ in hidden:
            param.secondary_opts = []
            param.show_default = (f"on; {negative[0]} turns it off" if param.default is True
                                  else "off")
        try:
            super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            for param, negative, shown in hidden:
                param.secondary_opts, param.show_default = negative, shown

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        if getattr(self, "help", None):
            self.help = unwrap_paragraphs(self.help)  # type: ignore[has-type]


def unwrap_paragraphs(text: str) -> str:
    """Docstring paragraphs as one line each, so that help wraps them at the terminal's width
    rather than at the source's line breaks; indented lines (examples) are kept as they are."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines = paragraph.split("\n")
        indented = any(line.startswith((" ", "-", "•")) for line in lines)
        paragraphs.append(paragraph if indented else " ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


class RsstGroup(_RsstHelp, TyperGroup):
    pass


class RsstCommand(_RsstHelp, TyperCommand):
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
    from rsst.distributed import resolve_device
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
#: Longer choice lists would be folded mid-name in the type column of an 80-column help: they
#: get a ``<name>`` metavar and are listed in the help text, which wraps between words.
_LONGEST_CHOICE_COLUMN = 14


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
    if choices is None and meta.suggestions is not None:
        kwargs["autocompletion"] = _arch_completion if f.name == "arch" else \
            _completion(meta.completions)
    option = typer.Option(default, *decls, **kwargs)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind if default is not None else kind | None)


def _completion(names: Callable[[], Sequence[str]] | Sequence[str]) -> Callable[[str], list[str]]:
    """Shell completion offering ``names`` (or what the function returns) that start with what
    was typed."""
    def complete(incomplete: str) -> list[str]:
        return [n for n in (names() if callable(names) else names) if n.startswith(incomplete)]

    return complete


def _arch_completion(incomplete: str) -> list[str]:
    """--arch: the built-in models and ``timm:``; timm's own names only once ``timm:`` is typed
    (timm is imported for that alone)."""
    if not incomplete.startswith(TIMM_PREFIX):
        return _completion((*CNN_MODELS, *VIT_MODELS, TIMM_PREFIX))(incomplete)
    import timm

    pattern = incomplete[len(TIMM_PREFIX):] + "*"
    return [TIMM_PREFIX + name for name in timm.list_models(pattern)]


def _state_completion(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    """export --state: last, best and the states the given run directory holds (the first
    folder among the words typed so far; Click's completion does not always parse the run
    directory into ``ctx.params``, so the shell's words are read too)."""
    import shlex

    names = ["last", "best"]
    try:
        words = shlex.split(os.environ.get("COMP_WORDS", ""))
    except ValueError:  # an unclosed quote in what is being typed
        words = []
    typed = [ctx.params.get("run_dir"), *args, *words[1:]]
    run_dir = next((Path(a) for a in typed if a is not None and Path(a).is_dir()
                    and any(Path(a).glob("state_[0-9]*"))), None)
    if run_dir is not None:
        names += sorted((p.name.split("_", 1)[1].lstrip("0") or "0"
                         for p in Path(run_dir).glob("state_[0-9]*") if p.is_dir()), key=int)
    return [n for n in names if n.startswith(incomplete)]


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
        (_RUN_PANEL, inspect.Parameter("print_config", keyword, annotation=bool,
                                       default=typer.Option(
            False, "--print-config", help="Print the resolved settings (defaults ← --config ← "
            "--preset ← flags) as config.toml and the run directory, then exit; creates nothing.",
            rich_help_panel=_RUN_PANEL))),
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
               "csv (repeatable; needs the extras tensorboard, wandb: pip install "
               "'rsst-prune\\[wandb]', or -e '.\\[wandb]' in a checkout).",
               autocompletion=_completion(LOGGERS)),
        option("wandb_project", str | None, "--wandb-project", help="W&B project (default "
               "rsst)."),
        option("wandb_entity", str | None, "--wandb-entity", help="W&B entity (team or user)."),
        option("wandb_name", str | None, "--wandb-name", help="W&B run name (default: the run "
               "directory's name)."),
        option("wandb_group", str | None, "--wandb-group", help="W&B group: runs of one group "
               "show together (e.g. the seeds of one setting)."),
        option("wandb_tags", str | None, "--wandb-tags", help="W&B tags, comma-separated "
               "(e.g. resnet20,baseline)."),
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
    Settings layer as defaults ← --config file ← --preset ← flags given here; every on/off flag
    --x also has --no-x, to turn off what a --config file or --preset turned on.
    """
    from rsst.config import build_config, load_config
    from rsst.loop import run as run_loop

    given = _given_overrides(ctx, values)
    config, resume, out = values["config"], values["resume"], values["out"]
    preset = values["preset"].value if values["preset"] is not None else None
    logging = {"loggers": values["logger"] or [], "logger_options": {
        k: values[k] for k in ("wandb_project", "wandb_entity", "wandb_name", "wandb_group",
                               "wandb_tags")}}
    if resume is not None:
        if given or config is not None or preset is not None:
            _fail("--resume continues a run with its saved config.toml; drop the other flags")
        if values["print_config"]:
            _print_config(load_config(_resume_config(resume)), resume)
            return
        run_loop(build_config(overrides={}), resume=resume, console=console, **logging)
        return
    run_config = build_config(config_file=config, preset=preset, overrides=given, warn=_warn)
    if values["print_config"]:
        from rsst.loop import default_run_dir

        if out is not None:
            run_config = dataclasses.replace(run_config, out=str(out))
        _print_config(run_config, Path(run_config.out or default_run_dir(run_config)))
        return
    run_loop(run_config, out=Path(out) if out is not None else None,
             overwrite=values["overwrite"], console=console, **logging)


def _warn(line: str) -> None:
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _resume_config(run_dir: Path) -> Path:
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not an rsst run directory (no config.toml); pass the "
                        "directory `rsst run` printed")
    return path


def _print_config(config: RunConfig, run_dir: Path) -> None:
    """--print-config: the settings as a config.toml (usable with --config) on stdout, with the
    run directory as a comment; nothing is created."""
    print(config_toml(config), end="")
    print(f"# run directory: {run_dir}")


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
    "  rsst export runs/my-vit --form timm -o vit.safetensors   # loads with timm alone\n\n"
    "  rsst export runs/my-run --form hf -o my-model/            # a timm / Hugging Face folder\n\n"
    "  rsst export runs/my-run --form onnx -o model.onnx         # needs the onnx extra",
)
def export(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A run directory written by `rsst run`."),
    out: Path = typer.Option(..., "-o", "--out", help="The file to write (.safetensors, .onnx "
                             "or .pt2), or the new folder for --form hf."),
    state: str = typer.Option("last", help="Which state: a number, last, or best (highest val "
                              "accuracy).", autocompletion=_state_completion),
    compact: bool = typer.Option(True, "--compact/--masked", help="Physically remove pruned "
                                 "channels/heads/neurons, or keep dense shapes plus masks."),
    form: str | None = typer.Option(None, help="masked | compact | timm (stock timm keys and "
                                    "create_model arguments: loads without rsst; ViTs and "
                                    "timm:<name>) | hf (a timm / Hugging Face folder for "
                                    "timm.create_model('local-dir:DIR')) | onnx (checked in "
                                    "onnxruntime; needs the onnx extra) | pt2 (torch.export); "
                                    "instead of --compact/--masked.",
                                    autocompletion=_completion(EXPORT_FORMS)),
) -> None:
    """Export a pruned state as safetensors (masked or physically compacted).

    Prints kept/total units, params and MACs per layer; load with rsst.load(FILE).
    """
    from rsst.export import export_model, export_table

    source = ctx.get_parameter_source("compact")
    if form is not None and source is not None and source.name == "COMMANDLINE":
        flag = "--compact" if compact else "--masked"
        _fail(f"{flag} and --form {form} both choose the export form: give one of them "
              f"(--form {' | '.join(EXPORT_FORMS)}, or --compact / --masked)")
    chosen = form or ("compact" if compact else "masked")
    result = export_model(run_dir, out, state=state, form=chosen)
    console.print(export_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if chosen == "timm":
        console.print("load without rsst: see the file's timm.usage metadata or README "
                      "(Export and eval)", highlight=False)
    elif chosen in ("hf", "onnx", "pt2") and result.check:
        needs = (" (import rsst.timm_models first: the folder's architecture is rsst_model)"
                 if result.check.get("loader") == "rsst.timm_models" else "")
        console.print(f"checked: {result.check['checked_with']} gives the rsst model's logits "
                      f"to max |Δlogit| {result.check['max_abs_logit_diff']:.2g}{needs}",
                      highlight=False)
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
                                       "file's metadata).", autocompletion=_completion(DATASETS)),
    data_dir: str | None = typer.Option(None, help="Dataset folder (default: the run's)."),
    split: str = typer.Option("val", help="val (the run's own val split) | test.",
                              autocompletion=_completion(EVAL_SPLITS)),
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
                          "sparsity (groups removed) | macs | params (compacted, vs dense) | "
                          "latency (measured forward pass, compacted / dense)."),
    metric: str = typer.Option("val", help="val | test | val_after_cut (the network each "
                               "state delivers; RSST states otherwise show before and after "
                               "the cut)."),
    plot: Path | None = typer.Option(None, help="Write the accuracy-vs-sparsity plot here "
                                     "(.png or .svg; needs matplotlib: the plot extra)."),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON only."),
    json_path: Path | None = typer.Option(None, "--json-out", help="Also write the comparison "
                                          "as JSON to this file."),
    force: bool = typer.Option(False, help="Compare runs on different datasets anyway."),
) -> None:
    """Accuracy against sparsity across runs, grouped by run identity: only runs that differ in
    their seed alone are pooled (mean ± std, n, 95 % interval); groups of one method are labelled
    by the settings that differ. Each group's winning ticket: its sparsest state within 0.5
    point of dense whose 95 % interval meets dense's. A study directory (rsst study --out)
    stands for its runs and controls."""
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
    epilog="Examples:\n\n  rsst report runs/my-run                 # the per-state table"
    "\n\n  rsst report runs/my-run --plot my-run.svg"
    "\n\n  rsst report runs/my-run --json > my-run.json",
)
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `rsst run`."),
    plot: Path | None = typer.Option(None, help="Also draw accuracy per state and a state × "
                                     "layer map of the groups left into this .png or .svg "
                                     "file (needs matplotlib: the plot extra).",
                                     show_default="none"),
    json_out: bool = typer.Option(False, "--json", help="Print the run's identity and state "
                                  "records as JSON on stdout instead of the table."),
) -> None:
    """One run: the per-state table (or JSON), optionally a plot of accuracy per state and the
    groups left per layer."""
    from rsst.compare import load_single_run, run_kinds
    from rsst.console import state_table

    if plot is not None:
        from rsst.plots import check_plot_path, pyplot

        check_plot_path(plot)
        pyplot()
    run = load_single_run(run_dir)
    if plot is not None:
        from rsst.plots import plot_report

        target = plot_report(run.records, f"{run.method} · {run.arch} · {run.dataset} · "
                             f"{run_dir}", plot)
    if json_out:
        from rsst.compare import report_json, to_json

        print(to_json(report_json(run)))
    else:
        console.print(state_table(run.records, run_kinds(run)))
    if plot is not None:
        (err_console if json_out else console).print(f"wrote {target}")


@app.command(
    cls=RsstCommand,
    epilog="Examples:\n\n  rsst env\n\n  rsst env --json > env.json",
)
def env(
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of a "
                                  "table."),
) -> None:
    """The environment a run records in its provenance.json: rsst version and git commit,
    Python, torch, timm, triton, CUDA and cuDNN versions, device and host."""
    import json

    from rsst.distributed import resolve_device
    from rsst.provenance import collect

    info = collect(resolve_device("auto"))
    if json_out:
        print(json.dumps(info, indent=2))
        return
    from rich.table import Table

    table = Table(title="rsst env", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if key == "git" and isinstance(value, dict):
            value = f"{value['commit']}{' (dirty)' if value.get('dirty') else ''}"
        table.add_row(key, "–" if value is None else str(value))
    console.print(table)


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
    workers: int | None = typer.Option(None, help="Runs at a time (local: default one per "
                                       "visible GPU, else 1; the CPU threads are split evenly "
                                       "between them), or SLURM jobs at a time.",
                                       show_default=False),
    executor: str = typer.Option("local", help="local (child processes here) | slurm (one "
                                 "SLURM job per run through submitit; the slurm extra)."),
    write_report: bool = typer.Option(False, "--report", help="Run nothing: write DIR/report.md, "
                                      "DIR/compare.json and DIR/compare.png from the runs "
                                      "finished so far (a study writes them when it ends)."),
    slurm_partition: str | None = typer.Option(None, help="SLURM partition of the jobs.",
                                               show_default=False),
    slurm_time: str | None = typer.Option(None, help="Time limit per job: minutes or "
                                          "D-HH:MM:SS (default 24 h).", show_default=False),
    slurm_gpus_per_run: int | None = typer.Option(None, help="GPUs per job; above 1 the run "
                                                  "starts under torch.distributed.run.",
                                                  show_default=False),
    slurm_account: str | None = typer.Option(None, help="SLURM account to charge.",
                                             show_default=False),
    slurm_arg: list[str] = typer.Option([], "--slurm-arg", metavar="KEY=VALUE",
                                        help="Another sbatch option as key=value "
                                        "(repeatable), e.g. --slurm-arg qos=high."),
) -> None:
    """Run every method × setting × seed of a study file, each as its own `rsst run` process.

    The file: name = "..."; \\[base] settings of every run (preset included); \\[grid] lists
    that expand as a cartesian product (seed = \\[0, 1, 2] gives replicates); \\[\\[variants]]
    more runs, each crossed with \\[grid], lists expanding there too, and
    controls = \\["reinit", "shuffle"]
    to train those controls of every state ≥ 1 of the variant's runs. At its end the study
    writes DIR/report.md, DIR/compare.json and DIR/compare.png. Runs live in
    DIR/runs/<method>-<hash>/seed-<N>/, the hash naming the settings that differ from the
    defaults (DIR/runs/<method>-<hash>/identity.json lists them). Killed at any moment, the
    same command continues: finished runs are skipped, interrupted ones resumed; runs the file
    no longer names are listed and kept. A failed run does not stop the others; the study then
    exits 1 with one line per failure.
    """
    from rsst.study.report import write_report as write
    from rsst.study.run import run_study

    if write_report:  # the report alone, from what is finished; nothing is run
        from rsst.study.spec import read_study

        for path in write(out, read_study(study_file)):
            console.print(f"wrote {path}", highlight=False)
        return
    outcome = run_study(study_file, out, workers=workers, executor=executor, console=console,
                        slurm={"partition": slurm_partition, "time": slurm_time,
                               "gpus_per_run": slurm_gpus_per_run, "account": slurm_account},
                        slurm_args=slurm_arg)
    for path in write(out, outcome.study):  # the answer, from every run that finished
        console.print(f"wrote {path}", highlight=False)
    if outcome.failed:
        for result in outcome.failed:
            err_console.print(f"failed: {result.name} (exit {result.returncode})"
                              + (f": {result.last_line}" if result.last_line else "")
                              + f"; log {outcome.log_of(result.name)}", highlight=False,
                              markup=False, soft_wrap=True)
        err_console.print(f"[bold red]error:[/] {len(outcome.failed)} of {len(outcome.tasks)} "
                          "runs failed (listed above); fix the cause and run the same command "
                          "again", highlight=False)
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
            # escaped: a message such as "pip install 'rsst-prune[plot]'" is text, not markup
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
