"""The ``rsst`` command line: parsing and pretty errors only; the work lives in the library."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from rsst import __version__
from rsst.errors import UserError

app = typer.Typer(
    name="rsst",
    help="Structured lottery-ticket pruning (RSST, Refill, IMP and baselines) for image "
    "classifiers, with a fused Triton update.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


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
    epilog="Examples:\n\n"
    "  rsst bench --suite update                       # per-step update, every backend\n\n"
    "  rsst bench --suite update --device cuda --json update.json\n\n"
    "  rsst bench --suite update --models resnet20,vit_small --quick\n\n"
    "  rsst bench --suite step --device cuda --plot step.png   # RSST overhead over dense\n\n"
    "  rsst bench --suite all --device cpu --json bench_cpu.json",
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
    json_path: Path | None = typer.Option(None, "--json", help="Write results as JSON here."),
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
    run_suites(chosen, resolve_device(device.value), models=model_list, json_path=json_path,
               console=console, quick=quick, plot_path=plot)


RUN_EPILOG = """Examples:

  rsst run                                      # RSST on resnet20, synthetic data, 3 states

  rsst run --method refill --dataset cifar10 --data-dir ~/data/cifar10 --train-subset 5000

  rsst run --preset cifar10-resnet20 --data-dir ~/data/cifar10   # Structure-LTH recipe

  rsst run --config runs/old/config.toml --lr 0.05              # rerun with one change

  rsst run --resume runs/rsst-resnet20-synthetic-20261123-120000
