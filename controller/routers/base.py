"""The Protocol every router keeps: set a release's routes, and say how what is in force
differs from what is wanted."""

from __future__ import annotations

from typing import Protocol

from coalmine.shared.routing_tables.table import ShadowRoute
from policies.model import Policy


class Router(Protocol):
    """Puts a release's canary weight and mirroring in force, level-triggered: the
    controller asks for what it wants at every tick and a router writes only what
    differs. ``set_routes`` raises ``RoutingConflictError`` (temporary: tried again next
    tick) or ``ValueError`` (permanent: the action fails)."""

    def set_routes(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> None:
        """Send ``weight`` percent of the release's traffic to the candidate and mirror
        as ``shadow`` says (None: no mirroring)."""
        ...

    def drift(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> str | None:
        """How the routes in force differ from ``weight`` and ``shadow`` (None: they do
        not), in words for the log and the events."""
        ...
