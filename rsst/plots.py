"""matplotlib drawings of `rsst compare` / `rsst report` results (extra ``plot``).

matplotlib is imported only here and only when a plot is asked for; its absence is a
`UserError` naming the extra. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsst.errors import UserError, install_hint

FORMATS = {".png": "png", ".svg": "svg"}
DPI = 100
COMPARE_SIZE = (7.0, 4.5)  # inches: 700 x 450 pixels


def check_plot_path(path: str | Path) -> tuple[Path, str]:
    """(path, format) of a --plot FILE; the suffix picks PNG or SVG."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"--plot {path}: name a .png or .svg file")
    if path.is_dir():
        raise UserError(f"--plot {path} is a folder: pass a file name such as {path / 'out.png'}")
    if not path.parent.is_dir():
        raise UserError(f"the folder of --plot {path} does not exist: create {path.parent} first")
    return path, fmt


def pyplot(flag: str = "--plot") -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or a `UserError` saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"{flag} needs matplotlib, which is not installed: "
                        f"{install_hint('plot')}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, fmt: str) -> None:
    from rsst.atomic import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI))
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); pick a writable path"
                        ) from None


def _x_axis(ax: Any, x: str, values: list[float]) -> None:
    """Remaining fractions on a log scale, falling to the right (lottery-ticket papers);
    structured sparsity on a linear one, growing to the right."""
    if x == "sparsity":
        ax.set_xlim(-2, 102)
        return
    ax.set_xscale("log")
    lo = min([v for v in values if v > 0], default=1.0)
    # a measured latency ratio may pass 100 % (a compacted network no faster, or noise)
    ax.set_xlim(max([105.0, *(v * 1.05 for v in values)]), max(lo * 0.8, 0.01))
    ticks = [t for t in (100, 70, 50, 30, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= lo * 0.8]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", ":")
NEUTRAL = "0.35"  # grey: the dense reference and chance, which belong to no method


def plot_comparison(result: dict[str, Any], path: str | Path) -> Path:
    """One line per group, each with its own colour, marker and line style so overlapping
    series stay visible; a band of the 95 % interval over seeds (std where only the std is
    known), RSST before-cut points hollow and joined to their after-cut point, the dense
    accuracy and the chance level as grey reference lines, the winning ticket starred."""
    path, fmt = check_plot_path(path)
    plt = pyplot()
    x = result["x"]
    fig, ax = plt.subplots(figsize=COMPARE_SIZE, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    every_x: list[float] = []
    denses = sorted({round(g["dense_acc"], 6) for g in result["groups"]
                     if g["dense_acc"] is not None and g.get("control") is None})
    for i, g in enumerate(result["groups"]):
        color = colors[i % len(colors)]
        marker, style = MARKERS[i % len(MARKERS)], LINESTYLES[(i // len(colors)) % 4]
        line = [p for p in g["points"] if p["delivered"] and p["x"] is not None
                and p["acc"] is not None]
        xs = [100 * p["x"] for p in line]
        ys = [100 * p["acc"] for p in line]
        every_x += xs
        label = g["label"] + (f" (n={g['n_runs']})" if g["n_runs"] > 1 else "")
        ax.plot(xs, ys, marker=marker, linestyle=style, color=color, label=label, markersize=5,
                mfc="white" if g.get("control") else color)
        if g["n_runs"] > 1:
            lo, hi = [], []
            for p, y in zip(line, ys, strict=True):
                ci = p.get("ci95")
                half = 100 * (ci[1] - p["acc"]) if ci else 100 * (p["acc_std"] or 0.0)
                lo.append(max(y - half, 0.0))  # an accuracy interval ends at 0 and 100 %
                hi.append(min(y + half, 100.0))
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
        before = [p for p in g["points"] if p["phase"] == "before_cut" and p["x"] is not None
                  and p["acc"] is not None]
        if before:
            after = {p["state"]: p for p in line if p["phase"] == "after_cut"}
            ax.plot([100 * p["x"] for p in before], [100 * p["acc"] for p in before], marker,
                    mfc="none", color=color, markersize=6, label=f"{g['label']} before cut")
            for p in before:
                a = after.get(p["state"])
                if a is not None:
                    ax.plot([100 * p["x"], 100 * a["x"]], [100 * p["acc"], 100 * a["acc"]], ":",
                            color=color, linewidth=1)
            every_x += [100 * p["x"] for p in before]
        ticket = g["winning_ticket"]
        if ticket is not None and ticket["state"] > 0 and g.get("control") is None:
            ax.plot([100 * ticket["x"]], [100 * ticket["acc"]], "*", color=color, markersize=13,
                    markeredgecolor="black", markeredgewidth=0.5)
    for j, dense in enumerate(denses):
        ax.axhline(100 * dense, linestyle=("--", "-.")[j % 2], color=NEUTRAL, linewidth=1,
                   label="dense" if len(denses) == 1 else f"dense {100 * dense:.2f}")
    chances = {g.get("chance") for g in result["groups"]} - {None}
    for chance in sorted(chances):
        ax.axhline(100 * chance, linestyle=":", color=NEUTRAL, linewidth=1,
                   label=f"chance ({100 * chance:g} %)")
    _x_axis(ax, x, every_x)
    ax.set_xlabel(result["x_label"])
    ax.set_ylabel(f"{result['metric'].replace('_', ' ')} accuracy (%)")
    ax.set_title("accuracy vs sparsity\n(★ sparsest state within "
                 f"{result['winning_ticket_points']:g} pt of dense, intervals meeting; "
                 "bands: 95 % interval)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path, fmt)
    plt.close(fig)
    return path


REPORT_SIZE = (12.0, 4.5)  # inches: 1200 x 450 pixels
MAX_LAYER_LABELS = 60  # layer names the heat-map's axis can show at 6 pt


def alive_matrix(records: list[dict[str, Any]]) -> tuple[list[str], list[list[float]]]:
    """(layers in first-seen order, one row per state of the fraction of each layer's groups
    alive); NaN where a state records no such layer."""
    layers: list[str] = []
    for r in records:
        for name in r.get("groups") or {}:
            if name not in layers:
                layers.append(name)
    rows = []
    for r in records:
        groups = r.get("groups") or {}
        rows.append([groups[n]["alive"] / groups[n]["total"] if n in groups
                     and groups[n].get("total") else float("nan") for n in layers])
    return layers, rows


def plot_report(records: list[dict[str, Any]], title: str, path: str | Path) -> Path:
    """One run: accuracy per state against remaining weights, and a state × layer heat-map of
    the fraction of each layer's groups (channels / heads / neurons) alive: layers are separate
    things, so they get cells, not a line joining them."""
    path, fmt = check_plot_path(path)
    plt = pyplot()
    fig, (acc_ax, layer_ax) = plt.subplots(1, 2, figsize=REPORT_SIZE, layout="constrained",
                                           gridspec_kw={"width_ratios": [1, 1.6]})
    drawn = False
    from rsst.statefile import accuracy

    for split, before, style, label in (("val", True, "o-", "val before cut"),
                                        ("val", False, "s--", "val"),
                                        ("test", False, "^-", "test")):
        values = [(r["state"], accuracy(r, split, before_cut=before)) for r in records]
        pts = [(s, 100 * v) for s, v in values if v is not None]
        if pts:
            acc_ax.plot(*zip(*pts, strict=True), style, label=label, markersize=4)
            drawn = True
    states = [r["state"] for r in records]
    acc_ax.set_xticks(states)
    acc_ax.set_xticklabels([f"{r['state']}\n{_remain_text(r)}" for r in records], fontsize=7)
    acc_ax.set_xlabel("state (remaining weights %)")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.grid(True, alpha=0.3)
    if drawn:
        acc_ax.legend(fontsize=8)
    acc_ax.set_title("accuracy per state", fontsize=10)

    layers, rows = alive_matrix(records)
    if layers:
        import numpy as np

        cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")  # grey: layer not recorded
        image = layer_ax.imshow(np.ma.masked_invalid(np.array(rows, dtype=float)), cmap=cmap,
                                vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=layer_ax, label="fraction of groups alive")
        step = max(1, -(-len(layers) // MAX_LAYER_LABELS))  # every step-th name stays legible
        layer_ax.set_xticks(range(0, len(layers), step))
        layer_ax.set_xticklabels(layers[::step], rotation=90, fontsize=6)
        layer_ax.set_yticks(range(len(records)))
        layer_ax.set_yticklabels([str(s) for s in states], fontsize=7)
    else:
        layer_ax.text(0.5, 0.5, "no structure recorded", ha="center", va="center",
                      transform=layer_ax.transAxes)
    layer_ax.set_xlabel("layer")
    layer_ax.set_ylabel("state")
    layer_ax.set_title("channels / heads / neurons left per layer", fontsize=10)
    fig.suptitle(title, fontsize=11)
    _save(fig, path, fmt)
    plt.close(fig)
    return path


def _remain_text(record: dict[str, Any]) -> str:
    remain = record.get("remain_weight_after_cut", record.get("remain_weight"))
    return f"{100 * remain:.3g}%" if isinstance(remain, int | float) else ""
