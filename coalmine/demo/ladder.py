"""`coalmine demo --scenario ladder`: candidate after candidate up the release ladder.

One `coalmine run` takes the scenario's candidates one after another, as continuous
releases do: once a rollout ends, the next prompt version is created with the canary
label and the next rollout begins. Each climbs dataset → shadow → canary steps →
approval; when one waits for approval, the demo approves it through the admin API as
``demo``. For each rollout the demo records how and where it ended, the user requests
the proxy sent to the canary arm while it ran (from its ``coalmine_proxy_requests``
counter), and the dataset rung's experiments in Langfuse.

The agents fetch the prompt for every request, without the SDK's cache: a rung starts
within a second or two of the new canary label, and a cached prompt is served stale
while it refreshes, so the first items of a dataset run would be answered by the
previous candidate.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
from prometheus_client.parser import text_string_to_metric_families

from coalmine.demo.questions import QUESTIONS, REFUND_QUESTIONS, WORDINGS
from coalmine.demo.run import FINISHED, Progress, Traffic
from coalmine.demo.scenarios import (
    DATASET,
    PROMPT,
    RELEASE,
    Candidate,
    Outcome,
    Rung,
    Scenario,
    policy_yaml,
)
from coalmine.demo.stack import AUTH, DemoStack

APPROVER: Final = "demo"
"""Who the demo approves as (the decision's actor: ``admin-api (demo)``)."""
LIVE_QUESTIONS: Final = tuple(
    wording.format(q=question) for question in QUESTIONS + REFUND_QUESTIONS for wording in WORDINGS
)
"""What live users ask: the dataset's questions and refund requests, in every wording."""
TRAFFIC_RATE: Final = 12.0
"""User requests a second at speed 1."""

Note = Callable[[str], None]


@dataclass
class RolloutResult:
    """How one candidate's rollout went."""

    candidate: str
    version: int
    rollout: int | None
    outcome: Outcome
    expected: Outcome
    rung: str | None
    """Where it ended: the rung of its rollback, ``approval`` when it was promoted after
    an approval, ``canary`` when promoted or rolled back from the canary steps."""
    expected_rung: Rung
    reason: str
    seconds: float | None
    """From the candidate's creation to the end of its rollout."""
    canary_requests: int | None
    """User requests the proxy answered from the canary arm while the rollout ran."""
    approved_by: str | None
    experiments: list[dict[str, Any]] = field(default_factory=list)
    """The Langfuse experiments its dataset rung recorded (name, dataset id, items), as
    ``GET /api/public/experiments`` lists them."""
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome is self.expected and self.rung == self.expected_rung.value

    def summary(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "version": self.version,
            "rollout": self.rollout,
            "outcome": self.outcome.value,
            "expected": self.expected.value,
            "rung": self.rung,
            "expectedRung": self.expected_rung.value,
            "ok": self.ok,
            "reason": self.reason,
            "seconds": self.seconds,
            "canaryRequests": self.canary_requests,
            "approvedBy": self.approved_by,
            "experiments": self.experiments,
            "decisions": self.decisions,
        }


@dataclass
class LadderResult:
    scenario: str
    rollouts: list[RolloutResult]
    candidates: int
    labels: dict[str, int | None]
    label_moves: list[dict[str, Any]]
    requests: dict[str, int]
    seconds: float
    dashboard: str
    pids: list[int]
    logs: str

    @property
    def ok(self) -> bool:
        return len(self.rollouts) == self.candidates and all(r.ok for r in self.rollouts)

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "ok": self.ok,
            "rollouts": [rollout.summary() for rollout in self.rollouts],
            "labels": self.labels,
            "labelMoves": self.label_moves,
            "requests": self.requests,
            "seconds": self.seconds,
            "dashboard": self.dashboard,
            "logs": self.logs,
        }


