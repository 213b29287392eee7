"""The dashboard of the admin API: its page and assets, served openly and self-contained,
and the data it draws, behind the token. Two releases on a real state file: ``support``,
whose canary turns bad after its first step and is rolled back, and ``billing``, a
healthy canary still running."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.admin import create_admin_app
from controller.dashboard import DashboardSettings, metric_series
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from policies import Policy
from policies.domain import Arm, Phase
from policies.loader import load_policy_text
from tests.controller.release_rig import MINUTE, POLICY, RELEASE, TOKEN, Rig, make_rig

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEALTHY = "billing"
LANGFUSE = "https://langfuse.example.com"
PROJECT = "proj-1"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
ASSET_FILES = ("index.html", "dashboard.js", "dashboard.css", "favicon.svg")


@dataclass
class Fleet:
    """Traffic of every running release, ``rate`` requests a minute each, sent to the
    canary by its routing table's weight; a release in ``worse`` gets canary helpfulness
    scores lowered by that much."""

    routing: SqliteRoutingStore
    rate: int = 120
    worse: dict[str, float] = field(default_factory=dict)
    _last: float | None = None
    _random: random.Random = field(default_factory=lambda: random.Random(11))

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        assert cursors is not None
        start = cursors.observations_from if self._last is None else self._last
        self._last = now
        traces: list[TraceSample] = []
        scores: list[ScoreSample] = []
        for name in sorted(releases):
            table = self.routing.read(name)
            share = 0.0 if table is None else table.canary_weight / 100.0
            for _ in range(int(self.rate * (now - start) / MINUTE)):
                trace_id = f"{self._random.getrandbits(128):032x}"
                ts = start + self._random.random() * (now - start)
                canary = self._random.random() < share
                arm = Arm.CANARY if canary else Arm.BASELINE
                error = self._random.random() < 0.01
                traces.append(TraceSample(name, trace_id, arm, ts, error, 400.0, 0.001))
                drop = self.worse.get(name, 0.0) if canary else 0.0
                value = min(1.0, max(0.0, self._random.gauss(0.8, 0.1) - drop))
                scores.append(ScoreSample(f"s-{trace_id}", trace_id, "helpfulness", value, ts))
        return Poll(ok=True, cursors=Cursors(now, now), traces=tuple(traces), scores=tuple(scores))

    def close(self) -> None:
        pass


def second_policy(name: str) -> Policy:
    text = POLICY.replace(f"name: {RELEASE}\n", f"name: {name}\n").replace(
        "{name: support-agent", f"{{name: {name}-agent"
    )
    return load_policy_text(text, f"{name}.yaml")


def fleet_rig(tmp_path: Path) -> tuple[Rig, Fleet]:
    """The rig with a second, healthy release and traffic for both."""
    rig = make_rig(tmp_path)
    rig.policies[HEALTHY] = second_policy(HEALTHY)
    fleet = Fleet(rig.routing)
    rig.controller.source = fleet
    return rig, fleet


def roll_out(rig: Rig, fleet: Fleet, after_tick: Callable[[], Any]) -> None:
    """Both canaries healthy until ``support`` reaches its second step, then ``support``
    answers worse until it is rolled back; ``after_tick`` runs after every tick, as an
    open dashboard reads the data while the controller works."""
    for _ in range(90):
        rig.run(1)
        after_tick()
        if rig.release().step == 1:
            break
    fleet.worse[RELEASE] = 0.25
    for _ in range(60):
        rig.run(1)
        after_tick()
        if rig.release().phase is Phase.ROLLED_BACK:
            return
    raise AssertionError(f"no rollback: the release is {rig.release().phase}")


def linked_settings(**changes: Any) -> DashboardSettings:
    values: dict[str, Any] = {"langfuse_base_url": LANGFUSE, "langfuse_project_id": PROJECT}
    values.update(changes)
    return DashboardSettings(**values)


@pytest.fixture
def rig_and_fleet(tmp_path: Path) -> Iterator[tuple[Rig, Fleet]]:
    rig, fleet = fleet_rig(tmp_path)
    yield rig, fleet
    rig.close()


@pytest.fixture
def rig(rig_and_fleet: tuple[Rig, Fleet]) -> Rig:
    return rig_and_fleet[0]


def client_for(rig: Rig, settings: DashboardSettings | None = None) -> TestClient:
    app = create_admin_app(rig.controller, token=TOKEN, clock=rig.clock, dashboard=settings)
    return TestClient(app)


@pytest.fixture
def client(rig: Rig) -> Iterator[TestClient]:
    with client_for(rig, linked_settings()) as client:
        yield client


@pytest.fixture
def rolled_out(rig_and_fleet: tuple[Rig, Fleet], client: TestClient) -> dict[str, Any]:
    """The dashboard's data once ``support`` is rolled back, read after every tick."""
    rig, fleet = rig_and_fleet
    roll_out(rig, fleet, lambda: client.get("/dashboard/data", headers=AUTH))
    response = client.get("/dashboard/data", headers=AUTH)
    assert response.status_code == 200
    return {release["name"]: release for release in response.json()["releases"]}


