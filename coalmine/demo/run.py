"""`coalmine demo`: a whole release on loopback, from prompt versions to a decision.

Starts the Langfuse emulator, stable, canary and staging agents, `coalmine run` (proxy
and controller), the evaluator and a traffic generator; creates the prompt versions;
shows the release's progress; reports how it ended and the labels in the emulator; stops
everything it started.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coalmine.demo.questions import QUESTIONS, chat_body
from coalmine.demo.scenarios import PROMPT, RELEASE, Outcome, Scenario, policy_yaml
from coalmine.demo.stack import DemoStack
from coalmine.emulator.settings import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY

SHADOW_TRACES_NEEDED = 20
"""Shadow-arm traces in the emulator that show mirroring works."""


@dataclass
class Traffic:
    """Users sending chat requests through the proxy at a steady rate."""

    proxy_url: str
    rate: float
    seed: int = 7
    questions: tuple[str, ...] = QUESTIONS
    """What the users ask, each request one of them at random."""
    sent: int = 0
    failed: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, workers: int = 4) -> None:
        for index in range(workers):
            thread = threading.Thread(target=self._run, args=(index, workers), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _run(self, index: int, workers: int) -> None:
        rng = random.Random(self.seed + index)
        gap = workers / self.rate
        with httpx.Client(base_url=self.proxy_url, timeout=30.0) as client:
            next_at = time.monotonic() + rng.random() * gap
            while not self._stop.is_set():
                pause = next_at - time.monotonic()
                if pause > 0 and self._stop.wait(pause):
                    return
                next_at += gap
                self._one(client, rng)

    def _one(self, client: httpx.Client, rng: random.Random) -> None:
        body = {**chat_body(rng.choice(self.questions)), "stream": rng.random() < 0.3}
        headers = {"x-user-id": f"user-{rng.randrange(2000)}"}
        try:
            with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                for _ in r.iter_bytes():
                    pass
                status = r.status_code
        except httpx.HTTPError:
            status = 0
        self.sent += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status != 200:
            self.failed += 1


@dataclass
class DemoResult:
    scenario: str
    outcome: Outcome
    expected: Outcome
    decided_at: float | None
    seconds_to_decide: float | None
    samples: dict[str, int]
    labels: dict[str, int | None]
    decisions: list[dict[str, Any]]
    requests: dict[str, int]
    dashboard: str
    pids: list[int]
    logs: str

    @property
    def ok(self) -> bool:
        return self.outcome is self.expected

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "outcome": self.outcome.value,
            "expected": self.expected.value,
            "ok": self.ok,
            "decided_at": self.decided_at,
            "seconds_to_decide": self.seconds_to_decide,
            "samples": self.samples,
            "labels": self.labels,
            "decisions": self.decisions,
            "requests": self.requests,
            "dashboard": self.dashboard,
            "logs": self.logs,
        }


Progress = Callable[[dict[str, Any]], None]


def run_demo(
    scenario: Scenario,
    *,
    speed: float = 1.0,
    timeout: float = 180.0,
    progress: Progress | None = None,
    workdir: Path | None = None,
    on_started: Callable[[str], None] | None = None,
    metrics_port: int | None = None,
) -> DemoResult:
    """Run one scenario to its end and stop everything; never leaves a process behind.

    ``metrics_port``: where `coalmine run` serves its metrics (default: a free port), so
    that a Prometheus started beforehand can scrape it."""
    if scenario.candidates:
        raise ValueError(f"scenario {scenario.name!r} releases candidates in turn: run_ladder")
    base = workdir or Path(tempfile.mkdtemp(prefix="coalmine-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    stack = DemoStack(base, metrics_port)
    traffic: Traffic | None = None
    started_at = time.time()
    try:
        stack.start_emulator()
        stack.create_prompts(scenario.prompts)
        stack.start_agents()
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
        admin_url, token, emulator_url = stack.admin_url, stack.token, stack.emulator_url
        dashboard = f"{admin_url}/"
        if on_started is not None:
            on_started(dashboard)
        traffic = Traffic(stack.proxy_url, rate=12.0 * speed)
        traffic.start()
        outcome, decided_at, detail = _watch(
            scenario,
            admin_url=admin_url,
            token=token,
            emulator_url=emulator_url,
            timeout=timeout,
            progress=progress,
        )
        traffic.stop()
        labels = _labels(emulator_url, scenario)
        samples = _samples(detail, emulator_url)
        return DemoResult(
            scenario=scenario.name,
            outcome=outcome,
            expected=scenario.expected,
            decided_at=decided_at,
            seconds_to_decide=None if decided_at is None else decided_at - started_at,
            samples=samples,
            labels=labels,
            decisions=[
                {key: record[key] for key in ("at", "decision", "actor", "reason", "step")}
                for record in detail.get("decisions", [])
            ],
            requests={
                "sent": traffic.sent,
                "failed": traffic.failed,
                **{str(code): count for code, count in sorted(traffic.by_status.items())},
            },
            dashboard=dashboard,
            pids=stack.processes.pids(),
            logs=str(base),
        )
    finally:
        if traffic is not None:
            traffic.stop()
        stack.processes.stop_all()


FINISHED = {"promoted": Outcome.PROMOTED, "rolled_back": Outcome.ROLLED_BACK}


def _watch(
    scenario: Scenario,
    *,
    admin_url: str,
    token: str,
    emulator_url: str,
    timeout: float,
    progress: Progress | None,
) -> tuple[Outcome, float | None, dict[str, Any]]:
    """Follow the release through the admin API until it ends or time runs out."""
    deadline = time.monotonic() + timeout
    detail: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=admin_url, headers=headers, timeout=5.0) as admin:
        while time.monotonic() < deadline:
            response = admin.get(f"/releases/{RELEASE}")
            if response.status_code == 200:
                detail = response.json()
                if progress is not None:
                    progress(detail)
                phase = detail.get("phase")
                if phase in FINISHED:
                    decided = detail["decisions"][-1]["at"] if detail.get("decisions") else None
                    return FINISHED[phase], decided, detail
                if phase == "paused" and scenario.canary:
                    return Outcome.PAUSED, detail.get("updatedAt"), detail
                if not scenario.canary and _shadow_traces(emulator_url) >= SHADOW_TRACES_NEEDED:
                    return Outcome.SHADOWED, time.time(), detail
            time.sleep(1.0)
    return Outcome.TIMED_OUT, None, detail


def _observations(emulator_url: str, tag: str) -> list[dict[str, Any]]:
    query = '[{"type":"arrayOptions","column":"tags","operator":"any of","value":["' + tag + '"]}]'
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    auth = (DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY)
    with httpx.Client(base_url=emulator_url, auth=auth, timeout=10.0) as api:
        for _ in range(50):
            params: dict[str, Any] = {
                "filter": query,
                "limit": 1000,
                "fields": "core,basic,trace_context",
                "isRootObservation": "true",
            }
            if cursor:
                params["cursor"] = cursor
            page = api.get("/api/public/v2/observations", params=params).json()
            rows.extend(page.get("data", []))
            cursor = page.get("meta", {}).get("cursor")
            if not cursor:
                break
    return rows


def _shadow_traces(emulator_url: str) -> int:
    try:
        return len({row["traceId"] for row in _observations(emulator_url, "coalmine:arm:shadow")})
    except (httpx.HTTPError, ValueError):
        return 0


def _labels(emulator_url: str, scenario: Scenario) -> dict[str, int | None]:
    del scenario
    found: dict[str, int | None] = {}
    auth = (DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY)
    with httpx.Client(base_url=emulator_url, auth=auth, timeout=10.0) as api:
        for label in ("production", "canary"):
            response = api.get(f"/api/public/v2/prompts/{PROMPT}", params={"label": label})
            found[label] = response.json().get("version") if response.status_code == 200 else None
    return found


def _samples(detail: dict[str, Any], emulator_url: str) -> dict[str, int]:
    """Traces per arm in the emulator, as Langfuse recorded them."""
    counts: dict[str, int] = {}
    for arm in ("baseline", "canary", "shadow"):
        try:
            counts[arm] = len(
                {row["traceId"] for row in _observations(emulator_url, f"coalmine:arm:{arm}")}
            )
        except (httpx.HTTPError, ValueError):
            counts[arm] = 0
    judgement = detail.get("judgement") or {}
    for metric in judgement.get("metrics", []):
        counts[f"judged_{metric['name']}_baseline"] = metric.get("nBaseline", 0)
        counts[f"judged_{metric['name']}_canary"] = metric.get("nCanary", 0)
    return counts
