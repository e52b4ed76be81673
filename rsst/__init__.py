"""rsst — structured lottery-ticket pruning (RSST, Refill, IMP and baselines) for image classifiers.

The top-level folders ``kernels/`` and ``bench/`` install as ``rsst_kernels`` and ``rsst_bench``
(see pyproject.toml). When rsst runs straight from a source checkout (``PYTHONPATH=.``) they are
not installed, so they are aliased here from the checkout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def _alias_source_package(name: str, folder: str) -> None:
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    root = Path(__file__).resolve().parent.parent / folder
    init = root / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_alias_source_package("rsst_kernels", "kernels")
_alias_source_package("rsst_bench", "bench")


def load(path: str | Path, device: str = "cpu") -> Any:
    """Rebuild the ``nn.Module`` stored in an ``rsst export`` file (masked or compact), in eval
    mode, from the file alone. Lazy, so ``import rsst`` stays light; see `rsst.export.load_model`.
    """
    from rsst.export import load_model

    return load_model(path, device)


__all__ = ["__version__", "load"]
