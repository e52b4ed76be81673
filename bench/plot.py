"""``rsst bench --plot FILE.png``: a bar chart of the step suite (matplotlib, optional extra).

Two panels: ms per training step per model and path (log scale, since resnet20 and vit_small
differ by orders of magnitude), and the same relative to dense training, which is the figure
the issue asks about (RSST overhead over the floor). Environment and date go in the title, so a
stray PNG still says where it was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsst.errors import UserError, install_hint

PATH_ORDER: tuple[str, ...] = ("dense", "triton", "compiled", "torch", "eager", "seed",
                              "torch-pruning")
PATH_COLORS = {"dense": "#7f7f7f", "triton": "#2ca02c", "torch": "#1f77b4", "eager": "#ff7f0e",
               "seed": "#d62728", "torch-pruning": "#9467bd"}


def require_matplotlib() -> None:
    """Raise a `UserError` with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            f"--plot needs matplotlib, which is not installed: {install_hint('plot')}; "
            "or drop --plot and use --json"
        ) from None


def plot_results(records: list[dict[str, Any]], env: dict[str, Any], path: Path) -> None:
    """Write the step-suite bar chart of ``records`` to ``path`` (PNG)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("suite") == "step" and r.get("median_ms")]
    if not steps:
        raise UserError("--plot draws the step suite: run it with --suite step or --suite all")
    models = list(dict.fromkeys(r["model"] for r in steps))
    paths = [p for p in PATH_ORDER if any(r["path"] == p for r in steps)]
    by_key = {(r["model"], r["path"]): r for r in steps}
    width = 0.8 / len(paths)

    fig, (ax_ms, ax_rel) = plt.subplots(1, 2, figsize=(max(8.0, 2.6 * len(models)), 4.2))
    for j, p in enumerate(paths):
        xs = [i + (j - (len(paths) - 1) / 2) * width for i in range(len(models))]
        ms = [by_key[(m, p)]["median_ms"] if (m, p) in by_key else 0.0 for m in models]
        rel = [by_key[(m, p)]["vs_dense"] if (m, p) in by_key else 0.0 for m in models]
        color = PATH_COLORS.get(p)
        ax_ms.bar(xs, ms, width, label=p, color=color)
        ax_rel.bar(xs, rel, width, label=p, color=color)
    batch = steps[0].get("batch")
    for ax in (ax_ms, ax_rel):
        ax.set_xticks(range(len(models)), models)
        ax.grid(axis="y", alpha=0.3)
    ax_ms.set_yscale("log")
    ax_ms.set_ylabel(f"ms per step (batch {batch})")
    ax_rel.axhline(1.0, color="black", linewidth=0.8)
    ax_rel.set_ylabel("step time / dense")
    ax_rel.legend(fontsize="small")
    fig.suptitle(f"rsst step suite · {env.get('device')} · torch {env.get('torch')} · "
                 f"commit {env.get('commit')} · {env.get('date')}", fontsize="medium")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
