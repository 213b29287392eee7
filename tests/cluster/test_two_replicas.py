"""Two controller replicas against one fake API server: exactly one leads; the leader
killed at any point of a rollback or a promotion, the other takes over once the Lease
expires and carries the release on, repeating no action and losing none.

Each replica has what a pod has: its own elector, its own local sample cache, and the
official client talking to the API server. They share what pods share: the API server
(state and routing ConfigMaps, the Lease) and Langfuse, simulated here as a store of
traces and scores that the new leader reads again from the release's start. Time is a
fake clock moved in steps of the Lease's retry period.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from controller.cluster.lease import LeaseElector, LeaseTiming
from controller.cluster.release_configmaps import ClusterState
from controller.loop import Controller
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from policies import Policy
from policies.domain import FINISHED, Arm, Phase
from policies.loader import load_policy_text
from tests.cluster.cluster_support import NAMESPACE, Clock
from tests.controller.release_rig import POLICY as RIG_POLICY

pytestmark = pytest.mark.slow

PREFIX = "shop-app"
MINUTE = 60.0
RETRY, RENEW, DURATION = 20.0, 100.0, 150.0
"""Lease timing, scaled so that a simulated minute is three election rounds."""
AFTER_END = 5
"""Minutes run on after the end: more than the lease duration."""

# the release rig's policy, with a canary upstream, so a promotion sends it every user
POLICY = RIG_POLICY.replace(
    'upstreams: {stable: "http://127.0.0.1:9"}',
    'upstreams: {stable: "http://127.0.0.1:8000", canary: "http://127.0.0.1:8001"}',
)
assert POLICY != RIG_POLICY


class Died(BaseException):
    """The replica's process ends here: nothing after this line runs."""


@dataclass
class Langfuse:
    """Traces and scores that stay (a new leader reads them again), and prompt labels."""

    routing: ConfigMapRoutingStore
    canary_error: float
    labels: dict[str, int] = field(
        default_factory=lambda: {"production": 3, "canary": 4, "latest": 4}
    )
    moves: list[tuple[str, int]] = field(default_factory=list)
    traces: list[TraceSample] = field(default_factory=list)
    scores: list[ScoreSample] = field(default_factory=list)
    until: float = 0.0
    reads: list[tuple[float, float]] = field(default_factory=list)
    """(when, observations read from) of every poll."""

    def __post_init__(self) -> None:
        self.random = random.Random(11)

    def traffic(self, now: float, rate: int = 120) -> None:
        table = self.routing.read("support")
        weight = 0.0 if table is None else table.canary_weight
        seconds = now - self.until if self.until else 0.0
        for _ in range(int(rate * seconds / MINUTE)):
            ts = self.until + self.random.random() * seconds
            canary = self.random.random() * 100 < weight
            error = self.random.random() < (self.canary_error if canary else 0.01)
            trace_id = f"t{len(self.traces)}"
            arm = Arm.CANARY if canary else Arm.BASELINE
            self.traces.append(TraceSample("support", trace_id, arm, ts, error, 500.0, 0.001))
            if not error:
                value = min(1.0, max(0.0, self.random.gauss(0.8, 0.15)))
                self.scores.append(ScoreSample(f"s{trace_id}", trace_id, "helpfulness", value, ts))
        self.until = now

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        assert cursors is not None
        self.reads.append((now, cursors.observations_from))
        traces = tuple(t for t in self.traces if cursors.observations_from <= t.ts <= now)
        scores = tuple(s for s in self.scores if cursors.scores_from <= s.at <= now)
        return Poll(ok=True, cursors=Cursors(now, now), traces=traces, scores=scores)

    def version_of(self, prompt: str, label: str) -> int | None:
        return self.labels.get(label)

    def move(self, prompt: str, label: str, version: int) -> None:
        self.labels[label] = version
        self.moves.append((label, version))

    def close(self) -> None:
        pass