"""


@app.command(epilog=RUN_EPILOG)
def run(
    config: Path | None = typer.Option(None, "--config", help="A config.toml (from a run dir)."),
    preset: str | None = typer.Option(None, help="A research recipe: cifar10-resnet20, "
                                      "cifar100-resnet20, cifar10-resnet18, "
                                      "cifar10-resnet20-research, cifar10-vit_tiny, "
                                      "cifar10-vit_small."),
    method: str | None = typer.Option(None, help="rsst | refill | imp."),
    arch: str | None = typer.Option(None, help="resnet20/32/56/110, resnet18/50, vgg16_bn, "
                                    "mobilenet, vit_tiny/small/base, timm:<name>."),
    dataset: str | None = typer.Option(None, help="synthetic | cifar10 | cifar100 | imagefolder."),
    data_dir: str | None = typer.Option(None, help="Folder of the dataset (pickles or class "
                                        "folders)."),
    cache_dir: str | None = typer.Option(None, help="Where decoded images are cached."),
    states: int | None = typer.Option(None, help="Number of pruning states (research: 20)."),
    epochs: int | None = typer.Option(None, help="Epochs per state."),
    rate: float | None = typer.Option(None, help="Fraction of the remaining weights pruned per "
                                      "state, in (0, 1)."),
    criteria: str | None = typer.Option(None, help="Group score: remain | magnitude | l1 | l2 | "
                                        "saliency."),
    criteria_batches: int | None = typer.Option(None, help="Calibration batches for l1/l2/"
                                                "saliency."),
    fillback_rate: float | None = typer.Option(None, help="Extra groups refilled, in [0, 1]."),
    schedule: str | None = typer.Option(None, help="λ schedule: x | x^2 | x^3 | exp | "
                                        "exp_custom_exponents."),
    reg_granularity: float | None = typer.Option(None, help="λ_max, the penalty at the end of "
                                                 "the ramp."),
    exponents: float | None = typer.Option(None, help="p of exp_custom_exponents."),
    reg_ramp: str | None = typer.Option(None, help="λ ramp window: state | epoch."),
    block_loss_grad: bool | None = typer.Option(None, "--block-loss-grad/--no-block-loss-grad",
                                                help="Pending weights get the penalty gradient "
                                                "only."),
    rewind: str | None = typer.Option(None, help="init | epoch:K | none."),
    structure: str | None = typer.Option(None, help="auto | channel | head | neuron | "
                                         "head+neuron | none."),
    batch_size: int | None = typer.Option(None, help="Training batch size."),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    momentum: float | None = typer.Option(None, help="SGD momentum."),
    weight_decay: float | None = typer.Option(None, help="Weight decay."),
    nesterov: bool | None = typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov."),
    optimizer: str | None = typer.Option(None, help="sgd | adamw."),
    beta1: float | None = typer.Option(None, help="AdamW β1."),
    beta2: float | None = typer.Option(None, help="AdamW β2."),
    eps: float | None = typer.Option(None, help="AdamW ε."),
    lr_schedule: str | None = typer.Option(None, help="multistep | cosine | constant."),
    warmup_epochs: float | None = typer.Option(None, help="Linear warm-up epochs per state."),
    milestones: str | None = typer.Option(None, help="Multistep decay epochs, e.g. 80,120."),
    gamma: float | None = typer.Option(None, help="Multistep decay factor."),
    label_smoothing: float | None = typer.Option(None, help="Label smoothing."),
    train_subset: int | None = typer.Option(None, help="Keep N training images (quick runs)."),
    val_split: int | None = typer.Option(None, help="Validation images carved from train."),
    seed: int | None = typer.Option(None, help="Seed of everything random."),
    backend: str | None = typer.Option(None, help="Update backend: auto | triton | compiled | "
                                       "torch | eager."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile",
                                        help="Wrap the model in torch.compile."),
    memory_format: str | None = typer.Option(None, help="auto | channels_last | contiguous "
                                             "(auto: channels_last for CNNs)."),
    cuda_graph: bool | None = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                           help="Capture each training step (forward, backward,"
                                           " fused update) as one CUDA graph; triton backend."),
    img_size: int | None = typer.Option(None, help="Input size (ViTs)."),
    patch_size: int | None = typer.Option(None, help="ViT patch size (default 4)."),
    out: Path | None = typer.Option(None, help="Run directory (default runs/<method>-<arch>-"
                                    "<dataset>-<time>)."),
    resume: Path | None = typer.Option(None, help="Continue the run in this directory."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
) -> None:
    """Run iterative pruning (RSST, Refill, IMP) and write a run directory.

    Each state trains, evaluates, prunes the smallest weights globally (--rate) and, for
    refill/rsst, regroups them into whole channels / heads / neurons (--criteria). RSST fades the
    weights it will drop with a growing L2 penalty (--schedule, --reg-granularity) before cutting.
    """
    from rsst.config import build_config
    from rsst.loop import run as run_loop

    given = {k: v for k, v in locals().items()
             if v is not None and k not in ("config", "preset", "resume", "overwrite",
                                            "build_config", "run_loop", "out")}
    if milestones is not None:
        try:
            given["milestones"] = [int(m) for m in milestones.split(",") if m.strip()]
        except ValueError:
            _fail(f"--milestones {milestones!r}: give comma-separated epochs, e.g. 80,120")
    if resume is not None:
        if given or config is not None or preset is not None:
            _fail("--resume continues a run with its saved config.toml; drop the other flags")
        run_loop(build_config(overrides={}), resume=resume, console=console)
        return
    run_config = build_config(config_file=config, preset=preset, overrides=given)
    run_loop(run_config, out=out, overwrite=overwrite, console=console)


@app.command(
    epilog="Examples:\n\n"
    "  rsst export runs/my-run --state last --compact -o model.safetensors\n\n"
    "  rsst export runs/my-run --state best --masked -o masked.safetensors",
)
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `rsst run`."),
    out: Path = typer.Option(..., "-o", "--out", help="The .safetensors file to write."),
    state: str = typer.Option("last", help="Which state: a number, last, or best (highest val "
                              "accuracy)."),
    compact: bool = typer.Option(True, "--compact/--masked", help="Physically remove pruned "
                                 "channels/heads/neurons, or keep dense shapes plus masks."),
) -> None:
    """Export a pruned state as safetensors (masked or physically compacted).

    Prints kept/total units, params and MACs per layer; load with rsst.load(FILE).
    """
    from rsst.export import export_model, export_table

    result = export_model(run_dir, out, state=state, form="compact" if compact else "masked")
    console.print(export_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.params["compact"] == result.params["dense"]:
        console.print("[yellow]note:[/] nothing was removable: compaction needs whole channels/"
                      "heads/neurons pruned with their BatchNorm γ/β or biases zeroed (refill/"
                      "rsst); imp prunes single weights, so its export stays dense")
    console.print(f"wrote {result.path} ({result.file_bytes / 1e6:.2f} MB, {result.form}, state "
                  f"{result.state}; compact vs masked max |Δlogit| {result.max_abs_diff:.2g})")


@app.command(
    name="eval",
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
    import json

    from rsst.export import evaluate_file

    result = evaluate_file(file, dataset=dataset, data_dir=data_dir, split=split,
                           batch_size=batch_size, device=device.value, cache_dir=cache_dir)
    if json_out:
        print(json.dumps({k: result[k] for k in ("accuracy", "loss", "n")}))
        return
    console.print(f"{file} ({result['form']}) on {result['dataset']} {result['split']}: "
                  f"accuracy {100 * result['accuracy']:.2f} %, loss {result['loss']:.4f}, "
                  f"n = {result['n']}", highlight=False)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
