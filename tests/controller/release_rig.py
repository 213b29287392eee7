"""A controller on a real state file, with fakes for Langfuse: prompt labels held in a
dict, and a sample source whose traffic follows the routing table the controller writes.
Time moves only when a test says so. Also: serving an ASGI app on loopback."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.lifecycle import ReleaseState
from controller.loop import Controller, Notify
from controller.release_store import ControllerState
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from controller.source.health import PollHealth, PollRecord, SourceHealth
from policies import Policy, load_policy
from policies.domain import Arm, Phase
from tests.proxy.proxy_support import closed_port_url, wait_until
from tests.proxy.proxy_support import serving as serve_app

__all__ = ["closed_port_url", "make_rig", "serving", "wait_until"]

T0 = 1_800_000_000.0
MINUTE = 60.0
TOKEN = "s3cret-admin-token-0123456789abcdef"
RELEASE = "support"

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}
  upstreams: {stable: "http://127.0.0.1:9"}
routing:
  stickiness: {header: x-user-id}
steps:
  - {weight: 10, minDuration: 30m}
  - {weight: 30, minDuration: 30m}
  - {weight: 50, minDuration: 30m, maxDuration: 4h}
analysis:
  interval: 1m
  alpha: 0.05
  minSamples: 50
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
    - {name: helpfulness, source: score, score: helpfulness, direction: higher,
       tolerance: 0.05, effectSize: 0.1, critical: true}
"""


class Labels:
    """Each prompt's labels: production on version 3, the candidate (canary) on 4.
    ``positions`` are the rig's own prompt's."""

    def __init__(self) -> None:
        self.prompts: dict[str, dict[str, int]] = {}

    def of(self, prompt: str) -> dict[str, int]:
        return self.prompts.setdefault(prompt, {"production": 3, "canary": 4, "latest": 4})

    @property
    def positions(self) -> dict[str, int]:
        return self.of("support-agent")

    def version_of(self, prompt: str, label: str) -> int | None:
        return self.of(prompt).get(label)

    def move(self, prompt: str, label: str, version: int) -> None:
        self.of(prompt)[label] = version


@dataclass
class Traffic:
    """The sample source: ``rate`` requests a minute since the last poll, sent to the
    canary by the routing table's weight (or by ``canary_share`` when set)."""

    routing: SqliteRoutingStore
    rate: int = 120
    canary_share: float | None = None
    share_of: Callable[[], float] | None = None
    """Where the canary's share comes from when routes are not a routing table (a
    Gateway API route): called at each poll."""
    shadow_delta: float = 0.0
    """While the table mirrors (``shadow``), a copy of each mirrored request, scored this
    much above its primary (the candidate's difference on the same input)."""
    down: bool = False
    request_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _last: float | None = None
    _count: int = 0
    _random: random.Random = field(default_factory=lambda: random.Random(7))
    reads: PollHealth = field(default_factory=PollHealth)

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        key = ("observations", "5xx" if self.down else "2xx")
        self.request_counts[key] = self.request_counts.get(key, 0) + 1
        assert cursors is not None
        self.reads.record(
            PollRecord(
                at=now,
                cursors=cursors if self.down else Cursors(now, now),
                complete=not self.down,
                error="Langfuse answered 503" if self.down else None,
            )
        )
        if self.down:
            return Poll(ok=False, cursors=cursors, error="Langfuse answered 503")
        start = cursors.observations_from if self._last is None else self._last
        self._last = now
        table = self.routing.read(RELEASE)
        share = self.canary_share if self.share_of is None else self.share_of()
        if share is None:
            share = 0.0 if table is None else table.canary_weight / 100.0
        traces: list[TraceSample] = []
        scores: list[ScoreSample] = []
        for _ in range(int(self.rate * (now - start) / MINUTE)):
            self._count += 1
            trace_id = f"t{self._count}"
            ts = start + self._random.random() * (now - start)
            arm = Arm.CANARY if self._random.random() < share else Arm.BASELINE
            error = self._random.random() < 0.01
            traces.append(TraceSample(RELEASE, trace_id, arm, ts, error, 400.0, 0.001))
            value = min(1.0, max(0.0, self._random.gauss(0.8, 0.1)))
            scores.append(ScoreSample(f"s{self._count}", trace_id, "helpfulness", value, ts))
            mirror = None if table is None else table.shadow
            if mirror is not None and self._random.random() * 100 < mirror.percent:
                copy_id = f"{trace_id}-copy"
                traces.append(
                    TraceSample(
                        RELEASE, copy_id, Arm.SHADOW, ts, False, 400.0, 0.001, None, trace_id
                    )
                )
                copied = min(1.0, max(0.0, value + self.shadow_delta))
                scores.append(ScoreSample(f"s{copy_id}", copy_id, "helpfulness", copied, ts))
        return Poll(ok=True, cursors=Cursors(now, now), traces=tuple(traces), scores=tuple(scores))

    def health(self, now: float) -> SourceHealth:
        """The polls' health, without a request budget (never starved)."""
        return SourceHealth(reads=self.reads.snapshot(now))

    def close(self) -> None:
        pass


@dataclass
class Rig:
    """A controller of one release, ``support``, on ``tmp_path``; ``now`` is its clock."""

    path: Path
    state: ControllerState
    routing: SqliteRoutingStore
    traffic: Traffic
    labels: Labels
    policies: dict[str, Policy]
    controller: Controller
    now: float = T0

    def clock(self) -> float:
        return self.now

    def run(self, minutes: int, until: Phase | None = None) -> None:
        """Tick once a minute for ``minutes``, or until the release reaches ``until``."""
        for _ in range(minutes):
            self.now += MINUTE
            self.controller.tick(self.now)
            if until is not None and self.release().phase is until:
                return

    def release(self) -> ReleaseState:
        release = self.state.release(RELEASE)
        assert release is not None
        return release

    def close(self) -> None:
        self.routing.close()
        self.state.close()


def write_policy(directory: Path) -> Policy:
    path = directory / "support.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return load_policy(path)


def make_rig(tmp_path: Path, *, notify: Notify | None = None, **traffic: Any) -> Rig:
    path = tmp_path / "state.db"
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    source = Traffic(routing, **traffic)
    labels = Labels()
    policies = {RELEASE: write_policy(tmp_path)}
    controller = Controller(
        state=state,
        routing=routing,
        source=source,
        labels=labels,
        policies=lambda: policies,
        notify=notify,
    )
    return Rig(path, state, routing, source, labels, policies, controller)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL."""
    with serve_app(app) as served:
        yield served.base_url
