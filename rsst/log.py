"""Former name of `rsst.console` (progress, console lines, the state table); kept so that every
public name still imports from here."""

from rsst.console import *  # noqa: F403
