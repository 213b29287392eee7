"""The control loop driven by a fake clock against a simulated world: traffic split by the
routing table the controller writes, a prompt whose labels it moves, a source that can
fail, and a process that can die in the middle of an action."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.errors import LabelTemporaryError, ManualActionError
from controller.loop import Controller
from controller.release_store import ActionStatus, ControllerState
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from policies import Policy
from policies.domain import Arm, Phase
from policies.loader import load_policy_text

T0 = 1_800_000_000.0
MINUTE = 60.0

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent}
  upstreams: {stable: "http://127.0.0.1:9"}
steps:
  - {weight: 10, minDuration: 10m}
  - {weight: 30, minDuration: 10m}
  - {weight: 50, minDuration: 10m, maxDuration: 4h}
analysis:
  interval: 1m
  alpha: 0.05
  minSamples: 50
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
    - name: helpfulness
      source: score
      score: helpfulness
      tolerance: 0.05
      effectSize: 0.1
      critical: true
"""


class Crash(BaseException):
    """The process dies here (nothing after this line runs)."""


@dataclass
class Labels:
    """A Langfuse project's prompt labels."""

    positions: dict[str, int] = field(
        default_factory=lambda: {"production": 3, "canary": 4, "latest": 4}
    )
    moves: list[tuple[str, int]] = field(default_factory=list)
    fail_next_moves: int = 0
    crash_before_move: int | None = None
    crash_after_move: int | None = None

    def version_of(self, prompt: str, label: str) -> int | None:
        assert prompt == "support-agent"
        return self.positions.get(label)

    def move(self, prompt: str, label: str, version: int) -> None:
        if self.crash_before_move == len(self.moves):
            self.crash_before_move = None
            raise Crash
        if self.fail_next_moves:
            self.fail_next_moves -= 1
            raise LabelTemporaryError("Langfuse answered 503")
        self.positions[label] = version
        self.moves.append((label, version))
        if self.crash_after_move == len(self.moves):
            self.crash_after_move = None
            raise Crash


