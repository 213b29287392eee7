"""A simulated world for driving the controller with a fake clock: requests split by the
routing table the controller writes, each arm erring and scoring at its own rates, and a
sample source that hands the controller what has happened so far.

``World`` hands the controller every trace; ``ProxyWorld`` counts every request into the
proxies' cells in the state file and hands it only the traces in the score sample."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coalmine.shared.aggregates.model import MinuteCell
from coalmine.shared.aggregates.sqlite import SqliteAggregateStore
from coalmine.shared.routing_tables.store import RoutingTableStore
from coalmine.shared.sampling import is_sampled
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from controller.score_sample import rate_in_force
from controller.source.health import PollHealth, SourceHealth
from policies.domain import Arm
from policies.latency_bins import sketch_bin
from policies.model import Policy

MINUTE = 60.0


class HandsOver:
    """A sample source that holds traces and scores until a poll reaches their time."""

    _pending: list[TraceSample]
    _scores: list[ScoreSample]
    polls: int

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


@dataclass
class _Arms(HandsOver):
    """Requests at ``rate`` a minute to a release whose arms err and score at their own
    rates; errored traces get no score."""

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
    _pending: list[TraceSample] = field(default_factory=list)
    _scores: list[ScoreSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self._clock = self.start

    def _hand_over(self, trace_id: str, canary: bool, ts: float, error: bool) -> None:
        """The trace of one request and, unless it erred, its score ``score_delay`` later."""
        arm = Arm.CANARY if canary else Arm.BASELINE
        self._pending.append(
            TraceSample(self.release, trace_id, arm, ts, error, self.latency_ms, self.cost_usd)
        )
        if not error:
            mean = self.canary_score if canary else self.baseline_score
            value = min(1.0, max(0.0, self.random.gauss(mean, 0.15)))
            self._scores.append(
                ScoreSample(f"s{trace_id}", trace_id, self.score_name, value, ts + self.score_delay)
            )


@dataclass
class World(_Arms):
    """Requests arrive at ``rate`` a minute and go to the canary by the routing table's
    weight; each arm errs and scores by its own rates. Scores arrive ``score_delay``
    seconds after their trace; errored traces get none."""

    _counter: int = 0

    def run_until(self, now: float) -> None:
        """Traffic from the last call until ``now``."""
        table = self.routing.read(self.release)
        weight = 0.0 if table is None else table.canary_weight
        seconds = now - self._clock
        draw = self.random.random
        for _ in range(int(self.rate * seconds / MINUTE)):
            ts = self._clock + draw() * seconds
            canary = draw() * 100 < weight
            self.served["canary" if canary else "baseline"] += 1
            self._counter += 1
            error = draw() < (self.canary_error if canary else self.baseline_error)
            self._hand_over(f"t{self._counter}", canary, ts, error)
        self._clock = now

    def close(self) -> None:
        pass


PROXIES = ("p1", "p2")


@dataclass
class ProxyWorld(_Arms):
    """Requests arrive at ``rate`` a minute and go to the canary by the routing table's
    weight, answered by two proxies in turn, which count every one of them into their
    cells of the state file's ``proxy_minutes`` (written once a minute, at its end). A
    request is in the score sample when ``is_sampled`` takes its random trace id at the
    rate in force in the routing table; only those reach the sample source (as a trace,
    errors included, and, unless it erred, one score ``score_delay`` seconds later), as
    only those would reach Langfuse. ``run_until`` moves in whole minutes."""

    path: Path = field(kw_only=True)
    """The state file the proxies write their cells into."""
    counted: int = 0
    """Requests counted into the proxies' cells."""
    sampled: int = 0
    """Requests in the score sample (traces handed over)."""
    last_rate: float = 1.0
    """The sample rate in force in the last minute run."""

    def __post_init__(self) -> None:
        if self.start % MINUTE:
            raise ValueError("the world starts on a whole minute")
        super().__post_init__()
        self.proxies = {name: SqliteAggregateStore(self.path, name) for name in PROXIES}

    def run_until(self, now: float) -> None:
        """Traffic of the whole minutes from the last call until ``now``."""
        while self._clock + MINUTE <= now:
            self._minute(self._clock)
            self._clock += MINUTE

    def _minute(self, start: float) -> None:
        table = self.routing.read(self.release)
        weight = 0.0 if table is None else table.canary_weight
        # sample rates start on whole minutes: one rate holds for the whole minute
        rate = 1.0 if table is None else rate_in_force(table.score_sample, start)
        self.last_rate = rate
        draw = self.random.random
        bits = self.random.getrandbits
        latency_bin = sketch_bin(self.latency_ms)
        # (proxy, canary) -> [requests, errors, sampled]
        counts = {(proxy, canary): [0, 0, 0] for proxy in PROXIES for canary in (0, 1)}
        for index in range(self.rate):
            ts = start + (index + draw()) * MINUTE / self.rate
            canary = draw() * 100 < weight
            error = draw() < (self.canary_error if canary else self.baseline_error)
            trace_id = f"{bits(128):032x}"
            chosen = is_sampled(trace_id, rate)
            cell = counts[(PROXIES[index % 2], int(canary))]
            cell[0] += 1
            cell[1] += error
            cell[2] += chosen
            if chosen:
                self._hand_over(trace_id, canary, ts, error)
        minute = int(start)
        for proxy, store in self.proxies.items():
            cells = [
                MinuteCell(
                    self.release,
                    Arm.CANARY if side else Arm.BASELINE,
                    minute,
                    requests,
                    errors,
                    {latency_bin: requests} if requests else {},
                    sampled=sampled,
                )
                for (name, side), (requests, errors, sampled) in counts.items()
                if name == proxy and requests
            ]
            store.write(cells, start + MINUTE)
        for (_, side), (requests, _, sampled) in counts.items():
            self.served["canary" if side else "baseline"] += requests
            self.counted += requests
            self.sampled += sampled

    def close(self) -> None:
        for store in self.proxies.values():
            store.close()
