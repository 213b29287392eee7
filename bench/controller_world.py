"""A simulated world for driving the controller with a fake clock: requests split by the
routing table the controller writes, each arm erring and scoring at its own rates, and a
sample source that hands the controller what has happened so far."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from coalmine.shared.routing_tables.store import RoutingTableStore
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from controller.source.health import PollHealth, SourceHealth
from policies.domain import Arm
from policies.model import Policy

MINUTE = 60.0


@dataclass
class World:
    """Requests arrive at ``rate`` a minute and go to the canary by the routing table's
    weight; each arm errs and scores by its own rates. Scores arrive ``score_delay``
    seconds after their trace; errored traces get none."""

    routing: RoutingTableStore
    release: str
    start: float
    rate: int = 1000
    canary_error: float = 0.01
    canary_score: float = 0.8
    baseline_error: float = 0.01
    baseline_score: float = 0.8
    score_name: str = "helpfulness"
    score_delay: float = 5.0
    latency_ms: float = 500.0
    cost_usd: float = 0.001
    seed: int = 1
    polls: int = 0
    served: dict[str, int] = field(default_factory=lambda: {"baseline": 0, "canary": 0})
    _clock: float = 0.0
    _counter: int = 0
    _pending: list[TraceSample] = field(default_factory=list)
    _scores: list[ScoreSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self._clock = self.start

    def run_until(self, now: float) -> None:
        """Traffic from the last call until ``now``."""
        table = self.routing.read(self.release)
        weight = 0.0 if table is None else table.canary_weight
        seconds = now - self._clock
        draw = self.random.random
        for _ in range(int(self.rate * seconds / MINUTE)):
            ts = self._clock + draw() * seconds
            canary = draw() * 100 < weight
            arm = Arm.CANARY if canary else Arm.BASELINE
            self.served[arm.value] += 1
            error_rate = self.canary_error if canary else self.baseline_error
            score = self.canary_score if canary else self.baseline_score
            self._counter += 1
            trace_id = f"t{self._counter}"
            error = draw() < error_rate
            self._pending.append(
                TraceSample(self.release, trace_id, arm, ts, error, self.latency_ms, self.cost_usd)
            )
            if not error:
                value = min(1.0, max(0.0, self.random.gauss(score, 0.15)))
                self._scores.append(
                    ScoreSample(
                        f"s{self._counter}",
                        trace_id,
                        self.score_name,
                        value,
                        ts + self.score_delay,
                    )
                )
        self._clock = now

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        self.polls += 1
        del releases, cursors
        traces = tuple(trace for trace in self._pending if trace.ts <= now)
        scores = tuple(score for score in self._scores if score.at <= now)
        self._pending = [trace for trace in self._pending if trace.ts > now]
        self._scores = [score for score in self._scores if score.at > now]
        return Poll(ok=True, cursors=Cursors(now, now), traces=traces, scores=scores)

    def health(self, now: float) -> SourceHealth:
        """The world reads nothing from Langfuse: no read health to report."""
        return SourceHealth(reads=PollHealth().snapshot(now))

    def close(self) -> None:
        pass
