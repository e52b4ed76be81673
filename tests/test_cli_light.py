"""``rsst --help``, ``rsst run --help`` and shell completion answer without importing torch: the
choice lists, the method names and their settings are importable on their own, and no rsst
module imports another that imports it back at module level."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "triton", "timm", "numpy", "safetensors")

CHECK = """
import sys
{body}
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
impl = sorted(m for m in sys.modules if m.startswith("rsst.methods.")
              and m.rsplit(".", 1)[1] not in ("base", "catalog", "registry"))
assert not heavy and not impl, (heavy, impl)
print("light")
"""


def run_light(body: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = CHECK.format(body=body, heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                      "COLUMNS": "100", **env})


@pytest.mark.slow
def test_config_and_cli_import_no_torch_and_no_method():
    proc = run_light("import rsst.config, rsst.cli\nrsst.config.RunConfig(admm_rho=0.5)")
    assert proc.returncode == 0 and proc.stdout.strip() == "light", proc.stderr[-3000:]


CALL_MAIN = """
from rsst.cli import main
sys.argv = ["rsst", *{argv!r}]
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["export", "--help"],
                                  ["--version"]], ids=" ".join)
def test_help_imports_no_torch(argv):
    proc = run_light(CALL_MAIN.format(argv=argv))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("light")
    if "--help" in argv:
        assert "Usage" in proc.stdout


def complete(words: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Bash completion of ``words`` (the last word being completed), as the shell asks for it."""
    parts = words.split(" ")
    return run_light(CALL_MAIN.format(argv=[]), _RSST_COMPLETE="complete_bash",
                     COMP_WORDS=words, COMP_CWORD=str(len(parts) - 1), **extra)


@pytest.mark.slow
def test_completion_imports_no_torch():
    proc = complete("rsst run --method ")
    assert proc.returncode == 0, proc.stderr[-3000:]
    offered = proc.stdout.split()
    assert {"rsst", "admm", "synflow"} <= set(offered) and offered[-1] == "light"


# -- no import cycle at module level -----------------------------------------------------------
def module_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The rsst modules ``path`` (module ``name``) imports when it is imported: top-level
    statements, not those inside functions or under ``if TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = (f"{base}.{node.module}" if node.module else base) if node.level \
                    else node.module or ""
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)

    visit(ast.parse(path.read_text()).body)
    edges = set()
    for module in found:
        parts = module.split(".")  # importing a.b.c imports the packages a and a.b first
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in modules and target != name and not name.startswith(target + "."):
                edges.add(target)
    return edges


def import_cycles(package_dir: Path) -> list[list[str]]:
    paths = {}
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: module_imports(path, name, set(paths)) for name, path in paths.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return cycles


def test_no_module_level_import_cycle():
    assert import_cycles(ROOT / "rsst") == []


def test_the_cycle_finder_sees_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pkg import c\nfrom . import a\n")
    (pkg / "c.py").write_text("def f():\n    from pkg import a\n")
    assert import_cycles(pkg) == [["pkg.a", "pkg.b", "pkg.a"]]


# -- completion offers every choice ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("words", "expected"), [
    ("rsst run --dataset ", {"synthetic", "cifar10", "cifar100", "imagefolder", "tiny-imagenet"}),
    ("rsst run --arch res", {"resnet20", "resnet18", "resnet110"}),
    ("rsst run --arch ", {"vgg16_bn", "vit_tiny", "timm:"}),
    ("rsst run --logger ", {"tensorboard", "wandb", "csv"}),
    ("rsst run --rewind ", {"init", "none", "epoch:"}),
    ("rsst run --structure ", {"auto", "head+neuron", "none"}),
    ("rsst run --schedule exp", {"exp", "exp_custom_exponents"}),
    ("rsst eval model.safetensors --split ", {"val", "test"}),
    ("rsst export RUN --form ", {"masked", "compact", "timm"}),
])
def test_completion_offers_every_choice(words, expected):
    proc = complete(words)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offered = set(proc.stdout.split()[:-1])
    assert expected <= offered, (expected - offered, offered)


@pytest.mark.slow
def test_export_state_completion_lists_the_runs_states(tmp_path):
    for state in (0, 1, 12):
        (tmp_path / f"state_{state:02d}").mkdir()
    proc = complete(f"rsst export {tmp_path} --state ")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:-1] == ["last", "best", "0", "1", "12"]
    proc = complete(f"rsst export {tmp_path} --state 1")
    assert proc.stdout.split()[:-1] == ["1", "12"]


def test_arch_completion_asks_timm_only_after_the_prefix():
    from rsst import cli

    names = cli._arch_completion("timm:vit_tiny_patch16")
    assert "timm:vit_tiny_patch16_224" in names and all(n.startswith("timm:") for n in names)


# -- 80 columns --------------------------------------------------------------------------------
@pytest.mark.slow
def test_help_at_80_columns_keeps_every_choice_whole():
    from rsst.config import settings

    proc = subprocess.run([sys.executable, "-m", "rsst", "run", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    assert "…" not in proc.stdout  # no cell cut short
    cells = " ".join(cell.strip() for line in proc.stdout.splitlines()
                     for cell in line.split("│"))
    words = set(cells.replace(",", " ").replace(".", " ").replace("<", " ").replace(">", " ")
                .replace("|", " ").split())
    for name, meta in settings().items():
        for choice in meta.choice_list() or ():
            assert choice in words, (name, choice)  # shown whole, not folded mid-name
