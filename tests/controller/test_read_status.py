"""Langfuse read health and score type mismatches where people look: the admin API's
status JSON, `coalmine status`, the dashboard's data and the Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coalmine.cli import main
from controller.admin import create_admin_app
from controller.metrics import ControllerMetrics
from controller.samples import Cursors, Poll
from controller.source.health import EndpointRead, PollHealth, PollRecord, SourceHealth
from controller.source.score_types import ScoreTypeMismatch
from policies.model import Policy
from tests.controller.release_rig import RELEASE, TOKEN, Rig, Traffic, make_rig, serving

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STARVED = (
    "Langfuse reads are starved: 48 requests/min needed at this traffic, budget 24 (raise "
    "COALMINE_REQUESTS_PER_MINUTE to at least 48, or poll less often with a longer "
    "analysis.interval or COALMINE_TICK_SECONDS: one poll a minute needs 10; see "
    "docs/controller.md#langfuse-read-health)."
)
MISMATCH = (
    "metric helpfulness expects a numeric score, but Langfuse holds 'helpfulness' as "
    "CATEGORICAL (e.g. 'good'); 3 scores left out of the judgement (set the metric's "
    "scoreType to categorical (with badValues), or fix what writes the score)"
)


@dataclass
class Reporting:
    """The rig's traffic, with the health a test gives it."""

    traffic: Traffic
    reads: PollHealth
    mismatches: tuple[ScoreTypeMismatch, ...] = ()

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        return self.traffic.poll(releases, cursors, now)

    def health(self, now: float) -> SourceHealth:
        return SourceHealth(
            reads=self.reads.snapshot(now, requests_last_minute=24, budget_per_minute=24),
            score_type_mismatches=self.mismatches,
            score_type_mismatch_counts={(m.release, m.metric): m.scores for m in self.mismatches},
        )

    def close(self) -> None:
        pass


def starved_reads(now: float) -> PollHealth:
    """Three polls 10 s apart ending at ``now``, each needing 8 requests: 48 a minute."""
    reads = PollHealth()
    busy = (
        EndpointRead("observations", 65, 130.0, 120.0, 10, traces=13),
        EndpointRead("scores", 35, 70.0, 60.0, 100),
    )
    for at in (now - 20, now - 10, now):
        reads.record(
            PollRecord(
                at=at,
                cursors=Cursors(now - 20, now - 20),
                complete=False,
                budget_stopped=True,
                error="request budget spent",
                reads=busy,
            )
        )
    return reads


def mismatch(rig: Rig, *, seen_at: float) -> ScoreTypeMismatch:
    return ScoreTypeMismatch(
        release=RELEASE,
        metric="helpfulness",
        score="helpfulness",
        seen="CATEGORICAL",
        expected="numeric",
        example="'good'",
        first_seen=seen_at,
        last_seen=seen_at,
        scores=3,
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    rig.run(4)
    rig.controller.source = Reporting(
        rig.traffic, starved_reads(rig.now), (mismatch(rig, seen_at=rig.now),)
    )
    yield rig
    rig.close()


@pytest.fixture
def client(rig: Rig) -> Iterator[TestClient]:
    with TestClient(create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)) as client:
        yield client


def test_the_release_list_says_how_langfuse_is_read(rig: Rig, client: TestClient) -> None:
    answer = client.get("/releases", headers=AUTH).json()
    assert [release["name"] for release in answer["releases"]] == [RELEASE]
    assert answer["langfuseReads"] == {
        "verdict": "starved",
        "message": STARVED,
        "lastPollAt": rig.now,
        "lastCompletePollAt": None,
        "lagSeconds": 20.0,
        "requestsLastMinute": 24,
        "budgetPerMinute": 24,
        "requestsNeededPerMinute": 48.0,
        "tracesPerMinute": 6.0,
        "pollIntervalSeconds": 10.0,
        "rateLimitedTotal": 0,
        "rateLimitedRecent": 0,
        "rateLimitedWindowSeconds": 900.0,
        "lastError": "request budget spent",
        "docs": "docs/controller.md#langfuse-read-health",
    }
    assert answer["scoreTypeMismatches"] == [
        {
            "release": RELEASE,
            "metric": "helpfulness",
            "score": "helpfulness",
            "seen": "CATEGORICAL",
            "expected": "numeric",
            "example": "'good'",
            "firstSeenAt": rig.now,
            "lastSeenAt": rig.now,
            "scores": 3,
            "message": MISMATCH,
        }
    ]