class Killer:
    """Forwards to ``target``; dies at the chosen call after the release's terminal
    decision (``decide`` itself counts as the first point)."""

    def __init__(self, target: Any, point: str | None, armed: list[bool]) -> None:
        self.target = target
        self.method, self.when, number = (point or "none:never:0").split(":")
        self.number = int(number)
        self.count = 0
        self.armed = armed

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.target, name)
        if not callable(call) or name not in (self.method, "decide"):
            return call

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            hit = False
            if self.armed[0] and name == self.method:
                self.count += 1
                hit = self.count == self.number
            if hit and self.when == "before":
                raise Died
            result = call(*args, **kwargs)
            if name == "decide" and kwargs.get("decision") in ("rollback", "promote"):
                self.armed[0] = True
                hit = hit or (self.method == "decide" and self.number == 0)
            if hit and self.when == "after":
                raise Died
            return result

        return wrapped


@dataclass
class Replica:
    name: str
    elector: LeaseElector
    state: ClusterState
    controller: Controller
    leading: bool = False
    alive: bool = True


def replica(
    name: str, kube: Any, tmp_path: Path, clock: Clock, *, world: Langfuse, point: str | None
) -> Replica:
    api = kube.api_client()
    elector = LeaseElector(
        api,
        NAMESPACE,
        "coalmine-controller",
        name,
        timing=LeaseTiming(lease_duration=DURATION, renew_deadline=RENEW, retry_period=RETRY),
        clock=clock,
        wall=clock.wall,
    )
    state = ClusterState(
        tmp_path / f"{name}.db", api, NAMESPACE, PREFIX, fence=elector.fence, clock=clock
    )
    policy = load_policy_text(POLICY, "support.yaml")
    armed = [False]

    def killer(target: Any, *methods: str) -> Any:
        return Killer(target, point if point and point.startswith(methods) else None, armed)

    controller = Controller(
        state=killer(state, "decide", "finish", "observe"),
        routing=killer(ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["support"]), "write"),
        source=world,
        labels=killer(world, "move"),
        policies=lambda: {"support": policy},
    )
    controller.fence = elector.fence
    return Replica(name, elector, state, controller)


def run(
    replicas: list[Replica],
    world: Langfuse,
    clock: Clock,
    minutes: int,
    *,
    kill_at: int | None = None,
) -> list[str]:
    """Step the election every retry period and the leader's tick every minute; return
    who led each minute ("" for nobody). Stops ``AFTER_END`` minutes after the release
    has ended and its actions are done (time for a standby to take over and find nothing
    left to do)."""
    leaders: list[str] = []
    rounds = int(MINUTE / RETRY)
    ended_at: int | None = None
    for minute in range(minutes):
        if minute == kill_at:
            replicas[0].alive = False
        for round_ in range(rounds):
            clock.advance(RETRY)
            for member in replicas:
                if member.alive:
                    member.elector.try_acquire_or_renew()
            leading = [m for m in replicas if m.alive and m.elector.is_leader()]
            assert len(leading) <= 1, f"two leaders: {[m.name for m in leading]}"
            for member in replicas:
                now_leading = member in leading
                if now_leading and not member.leading:
                    member.controller.forget()
                    member.state.refresh()
                member.leading = now_leading
            if round_ < rounds - 1:
                continue
            world.traffic(clock.now)
            if not leading:
                leaders.append("")
            for member in leading:
                leaders.append(member.name)
                member.state.refresh()
                try:
                    member.controller.tick(clock.now)
                except Died:
                    member.alive = False
        release = replicas[0].state.release("support")
        finished = release is not None and release.phase in FINISHED
        if ended_at is None and finished and not replicas[0].state.pending_actions("support"):
            ended_at = minute
        if ended_at is not None and minute - ended_at >= AFTER_END:
            break
    return leaders


POINTS = [
    None,
    "decide:after:0",
    "write:before:1",
    "write:after:1",
    "finish_action:before:1",
    "move:before:1",
    "observe_action:after:1",
    "move:after:1",
    "finish_action:before:2",
    "finish_action:after:2",
]


