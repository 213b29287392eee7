"""Carrying out journalled actions, and keeping the routing table where the state says.

Each action a decision needs is journalled with it (``controller.release_store``) before
anything is done; here they are carried out in order, each idempotent and verified: a
weight is written to the release's routing table by compare-and-set, a label is read,
moved and read back, and the move recorded in the label history in the same transaction
that marks the action done. A temporary error leaves the action pending (the next tick
tries again, and later actions wait); a permanent one marks it failed.

The routes are also repaired level-triggered (``controller.routers``): they must hold the
weight the release's state says, the arms its policy names, and the policy's shadow only
while the rollout wants it; each repair is counted and reported as an event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from coalmine.shared.errors import PermanentError, TemporaryError
from coalmine.shared.routing_tables.table import ShadowRoute, shadow_route
from controller import lifecycle
from controller.cluster.events import EventRecorder
from controller.errors import (
    LabelPermanentError,
    LabelTemporaryError,
    RoutingConflictError,
)
from controller.labels import PromptLabels
from controller.lifecycle import ActionKind, MoveLabel, ReleaseState, SetWeight
from controller.release_store import Action, ActionStatus, ControllerState, LabelMove
from controller.routers import ProxyTableRouter, Router
from policies.domain import FINISHED, Phase
from policies.model import Policy

log = logging.getLogger("coalmine.controller")

RETRIED = (LabelTemporaryError, RoutingConflictError)
"""Errors of a journalled action that leave it pending, to be carried out next tick."""
REFUSED = (LabelPermanentError, ValueError)
"""Errors of a journalled action that mark it failed."""
PROXY_PROVIDER = "proxy"
"""``routing.provider`` of the proxies' routing tables."""


@dataclass(frozen=True, slots=True)
class Routers:
    """The routers a controller can put a release's routes in force with, by
    ``routing.provider``; ``default`` for the proxies' routing tables."""

    default: ProxyTableRouter
    others: Mapping[str, Router] = field(default_factory=dict)

    def of(self, policy: Policy) -> Router:
        """The router of ``policy``. Raises ValueError for a provider with none."""
        provider = policy.routing.provider
        if provider == PROXY_PROVIDER:
            return self.default
        router = self.others.get(provider)
        if router is None:
            raise ValueError(
                f"routing.provider '{provider}': this controller has no such router configured"
            )
        return router


@dataclass(frozen=True, slots=True)
class Plant:
    """What actions act on: the state, the routers, the prompt labels, and where their
    events go; ``repairs`` counts the routes put back per release."""

    state: ControllerState
    routers: Routers
    labels: PromptLabels
    events: EventRecorder
    repairs: dict[str, int] = field(default_factory=dict)

    def router(self, policy: Policy) -> Router:
        return self.routers.of(policy)


@dataclass(slots=True)
class Carried:
    """What a run of pending actions did."""

    done: int = 0
    errors: list[str] = field(default_factory=list)


def run_pending(plant: Plant, name: str, policy: Policy, now: float) -> Carried:
    """Carry out a release's pending actions in order."""
    carried = Carried()
    for action in plant.state.pending_actions(name):
        try:
            reason, message = execute(plant, action, policy, now)
        except RETRIED as error:
            carried.errors.append(f"{name}: {error} (will retry)")
            log.warning("release %s: action %s will be retried: %s", name, action.id, error)
            plant.events.record(
                name, "ActionRetrying", f"{describe(action)}: {error}", warning=True
            )
            return carried  # keep the order: later actions wait for this one
        except REFUSED as error:
            plant.state.finish_action(action, at=now, status=ActionStatus.FAILED, error=str(error))
            carried.errors.append(f"{name}: {error}")
            log.error("release %s: action %s failed: %s", name, action.id, error)
            plant.events.record(name, "ActionFailed", f"{describe(action)}: {error}", warning=True)
            continue
        carried.done += 1
        plant.events.record(name, reason, message)
    return carried