@dataclass
class World:
    """Requests arrive at ``rate`` a minute and go to the canary by the routing table's
    weight; each arm errs and scores by its own rates."""

    routing: SqliteRoutingStore
    canary_error: float = 0.01
    canary_score: float = 0.8
    baseline_error: float = 0.01
    baseline_score: float = 0.8
    rate: int = 120
    down: bool = False
    seed: int = 1
    polls: int = 0
    served: dict[str, int] = field(default_factory=lambda: {"baseline": 0, "canary": 0})
    _clock: float = T0
    _counter: int = 0
    _pending: list[TraceSample] = field(default_factory=list)
    _scores: list[ScoreSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def run_until(self, now: float) -> None:
        """Traffic from the last call until ``now``."""
        table = self.routing.read("support")
        weight = 0.0 if table is None else table.canary_weight
        seconds = now - self._clock
        for _ in range(int(self.rate * seconds / MINUTE)):
            ts = self._clock + self.random.random() * seconds
            canary = self.random.random() * 100 < weight
            arm = Arm.CANARY if canary else Arm.BASELINE
            self.served[arm.value] += 1
            error_rate = self.canary_error if canary else self.baseline_error
            score = self.canary_score if canary else self.baseline_score
            self._counter += 1
            trace_id = f"t{self._counter}"
            error = self.random.random() < error_rate
            self._pending.append(TraceSample("support", trace_id, arm, ts, error, 500.0, 0.001))
            if not error:
                value = min(1.0, max(0.0, self.random.gauss(score, 0.15)))
                self._scores.append(
                    ScoreSample(f"s{self._counter}", trace_id, "helpfulness", value, ts + 5)
                )
        self._clock = now

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        self.polls += 1
        assert cursors is not None
        if self.down:
            return Poll(ok=False, cursors=cursors, error="Langfuse answered 503")
        traces = tuple(trace for trace in self._pending if trace.ts <= now)
        scores = tuple(score for score in self._scores if score.at <= now)
        self._pending = [trace for trace in self._pending if trace.ts > now]
        self._scores = [score for score in self._scores if score.at > now]
        return Poll(ok=True, cursors=Cursors(now, now), traces=traces, scores=scores)

    def close(self) -> None:
        pass


@dataclass
class Rig:
    path: Path
    labels: Labels
    world: World
    policies: dict[str, Policy]
    controller: Controller
    state: ControllerState
    now: float = T0

    def restart(self) -> None:
        """A new process on the same state file (the old one died)."""
        self.state.close()
        self.state = ControllerState(self.path)
        self.controller = _controller(self.state, self.world, self.labels, self.policies)

    def run(self, minutes: float, until: Phase | None = None) -> None:
        end = self.now + minutes * MINUTE
        while self.now < end:
            self.now += MINUTE
            self.world.run_until(self.now)
            self.controller.tick(self.now)
            release = self.state.release("support")
            if until is not None and release is not None and release.phase is until:
                return

    def phase(self) -> Phase:
        release = self.state.release("support")
        assert release is not None
        return release.phase

    def weight(self) -> float:
        table = self.world.routing.read("support")
        assert table is not None
        return table.canary_weight

    def decisions(self) -> list[str]:
        return [record.decision for record in self.state.decisions("support")]


def _controller(
    state: ControllerState, world: World, labels: Labels, policies: dict[str, Policy]
) -> Controller:
    return Controller(
        state=state,
        routing=world.routing,
        source=world,
        labels=labels,
        policies=lambda: policies,
    )


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    path = tmp_path / "state.db"
    state = ControllerState(path)
    world = World(SqliteRoutingStore(path))
    labels = Labels()
    policies = {"support": load_policy_text(POLICY, "support.yaml")}
    return Rig(path, labels, world, policies, _controller(state, world, labels, policies), state)


def test_a_good_canary_is_promoted_through_every_step(rig: Rig) -> None:
    rig.run(600, until=Phase.PROMOTED)
    assert rig.phase() is Phase.PROMOTED
    assert rig.decisions() == ["start", "advance", "advance", "promote"]
    assert rig.labels.positions["production"] == 4
    assert rig.labels.positions["canary"] == 4
    assert rig.weight() == 0.0
    moves = rig.state.label_moves("support")
    assert [(move.label, move.from_version, move.to_version) for move in moves] == [
        ("production", 3, 4)
    ]
    promote = rig.state.decisions("support")[-1]
    assert {metric["name"] for metric in promote.evidence["metrics"]} == {
        "errors",
        "helpfulness",
    }
    assert all(metric["verdict"] == "pass" for metric in promote.evidence["metrics"])


def test_weights_follow_the_steps(rig: Rig) -> None:
    rig.run(1)
    assert rig.phase() is Phase.CANARY
    assert rig.weight() == 10.0
    rig.run(600, until=Phase.PROMOTED)
    starts = [record for record in rig.state.decisions("support") if record.decision == "advance"]
    assert [record.step for record in starts] == [1, 2]


def test_a_bad_canary_is_rolled_back_and_its_label_parked_on_stable(rig: Rig) -> None:
    rig.world.canary_error = 0.25
    rig.run(240, until=Phase.ROLLED_BACK)
    assert rig.phase() is Phase.ROLLED_BACK
    assert rig.decisions() == ["start", "rollback"]
    assert rig.weight() == 0.0
    assert rig.labels.positions == {"production": 3, "canary": 3, "latest": 4}
    rollback = rig.state.decisions("support")[-1]
    errors = next(m for m in rollback.evidence["metrics"] if m["name"] == "errors")
    assert errors["verdict"] == "fail"
    assert errors["worstTraces"]


def test_no_release_starts_without_a_candidate(rig: Rig) -> None:
    rig.labels.positions["canary"] = 3
    rig.run(5)
    assert rig.phase() is Phase.PENDING
    assert rig.world.routing.read("support") is None
    rig.labels.positions["canary"] = 4
    rig.run(1)
    assert rig.phase() is Phase.CANARY


def test_a_source_that_fails_holds_the_release_and_it_resumes(rig: Rig) -> None:
    rig.run(3)
    rig.world.down = True
    rig.run(120)
    assert rig.phase() is Phase.CANARY
    assert rig.decisions() == ["start"]
    assert rig.weight() == 10.0
    rig.world.down = False
    rig.run(600, until=Phase.PROMOTED)
    assert rig.phase() is Phase.PROMOTED


def test_a_temporary_label_error_is_retried_on_the_next_tick(rig: Rig) -> None:
    rig.world.canary_error = 0.3
    rig.labels.fail_next_moves = 2
    rig.run(240, until=Phase.ROLLED_BACK)
    assert rig.weight() == 0.0  # the local half did not wait for Langfuse
    assert rig.labels.positions["canary"] == 4
    assert rig.state.pending_actions("support")
    rig.run(2)
    assert rig.labels.positions["canary"] == 3
    assert rig.state.pending_actions("support") == []
    assert rig.decisions() == ["start", "rollback"]


@pytest.mark.parametrize(
    ("crash", "expected_moves"),
    [
        ({"crash_before_move": 0}, [("canary", 3)]),
        ({"crash_after_move": 1}, [("canary", 3)]),
    ],
)
def test_a_crash_in_the_middle_of_a_rollback_is_finished_on_restart(
    rig: Rig, crash: dict[str, int], expected_moves: list[tuple[str, int]]
) -> None:
    rig.world.canary_error = 0.3
    for key, value in crash.items():
        setattr(rig.labels, key, value)
    with pytest.raises(Crash):
        rig.run(240, until=Phase.ROLLED_BACK)
    # the decision and its intent were written before acting
    assert rig.phase() is Phase.ROLLED_BACK
    rig.restart()
    rig.run(1)
    assert rig.labels.moves == expected_moves
    assert rig.labels.positions["canary"] == 3
    assert rig.weight() == 0.0
    assert rig.decisions() == ["start", "rollback"]
    assert [
        (move.label, move.from_version, move.to_version)
        for move in rig.state.label_moves("support")
    ] == [("canary", 4, 3)]
    assert all(action.status is ActionStatus.DONE for action in rig.state.actions("support"))


def test_a_crash_during_promotion_is_finished_on_restart_with_one_history_entry(
    rig: Rig,
) -> None:
    rig.labels.crash_after_move = 1  # production moved, then the process died
    with pytest.raises(Crash):
        rig.run(600, until=Phase.PROMOTED)
    rig.restart()
    rig.run(1)
    assert rig.labels.positions["production"] == 4
    assert rig.decisions().count("promote") == 1
    assert [
        (move.label, move.from_version, move.to_version)
        for move in rig.state.label_moves("support")
    ] == [("production", 3, 4)]


def test_evidence_survives_a_restart(rig: Rig) -> None:
    rig.run(30)
    before = rig.controller.last_judgement("support")
    assert before is not None
    rig.restart()
    rig.run(1)
    after = rig.controller.last_judgement("support")
    assert after is not None
    counts = {metric.name: metric.n_baseline + metric.n_canary for metric in after.metrics}
    earlier = {metric.name: metric.n_baseline + metric.n_canary for metric in before.metrics}
    assert all(counts[name] >= earlier[name] for name in counts)
    assert rig.decisions()[0] == "start" and rig.decisions().count("start") == 1


def test_a_manual_rollback_after_promotion_puts_production_back(rig: Rig) -> None:
    rig.run(600, until=Phase.PROMOTED)
    rig.controller.manual("support", "rollback", actor="sre@example.com", now=rig.now)
    assert rig.phase() is Phase.ROLLED_BACK
    assert rig.labels.positions["production"] == 3
    assert rig.labels.positions["canary"] == 3
    last = rig.state.decisions("support")[-1]
    assert (last.decision, last.actor) == ("rollback", "sre@example.com")


def test_manual_pause_and_resume(rig: Rig) -> None:
    rig.run(2)
    rig.controller.manual("support", "pause", actor="sre", now=rig.now)
    assert rig.phase() is Phase.PAUSED
    rig.run(60)
    assert rig.phase() is Phase.PAUSED
    with pytest.raises(ManualActionError):
        rig.controller.manual("support", "pause", actor="sre", now=rig.now)
    rig.controller.manual("support", "resume", actor="sre", now=rig.now)
    rig.run(600, until=Phase.PROMOTED)
    assert rig.phase() is Phase.PROMOTED


def test_a_removed_policy_aborts_its_release(rig: Rig) -> None:
    rig.run(5)
    rig.policies.clear()
    rig.run(1)
    assert rig.phase() is Phase.ABORTED
    assert rig.weight() == 0.0


def test_the_routing_table_is_repaired_when_someone_changes_it(rig: Rig) -> None:
    rig.run(3)
    table = rig.world.routing.read("support")
    assert table is not None
    rig.world.routing.write(table.model_copy(update={"canary_weight": 80.0}), table.version)
    rig.run(1)
    assert rig.weight() == 10.0


def test_samples_of_a_finished_release_are_forgotten(rig: Rig) -> None:
    rig.world.canary_error = 0.3
    rig.run(240, until=Phase.ROLLED_BACK)
    assert rig.state.traces("support", 0.0)
    rig.run(61)
    assert rig.state.traces("support", 0.0) == []
    assert rig.state.scores_for_release("support", 0.0) == []
    assert rig.decisions() == ["start", "rollback"]  # the evidence stays in the log


@dataclass
class Lagging:
    """The world's samples, with cursors that stop ``behind`` seconds before now: a
    source still reading history (a new leader catching up on a long release)."""

    world: World
    behind: float | None = 600.0

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        poll = self.world.poll(releases, cursors, now)
        if self.behind is None:
            return poll
        return replace(poll, cursors=Cursors(now - self.behind, now - self.behind))

    def close(self) -> None:
        pass


def test_no_advance_or_promotion_until_langfuse_is_read_up_to_now(rig: Rig) -> None:
    source = Lagging(rig.world)
    rig.controller.source = source
    rig.run(300, until=Phase.PROMOTED)
    assert rig.decisions() == ["start"], "held while the reads stop short of now"
    source.behind = 30.0  # within a minute of now: caught up
    rig.run(600, until=Phase.PROMOTED)
    assert rig.decisions() == ["start", "advance", "advance", "promote"]


def test_a_bad_canary_is_rolled_back_even_while_langfuse_is_being_caught_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    state = ControllerState(path)
    world = World(SqliteRoutingStore(path), canary_error=0.12)
    labels = Labels()
    policies = {"support": load_policy_text(POLICY, "support.yaml")}
    controller = _controller(state, world, labels, policies)
    controller.source = Lagging(world)
    rig = Rig(path, labels, world, policies, controller, state)
    rig.run(240, until=Phase.ROLLED_BACK)
    assert rig.decisions() == ["start", "rollback"], "what was read is real evidence of harm"