def run_ladder(
    scenario: Scenario,
    *,
    speed: float = 1.0,
    timeout: float = 420.0,
    progress: Progress | None = None,
    note: Note | None = None,
    workdir: Path | None = None,
    on_started: Callable[[str], None] | None = None,
) -> LadderResult:
    """Release each of the scenario's candidates in turn, then stop everything; never
    leaves a process behind. ``timeout`` bounds the whole run."""
    base = workdir or Path(tempfile.mkdtemp(prefix="coalmine-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    stack = DemoStack(base)
    traffic: Traffic | None = None
    watcher: _Watcher | None = None
    began = time.monotonic()
    deadline = began + timeout
    say = note or (lambda line: None)
    try:
        stack.start_emulator()
        stack.create_prompts(scenario.prompts)
        stack.write_dataset(DATASET)
        say(f"dataset {DATASET}: written to Langfuse with the Langfuse SDK")
        stack.start_agents(prompt_cache_seconds=0)
        stack.start_coalmine(
            policy_yaml(
                scenario,
                stable=stack.url("stable"),
                canary=stack.url("canary"),
                staging=stack.url("staging"),
                speed=speed,
            )
        )
        stack.start_evaluator(speed)
        dashboard = f"{stack.admin_url}/"
        if on_started is not None:
            on_started(dashboard)
        traffic = Traffic(stack.proxy_url, rate=TRAFFIC_RATE * speed, questions=LIVE_QUESTIONS)
        traffic.start()
        since_ms = int(time.time() * 1000) - 60_000
        watcher = _Watcher(stack, progress, say)
        rollouts: list[RolloutResult] = []
        for index, candidate in enumerate(scenario.candidates, start=1):
            say(
                f"candidate {index} of {len(scenario.candidates)} ({candidate.name}: "
                f"{candidate.summary})"
            )
            result = watcher.release(candidate, deadline)
            rollouts.append(result)
            say(_ended_line(result))
            if result.outcome not in (Outcome.PROMOTED, Outcome.ROLLED_BACK):
                break  # the release is stuck: the next candidate would not start
        traffic.stop()
        _add_experiments(stack, rollouts, since_ms)
        try:
            detail = watcher.detail()
        except httpx.HTTPError:
            detail = {}
        return LadderResult(
            scenario=scenario.name,
            rollouts=rollouts,
            candidates=len(scenario.candidates),
            labels=_labels(stack),
            label_moves=detail.get("labelMoves", []),
            requests={
                "sent": traffic.sent,
                "failed": traffic.failed,
                **{str(code): count for code, count in sorted(traffic.by_status.items())},
            },
            seconds=round(time.monotonic() - began, 1),
            dashboard=dashboard,
            pids=stack.processes.pids(),
            logs=str(base),
        )
    finally:
        if traffic is not None:
            traffic.stop()
        if watcher is not None:
            watcher.close()
        stack.processes.stop_all()


class _Watcher:
    """Follows the release through the admin API, one rollout at a time."""

    def __init__(self, stack: DemoStack, progress: Progress | None, say: Note) -> None:
        self.stack = stack
        self.progress = progress
        self.say = say
        self.admin = httpx.Client(
            base_url=stack.admin_url,
            headers={"Authorization": f"Bearer {stack.token}"},
            timeout=10.0,
        )
        self.last_rollout = 0

    def close(self) -> None:
        self.admin.close()

    def detail(self) -> dict[str, Any]:
        response = self.admin.get(f"/releases/{RELEASE}", params={"decisions": 500})
        if response.status_code != 200:
            return {}
        found: dict[str, Any] = response.json()
        return found

    def release(self, candidate: Candidate, deadline: float) -> RolloutResult:
        """Create the candidate's prompt version and follow its rollout to its end."""
        before = _canary_requests(self.stack)
        created_at = time.time()
        (version,) = self.stack.create_prompts([candidate.prompt])
        self.say(f"prompt version {version} created with label canary")
        approved_by: str | None = None
        detail: dict[str, Any] = {}
        outcome = Outcome.TIMED_OUT
        while time.monotonic() < deadline:
            try:
                detail = self.detail()
            except httpx.HTTPError:
                detail = {}
            mine = detail.get("rollout") == self.last_rollout + 1
            if mine and detail.get("candidateVersion") == version:
                if self.progress is not None:
                    self.progress(detail)
                phase = detail.get("phase")
                if phase in FINISHED:
                    outcome = FINISHED[phase]
                    break
                if phase == "paused":
                    outcome = Outcome.PAUSED
                    break
                if phase == "approval" and approved_by is None:
                    approved_by = self._approve(version)
            time.sleep(1.0)
        rollout = detail.get("rollout") if detail.get("candidateVersion") == version else None
        if isinstance(rollout, int):
            self.last_rollout = rollout
        decisions = [d for d in detail.get("decisions", []) if d.get("rollout") == rollout]
        decisions.sort(key=lambda d: d["id"])
        ended = next(
            (d for d in reversed(decisions) if d["decision"] in _ENDING),
            None,
        )
        after = _canary_requests(self.stack)
        return RolloutResult(
            candidate=candidate.name,
            version=version,
            rollout=rollout,
            outcome=outcome,
            expected=candidate.expected,
            rung=_rung(ended),
            expected_rung=candidate.rung,
            reason="" if ended is None else str(ended["reason"]),
            seconds=None if ended is None else round(ended["at"] - created_at, 1),
            canary_requests=None if before is None or after is None else after - before,
            approved_by=next(
                (d["actor"] for d in decisions if d["decision"] == "approve"), approved_by
            ),
            decisions=[
                {key: d.get(key) for key in ("at", "decision", "actor", "reason", "phase")}
                | {"rung": (d.get("evidence") or {}).get("rung")}
                for d in decisions
            ],
        )

    def _approve(self, version: int) -> str | None:
        response = self.admin.post(
            f"/releases/{RELEASE}/approve",
            json={"by": APPROVER, "reason": f"the demo approves prompt version {version}"},
        )
        if response.status_code != 200:
            self.say(f"approval refused: HTTP {response.status_code} {response.text[:200]}")
            return None
        self.say(f"approved through the admin API as '{APPROVER}'")
        return APPROVER


_ENDING: Final = frozenset({"rollback", "promote", "approve", "pause", "abort"})


def _rung(ended: dict[str, Any] | None) -> str | None:
    """The rung a rollout ended at, from the decision that ended it."""
    if ended is None:
        return None
    if ended["decision"] == "approve":
        return Rung.APPROVAL.value
    rung = (ended.get("evidence") or {}).get("rung")
    return str(rung) if rung else Rung.CANARY.value


def _ended_line(result: RolloutResult) -> str:
    mark = "as expected" if result.ok else f"expected {result.expected} at {result.expected_rung}"
    where = f" at the {result.rung} rung" if result.rung else ""
    took = f" after {result.seconds:.0f} s" if result.seconds is not None else ""
    exposed = (
        f"; {result.canary_requests} user requests answered by the candidate"
        if result.canary_requests is not None
        else ""
    )
    return f"rollout {result.rollout}: {result.outcome}{where}{took}{exposed} ({mark})"


def _canary_requests(stack: DemoStack) -> int | None:
    """User requests the proxy answered from the release's canary arm so far (None:
    the metrics cannot be read)."""
    try:
        text = httpx.get(stack.metrics_url, timeout=5.0).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "coalmine_proxy_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "coalmine_proxy_requests_total"
                and labels.get("release") == RELEASE
                and labels.get("arm") == "canary"
            ):
                total += sample.value
    return int(total)


def _add_experiments(stack: DemoStack, rollouts: list[RolloutResult], since_ms: int) -> None:
    """Each rollout's dataset experiments, as Langfuse lists them."""
    start = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat(timespec="milliseconds")
    found: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=stack.emulator_url, auth=AUTH, timeout=10.0) as api:
            params: dict[str, Any] = {"fromStartTime": start.replace("+00:00", "Z"), "limit": 100}
            for _ in range(20):
                page = api.get("/api/public/experiments", params=params).json()
                found.extend(
                    {key: entry.get(key) for key in ("name", "datasetId", "itemCount")}
                    for entry in page.get("data", [])
                )
                cursor = (page.get("meta") or {}).get("cursor")
                if not cursor:
                    break
                params["cursor"] = cursor
    except (httpx.HTTPError, ValueError):
        return
    for rollout in rollouts:
        marker = f" rollout {rollout.rollout} "
        rollout.experiments = sorted(
            (entry for entry in found if marker in str(entry["name"])),
            key=lambda entry: str(entry["name"]),
        )


def _labels(stack: DemoStack) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    with httpx.Client(base_url=stack.emulator_url, auth=AUTH, timeout=10.0) as api:
        for label in ("production", "canary"):
            response = api.get(f"/api/public/v2/prompts/{PROMPT}", params={"label": label})
            found[label] = response.json().get("version") if response.status_code == 200 else None
    return found
