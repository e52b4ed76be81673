"""`rsst compare` / `rsst report`: points equal the runs' own records, plots are real pictures,
and user mistakes are one line and exit 2.

Three tiny real runs (rsst, refill, imp on 8x8 synthetic images) feed the end-to-end checks;
the table logic (seeds, datasets, unfinished runs, NaN) runs on run directories fabricated from
copies of their JSON files.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_run
from PIL import Image
from rich.console import Console

from rsst.compare import compare_runs, find_runs
from rsst.config import RunConfig, validate
from rsst.plots import COMPARE_SIZE, DPI

QUIET = Console(quiet=True)
RUN_FILES = ("summary.json", "metrics.jsonl", "config.toml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("rsst", "refill", "imp"):
        config = validate(RunConfig(method=method, states=3, epochs=1, rate=0.3,
                                    train_subset=128, val_split=64, batch_size=64,
                                    eval_batch_size=256, device="cpu", backend="torch"))
        out[method] = tiny_run(config, out=root / method, console=QUIET)
    return out


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from rsst.cli import main

    monkeypatch.setattr(sys, "argv", ["rsst", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def copy_run(src: Path, dst: Path, with_states: bool = True) -> Path:
    """The run's JSON/TOML files only (no weights): all that compare reads."""
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    if with_states:
        for state_json in src.glob("state_*/state.json"):
            (dst / state_json.parent.name).mkdir()
            shutil.copy(state_json, dst / state_json.parent.name / "state.json")
    return dst


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_json_points_equal_summary_values(runs, tmp_path, monkeypatch, capsys):
    saved = tmp_path / "compare.json"
    code, out, err = cli(monkeypatch, capsys, "compare", *map(str, runs.values()), "--json",
                         "--json-out", str(saved))
    assert code == 0, err
    result = json.loads(out)
    assert json.loads(saved.read_text()) == result
    assert result["x"] == "remain" and result["metric"] == "val"
    groups = {g["method"]: g for g in result["groups"]}
    assert set(groups) == {"rsst", "refill", "imp"}
    for method, run_dir in runs.items():
        records = summary(run_dir)["states"]
        (run,) = groups[method]["runs"]
        points = run["points"]
        if method == "rsst":
            expected = [(0, "trained", records[0]["val_acc"], records[0]["remain_weight"])]
            for r in records[1:]:
                expected += [(r["state"], "before_cut", r["val_acc_before_cut"],
                              r["remain_weight"]),
                             (r["state"], "after_cut", r["val_acc"],
                              r["remain_weight_after_cut"])]
        else:
            expected = [(r["state"], "trained", r["val_acc"], r["remain_weight"])
                        for r in records]
        assert [(p["state"], p["phase"], p["acc"], p["remain"]) for p in points] == expected
        for p, r in zip([p for p in points if p["delivered"]], records, strict=True):
            assert p["macs"] == r["macs_ratio"] and p["params"] == r["params_ratio"]
        # one run per group: the group's points are the run's, std 0
        assert [(p["acc"], p["x"]) for p in groups[method]["points"]] == [
            (p["acc"], p["remain"]) for p in points]
        assert groups[method]["dense_acc"] == records[0]["val_acc"]
    # the imp run prunes 30 % of the remaining weights per state
    imp = [p["remain"] for p in groups["imp"]["runs"][0]["points"]]
    assert imp == pytest.approx([1.0, 0.7, 0.49], abs=1e-4)


@pytest.mark.slow
def test_test_metric_and_val_after_cut(runs):
    found = find_runs([runs["rsst"]])
    records = summary(runs["rsst"])["states"]
    test = compare_runs(found, metric="test")["groups"][0]["runs"][0]["points"]
    assert [p["acc"] for p in test if p["phase"] == "after_cut"] == [
        r["test_acc"] for r in records[1:]]
    assert [p["acc"] for p in test if p["phase"] == "before_cut"] == [
        r["test_acc_before_cut"] for r in records[1:]]
    assert [p["acc"] for p in test if p["phase"] != "after_cut"][0] == records[0]["test_acc"]
    delivered = compare_runs(found, metric="val_after_cut")["groups"][0]["points"]
    assert [p["phase"] for p in delivered] == ["trained", "after_cut", "after_cut"]


