"""``kernels/`` is the bottom layer: it imports nothing from ``rsst`` (ARCHITECTURE, layering).

Two checks that fail in different ways: the source (every ``import`` statement under kernels/,
lazy ones inside functions included), and a fresh interpreter that imports the package with no
``rsst`` on its path and every submodule loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def rsst_imports(source: str) -> list[str]:
    """Modules named ``rsst`` or ``rsst.*`` that ``source`` imports, anywhere in its body."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n == "rsst" or n.startswith("rsst.")]
    return found


def test_the_scan_sees_lazy_and_aliased_imports() -> None:
    source = "def f():\n    from rsst.schedules import lam\nimport rsst as r\nimport rsst_kernels\n"
    assert sorted(rsst_imports(source)) == ["rsst", "rsst.schedules"]


@pytest.mark.parametrize("path", sorted(KERNELS.rglob("*.py")), ids=lambda p: p.name)
def test_no_kernel_module_imports_rsst(path: Path) -> None:
    assert rsst_imports(path.read_text()) == [], f"{path.name} imports rsst"


CHILD = """
import importlib, pkgutil, sys
import rsst_kernels
for info in pkgutil.iter_modules(rsst_kernels.__path__):
    importlib.import_module(f"rsst_kernels.{info.name}")
loaded = sorted(m for m in sys.modules if m == "rsst" or m.startswith("rsst."))
assert not loaded, loaded
print(sorted(m for m in sys.modules if m.startswith("rsst_kernels.")))
"""


@pytest.mark.slow
def test_rsst_kernels_imports_without_rsst(kernels_only_env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD], env=kernels_only_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = proc.stdout.strip().splitlines()[-1]
    for name in ("fused_update", "masks", "scalars", "schedules"):
        assert f"rsst_kernels.{name}" in loaded
