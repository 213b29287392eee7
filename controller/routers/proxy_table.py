"""The default router: the release's routing table, which every coalmine proxy reading
the same store applies within a second."""

from __future__ import annotations

from coalmine.shared.routing_tables.store import RoutingTableStore, VersionConflictError
from coalmine.shared.routing_tables.table import RoutingTable, ShadowRoute, initial_table
from controller.errors import RoutingConflictError
from policies.model import Policy

WRITE_ATTEMPTS = 5
"""Compare-and-set attempts of one routing table write before it counts as a conflict."""


class ProxyTableRouter:
    """Writes routing tables by compare-and-set."""

    def __init__(self, store: RoutingTableStore) -> None:
        self.store = store

    def set_routes(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> None:
        """Make the release's routing table hold ``weight``, ``shadow`` and the policy's
        arms (raises RoutingConflictError when it keeps changing underneath)."""
        for _ in range(WRITE_ATTEMPTS):
            table = self.store.read(policy.name)
            wanted = wanted_table(policy, table, weight, shadow)
            if wanted is None:
                return
            try:
                self.store.write(wanted, None if table is None else table.version)
                return
            except VersionConflictError:
                continue
        raise RoutingConflictError(
            f"routing table of '{policy.name}' keeps changing under the writer"
        )

    def drift(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> str | None:
        table = self.store.read(policy.name)
        if wanted_table(policy, table, weight, shadow) is None:
            return None
        if table is None:
            return "no routing table"
        mirrored = None if table.shadow is None else table.shadow.upstream
        return (
            f"routing table holds weight {table.canary_weight:g}, shadow {mirrored} and arms "
            f"{table.baseline.upstream}|{table.canary.upstream}"
        )

    def clear(self, name: str, reason: str) -> str | None:
        table = self.store.read(name)
        if table is None or (table.canary_weight == 0.0 and table.shadow is None):
            return None
        try:
            self.store.write(
                table.model_copy(update={"canary_weight": 0.0, "shadow": None, "reason": reason}),
                table.version,
            )
        except VersionConflictError as error:
            return f"{name}: {error}"
        return None


def wanted_table(
    policy: Policy, table: RoutingTable | None, weight: float, shadow: ShadowRoute | None
) -> RoutingTable | None:
    """The table to write so that the release's routing holds ``weight``, ``shadow`` and
    the arms its policy names; None when ``table`` already does."""
    arms = initial_table(policy)
    if table is None:
        return arms.model_copy(
            update={"canary_weight": weight, "shadow": shadow, "reason": "controller"}
        )
    if (
        table.canary_weight == weight
        and table.shadow == shadow
        and (table.baseline, table.canary) == (arms.baseline, arms.canary)
    ):
        return None
    return table.model_copy(
        update={
            "canary_weight": weight,
            "shadow": shadow,
            "baseline": arms.baseline,
            "canary": arms.canary,
            "reason": "controller",
        }
    )
