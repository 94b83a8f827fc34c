"""What goes wrong in ``minivpn demo``: one line for the user, everything already undone."""

from __future__ import annotations

from minivpn.errors import MinivpnError

__all__ = ["NEEDS_ROOT", "DemoError", "NeedsRoot"]

#: What an ordinary user is told: one line, with the command that works.
NEEDS_ROOT = "minivpn demo needs root; as an ordinary user run: unshare -Urnm minivpn demo"


class DemoError(MinivpnError):
    """A step of the demo failed; everything it made has been removed."""


class NeedsRoot(DemoError):
    """The demo lacks the capabilities to create namespaces and devices."""

    def __init__(self) -> None:
        super().__init__(NEEDS_ROOT)