@pytest.mark.parametrize("point", POINTS, ids=[str(point) for point in POINTS])
@pytest.mark.parametrize(
    ("canary_error", "outcome"), [(0.10, Phase.ROLLED_BACK), (0.01, Phase.PROMOTED)]
)
def test_the_leader_killed_anywhere_the_standby_carries_the_release_on(
    *,
    kube: Any,
    tmp_path: Path,
    clock: Clock,
    point: str | None,
    canary_error: float,
    outcome: Phase,
) -> None:
    api = kube.api_client()
    world = Langfuse(ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["support"]), canary_error)
    first = replica("pod-a", kube, tmp_path, clock, world=world, point=point)
    second = replica("pod-b", kube, tmp_path, clock, world=world, point=None)
    first.elector.try_acquire_or_renew()  # pod-a starts first and leads

    leaders = run([first, second], world, clock, minutes=600)

    reader = ClusterState(tmp_path / "reader.db", api, NAMESPACE, PREFIX)
    release = reader.release("support")
    assert release is not None and release.phase is outcome
    decisions = [record.decision for record in reader.decisions("support")]
    terminal = "rollback" if outcome is Phase.ROLLED_BACK else "promote"
    assert decisions.count("start") == 1
    assert decisions.count(terminal) == 1
    assert decisions[-1] == terminal
    assert reader.pending_actions("support") == []
    assert all(a.status.value == "done" for a in reader.actions("support"))
    # a rollback parks canary on the stable version; a promotion moves production onto
    # the candidate, where canary already is
    expected = [("canary", 3)] if outcome is Phase.ROLLED_BACK else [("production", 4)]
    assert world.moves == expected, "each label moved exactly once"
    assert [(m.label, m.to_version) for m in reader.label_moves("support")] == expected
    table = world.routing.read("support")
    assert table is not None
    assert table.canary_weight == (0.0 if outcome is Phase.ROLLED_BACK else 100.0)
    if point is None:
        assert set(leaders) == {"pod-a"}
    else:
        assert not first.alive, f"pod-a never reached {point}"
        assert leaders[-1] == "pod-b", "the standby finished the release"
        handover = leaders.index("pod-b")
        assert set(leaders[:handover]) <= {"pod-a", ""}


def test_the_leader_lost_mid_release_the_standby_judges_on_from_langfuse(
    kube: Any, tmp_path: Path, clock: Clock
) -> None:
    api = kube.api_client()
    world = Langfuse(ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["support"]), 0.01)
    first = replica("pod-a", kube, tmp_path, clock, world=world, point=None)
    second = replica("pod-b", kube, tmp_path, clock, world=world, point=None)
    first.elector.try_acquire_or_renew()

    leaders = run([first, second], world, clock, minutes=600, kill_at=45)

    reader = ClusterState(tmp_path / "reader.db", api, NAMESPACE, PREFIX)
    release = reader.release("support")
    assert release is not None and release.phase is Phase.PROMOTED
    decisions = [record.decision for record in reader.decisions("support")]
    assert decisions == ["start", "advance", "advance", "promote"]
    assert [record.actor for record in reader.decisions("support")] == ["controller"] * 4
    handover = leaders.index("pod-b")
    assert leaders[:45] == ["pod-a"] * 45
    # killed at the start of minute 45: the lease (150 s) runs out during minute 47
    assert leaders[45:handover] == ["", ""], "nobody acts until the lease runs out"
    assert set(leaders[handover:]) == {"pod-b"}
    started = release.started_at
    assert started is not None
    # the new leader reads the release's traces again from its start (what it stores
    # of them is pruned once its evidence checkpoints cover them)
    after_the_kill = [start for when, start in world.reads if when >= started + 46 * MINUTE]
    assert after_the_kill and min(after_the_kill) <= started, (
        "the new leader read the release's traces again from its start"
    )
    before_handover = [trace for trace in world.traces if trace.ts < started + 45 * MINUTE]
    assert len(before_handover) > 4000
    assert world.moves == [("production", 4)]
    assert [record.rollout for record in reader.decisions("support")] == [1] * 4

    # the next candidate: the new leader numbers it on from the ConfigMap
    world.labels["canary"] = world.labels["latest"] = 5
    run([first, second], world, clock, minutes=600)
    reader.refresh()
    release = reader.release("support")
    assert release is not None
    assert (release.rollout, release.phase, release.candidate_version) == (2, Phase.PROMOTED, 5)
    assert [(r.rollout, r.decision) for r in reader.decisions("support")][4:] == [
        (2, "start"),
        (2, "advance"),
        (2, "advance"),
        (2, "promote"),
    ]
    assert [(m.rollout, m.to_version) for m in reader.label_moves("support")] == [(1, 4), (2, 5)]
