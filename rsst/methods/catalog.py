"""Every built-in method by name: where its class lives, its one-line summary and the settings it
declares — known without importing the method (and torch), so ``rsst --help`` is instant and the
implementation loads only when a run needs it (`rsst.methods.registry.method_class`).

A method's own settings
-----------------------
A setting only one method (or a few) reads — ADMM's ρ, GraSP's temperature, SynFlow's
iterations, RSST's penalty schedule — is declared here, in its method's `MethodSpec`, as a
`rsst.settings.Declared`::

    MethodSpec("mymethod", "rsst.methods.mymethod", "what it does, in a few words", settings=(
        Declared("mymethod_beta", float, 0.5, Setting(
            panel="Method", low=0.0, high=1.0, help="β of mymethod's score (--method mymethod).")),
    )),

That is all: `rsst.config` adds the field ``mymethod_beta`` to `RunConfig` (so the method reads
``config.mymethod_beta``), ``rsst run`` gets ``--mymethod-beta`` in the ``Method`` help panel with
its range in the help, config.toml saves and loads it, `rsst.config.validate` checks its type and
range, and a ``--mymethod-beta`` given with another ``--method`` gets a warning that it has no
effect. ``also=("other",)`` shares it with another method; ``Setting(applies=...)`` narrows when
it is in effect further (``--exponents`` only with ``--schedule exp_custom_exponents``). Checks
that involve several settings go in the method's `Method.check`.

Adding a method: its module under ``rsst/methods/`` whose class carries ``@register_method``,
and its `MethodSpec` in `CATALOG` (its position sets its place in ``--method``'s help).
"""

from __future__ import annotations

from dataclasses import dataclass

from rsst.choices import ADMM_PROJECTIONS, REG_RAMPS, SCORE_BN_MODES
from rsst.schedules import SCHEDULES
from rsst.settings import Declared, Setting


@dataclass(frozen=True)
class MethodSpec:
    """A method as the CLI and the config know it before its module is imported."""

    name: str
    #: the module whose ``@register_method`` class implements it
    module: str
    #: one line for ``--help`` and the docs
    summary: str
    settings: tuple[Declared, ...] = ()


_PENALTY = "Schedule/penalty"


def _custom_exponents(config: object) -> bool:
    return getattr(config, "schedule", None) == "exp_custom_exponents"


CATALOG: tuple[MethodSpec, ...] = (
    MethodSpec("rsst", "rsst.methods.rsst", "Refill's groups faded by a rising penalty, then cut",
               settings=(
        Declared("schedule", str, "x", Setting(
            panel=_PENALTY, choices=SCHEDULES, help="λ schedule of the RSST penalty.")),
        Declared("reg_granularity", float, 2.0, Setting(
            panel=_PENALTY, low=0.0, help="λ_max, the penalty at the end of the ramp.")),
        Declared("exponents", float, 4.0, Setting(
            panel=_PENALTY, low=0.0, low_open=True, help="p of exp_custom_exponents.",
            applies=_custom_exponents, applies_text="with --schedule exp_custom_exponents")),
        Declared("reg_ramp", str, "state", Setting(
            panel=_PENALTY, choices=REG_RAMPS, help="λ ramp window.")),
        Declared("block_loss_grad", bool, False, Setting(
            panel=_PENALTY, help="Pending weights get the penalty gradient only.")),
        Declared("fade_epochs", int, 0, Setting(
            panel=_PENALTY, low=0, help="RSST: before a cut, up to N extra epochs (λ doubling "
            "each) until the pending weights have faded (fade_ratio < 0.1); 0: cut when the "
            "state ends, with a warning if they have not.")),
    )),
    MethodSpec("refill", "rsst.methods.refill", "magnitude cut refilled into whole groups"),
    MethodSpec("imp", "rsst.methods.imp", "iterative magnitude pruning, unstructured"),
    MethodSpec("omp", "rsst.methods.omp", "one-shot magnitude after dense training"),
    MethodSpec("random", "rsst.methods.random", "random scores"),
    MethodSpec("snip", "rsst.methods.snip", "|θ·∂L/∂θ| at init", settings=(
        Declared("score_batches", int, 1, Setting(
            panel="Method", low=1, help="Training batches the snip/grasp scores sum over."),
            also=("grasp",)),
        Declared("score_bn", str | None, None, Setting(
            panel="Method", choices=SCORE_BN_MODES, shown_default="snip: eval, grasp: train",
            help="BatchNorm while snip/grasp score: eval (running statistics) or train (batch "
            "statistics); the default is each method's reference code."), also=("grasp",)),
    )),
    MethodSpec("grasp", "rsst.methods.grasp", "GraSP's −θ·Hg at init", settings=(
        Declared("grasp_temperature", float, 200.0, Setting(
            panel="Method", low=0.0, low_open=True, help="GraSP's softmax temperature T "
            "(logits / T; the reference's 200).")),
    )),
    MethodSpec("synflow", "rsst.methods.synflow", "iterative synaptic flow, data-free",
               settings=(
        Declared("synflow_iterations", int, 100, Setting(
            panel="Method", low=1, help="SynFlow scorings on the exponential schedule.")),
    )),
    MethodSpec("admm", "rsst.methods.admm", "ADMM: train with ρ/2‖W − Z + U‖² toward a sparse Z, "
               "prune hard to Z's support (refilled), retrain masked", settings=(
        Declared("admm_rho", float, 1e-2, Setting(
            panel=_PENALTY, low=0.0, low_open=True,
            help="ρ of the ADMM penalty ρ/2‖W − Z + U‖² (--method admm).")),
        Declared("admm_interval", int, 1, Setting(
            panel=_PENALTY, low=1,
            help="Epochs between ADMM updates of Z and U (--method admm).")),
        Declared("admm_projection", str, "layer", Setting(
            panel="Method", choices=ADMM_PROJECTIONS,
            help="ADMM's sparse set: layer (each layer keeps the same fraction, final prune by "
            "|W|, as the paper) or global (top-k across layers, final prune to Z's support).")),
    )),
)


def declared_settings() -> dict[str, tuple[Declared, tuple[str, ...]]]:
    """Each method-declared setting by name, with the methods it is in effect for."""
    found: dict[str, tuple[Declared, tuple[str, ...]]] = {}
    for spec in CATALOG:
        for declared in spec.settings:
            if declared.name in found:
                raise ValueError(f"setting {declared.name!r} is declared twice (use `also`)")
            found[declared.name] = (declared, (spec.name, *declared.also))
    return found
