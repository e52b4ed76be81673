"""What a run setting is, apart from its value: help, panel, choices, range, and when it is in
effect. `rsst.config` builds `RunConfig` fields from these, and the method catalog
(`rsst.methods.catalog`) declares each method's own settings with them.

This module imports nothing heavy (no torch), so ``rsst --help`` and shell completion stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Help panels of `rsst run --help`, in the order they are shown.
PANELS = ("Method", "Schedule/penalty", "Training", "Data", "Model", "Run directory", "Speed")

Choices = tuple[str, ...] | Callable[[], tuple[str, ...]]


@dataclass(frozen=True)
class Setting:
    """What the CLI and `rsst.config.validate` know about one `RunConfig` field (its
    ``metadata["setting"]``).

    ``choices`` is a tuple or a function returning one (a registry's names), so each choice list
    exists once. ``low``/``high`` bound a number (``*_open`` excludes the bound); every float must
    be finite unless ``finite`` is False. ``shown_default`` is what ``--help`` prints when the
    default is None; ``hint`` follows a range error. ``suggestions`` are names that shell
    completion offers for a free-form value (``--arch``: the built-in models and ``timm:``).

    ``applies`` says whether the setting is in effect in a resolved config (None: always), and
    ``applies_text`` when it is, in words ("with --optimizer sgd"): a flag given on the command
    line that is not in effect gets a warning naming it — or, with ``refuse_ignored``, is refused
    (``ignored_fix`` says what to do), for a flag the user cannot have meant to give for nothing.
    """

    help: str
    panel: str
    choices: Choices | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = True
    shown_default: str | None = None
    hint: str = ""
    suggestions: Choices | None = None
    applies: Callable[[Any], bool] | None = None
    applies_text: str = ""
    refuse_ignored: bool = False
    ignored_fix: str = ""

    def __post_init__(self) -> None:
        if self.panel not in PANELS:
            raise ValueError(f"unknown panel {self.panel!r}")
        if self.applies is not None and not self.applies_text:
            raise ValueError("a setting with `applies` needs `applies_text`")

    def choice_list(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def completions(self) -> tuple[str, ...]:
        """What shell completion offers: the choices, else the suggestions."""
        names = self.choice_list()
        if names is None and self.suggestions is not None:
            names = tuple(self.suggestions() if callable(self.suggestions) else self.suggestions)
        return names or ()

    def range_text(self) -> str:
        """The allowed interval in words, e.g. ``(0, 1)``, ``> 0``, ``≥ 1``; '' if unbounded."""
        if self.low is not None and self.high is not None:
            return (f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {_num(self.high)}"
        return ""

    def in_range(self, value: float) -> bool:
        """False for NaN too: every comparison is written so that NaN fails it."""
        if self.low is not None and not (value > self.low or (not self.low_open
                                                              and value == self.low)):
            return False
        return self.high is None or value < self.high or (not self.high_open
                                                          and value == self.high)


def _num(x: float) -> str:
    if isinstance(x, int) and x >= 2**32 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Declared:
    """A setting a method declares (`rsst.methods.catalog`): it becomes the `RunConfig` field
    ``name`` of type ``type`` (bool, int, float or str), the flag ``--name-with-dashes`` and a
    config.toml key. It is in effect for the declaring method and the methods in ``also``, and
    there only where ``setting.applies`` (if given) holds too."""

    name: str
    type: type
    default: Any
    setting: Setting
    also: tuple[str, ...] = ()
