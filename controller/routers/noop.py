"""The router for releases whose traffic another system moves (Argo Rollouts, Flagger, a
person): coalmine judges and moves labels, and leaves the routes alone."""

from __future__ import annotations

from coalmine.shared.routing_tables.table import ShadowRoute
from policies.model import Policy


class NoopRouter:
    """Sets nothing, so nothing drifts."""

    def set_routes(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> None:
        return None

    def drift(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> str | None:
        return None
