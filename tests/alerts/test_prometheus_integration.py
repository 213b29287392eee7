"""The alert rules in a real Prometheus scraping a real `coalmine run`: the bad-canary demo
is rolled back and CoalmineCanaryRolledBack fires, not before, and the analysis never
counts as stalled.

Prometheus scrapes and evaluates every second. The demo's progress callback is where the
test looks: while the release runs it checks that the alert is not firing, and when the
release is rolled back it waits (everything still running) until the alert fires."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine.demo.processes import free_port
from coalmine.demo.run import run_demo
from coalmine.demo.scenarios import RELEASE, SCENARIOS, Outcome

pytestmark = pytest.mark.slow

ALERTS = Path(__file__).resolve().parents[2] / "charts" / "coalmine" / "files" / "alerts.yaml"
SPEED = 3.0
"""As in tests/demo: the bad canary is rolled back in well under a minute."""
FIRING_DEADLINE = 60.0
"""Only bounds the wait for the alert after the rollback (it takes a scrape and an
evaluation, a second each)."""

ROLLBACK_FIRING = 'ALERTS{alertname="CoalmineCanaryRolledBack",alertstate="firing"}'
STALLED_FIRING = 'ALERTS{alertname="CoalmineAnalysisStalled",alertstate="firing"}'
POLL_FRESH = "min(coalmine_seconds_since_last_poll) < 300"
ROLLED_BACK_PHASE = f'max(coalmine_release_phase{{release="{RELEASE}",phase="rolled_back"}})'


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10.0)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, query: str, at: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=query, time=f"{at:.3f}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, query: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.get(
            "/api/v1/query_range", query=query, start=f"{start:.3f}", end=f"{end:.3f}", step="1"
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["alerts"]
        return [alert for alert in alerts if alert["labels"]["alertname"] == name]

    def diagnostics(self) -> str:
        targets = self.get("/api/v1/targets")["activeTargets"]
        health = [
            (target["scrapeUrl"], target["health"], target["lastError"]) for target in targets
        ]
        return f"targets: {health}; log: {self.log.read_text(errors='replace')[-2000:]}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture
def metrics_port() -> int:
    """Where the demo's `coalmine run` serves its metrics (chosen first, for the config)."""
    return free_port()


@pytest.fixture
def prometheus_server(prometheus: str, tmp_path: Path, metrics_port: int) -> Iterator[Prometheus]:
    home = tmp_path / "prometheus"
    home.mkdir()
    shutil.copyfile(ALERTS, home / "alerts.yaml")
    config = home / "prometheus.yml"
    config.write_text(
        f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [alerts.yaml]
scrape_configs:
  - job_name: coalmine
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
""",
        encoding="utf-8",
    )
    port = free_port()
    log = home / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 30.0
        while True:
            assert process.poll() is None, f"prometheus exited: {log.read_text(errors='replace')}"
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield server
    finally:
        _stop(process)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _seconds(rfc3339: str) -> float:
    """Prometheus's timestamps carry nanoseconds; Python parses microseconds."""
    match = re.fullmatch(r"(.+T[\d:]+)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match, rfc3339
    whole, fraction, zone = match.groups()
    parsed = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return parsed.timestamp() + float(f"0.{fraction or 0}")


def test_the_bad_canary_fires_the_rollback_alert_and_never_a_stall(
    prometheus_server: Prometheus,
    metrics_port: int,
    tmp_path: Path,
    rules: list[dict[str, Any]],
) -> None:
    prom = prometheus_server
    assert len(prom.get("/api/v1/rules")["groups"][0]["rules"]) == len(rules)
    before: list[tuple[float | None, bool]] = []
    """While the admin API said the release was not rolled back: Prometheus's view of its
    rolled_back phase and whether the alert fired, both at the same instant."""
    fired: list[dict[str, Any]] = []
    poll_fresh: list[dict[str, Any]] = []

    def progress(detail: dict[str, Any]) -> None:
        if detail.get("phase") != "rolled_back":
            at = time.time()
            phase = prom.query(ROLLED_BACK_PHASE, at)
            rolled_back = float(phase[0]["value"][1]) if phase else None
            before.append((rolled_back, bool(prom.query(ROLLBACK_FIRING, at))))
            return
        if fired:
            return
        # everything still runs while this waits
        deadline = time.monotonic() + FIRING_DEADLINE
        while time.monotonic() < deadline:
            firing = [a for a in prom.alerts("CoalmineCanaryRolledBack") if a["state"] == "firing"]
            if firing:
                fired.extend(firing)
                poll_fresh.extend(prom.query(POLL_FRESH, time.time()))
                return
            time.sleep(0.5)

    started = time.time()
    result = run_demo(
        SCENARIOS["bad-canary"],
        speed=SPEED,
        timeout=170.0,
        workdir=tmp_path / "demo",
        progress=progress,
        metrics_port=metrics_port,
    )
    ended = time.time()
    assert all(_gone(pid) for pid in result.pids)
    assert result.outcome is Outcome.ROLLED_BACK, result.summary()

    assert fired, f"CoalmineCanaryRolledBack did not fire: {prom.diagnostics()}"
    [alert] = fired
    assert alert["labels"] == {
        "alertname": "CoalmineCanaryRolledBack",
        "release": RELEASE,
        "severity": "warning",
    }
    assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#coalminecanaryrolledback"
    assert f"Release {RELEASE} was rolled back" in alert["annotations"]["description"]

    # before the rollback: Prometheus saw the release running, and the alert was quiet
    running = [firing for rolled_back, firing in before if rolled_back == 0.0]
    assert running, f"Prometheus never saw the release before its rollback: {before}"
    assert not any(running)
    assert result.decided_at is not None
    # active from an evaluation after the rollback (a second of slack: a scrape's sample
    # is stamped with the time the scrape began)
    assert _seconds(alert["activeAt"]) >= result.decided_at - 1.0
    first_rolled_back = prom.query_range(ROLLED_BACK_PHASE + " == 1", started, ended)
    first_firing = prom.query_range(ROLLBACK_FIRING, started, ended)
    assert first_rolled_back and first_firing
    assert float(first_firing[0]["values"][0][0]) >= float(first_rolled_back[0]["values"][0][0])

    # the leader polled Langfuse all along: the stall rule's quiet condition held at the
    # rollback (not only its `for`), and it never fired
    assert poll_fresh, "coalmine_seconds_since_last_poll was missing or stale at the rollback"
    assert not prom.query_range(STALLED_FIRING, started, ended)