def asset_text(name: str) -> str:
    return (resources.files("controller") / "dashboard_assets" / name).read_text("utf-8")


# -- the page and its assets -------------------------------------------------------------


def test_the_page_needs_no_token_and_holds_no_data(rig: Rig, client: TestClient) -> None:
    rig.run(3)
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    page = response.text
    assert '<input id="token-input" name="token" type="password"' in page
    assert 'src="dashboard/assets/dashboard.js"' in page
    assert RELEASE not in page
    assert HEALTHY not in page


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_assets_are_served_with_their_content_types(
    client: TestClient, name: str, content_type: str
) -> None:
    response = client.get(f"/dashboard/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == asset_text(name)


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/assets/nothing.js",
        "/dashboard/assets/index.html",
        "/dashboard/assets/..%2F..%2Fdashboard.py",
        "/dashboard/assets/",
    ],
)
def test_only_the_known_assets_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"code", "message"}


def test_the_assets_load_nothing_from_other_hosts() -> None:
    for name in ASSET_FILES:
        text = asset_text(name)
        absolute = set(re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"'`)<>]*", text, re.IGNORECASE))
        assert absolute <= {SVG_NAMESPACE}, (name, absolute)
        assert not re.search(r"""["'(=]\s*//[\w.-]""", text), name
        assert "@import" not in text, name
    page = asset_text("index.html")
    references = re.findall(r"""\b(?:src|href|action)\s*=\s*["']([^"']*)["']""", page)
    assert sorted(references) == [
        "#releases",
        "dashboard/assets/dashboard.css",
        "dashboard/assets/dashboard.js",
        "dashboard/assets/favicon.svg",
    ]
    assert "url(" not in asset_text("dashboard.css")


# -- the data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
def test_the_data_needs_the_token(rig: Rig, client: TestClient, headers: dict[str, str]) -> None:
    rig.run(2)
    response = client.get("/dashboard/data", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert RELEASE not in response.text


def test_the_data_lists_every_release(rig: Rig, client: TestClient) -> None:
    assert client.get("/dashboard/data", headers=AUTH).json()["releases"] == []
    rig.run(2)
    data = client.get("/dashboard/data", headers=AUTH).json()
    assert data["now"] == rig.now
    assert data["refreshSeconds"] == 5.0
    assert data["langfuseLinks"] is True
    assert [(r["name"], r["phase"], r["step"], r["steps"]) for r in data["releases"]] == [
        (HEALTHY, "canary", 1, 3),
        (RELEASE, "canary", 1, 3),
    ]


def test_the_weight_steps_follow_the_decisions(rolled_out: dict[str, Any]) -> None:
    support = rolled_out[RELEASE]
    assert support["phase"] == "rolled_back"
    assert support["running"] is False
    assert [(s["decision"], s["weight"], s["step"]) for s in support["weights"]] == [
        ("start", 10.0, 1),
        ("advance", 30.0, 2),
        ("rollback", 0.0, 2),
    ]
    assert support["end"] == support["weights"][-1]["at"]
    assert rolled_out[HEALTHY]["running"] is True


def test_an_ended_rollout_shows_its_number_and_what_the_release_waits_for(
    rolled_out: dict[str, Any],
) -> None:
    support, healthy = rolled_out[RELEASE], rolled_out[HEALTHY]
    assert (support["rollout"], healthy["rollout"]) == (1, 1)
    assert healthy["waiting"] is None
    assert support["waiting"].startswith(
        "waiting for a candidate: label 'canary' of prompt 'support-agent' is on version 3"
    )


def test_each_metric_has_its_estimate_and_band_over_time(rolled_out: dict[str, Any]) -> None:
    support = rolled_out[RELEASE]
    metrics = {metric["name"]: metric for metric in support["metrics"]}
    assert list(metrics) == ["errors", "helpfulness"]
    helpfulness = metrics["helpfulness"]
    assert (helpfulness["scale"], helpfulness["neutral"]) == ("difference", 0.0)
    assert helpfulness["tolerance"] == -0.05
    assert metrics["errors"]["tolerance"] == 0.03
    assert helpfulness["verdict"] == "fail"
    points = helpfulness["points"]
    logged = [d for d in support["decisions"] if d["decision"] in ("advance", "rollback")]
    assert len(points) > 10 * len(logged)
    times = [point["at"] for point in points]
    assert times == sorted(set(times))
    assert times[0] >= support["startedAt"]
    assert times[-1] == support["weights"][-1]["at"]
    for point in points:
        if point["estimate"] is not None and None not in (point["lower"], point["upper"]):
            assert point["lower"] <= point["estimate"] <= point["upper"]
    assert points[-1]["upper"] < -0.05
    assert len(helpfulness["worstTraces"]) == 5


def test_the_rollback_is_logged_with_its_reason_and_worst_traces(
    rolled_out: dict[str, Any],
) -> None:
    decisions = rolled_out[RELEASE]["decisions"]
    assert [d["decision"] for d in decisions] == ["rollback", "advance", "start"]
    rollback = decisions[0]
    assert rollback["actor"] == "controller"
    assert rollback["reason"].startswith("critical metric shown worse: helpfulness")
    assert rollback["weight"] == 0.0
    assert len(rollback["traces"]) == 5
    for trace in rollback["traces"]:
        assert trace["metric"] == "helpfulness"
        assert re.fullmatch("[0-9a-f]{32}", trace["traceId"])
        assert trace["url"] == f"{LANGFUSE}/project/{PROJECT}/traces/{trace['traceId']}"
    assert decisions[1]["traces"] == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (DashboardSettings(langfuse_base_url=f"{LANGFUSE}/"), f"{LANGFUSE}/trace/abc%2F1"),
        (linked_settings(langfuse_project_id="p 1"), f"{LANGFUSE}/project/p%201/traces/abc%2F1"),
        (DashboardSettings(), None),
    ],
)
def test_trace_links_follow_what_is_known_of_langfuse(
    settings: DashboardSettings, expected: str | None
) -> None:
    assert settings.trace_url("abc/1") == expected


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "ftp://langfuse.example.com", "langfuse.example.com", "https://"]
)
def test_the_langfuse_url_must_be_a_web_address(url: str) -> None:
    with pytest.raises(ValidationError, match="http"):
        DashboardSettings(langfuse_base_url=url)


