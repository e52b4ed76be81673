"""`rsst study`: run identity, the study file's checks, and a study killed at any moment that,
started again, ends exactly where an uninterrupted study ends.

The end-to-end runs are tiny: ResNet-20 on 56 8×8 images, 2 states × 1 epoch, one thread per
process, each run its own ``python -m rsst run`` process (as the study runs them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean, write_two_classes

from rsst import cli, rundir
from rsst.config import RunConfig, build_config
from rsst.errors import UserError
from rsst.study.executors import FINISHED
from rsst.study.identity import identity_hash, identity_name, identity_settings
from rsst.study.spec import parse_study, read_study

ROOT = Path(__file__).resolve().parent.parent


# -- identity ------------------------------------------------------------------------------------
def test_identity_hashes_only_the_settings_that_differ_from_the_defaults():
    config = build_config(overrides={"method": "refill", "rate": 0.5, "epochs": 3, "seed": 7})
    # computed independently: sorted compact JSON of exactly the changed settings, sha256
    text = '{"epochs":3,"method":"refill","rate":0.5}'
    assert identity_settings(config) == {"epochs": 3, "method": "refill", "rate": 0.5}
    assert identity_hash(config) == hashlib.sha256(text.encode()).hexdigest()[:10]
    assert identity_name(config) == "refill-" + identity_hash(config)


def test_identity_ignores_seed_out_and_cache_and_equal_values_spelt_differently():
    a = build_config(overrides={"rate": 0.5, "seed": 1, "out": "x", "cache_dir": "/c"})
    b = build_config(overrides={"rate": 0.5, "seed": 2})
    c = dataclasses.replace(b, rate=1 / 2, lr=RunConfig().lr)  # a default written out
    assert identity_hash(a) == identity_hash(b) == identity_hash(c)
    assert identity_hash(build_config(overrides={"rate": 0.4})) != identity_hash(b)
    # an int given for a float setting is the same experiment as the float
    assert identity_hash(dataclasses.replace(b, gamma=1)) == identity_hash(
        dataclasses.replace(b, gamma=1.0))


def test_identity_of_a_preset_is_its_values():
    by_preset = build_config(preset="cifar10-resnet20", overrides={"data_dir": "/d"})
    spelt_out = build_config(overrides={**_preset("cifar10-resnet20"), "data_dir": "/d"})
    assert identity_hash(by_preset) == identity_hash(spelt_out)


def _preset(name):
    from rsst.config import PRESETS

    return PRESETS[name]


# -- the study file --------------------------------------------------------------------------------
BASE = {"study": {"seeds": [0, 1]}, "base": {"epochs": 1}, "grid": {"method": ["rsst", "refill"]}}


def test_grid_method_tables_and_variants_expand_to_experiments():
    study = parse_study({**BASE, "method": {"rsst": {"reg_granularity": 1.0}},
                         "variant": [{"rate": 0.2}, {"rate": 0.5}]})
    got = [(e.config.method, e.config.rate, e.config.reg_granularity, e.config.epochs)
           for e in study.experiments]
    assert got == [("rsst", 0.2, 1.0, 1), ("rsst", 0.5, 1.0, 1),
                   ("refill", 0.2, 2.0, 1), ("refill", 0.5, 2.0, 1)]
    assert study.seeds == [0, 1]
    assert len({e.name for e in study.experiments}) == 4
    assert parse_study({"study": {"seeds": 3}}).seeds == [0, 1, 2]
    assert parse_study({}).seeds == [RunConfig().seed]  # no seed given: the run's default


ISSUE_STUDY = """
name = "cifar10-resnet20"
[base]                 # any `rsst run` setting, preset included
preset = "cifar10-resnet20"
data_dir = "~/data/cifar10"
[grid]                 # lists expand as a cartesian product; `seed` gives replicates
method = ["rsst", "refill", "imp"]
seed = [0, 1, 2]
[[variants]]           # optional extra settings, each crossed with [grid]; lists expand here too
method = "snip"
target_remain = [0.5, 0.2, 0.1]
controls = ["reinit", "shuffle"]   # optional, see below
"""


def test_the_issue_study_file_reads_as_written(tmp_path):
    import tomllib

    from rsst.study.spec import resolved_study_toml

    path = tmp_path / "issue.toml"
    path.write_text(ISSUE_STUDY)
    study = read_study(path)
    assert study.name == "cifar10-resnet20" and study.seeds == [0, 1, 2]
    got = [(e.config.method, e.config.target_remain, e.controls) for e in study.experiments]
    # the grid's runs, then the variant crossed with the grid: its method replaces the grid's,
    # so the three crossings of each target are one experiment
    assert got == [("rsst", None, ()), ("refill", None, ()), ("imp", None, ()),
                   ("snip", 0.5, ("reinit", "shuffle")), ("snip", 0.2, ("reinit", "shuffle")),
                   ("snip", 0.1, ("reinit", "shuffle"))]
    preset = build_config(preset="cifar10-resnet20", overrides={"data_dir": "~/data/cifar10"})
    assert study.experiments[0].name == identity_name(preset)
    assert all(e.config.epochs == 160 for e in study.experiments)
    # the study written into DIR reruns the same experiments with the same controls
    again = parse_study(tomllib.loads(resolved_study_toml(study)))
    assert [(e.name, e.controls) for e in again.experiments] == [
        (e.name, e.controls) for e in study.experiments]


def test_variants_cross_the_grid_and_expand_their_lists():
    study = parse_study({"base": {"states": 3}, "grid": {"method": ["rsst", "refill"]},
                         "variants": [{"rate": [0.2, 0.4], "controls": ["reinit"]},
                                      {"method": "imp", "controls": ["shuffle"]}]})
    got = [(e.config.method, e.config.rate, e.controls) for e in study.experiments]
    default = RunConfig().rate
    assert got == [("rsst", default, ()), ("refill", default, ()),
                   ("rsst", 0.2, ("reinit",)), ("rsst", 0.4, ("reinit",)),
                   ("imp", default, ("shuffle",)),
                   ("refill", 0.2, ("reinit",)), ("refill", 0.4, ("reinit",))]
    assert study.experiments[2].ticket_states == [1, 2]  # every state ≥ 1
    # a list setting (milestones) is one value; a list of them expands
    one = parse_study({"variants": [{"milestones": [1, 2]}]})
    assert [e.config.milestones for e in one.experiments][1:] == [[1, 2]]
    two = parse_study({"variants": [{"milestones": [[1], [2]]}]})
    assert [e.config.milestones for e in two.experiments][1:] == [[1], [2]]


def test_the_running_study_keeps_its_identities_in_the_issue_format(tmp_path):
    """studies/cifar10-resnet20-reduced.toml, in the issue's spelling, names the folders of the
    study started from it in the older spelling ([study] seeds); both spellings agree."""
    new = read_study(ROOT / "studies" / "cifar10-resnet20-reduced.toml")
    text = (ROOT / "studies" / "cifar10-resnet20-reduced.toml").read_text()
    older = text.replace(f'name = "{new.name}"', f'[study]\nname = "{new.name}"\nseeds = [0, 1]'
                         ).replace("seed = [0, 1]\n", "")
    assert "[study]" in older and "seed = " not in older
    path = tmp_path / "older.toml"
    path.write_text(older)
    old = read_study(path)
    assert (new.name, new.seeds) == (old.name, old.seeds) == ("cifar10-resnet20-reduced", [0, 1])
    assert [e.name for e in new.experiments] == [e.name for e in old.experiments]
    # the folders of the study running since the lead started it
    assert {e.name for e in new.experiments} == {
        "imp-fe28f0255c", "omp-a312338062", "random-9e276b5dcb", "refill-fb21210c4e",
        "rsst-cbcc8667df", "snip-3d1e52b225", "synflow-f8a5b7a4f1"}


@pytest.mark.parametrize("data, words", [
    ({**BASE, "base": {"lrr": 0.1}}, ["[base]", "'lrr'", "did you mean lr?"]),
    ({**BASE, "base": {"epochs": "two"}}, ["[base]", "epochs must be an integer"]),
    ({**BASE, "grid": {"method": []}}, ["[grid] method", "empty list", "one or more"]),
    ({**BASE, "grid": {"rate": 0.5}}, ["[grid] rate", "must be a list"]),
    ({**BASE, "grid": {"rate": [0.5, 1.5]}}, ["run rsst rate=1.5", "--rate 1.5 is outside"]),
    ({**BASE, "base": {"target_remain": 0.2}}, ["run rsst", "--target-remain"]),
    ({**BASE, "method": {"imp": {"rate": 0.2}}}, ["[method.imp] applies to no run"]),
    ({**BASE, "base": {"seed": 3}}, ["[base] sets seed", "[grid] seed = [0, 1]"]),
    ({**BASE, "grid": {"method": ["rsst"], "seed": [0]}}, ["seeds are given twice"]),
    ({"grid": {"seed": 2}}, ["[grid] seed = 2", "list of seeds"]),
    ({"grid": {"seed": []}}, ["[grid] seed = []", "list of seeds"]),
    ({"nmae": "x"}, ["unknown key 'nmae'", "name = "]),
    ({"name": 3}, ["name = 3", "give a string"]),
    ({"grid": {}, "variants": [{"rate": []}]}, ["[variants 1] rate = []", "empty list"]),
    ({"variants": [{"rate": 0.3}], "variant": [{"rate": 0.4}]}, ["both [[variants]]"]),
    ({"variants": [{"seed": [1]}]}, ["[variants 1] sets seed", "[grid] seed"]),
    ({"variants": [{"rate": ["x"]}]}, ["[variants 1]", "rate"]),
    ({"variants": [{"controls": ["scramble"]}]}, ["[variants 1] controls", "reinit"]),
    ({"variants": [{"controls": "reinit"}]}, ["[variants 1] controls", "give a list"]),
    ({"variants": [{"method": "refill", "rate": 1.5}]}, ["run refill rate=1.5", "--rate"]),
    ({**BASE, "study": {"seeds": [1, 1]}}, ["repeats a seed"]),
    ({**BASE, "extra": {}}, ["unknown table [extra]"]),
    ({**BASE, "variant": [{"rate": 0.3}, {"rate": 0.3}]}, ["same experiment"]),
    ({**BASE, "controls": {"kinds": ["scramble"]}}, ["[controls] kinds", "reinit"]),
    ({**BASE, "controls": {"state": 5}}, ["[controls] state = 5", "has 3 states"]),
    ({**BASE, "controls": {"methods": ["imp"]}}, ["[controls] methods", "'imp'"]),
    ({**BASE, "controls": {"when": 1}}, ["[controls] has unknown key 'when'"]),
    ({**BASE, "slurm": {"partitionn": "gpu"}}, ["[slurm] has unknown key 'partitionn'"]),
])
def test_bad_study_files_name_the_key_and_the_fix(data, words):
    with pytest.raises(UserError) as info:
        parse_study(data, "s.toml")
    message = str(info.value)
    assert message.startswith("study file s.toml: ")
    assert all(w in message for w in words), message


def test_cli_refuses_a_bad_study_file_with_one_line_and_creates_nothing(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text('[study]\nseeds = [0]\n[grid]\nmethod = ["rsst", "nope"]\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["study", str(study), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "study file" in err and "nope" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert read_study  # the same reader the CLI uses


# -- running: uninterrupted, killed, resumed ---------------------------------------------------
STUDY = """
[study]
name = "tiny"
seeds = [0, 1]
[base]
dataset = "imagefolder"
data_dir = "{images}"
arch = "resnet20"
states = 2
epochs = 1
batch_size = 16
device = "cpu"
backend = "torch"
[grid]
method = ["refill"]
[controls]
kinds = ["shuffle"]
state = 1
"""


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    images = write_two_classes(root / "images", train=28, test=4)
    path = root / "tiny.toml"
    path.write_text(STUDY.format(images=images))
    return path


def start_study(study_file: Path, out: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RSST_CACHE": str(out.parent / "cache"),
           "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    env.pop("RSST_TEST_KILL_AT", None)
    if kill_at is not None:
        env["RSST_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "rsst", "study", str(study_file), "--out",
                             str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out + err


def results(out: Path) -> dict[str, dict]:
    """Every run directory of a study: its summary without wall times and paths."""
    return {str(p.parent.relative_to(out)): clean(json.loads(p.read_text()))
            for p in sorted([*out.glob("runs/*/seed-*/summary.json"),
                             *out.glob("controls/*/seed-*/*/summary.json")])}


@pytest.fixture(scope="module")
def reference(study_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "study"
    code, text = finish(start_study(study_file, out))
    assert code == 0, text[-3000:]
    return out


@pytest.mark.slow
def test_a_study_writes_one_run_per_identity_and_seed(reference):
    (folder,) = (reference / "runs").iterdir()
    identity = json.loads((folder / "identity.json").read_text())
    assert folder.name == f"refill-{identity['hash']}"
    assert identity["hash"] == hashlib.sha256(identity["hash_of"].encode()).hexdigest()[:10]
    assert sorted(p.name for p in folder.glob("seed-*") if p.is_dir()) == ["seed-0", "seed-1"]
    for seed in (0, 1):
        run = folder / f"seed-{seed}"
        assert (run / FINISHED).is_file()
        assert [r["state"] for r in json.loads((run / "summary.json").read_text())["states"]] \
            == [0, 1]
        assert f"seed = {seed}" in (run / "config.toml").read_text()
    # the resolved study reruns the same experiments and controls
    again = read_study(reference / "study.toml")
    assert [e.name for e in again.experiments] == [folder.name]
    assert again.controls == {"kinds": ["shuffle"], "state": 1, "methods": ["refill"]}
    for seed in (0, 1):  # a shuffle control of each run's state 1
        control = reference / "controls" / folder.name / f"seed-{seed}" / "shuffle-state-1"
        assert (control / FINISHED).is_file()
        record = json.loads((control / "control.json").read_text())
        assert (record["control"], record["state"], record["source_seed"]) == ("shuffle", 1,
                                                                                seed)


@pytest.mark.slow
def test_a_second_start_skips_finished_runs(study_file, reference):
    before = {p: p.stat().st_mtime_ns for p in reference.glob("runs/*/seed-*/summary.json")}
    code, text = finish(start_study(study_file, reference))
    assert code == 0, text[-3000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "2 finished already" in " ".join(text.split())


def _wait_for(path_glob: str, root: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not list(root.glob(path_glob)):
        assert proc.poll() is None, finish(proc)[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_study_started_again_matches_an_uninterrupted_one(study_file, reference,
                                                                 tmp_path):
    out = tmp_path / "study"
    # 1. SIGKILL the whole process group (the study and its run) mid-run: after state 0
    proc = start_study(study_file, out)
    _wait_for("runs/*/seed-0/state_00/state.json", out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert not list(out.glob(f"runs/*/seed-*/{FINISHED}"))
    # 2. the study dies after a run's process exited 0, before it marked the run finished
    code, text = finish(start_study(study_file, out, kill_at="study-before-marker"))
    assert code == -9, text[-3000:]
    assert not list(out.glob(f"runs/*/seed-*/{FINISHED}"))
    # 3. started again: it resumes seed 0 (already complete) and runs seed 1
    code, text = finish(start_study(study_file, out))
    assert code == 0, text[-3000:]
    assert len(list(out.glob(f"runs/*/seed-*/{FINISHED}"))) == 2
    assert len(list(out.glob(f"controls/*/seed-*/shuffle-state-1/{FINISHED}"))) == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("runs/*/seed-*")
                  if p.is_dir()) == sorted(p.relative_to(reference).as_posix()
                                           for p in reference.glob("runs/*/seed-*")
                                           if p.is_dir())
    assert results(out) == results(reference)


@pytest.mark.slow
def test_slurm_path_through_submitits_debug_executor(study_file, reference, tmp_path):
    pytest.importorskip("submitit")
    from rich.console import Console

    from rsst.study.run import run_study

    out = tmp_path / "study"
    env = {"PYTHONPATH": str(ROOT), "RSST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        outcome = run_study(study_file, out, executor="slurm", cluster="debug",
                            console=Console(quiet=True))
    assert not outcome.failed
    assert results(out) == results(reference)


@pytest.mark.slow
def test_report_carries_n_intervals_chance_and_controls(reference, tmp_path):
    from rsst.study.report import write_report
    from rsst.study.stats import t975

    study = tmp_path / "study"
    shutil.copytree(reference, study)
    written = write_report(study)
    assert [p.name for p in written] == ["report.md", "compare.json", "compare.png"]
    text = (study / "report.md").read_text()
    runs = sorted(study.glob("runs/*/seed-*/summary.json"))
    accs = [json.loads(p.read_text())["states"][1]["val_acc"] for p in runs]
    mean, std = statistics.fmean(accs), statistics.stdev(accs)
    half = t975(1) * std / 2**0.5
    assert f"{100 * mean:.2f} ± {100 * std:.2f} (n = 2, 95 % CI [{100 * (mean - half):.2f}, " \
        f"{100 * (mean + half):.2f}])" in text
    assert "50 % (1/2 classes)" in text  # two classes: chance is one half
    # the evaluation images: 56 training images, a tenth carved off as validation
    assert {json.loads(p.read_text())["val_images"] for p in runs} == {56 // 10}
    assert "| 2 / 2 | 5 | 50 (1/2) |" in text
    assert "## Controls beside their tickets" in text and "| shuffle |" in text
    result = json.loads((study / "compare.json").read_text())
    (control,) = [g for g in result["groups"] if g["control"]]
    assert control["label"].startswith("shuffle of refill") and control["n_runs"] == 2


@pytest.mark.slow
def test_report_flag_writes_the_answer_from_what_is_finished_and_runs_nothing(
        reference, study_file, tmp_path, capsys):
    assert (reference / "report.md").is_file()  # a study writes its answer when it ends
    study = tmp_path / "study"
    shutil.copytree(reference, study)
    for name in ("report.md", "compare.json", "compare.png"):
        (study / name).unlink()
    shutil.rmtree(next(study.glob("runs/*/seed-1")))  # a run not done yet
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    with pytest.raises(SystemExit) as info:
        cli.main(["study", str(study_file), "--out", str(study), "--report"])
    assert info.value.code == 0
    after = sorted(p.relative_to(study) for p in study.rglob("*"))
    assert sorted(set(after) - set(before)) == [Path("compare.json"), Path("compare.png"),
                                                Path("report.md")]
    assert "| 1 / 1 | 5 |" in (study / "report.md").read_text()  # one seed done
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(["study", str(study_file), "--out", str(tmp_path / "none"), "--report"])
    assert info.value.code == 2 and "is not a study directory" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_refusals_before_anything_is_written(tmp_path, study_file):
    from rsst.study.run import run_study

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files and no study.toml"):
        run_study(study_file, taken)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    for kwargs, words in (({"executor": "cloud"}, "choose one of local, slurm"),
                          ({"workers": 0}, "give 1 or more"),
                          ({"executor": "slurm"}, "no SLURM cluster here")):
        if kwargs.get("executor") == "slurm" and shutil.which("srun"):
            continue  # a SLURM machine: the executor is available
        with pytest.raises(UserError, match=words):
            run_study(study_file, tmp_path / "new", **kwargs)
        assert not (tmp_path / "new").exists()


# -- executors: worker environments, command lines, SLURM options --------------------------------
def _task(tmp_path: Path, resumed: bool = False):
    from rsst.study.executors import RunTask

    run = tmp_path / "run"
    if resumed:
        run.mkdir()
        (run / "config.toml").write_text("")
    return RunTask(name="rsst-x/seed-0", run_dir=run, start=("run", "--config", "c.toml",
                                                            "--seed", "0", "--out", str(run)),
                   seed=0, log=tmp_path / "log")


def test_local_workers_get_a_gpu_each_or_an_even_share_of_the_cpu(monkeypatch):
    from rsst.study.executors import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu = [worker_env(i, 3, gpus=[], cpus=16) for i in range(3)]
    assert [e["OMP_NUM_THREADS"] for e in cpu] == ["5"] * 3  # 16 cores // 3 workers
    assert all("CUDA_VISIBLE_DEVICES" not in e or e["CUDA_VISIBLE_DEVICES"] ==
               os.environ.get("CUDA_VISIBLE_DEVICES") for e in cpu)
    gpu = [worker_env(i, 4, gpus=["2", "5"], cpus=16) for i in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in gpu] == ["2", "5", "2", "5"]
    assert worker_env(0, 1, gpus=[], cpus=2)["OMP_NUM_THREADS"] == "2"
    assert str(ROOT) in worker_env(0, 1, gpus=[], cpus=2)["PYTHONPATH"].split(os.pathsep)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice stays
    assert worker_env(0, 2, gpus=[], cpus=16)["OMP_NUM_THREADS"] == "1"


def test_the_default_workers_follow_the_visible_gpus(monkeypatch, tmp_path, study_file):
    import rsst.study.run as study_run

    seen = {}

    def fake_local(tasks, workers, events, gpus):
        seen["workers"], seen["gpus"] = workers, gpus
        return []

    monkeypatch.setattr(study_run, "visible_gpus", lambda: ["0", "1", "2"])
    monkeypatch.setattr(study_run, "run_local", fake_local)
    from rich.console import Console

    study_run.run_study(study_file, tmp_path / "out", console=Console(quiet=True))
    assert seen == {"workers": 3, "gpus": ["0", "1", "2"]}


def test_a_run_with_several_gpus_starts_under_torchrun(tmp_path):
    from rsst.study.executors import task_command

    fresh = _task(tmp_path)
    assert task_command(fresh) == [sys.executable, "-m", "rsst", *fresh.start]
    assert task_command(fresh, 4) == [sys.executable, "-m", "torch.distributed.run",
                                      "--standalone", "--nproc-per-node=4", "-m", "rsst",
                                      *fresh.start]
    # torchrun takes that command line as it is
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(task_command(fresh, 4)[3:])
    assert (args.nproc_per_node, args.module, args.training_script) == ("4", True, "rsst")
    assert args.training_script_args == list(fresh.start)
    resumed = _task(tmp_path, resumed=True)
    assert task_command(resumed, 2)[-4:] == ["rsst", "run", "--resume", str(resumed.run_dir)]
    control = dataclasses.replace(fresh, start=("ticket", "r", "--state", "1"),
                                  run_dir=tmp_path / "control")
    assert task_command(control, 2)[:3] == [sys.executable, "-m", "rsst"]  # one process


def test_slurm_flags_over_the_file_table_reach_submitit(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun
    from rsst.study.executors import parse_slurm_args, slurm_executor
    from rsst.study.run import slurm_options

    study = parse_study({"slurm": {"partition": "cpu", "qos": "low"}})
    options = slurm_options(study, partition="gpu", time="1-02:30:00", gpus_per_run=4,
                            account="lab")
    assert options == {"partition": "gpu", "qos": "low", "time_min": 24 * 60 + 150,
                       "gpus_per_run": 4, "account": "lab"}
    executor = slurm_executor(tmp_path / "s", options, 2, cluster="slurm",
                              extra=parse_slurm_args(["mail-type=END", "exclude=n1"]))
    params = executor._executor.parameters
    assert (params["partition"], params["time"], params["gpus_per_node"], params["account"],
            params["ntasks_per_node"], params["qos"]) == ("gpu", 1590, 4, "lab", 1, "low")
    assert params["additional_parameters"] == {"mail_type": "END", "exclude": "n1"}


@pytest.mark.parametrize("kwargs, words", [
    ({"slurm": {"partition": "gpu"}}, "--slurm-partition applies to --executor slurm"),
    ({"slurm_args": ["qos=high"]}, "--slurm-arg applies to --executor slurm"),
    ({"executor": "slurm", "slurm_args": ["qos"]}, "--slurm-arg 'qos': give key=value"),
    ({"executor": "slurm", "slurm": {"time": "soon"}}, "--slurm-time 'soon': give minutes"),
    ({"executor": "slurm", "slurm": {"gpus_per_run": 0}}, "--slurm-gpus-per-run 0"),
])
def test_bad_slurm_flags_are_refused_before_anything_is_written(tmp_path, study_file, kwargs,
                                                                words):
    from rsst.study.run import run_study

    with pytest.raises(UserError, match=words):
        run_study(study_file, tmp_path / "new", cluster="debug", **kwargs)
    assert not (tmp_path / "new").exists()


def test_cli_slurm_flags_and_a_bad_one(tmp_path, study_file, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["study", str(study_file), "--out", str(tmp_path / "o"), "--slurm-time", "3",
                  "--slurm-arg", "qos=high"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--slurm-time applies to --executor slurm" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


# -- progress: a live table in a terminal, one line per event in a pipe -----------------------
def test_progress_lines_in_a_pipe_and_a_table_in_a_terminal(tmp_path):
    import io

    from rich.console import Console

    from rsst.study.executors import TaskResult
    from rsst.study.progress import StudyProgress

    task = _task(tmp_path)
    other = dataclasses.replace(task, name="imp-y/seed-0", run_dir=tmp_path / "other")
    buffer = io.StringIO()
    progress = StudyProgress([task, other], {task.name: 3, other.name: 3},
                             Console(file=buffer, width=200), live=False)
    progress.started(task.name)
    progress.poll()
    (task.run_dir / "state_00").mkdir(parents=True)
    (task.run_dir / "state_00" / rundir.STATE_WEIGHTS).write_bytes(b"")
    progress.poll()
    assert "running state 2 of 3" in _render(progress.table())
    assert "queued" in _render(progress.table())
    progress.finished(TaskResult(task.name, 0, seconds=60))
    progress.started(other.name)
    progress.finished(TaskResult(other.name, 3, seconds=6, last_line="error: diverged"))
    progress.poll()
    lines = buffer.getvalue().splitlines()
    assert lines == ["started rsst-x/seed-0 (0 of 3 states finished before)",
                     "rsst-x/seed-0: state 0 finished (1 of 3)",
                     "done rsst-x/seed-0 in 1.0 min",
                     "started imp-y/seed-0 (0 of 3 states finished before)",
                     "failed imp-y/seed-0 (exit 3) after 0.1 min: error: diverged"]
    table = _render(progress.table())
    assert "1 done" in table and "1 failed" in table and "exit 3: error: diverged" in table
    terminal = io.StringIO()
    live = StudyProgress([task], {task.name: 3}, Console(file=terminal, force_terminal=True,
                                                         width=200), live=None)
    assert live.live_table
    with live:
        live.started(task.name)
        live.poll()
    assert "started" not in terminal.getvalue() and "running state" in terminal.getvalue()


def _render(table) -> str:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    return console.file.getvalue()


# -- the report's rules ----------------------------------------------------------------------
def _point_run(accs_by_state: dict[int, float]) -> dict:
    return {"dir": "r", "seed": 0, "points": [
        {"state": s, "phase": "trained", "acc": a, "remain": 0.5 ** s}
        for s, a in accs_by_state.items()]}


def test_the_winning_ticket_is_within_half_a_point_and_its_interval_meets_dense():
    from rsst.compare import _group

    # dense exactly 0.800 over two seeds (interval [0.8, 0.8]); state 2 is within half a
    # point (0.797) but its interval [0.797, 0.797] misses dense's; state 1 meets it
    runs = [_point_run({0: 0.800, 1: 0.799, 2: 0.797}), _point_run({0: 0.800, 1: 0.801,
                                                                   2: 0.797})]
    group = _group("imp", "resnet20", "cifar10", runs, "remain")
    assert group["winning_ticket"]["state"] == 1
    # one seed: no intervals, the half-point rule alone
    alone = _group("imp", "resnet20", "cifar10", runs[:1], "remain")
    assert alone["winning_ticket"]["state"] == 2


def test_eval_images_from_the_summary_or_the_data_settings(tmp_path):
    from rsst.config import save_config
    from rsst.study.report import eval_images

    def run(name: str, summary: dict | None, **config) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if summary is not None:
            (folder / "summary.json").write_text(json.dumps(summary))
        save_config(build_config(overrides=config), folder / "config.toml")  # as runs write it
        return folder

    assert eval_images(run("new", {"val_images": 123}, dataset="cifar10", data_dir="d")) == 123
    assert eval_images(run("old", {}, dataset="cifar10", data_dir="d", val_split=700)) == 700
    assert eval_images(run("cifar", {}, dataset="cifar100", data_dir="d")) == 5000
    assert eval_images(run("synthetic", None, dataset="synthetic")) == 1000
    assert eval_images(run("folders", {}, dataset="imagefolder", data_dir="d")) is None
    assert eval_images(tmp_path / "nothing") is None


# -- a failed run, and a study file edited later ---------------------------------------------
EDITED = """
name = "edited"
[base]
dataset = "imagefolder"
data_dir = "{images}"
arch = "resnet20"
states = 2
epochs = 1
batch_size = 16
device = "cpu"
backend = "torch"
[grid]
method = ["refill"]
seed = [0]
[[variants]]
{variant}
"""


@pytest.mark.slow
def test_a_failed_run_is_listed_and_an_edited_file_adds_runs_and_keeps_old_ones(
        study_file, tmp_path, monkeypatch, capsys):
    images = study_file.parent / "images"
    path = tmp_path / "edited.toml"
    out = tmp_path / "study"
    for key, value in {"PYTHONPATH": str(ROOT), "RSST_CACHE": str(tmp_path / "cache"),
                       "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    # 1. the variant's data folder does not exist: that run exits 2, the other one finishes
    path.write_text(EDITED.format(images=images, variant=f'data_dir = "{tmp_path / "gone"}"'))
    with pytest.raises(SystemExit) as info:
        cli.main(["study", str(path), "--out", str(out)])
    assert info.value.code == 1
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    (failed,) = read_study(path).experiments[1:]
    assert len(failures) == 1 and failures[0].startswith(f"failed: {failed.name}/seed-0 (exit 2)")
    assert "does not exist" in failures[0] or "gone" in failures[0]
    (kept,) = [e for e in read_study(path).experiments if e.name != failed.name]
    summary = out / "runs" / kept.name / "seed-0" / "summary.json"
    assert (out / "runs" / kept.name / "seed-0" / FINISHED).is_file()
    stamp = summary.stat().st_mtime_ns
    # 2. edited: the failing variant replaced by another one; the old run stays, unrun
    path.write_text(EDITED.format(images=images, variant="rate = 0.4"))
    cli_code = None
    try:
        cli.main(["study", str(path), "--out", str(out)])
    except SystemExit as exc:
        cli_code = exc.code
    assert cli_code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"not in the study file any more (kept, not run): {out / 'runs' / failed.name}" \
        in text
    assert (out / "runs" / failed.name).is_dir()  # listed, never deleted
    assert summary.stat().st_mtime_ns == stamp  # finished before: skipped
    (added,) = [e for e in read_study(path).experiments if e.name != kept.name]
    assert added.config.rate == 0.4
    assert (out / "runs" / added.name / "seed-0" / FINISHED).is_file()


def test_a_variants_controls_test_every_state_from_1_of_each_of_its_runs(tmp_path):
    from rsst.study.run import plan_controls

    study = parse_study({"base": {"states": 3}, "grid": {"method": ["refill"], "seed": [0, 4]},
                         "variants": [{"rate": 0.5, "controls": ["reinit", "shuffle"]}],
                         "controls": {"kinds": ["shuffle"], "state": 2}})
    plain, tested = study.experiments
    pairs = plan_controls(study, tmp_path)
    got = [(source.name, control.name.split("/")[-1], control.start[3], control.start[5])
           for source, control in pairs]
    # the [controls] table: every run's state 2; the variant's: states 1 and 2 (shuffle at
    # state 2 once)
    assert got == [
        (f"{plain.name}/seed-0", "shuffle-state-2", "2", "shuffle"),
        (f"{plain.name}/seed-4", "shuffle-state-2", "2", "shuffle"),
        (f"{tested.name}/seed-0", "reinit-state-1", "1", "reinit"),
        (f"{tested.name}/seed-0", "shuffle-state-1", "1", "shuffle"),
        (f"{tested.name}/seed-0", "reinit-state-2", "2", "reinit"),
        (f"{tested.name}/seed-0", "shuffle-state-2", "2", "shuffle"),
        (f"{tested.name}/seed-4", "reinit-state-1", "1", "reinit"),
        (f"{tested.name}/seed-4", "shuffle-state-1", "1", "shuffle"),
        (f"{tested.name}/seed-4", "reinit-state-2", "2", "reinit"),
        (f"{tested.name}/seed-4", "shuffle-state-2", "2", "shuffle")]
    for source, control in pairs:
        assert control.start[:2] == ("ticket", str(source.run_dir))
        assert control.run_dir == tmp_path / "controls" / control.name
    one_shot = parse_study({"variants": [{"method": "snip", "target_remain": 0.2,
                                          "controls": ["reinit"]}]})
    assert one_shot.experiments[-1].ticket_states == [0]  # pruned at init: its only state
