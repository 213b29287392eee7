"""A controller process that kills itself with SIGKILL at a chosen point of an action.

Run by ``test_crash_recovery.py`` from the repository root: ``python -m
tests.controller.crash_child STATE BASE_URL PK SK SCENARIO [KILL]`` where KILL is
``METHOD:before|after:N`` (the N-th call of ``METHOD``, counted from the release's
terminal decision) or absent (run to the end). The world is simulated as in
``test_loop.py`` (a fake clock, a seeded source); labels live in the Langfuse emulator
and routing tables in the state file, so both outlive the process.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.labels import LangfusePromptLabels
from controller.loop import Controller
from controller.release_store import ControllerState
from controller.source.budget import BudgetSettings, RequestBudget
from policies.domain import FINISHED
from policies.loader import load_policy_text
from tests.controller.test_loop import MINUTE, POLICY, T0, World

MAX_TICKS = 2000


class Killer:
    """Counts calls after the terminal decision and dies at the chosen one."""

    def __init__(self, spec: str | None) -> None:
        self.armed = False
        self.counts: dict[str, int] = {}
        self.method, self.when, number = (spec or "::0").split(":")
        self.number = int(number)

    def wrap(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            hit = False
            if self.armed and name == self.method:
                self.counts[name] = self.counts.get(name, 0) + 1
                hit = self.counts[name] == self.number
            if hit and self.when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = call(*args, **kwargs)
            if name == "decide" and kwargs.get("decision") in ("rollback", "promote"):
                self.armed = True
                hit = hit or (self.method == "decide" and self.number == 0)
            if hit and self.when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return wrapped


class Wrapped:
    def __init__(self, inner: Any, killer: Killer, prefix: str, names: set[str]) -> None:
        self._inner = inner
        self._killer = killer
        self._prefix = prefix
        self._names = names

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in self._names:
            return self._killer.wrap(f"{self._prefix}{name}", value)
        return value


def main() -> int:
    state_path, base_url, public_key, secret_key, scenario = sys.argv[1:6]
    killer = Killer(sys.argv[6] if len(sys.argv) > 6 else None)
    state = ControllerState(Path(state_path))
    routing = SqliteRoutingStore(Path(state_path))
    world = World(routing, seed=11)
    if scenario == "bad":
        world.canary_error = 0.3
    release = state.release("support")
    now = T0 if release is None else max(release.updated_at, T0)
    world._clock = now
    budget = RequestBudget(BudgetSettings(per_minute=100_000))
    labels = LangfusePromptLabels(base_url, public_key, secret_key, budget=budget)
    policies = {"support": load_policy_text(POLICY, "support.yaml")}
    controller = Controller(
        state=Wrapped(state, killer, "", {"decide", "finish_action", "observe_action"}),  # type: ignore[arg-type]
        routing=Wrapped(routing, killer, "routing.", {"write"}),  # type: ignore[arg-type]
        source=world,
        labels=Wrapped(labels, killer, "labels.", {"move"}),  # type: ignore[arg-type]
        policies=lambda: policies,
    )
    for _ in range(MAX_TICKS):
        now += MINUTE
        world.run_until(now)
        controller.tick(now)
        current = state.release("support")
        if current is not None and current.phase in FINISHED and not state.pending_actions():
            break
    labels.close()
    state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
