"""The bad-input corpus: every flag and export form added lately, given a bad value, is one line
on stderr naming the problem and the fix, exit code 2, no traceback, and nothing written.

One in-process table; each case gets a fresh folder holding a finished one-state run (written
by the run's own state writer, no training) so that export and report have something to read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_one_error_line as _assert_user_error
from helpers import invoke, pruned_model, write_run

RUN = "{run}"  # replaced by the case's run directory
TMP = "{tmp}"  # replaced by the case's folder


@pytest.fixture(scope="module")
def model_and_masks():
    return pruned_model("resnet20", img_size=8)


CASES = [
    # rsst run: values the configuration refuses, before any run directory exists
    ("groups-bogus", ["run", "--groups", "bogus", "--out", f"{TMP}/new"], ["--groups"]),
    ("round-to-0", ["run", "--round-to", "0", "--out", f"{TMP}/new"], ["--round-to"]),
    ("structure-embed-on-cnn", ["run", "--arch", "resnet20", "--structure", "embed",
                                "--epochs", "1", "--out", f"{TMP}/new"], ["embed"]),
    ("score-bn-bogus", ["run", "--method", "snip", "--score-bn", "bogus", "--out",
                        f"{TMP}/new"], ["--score-bn"]),
    ("admm-projection-x", ["run", "--method", "admm", "--admm-projection", "x", "--out",
                           f"{TMP}/new"], ["--admm-projection"]),
    ("wandb-group-without-wandb", ["run", "--wandb-group", "seeds", "--out", f"{TMP}/new"],
     ["--wandb-group", "--logger wandb"]),
    ("wandb-tags-empty", ["run", "--logger", "wandb", "--wandb-tags", "a,,b", "--out",
                          f"{TMP}/new"], ["--wandb-tags", "empty tag"]),
    # rsst export: outputs each form cannot write
    ("hf-onto-a-file", ["export", RUN, "--form", "hf", "-o", f"{TMP}/taken.txt"],
     ["is a file", "folder"]),
    ("hf-onto-a-folder", ["export", RUN, "--form", "hf", "-o", f"{TMP}/folder"],
     ["already exists"]),
    ("onnx-bad-suffix", ["export", RUN, "--form", "onnx", "-o", f"{TMP}/m.safetensors"],
     [".onnx"]),
    ("pt2-bad-suffix", ["export", RUN, "--form", "pt2", "-o", f"{TMP}/m.onnx"], [".pt2"]),
    # rsst env and rsst report
    ("env-bogus-flag", ["env", "--bogus"], ["--bogus"]),
    ("report-plot-txt", ["report", RUN, "--plot", f"{TMP}/x.txt"], ["--plot", ".png", ".svg"]),
    ("report-plot-missing-folder", ["report", RUN, "--plot", f"{TMP}/no/x.png"],
     ["does not exist"]),
    ("report-not-a-run", ["report", f"{TMP}/folder", "--json"], ["not an rsst run directory"]),
]


def _tree(root: Path) -> list[tuple[str, bytes | None]]:
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                  for p in root.rglob("*"))


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(argv, words, model_and_masks,
                                                          tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run", *model_and_masks)
    (tmp_path / "taken.txt").write_text("keep me")
    (tmp_path / "folder").mkdir()
    before = _tree(tmp_path)
    args = [a.replace(RUN, str(run)).replace(TMP, str(tmp_path)) for a in argv]
    code, out, err = invoke(monkeypatch, capsys, *args)
    _assert_user_error(code, err, *words)
    assert _tree(tmp_path) == before
