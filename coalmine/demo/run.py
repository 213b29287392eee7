"""`coalmine demo`: a whole release on loopback, from prompt versions to a decision.

Starts the Langfuse emulator, stable, canary and staging agents, `coalmine run` (proxy
and controller), the evaluator and a traffic generator; creates the prompt versions;
shows the release's progress; reports how it ended and the labels in the emulator; stops
everything it started.
"""

from __future__ import annotations

import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coalmine.demo.processes import Processes, free_port, python
from coalmine.demo.scenarios import PROMPT, RELEASE, Outcome, Scenario, policy_yaml
from coalmine.emulator.settings import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY

SHADOW_TRACES_NEEDED = 20
"""Shadow-arm traces in the emulator that show mirroring works."""


@dataclass
class Traffic:
    """Users sending chat requests through the proxy at a steady rate."""

    proxy_url: str
    rate: float
    seed: int = 7
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
        question = rng.choice(QUESTIONS)
        body = {
            "model": "support-agent",
            "messages": [{"role": "user", "content": question}],
            "stream": rng.random() < 0.3,
        }
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


QUESTIONS = (
    "How do I reset my password?",
    "Can I change the billing date of my plan?",
    "The export to CSV fails with a timeout, what can I do?",
    "How do I add a teammate to my workspace?",
    "Where do I find my invoices?",
    "Is there an API rate limit?",
)


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
    base = workdir or Path(tempfile.mkdtemp(prefix="coalmine-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    processes = Processes(base)
    token = secrets.token_hex(16)
    ports = {name: free_port() for name in ("emulator", "stable", "canary", "staging", "proxy")}
    ports |= {"admin": free_port(), "metrics": metrics_port or free_port()}
    emulator_url = f"http://127.0.0.1:{ports['emulator']}"
    env = {
        **os.environ,
        "LANGFUSE_BASE_URL": emulator_url,
        "LANGFUSE_PUBLIC_KEY": DEFAULT_PUBLIC_KEY,
        "LANGFUSE_SECRET_KEY": DEFAULT_SECRET_KEY,
        "COALMINE_ADMIN_TOKEN": token,
        "COALMINE_REQUESTS_PER_MINUTE": "100000",
        "COALMINE_TICK_SECONDS": "1",
        "COALMINE_TRACE_SETTLE_SECONDS": "2",
        # the demo decides within a minute: the proxy's counts are flushed every second
        "COALMINE_AGGREGATES_FLUSH_SECONDS": "1",
        "COALMINE_SCORE_FIRST_READ_SECONDS": "5",
        "PYTHONUNBUFFERED": "1",
    }
    traffic: Traffic | None = None
    started_at = time.time()
    try:
        emulator = processes.start(
            "emulator",
            [
                python(),
                "-m",
                "coalmine.cli",
                "langfuse-emulator",
                "--port",
                str(ports["emulator"]),
                "--log-level",
                "warning",
            ],
            env,
        )
        processes.wait_http(emulator, f"{emulator_url}/api/public/health")
        auth = (DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY)
        with httpx.Client(base_url=emulator_url, auth=auth, timeout=10.0) as api:
            for version in scenario.prompts:
                created = api.post(
                    "/api/public/v2/prompts",
                    json={
                        "name": PROMPT,
                        "prompt": version.text,
                        "type": "text",
                        "config": version.config,
                        "labels": list(version.labels),
                    },
                )
                created.raise_for_status()
        for name in ("stable", "canary", "staging"):
            agent = processes.start(
                f"agent-{name}",
                [
                    python(),
                    "-m",
                    "coalmine.demo.agent",
                    "--port",
                    str(ports[name]),
                    "--name",
                    name,
                    "--llm-delay-ms",
                    "30",
                    "--prompt-cache-seconds",
                    "1",
                    "--log-level",
                    "warning",
                ],
                env,
            )
            processes.wait_http(agent, f"http://127.0.0.1:{ports[name]}/healthz")
        policy_file = base / "policy.yaml"
        policy_file.write_text(
            policy_yaml(
                scenario,
                stable=f"http://127.0.0.1:{ports['stable']}",
                canary=f"http://127.0.0.1:{ports['canary']}",
                staging=f"http://127.0.0.1:{ports['staging']}",
                speed=speed,
            )
        )
        admin_url = f"http://127.0.0.1:{ports['admin']}"
        coalmine = processes.start(
            "coalmine-run",
            [
                python(),
                "-m",
                "coalmine.cli",
                "run",
                "--policy",
                str(policy_file),
                "--state",
                str(base / "state.db"),
                "--listen",
                f"127.0.0.1:{ports['proxy']}",
                "--admin-listen",
                f"127.0.0.1:{ports['admin']}",
                "--metrics-listen",
                f"127.0.0.1:{ports['metrics']}",
                "--log-level",
                "info",
            ],
            env,
        )
        processes.wait_http(coalmine, f"{admin_url}/healthz")
        evaluator = processes.start(
            "evaluator",
            [
                python(),
                "-m",
                "coalmine.demo.evaluator",
                "--delay-seconds",
                f"{max(3 / speed, 1):g}",
                "--noise",
                "0.1",
                "--seed",
                "1",
                "--interval",
                "1",
                "--lookback-seconds",
                "600",
            ],
            env,
        )
        del evaluator
        dashboard = f"{admin_url}/"
        if on_started is not None:
            on_started(dashboard)
        traffic = Traffic(f"http://127.0.0.1:{ports['proxy']}", rate=12.0 * speed)
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
            pids=processes.pids(),
            logs=str(base),
        )
    finally:
        if traffic is not None:
            traffic.stop()
        processes.stop_all()


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