def execute(plant: Plant, action: Action, policy: Policy, now: float) -> tuple[str, str]:
    """Carry out one journalled action; its event's reason and message."""
    act = lifecycle.act_of(action.kind, action.intent)
    release = plant.state.release(action.release)
    if isinstance(act, SetWeight):
        shadow = wanted_shadow(policy, None if release is None else release.phase)
        plant.router(policy).set_routes(policy, act.weight, shadow)
        plant.state.finish_action(action, at=now)
        return "WeightSet", describe(action)
    return _move_label(plant, action, act, release, now)


def _move_label(
    plant: Plant, action: Action, act: MoveLabel, release: ReleaseState | None, now: float
) -> tuple[str, str]:
    current = plant.labels.version_of(act.prompt, act.label)
    if action.observed is None:
        # kept before moving, so the history is right even if the process dies after it
        plant.state.observe_action(action, {"from": current})
        before = current
    else:
        before = action.observed.get("from")
    if current != act.version:
        plant.labels.move(act.prompt, act.label, act.version)
    decision = plant.state.decisions(action.release, limit=1)
    move = None
    if before != act.version:
        move = LabelMove(
            release=action.release,
            prompt=act.prompt,
            label=act.label,
            from_version=before,
            to_version=act.version,
            at=now,
            actor=decision[0].actor if decision else "controller",
            reason=decision[0].reason if decision else "",
            rollout=0 if release is None else release.rollout,
        )
    plant.state.finish_action(action, at=now, label_move=move)
    moved = "already there" if move is None else f"moved from version {before}"
    return "LabelMoved", f"{describe(action)} ({moved})"


def reconcile(plant: Plant, release: ReleaseState, policy: Policy) -> str | None:
    """Level-triggered repair of the release's routes; the error, if they could not be
    repaired this time."""
    if release.rollout == 0 or plant.state.pending_actions(release.name):
        return None
    shadow = wanted_shadow(policy, release.phase)
    router = plant.router(policy)
    drift = router.drift(policy, release.canary_weight, shadow)
    if drift is None:
        return None
    log.warning(
        "release %s: %s; the release wants weight %s and shadow %s: repairing",
        release.name,
        drift,
        release.canary_weight,
        None if shadow is None else shadow.upstream,
    )
    plant.repairs[release.name] = plant.repairs.get(release.name, 0) + 1
    plant.events.record(release.name, "RoutesRepaired", drift, warning=True)
    try:
        router.set_routes(policy, release.canary_weight, shadow)
    except RETRIED as error:
        return f"{release.name}: {error}"
    return None


def unroute(plant: Plant, name: str, policy: Policy | None, reason: str) -> str | None:
    """No more canary traffic or shadow copies for a release whose policy is gone
    (``policy``: the one its rollout ran by, which says its router; None: the proxies'
    routing table is cleared)."""
    if policy is None:
        return plant.routers.default.clear(name, reason)
    try:
        plant.router(policy).set_routes(policy, 0.0, None)
    except (*RETRIED, *REFUSED, TemporaryError, PermanentError) as error:
        return f"{name}: {error}"
    return None


def describe(action: Action) -> str:
    """An action's intent, for people."""
    intent = action.intent
    if action.kind is ActionKind.SET_WEIGHT:
        return f"canary weight to {float(intent['weight']):g}%"
    return f"label {intent['label']} of prompt {intent['prompt']} to version {intent['version']}"


def wanted_shadow(policy: Policy, phase: Phase | None) -> ShadowRoute | None:
    """The mirroring a release's routing table carries: its policy's until the rollout
    ends (promoted, rolled back, aborted), then none; a shadow rung's (``shadow.gate``)
    only while the rollout stands at that rung."""
    if policy.shadow is not None and policy.shadow.gate is not None:
        return shadow_route(policy) if phase is Phase.SHADOW else None
    return None if phase in FINISHED else shadow_route(policy)
