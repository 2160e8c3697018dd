"""Whether a decision's answer reached its caller, which only the transport knows, and only
after the service has returned (or the call was cancelled while an award ran on, shielded).

The decision's log record waits here until then, so that an award nobody received is logged as
undelivered: budgets and contact history count it (it was spent), training exports and what the
bandit learns leave it out.
"""

from __future__ import annotations

from collections.abc import Callable

Write = Callable[[bool], None]


class Delivery:
    """Settled once, by the transport: True when the answer was handed to the caller in time."""

    __slots__ = ("_delivered", "_held")

    def __init__(self, delivered: bool | None = None) -> None:
        self._delivered = delivered
        self._held: list[Write] = []

    def hold(self, write: Write) -> None:
        """Run `write(delivered)` once the outcome is known (at once if it is already)."""
        if self._delivered is None:
            self._held.append(write)
        else:
            write(self._delivered)

    def settle(self, delivered: bool) -> None:
        if self._delivered is not None:
            return  # the first word stands: a cancelled call is not delivered by a late return
        self._delivered = delivered
        held, self._held = self._held, []
        for write in held:
            write(delivered)


# in-process callers get the Decision object itself: it is delivered when returned
DELIVERED = Delivery(True)
