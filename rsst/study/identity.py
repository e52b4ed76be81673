"""Run identity: which runs are the same experiment (only their seeds differ).

The identity of a run is its resolved configuration without the settings that do not define the
experiment: the seed (seeds are what a study pools), where it writes (``out``), where decoded
images are cached (``cache_dir``), whether latency is timed (``latency``: a measurement, not a
result) and the preset's name (its values are in the config already).
Only the settings that differ from `RunConfig`'s defaults are hashed (OpenLTH's scheme), as
sorted canonical JSON, so a setting added later with a default leaves every existing identity,
and so every existing study folder, unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any

from rsst.config import RunConfig, coerce, field_types

#: RunConfig fields that are not part of a run's identity
NOT_IDENTITY = ("seed", "out", "cache_dir", "preset", "latency")
#: hex digits of the sha256 kept in folder names
HASH_LENGTH = 10


def _normal(config: RunConfig) -> dict[str, Any]:
    """Every field as its declared type holds it (an int given for a float becomes a float), so
    ``rate = 1`` and ``rate = 1.0`` are one identity."""
    hints = field_types()
    return {f.name: coerce(f.name, getattr(config, f.name), hints[f.name])
            for f in fields(RunConfig)}


def identity_settings(config: RunConfig) -> dict[str, Any]:
    """The settings that define the experiment and differ from the defaults, sorted by name."""
    ours, defaults = _normal(config), _normal(RunConfig())
    return {k: ours[k] for k in sorted(ours)
            if k not in NOT_IDENTITY and ours[k] != defaults[k]}


def canonical_json(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def hash_settings(settings: dict[str, Any]) -> str:
    """Short sha256 of identity settings as canonical JSON."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:HASH_LENGTH]


def identity_hash(config: RunConfig) -> str:
    return hash_settings(identity_settings(config))


def settings_of_saved(table: dict[str, Any]) -> dict[str, Any] | None:
    """`identity_settings` of a run's saved config.toml table (keys this version does not know
    are left out: a setting added later is at its default); None when it is no config."""
    hints = field_types()
    try:
        return identity_settings(RunConfig(**{k: coerce(k, v, hints[k])
                                              for k, v in table.items() if k in hints}))
    except (TypeError, ValueError):
        return None


def identity_name(config: RunConfig) -> str:
    """The folder of an identity inside a study's ``runs/``: ``<method>-<hash>``."""
    return f"{config.method}-{identity_hash(config)}"