def test_one_release_carries_the_same_and_keeps_its_fields(client: TestClient) -> None:
    detail = client.get(f"/releases/{RELEASE}", headers=AUTH).json()
    assert detail["langfuseReads"]["verdict"] == "starved"
    assert [m["message"] for m in detail["scoreTypeMismatches"]] == [MISMATCH]
    assert detail["phase"] == "canary" and detail["judgement"] is not None


def test_nothing_is_shown_once_the_rollout_ended_or_from_before_it(
    rig: Rig, client: TestClient
) -> None:
    source = rig.controller.source
    assert isinstance(source, Reporting)
    started = rig.release().started_at
    assert started is not None
    source.mismatches = (mismatch(rig, seen_at=started - 1),)  # a previous rollout's
    assert client.get("/releases", headers=AUTH).json()["scoreTypeMismatches"] == []

    source.mismatches = (mismatch(rig, seen_at=rig.now),)
    rig.controller.manual(RELEASE, "rollback", actor="sre", now=rig.now)
    answer = client.get("/releases", headers=AUTH).json()
    assert (answer["langfuseReads"], answer["scoreTypeMismatches"]) == (None, [])
    detail = client.get(f"/releases/{RELEASE}", headers=AUTH).json()
    assert (detail["langfuseReads"], detail["scoreTypeMismatches"]) == (None, [])


def test_the_dashboard_data_carries_them(rig: Rig, client: TestClient) -> None:
    data = client.get("/dashboard/data", headers=AUTH).json()
    assert data["langfuseReads"]["message"] == STARVED
    assert [m["message"] for m in data["scoreTypeMismatches"]] == [MISMATCH]


def test_the_dashboard_page_has_a_block_for_them(client: TestClient) -> None:
    page = client.get("/").text
    assert 'id="langfuse-reads"' in page and 'id="score-type-mismatches"' in page
    script = client.get("/dashboard/assets/dashboard.js").text
    assert "langfuseReads" in script and "scoreTypeMismatches" in script


def test_metrics_export_the_read_health_and_the_mismatches(rig: Rig) -> None:
    metrics = ControllerMetrics()
    metrics.watch(rig.controller, clock=rig.clock)
    sample = metrics.registry.get_sample_value
    assert sample("coalmine_langfuse_reads_starved") == 1.0
    assert sample("coalmine_langfuse_requests_needed_per_minute") == 48.0
    assert sample("coalmine_langfuse_request_budget_per_minute") == 24.0
    assert sample("coalmine_langfuse_poll_lag_seconds") == 20.0
    labels = {"release": RELEASE, "metric": "helpfulness"}
    assert sample("coalmine_score_type_mismatches_total", labels) == 3.0

    source = rig.controller.source
    assert isinstance(source, Reporting)
    source.reads = PollHealth()
    source.mismatches = ()
    assert sample("coalmine_langfuse_reads_starved") == 0.0
    assert sample("coalmine_langfuse_requests_needed_per_minute") is None


@pytest.fixture
def url(client: TestClient, rig: Rig) -> Iterator[str]:
    with serving(create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)) as base:
        yield base


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COALMINE_ADMIN_URL", "COALMINE_ADMIN_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COALMINE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "120")


def status_lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["status", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_prints_a_line_per_running_release_and_the_sentence(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = status_lines(capsys, "--admin-url", url)
    at = lines.index(f"{RELEASE}: Langfuse reads starved, read up to 20s before now")
    assert lines[at + 1] == STARVED
    assert f"{RELEASE}: score type mismatch: {MISMATCH}" in lines


def test_status_of_one_release_prints_the_same(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = status_lines(capsys, RELEASE, "--admin-url", url)
    assert f"{RELEASE}: Langfuse reads starved, read up to 20s before now" in lines
    assert STARVED in lines
    assert f"{RELEASE}: score type mismatch: {MISMATCH}" in lines


def test_status_says_nothing_of_reads_that_keep_up(
    rig: Rig, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = rig.controller.source
    assert isinstance(source, Reporting)
    source.reads = PollHealth()
    source.mismatches = ()
    lines = status_lines(capsys, "--admin-url", url)
    assert not [line for line in lines if "Langfuse" in line or "mismatch" in line]