def test_without_a_langfuse_url_traces_are_listed_unlinked(
    rig_and_fleet: tuple[Rig, Fleet],
) -> None:
    rig, fleet = rig_and_fleet
    roll_out(rig, fleet, lambda: None)
    with client_for(rig) as client:
        data = client.get("/dashboard/data", headers=AUTH).json()
    assert data["langfuseLinks"] is False
    support = next(r for r in data["releases"] if r["name"] == RELEASE)
    rollback = support["decisions"][0]
    assert rollback["traces"]
    assert all(trace["url"] is None for trace in rollback["traces"])
    helpfulness = next(m for m in support["metrics"] if m["name"] == "helpfulness")
    # every judgement the controller made, up to the rollback
    points = helpfulness["points"]
    assert len(points) == len(rig.controller.judgements(RELEASE)) > 2
    assert points[-1]["at"] == support["decisions"][0]["at"]


def test_the_judgements_remembered_are_bounded(rig_and_fleet: tuple[Rig, Fleet]) -> None:
    rig, _ = rig_and_fleet
    with client_for(rig, DashboardSettings(history=3)) as client:
        for _ in range(8):
            rig.run(1)
            client.get("/dashboard/data", headers=AUTH)
        data = client.get("/dashboard/data", headers=AUTH).json()
    support = next(r for r in data["releases"] if r["name"] == RELEASE)
    points = support["metrics"][0]["points"]
    assert [point["at"] for point in points] == [rig.now - 2 * MINUTE, rig.now - MINUTE, rig.now]


def test_unbounded_figures_become_null() -> None:
    judgement = {
        "at": 10.0,
        "metrics": [
            {
                "name": "latency",
                "scale": "ratio",
                "verdict": "inconclusive",
                "estimate": 1.2,
                "lower": 0.9,
                "upper": float("inf"),
                "worstTraces": [],
            }
        ],
    }
    (series,) = metric_series([judgement], None, DashboardSettings())
    assert series["points"] == [
        {"at": 10.0, "estimate": 1.2, "lower": 0.9, "upper": None, "verdict": "inconclusive"}
    ]
    assert (series["neutral"], series["tolerance"]) == (1.0, None)


def test_the_admin_routes_still_answer_as_before(client: TestClient) -> None:
    assert client.get("/releases", headers=AUTH).json()["releases"] == []
    missing = client.get("/no-such-page")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
