"""Tiny data for in-process runs: the run's own dataset shrunk to 8×8 pixels, with a 64-image
test split. A pruning state then takes a few CPU seconds; the loop's logic does not depend on the
image size. `rsst.loop.run` takes it as its ``load_data`` (`tiny_run`), `PruningRun` as its data.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from rsst import loop
from rsst.config import RunConfig
from rsst.data import DataSplits

_SHRUNK: dict[tuple, DataSplits] = {}
_load_full = loop.load_run_data  # bound now: a CLI test may patch loop.load_run_data to us


def tiny_dataset(config: RunConfig) -> DataSplits:
    """``config``'s dataset (its split, subset and seed), shrunk; cached across tests."""
    key = (config.dataset, str(config.data_dir), config.val_split, config.train_subset,
           config.seed, str(config.cache_dir))
    if key not in _SHRUNK:
        data = _load_full(config)

        def shrink(s: Any) -> Any:
            return type(s)(s.images[:, :, ::4, ::4].contiguous(), s.labels)

        test = data.test.subset(torch.arange(64)) if data.test is not None else None
        _SHRUNK[key] = dataclasses.replace(
            data, train=shrink(data.train), val=shrink(data.val),
            test=shrink(test) if test is not None else None, input_size=(3, 8, 8))
    return _SHRUNK[key]


#: `rsst.loop.run` on tiny data.
tiny_run = functools.partial(loop.run, load_data=tiny_dataset)


def tiny_pruning_run(config: RunConfig, run_dir: Any, console: Any, **kw: Any) -> loop.PruningRun:
    """`rsst.loop.PruningRun` on tiny data."""
    return loop.PruningRun(config, run_dir, console, tiny_dataset(config), **kw)