@pytest.mark.slow
def test_plot_is_a_real_picture(runs, tmp_path, monkeypatch, capsys):
    png = tmp_path / "compare.png"
    code, out, err = cli(monkeypatch, capsys, "compare", *map(str, runs.values()),
                         "--plot", str(png))
    assert code == 0, err
    assert "winning ticket" in out and "before cut" in out
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (COMPARE_SIZE[1] * DPI, COMPARE_SIZE[0] * DPI, 3)
    assert (image < 250).any(axis=2).mean() > 0.02  # not blank
    # every method's line is drawn in its own colour (matplotlib's first three)
    for rgb in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e), (0x2c, 0xa0, 0x2c)):
        assert (np.abs(image.astype(int) - rgb).sum(axis=2) < 30).sum() > 50, rgb
    svg = tmp_path / "compare.svg"
    code, _, err = cli(monkeypatch, capsys, "compare", str(runs["rsst"]), "--x", "macs",
                       "--plot", str(svg))
    assert code == 0, err
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


@pytest.mark.slow  # a real tiny run (module fixture)
def test_report_writes_no_file_unless_asked(runs, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(runs["rsst"], tmp_path / "run")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, out, err = cli(monkeypatch, capsys, "report", str(run_dir))
    assert code == 0, err
    assert "state" in out and "before cut" in out
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


@pytest.mark.slow  # a real tiny run (module fixture)
def test_report_plot_is_a_state_by_layer_heat_map(runs, tmp_path, monkeypatch, capsys):
    from rsst.plots import alive_matrix

    run_dir = copy_run(runs["rsst"], tmp_path / "run")
    target = tmp_path / "report.png"
    code, out, err = cli(monkeypatch, capsys, "report", str(run_dir), "--plot", str(target))
    assert code == 0, err
    assert f"wrote {target}" in out and not (run_dir / "report.png").exists()
    image = Image.open(target)
    assert image.size == (1200, 450)
    assert (np.asarray(image.convert("L")) < 250).mean() > 0.02
    records = summary(run_dir)["states"]
    layers, rows = alive_matrix(records)
    assert len(rows) == len(records) and all(len(row) == len(layers) for row in rows)
    first = records[-1]["groups"][layers[0]]
    assert rows[-1][0] == first["alive"] / first["total"]
    assert rows[0][0] == 1.0  # state 0 is dense


@pytest.mark.slow  # a real tiny run (module fixture)
def test_report_json_is_the_saved_records(runs, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(runs["rsst"], tmp_path / "run")
    target = tmp_path / "report.svg"
    code, out, err = cli(monkeypatch, capsys, "report", str(run_dir), "--json", "--plot",
                         str(target))
    assert code == 0, err
    data = json.loads(out)  # stdout holds the JSON alone; "wrote" goes to stderr
    assert f"wrote {target}" in err and "<svg" in target.read_text()
    assert "<image" in target.read_text()  # the layer map is a raster (imshow), not lines
    assert data["method"] == "rsst" and data["run_dir"] == str(run_dir)
    assert data["states"] == summary(run_dir)["states"]


@pytest.mark.slow
def test_seeds_become_mean_and_std(runs, tmp_path):
    accs = [0.5, 0.6, 0.8]
    for i, acc in enumerate(accs):
        run_dir = copy_run(runs["refill"], tmp_path / f"seed{i}", with_states=False)
        data = summary(run_dir)
        data["states"][1]["val_acc"] = acc
        (run_dir / "summary.json").write_text(json.dumps(data))
    (group,) = compare_runs(find_runs([str(tmp_path / "seed*")]))["groups"]
    assert group["n_runs"] == 3
    state1 = [p for p in group["points"] if p["state"] == 1][0]
    assert state1["acc"] == pytest.approx(statistics.fmean(accs))
    assert state1["acc_std"] == pytest.approx(statistics.stdev(accs))
    assert state1["n"] == 3


@pytest.fixture
def ref_runs(tmp_path) -> dict[str, Path]:
    if not Path("/work/ref/rsst").exists():
        pytest.skip("reference runs not available")
    return {m: copy_run(Path(f"/work/ref/{m}"), tmp_path / "runs" / m)
            for m in ("rsst", "refill", "imp")}


def test_winning_ticket_is_sparsest_within_half_a_point(ref_runs):
    for method, accs in (("imp", [0.80, 0.797, 0.70]), ("refill", [0.80, 0.79, 0.81])):
        data = summary(ref_runs[method])
        s0, s1 = data["states"]
        s2 = {**s1, "state": 2, "remain_weight": 0.4}
        data["states"] = [s0, s1, s2]
        for record, acc in zip(data["states"], accs, strict=True):
            record["val_acc"] = acc
        (ref_runs[method] / "summary.json").write_text(json.dumps(data))
    result = compare_runs(find_runs([ref_runs["imp"], ref_runs["refill"]]))
    groups = {g["method"]: g for g in result["groups"]}
    assert groups["imp"]["winning_ticket"]["state"] == 1  # 0.797 ≥ 0.80 − 0.005; 0.70 is not
    assert groups["refill"]["winning_ticket"]["state"] == 2  # 0.79 is not, 0.81 is
    assert groups["refill"]["best"]["acc"] == 0.81


def test_parent_dir_and_globs_skip_non_runs(ref_runs, tmp_path, monkeypatch, capsys):
    (tmp_path / "runs" / "notes").mkdir()
    code, out, err = cli(monkeypatch, capsys, "compare", str(tmp_path / "runs"), "--json")
    assert code == 0, err
    assert {g["method"] for g in json.loads(out)["groups"]} == {"rsst", "refill", "imp"}
    code, out, err = cli(monkeypatch, capsys, "compare", str(tmp_path / "runs" / "r*"),
                         str(tmp_path / "runs" / "notes"), "--json")
    assert code == 0
    assert {g["method"] for g in json.loads(out)["groups"]} == {"rsst", "refill"}
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "notes" in lines[0] and "not an rsst run directory" in lines[0]
    code, out, err = cli(monkeypatch, capsys, "compare", str(tmp_path / "runs" / "notes"))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: no run directories")


def test_mixed_datasets_need_force(ref_runs, monkeypatch, capsys):
    data = summary(ref_runs["imp"])
    data["dataset"] = "cifar10"
    (ref_runs["imp"] / "summary.json").write_text(json.dumps(data))
    code, out, err = cli(monkeypatch, capsys, "compare", *map(str, ref_runs.values()))
    assert code == 2 and "different datasets" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli(monkeypatch, capsys, "compare", *map(str, ref_runs.values()),
                         "--force", "--json")
    assert code == 0
    assert {g["dataset"] for g in json.loads(out)["groups"]} == {"cifar10", "synthetic"}


def test_unfinished_and_older_runs(ref_runs, monkeypatch, capsys):
    # killed after state 1 wrote its files but before the summary: state.json still counts,
    # a torn metrics line is ignored
    rsst = ref_runs["rsst"]
    data = summary(rsst)
    data["states"] = data["states"][:1]
    (rsst / "summary.json").write_text(json.dumps(data))
    with open(rsst / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "sta')
    # an older run: no summary.json, only its metrics lines, a record without MAC fields
    imp = ref_runs["imp"]
    (imp / "summary.json").unlink()
    shutil.rmtree(imp / "state_01")
    lines = [json.loads(line) for line in (imp / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        record.pop("macs_ratio", None)
    (imp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    # a NaN accuracy (a diverged evaluation) becomes null, never NaN, in the JSON
    refill = ref_runs["refill"]
    text = (refill / "summary.json").read_text()
    data = json.loads(text)
    data["states"][1]["val_acc"] = float("nan")
    (refill / "summary.json").write_text(json.dumps(data))
    code, out, err = cli(monkeypatch, capsys, "compare", *map(str, ref_runs.values()),
                         "--x", "macs", "--json")
    assert code == 0, err
    assert "NaN" not in out
    groups = {g["method"]: g for g in json.loads(out)["groups"]}
    assert [p["state"] for p in groups["rsst"]["runs"][0]["points"]] == [0, 1, 1]
    assert [p["state"] for p in groups["imp"]["points"]] == [0, 1]
    assert groups["imp"]["points"][1]["x"] is None  # no MAC field: no x, no crash
    assert groups["refill"]["points"][1]["acc"] is None


def test_plot_without_matplotlib_says_how_to_install(ref_runs, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = cli(monkeypatch, capsys, "compare", str(ref_runs["rsst"]), "--plot",
                         str(tmp_path / "c.png"))
    assert code == 2 and "pip install 'rsst-prune[plot]'" in err and "Traceback" not in err
    assert not (tmp_path / "c.png").exists()
    code, out, err = cli(monkeypatch, capsys, "compare", str(ref_runs["rsst"]), "--plot",
                         str(tmp_path / "c.jpg"))
    assert code == 2 and ".png or .svg" in err


# -- grouping by identity, intervals, study directories -------------------------------------------
def _variant(src: Path, dst: Path, seed: int, acc: float, **settings) -> Path:
    """A copy of a run with other settings in its config.toml, its seed, and state 1's val
    accuracy set to ``acc``."""
    run_dir = copy_run(src, dst, with_states=False)
    text = (run_dir / "config.toml").read_text().replace("seed = 0", f"seed = {seed}")
    for key, value in settings.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} = ")]
        text = "\n".join(lines).replace("[run]", f"[run]\n{key} = {json.dumps(value)}") + "\n"
    (run_dir / "config.toml").write_text(text)
    data = summary(run_dir)
    data["states"][1]["val_acc"] = acc
    (run_dir / "summary.json").write_text(json.dumps(data))
    return run_dir


@pytest.mark.slow
def test_groups_pool_only_seeds_and_are_labelled_by_what_differs(runs, tmp_path):
    accs = {0.3: [0.5, 0.7], 0.5: [0.6, 0.65, 0.8]}
    for rate, values in accs.items():
        for seed, acc in enumerate(values):
            _variant(runs["refill"], tmp_path / f"r{rate}-s{seed}", seed, acc, rate=rate)
    _variant(runs["imp"], tmp_path / "imp", 0, 0.4)
    result = compare_runs(find_runs([str(tmp_path / "*")]))
    labels = {g["label"]: g for g in result["groups"]}
    assert set(labels) == {"refill rate=0.3", "refill rate=0.5", "imp · resnet20"}
    for rate, values in accs.items():
        group = labels[f"refill rate={rate}"]
        assert group["n_runs"] == len(values) and group["varied"] == {"rate": rate}
        (state1,) = [p for p in group["points"] if p["state"] == 1]
        n = len(values)
        mean, std = statistics.fmean(values), statistics.stdev(values)
        t = {2: 12.7062, 3: 4.3027}[n]  # t(0.975; n − 1), from a printed table
        assert (state1["n"], state1["acc"]) == (n, pytest.approx(mean))
        assert state1["ci95"] == pytest.approx([mean - t * std / n**0.5, mean + t * std / n**0.5])
    (imp1,) = [p for p in labels["imp · resnet20"]["points"] if p["state"] == 1]
    assert imp1["n"] == 1 and imp1["ci95"] is None  # one seed: no interval


def test_t_quantiles_match_the_t_distribution():
    """t975 against the t distribution's CDF, integrated numerically from its density."""
    import math

    from rsst.study.stats import t975

    def cdf(t: float, df: int, steps: int = 20000) -> float:
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        h = t / steps  # Simpson's rule on [0, t], plus the half below 0
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    for df in (1, 2, 3, 4, 9, 29, 30, 31, 60, 200):
        assert cdf(t975(df), df) == pytest.approx(0.975, abs=2e-5), df


@pytest.mark.slow
def test_compare_reads_a_study_directory(runs, tmp_path, monkeypatch, capsys):
    study = tmp_path / "study"
    (study / "runs" / "refill-abc").mkdir(parents=True)
    (study / "study.toml").write_text("[study]\nseeds = [0, 1]\n")
    for seed, acc in enumerate((0.5, 0.6)):
        _variant(runs["refill"], study / "runs" / "refill-abc" / f"seed-{seed}", seed, acc)
    code, out, err = cli(monkeypatch, capsys, "compare", str(study), "--json")
    assert code == 0, err
    (group,) = json.loads(out)["groups"]
    assert group["n_runs"] == 2 and [r["seed"] for r in group["runs"]] == [0, 1]
    code, out, err = cli(monkeypatch, capsys, "compare", str(study / "runs"), "--json")
    assert code == 0, err
    assert json.loads(out)["groups"][0]["n_runs"] == 2
