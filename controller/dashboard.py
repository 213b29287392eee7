"""The dashboard: one page at ``/`` of the admin API, its static assets, and the JSON it
draws from.

The page and its assets hold no data and need no token; the page asks for the admin
token and sends it as a bearer token on every call. ``GET /dashboard/data`` (bearer
token) returns every release with its weight steps, each metric's estimate and
confidence bounds over time, and the decision log with links to the canary traces that
regressed most in Langfuse; and how Langfuse is read (``langfuseReads``, shown when not
ok) with the scores whose type cannot serve their metric (``scoreTypeMismatches``).

A metric's history comes from three places, merged by the time of each judgement: the
evidence logged with every decision, the judgements this process has seen while serving
``/dashboard/data`` (at most ``history`` a release, in memory), and the controller's
last judgement.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI
from fastapi.params import Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from controller.evidence_log import judgement_summary
from controller.lifecycle import ActionKind, ReleaseState, judged_by, ladder_of
from controller.release_store import DecisionRecord
from controller.source import health_of
from controller.source.status import mismatches_of, reads_json
from policies.domain import Phase
from policies.model import Direction, Metric, MetricSource, Policy

if TYPE_CHECKING:
    from controller.judge import Judgement
    from controller.loop import Controller

PAGE: Final = "index.html"
ASSETS: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
RUNNING: Final = frozenset({Phase.CANARY, Phase.APPROVAL, Phase.PAUSED})
FAILED: Final = "fail"


class DashboardSettings(BaseModel):
    """What the dashboard needs beyond the controller: where Langfuse shows traces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    langfuse_base_url: str | None = None
    """The Langfuse web app (``LANGFUSE_BASE_URL``); None: traces are listed without links."""

    langfuse_project_id: str | None = Field(default=None, min_length=1)
    """The Langfuse project the traces belong to. None: links go to ``{base}/trace/{id}``,
    which Langfuse redirects to the trace in its project."""

    refresh_seconds: float = Field(default=5.0, gt=0, le=300)
    """How often the page reloads its data."""

    decisions: int = Field(default=100, ge=1, le=1000)
    """Decision log entries shown per release, newest first."""

    history: int = Field(default=1440, ge=1)
    """Judgements remembered per release (a day of one-minute looks)."""

    @field_validator("langfuse_base_url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL, such as https://cloud.langfuse.com")
        return value.rstrip("/")

    def trace_url(self, trace_id: str) -> str | None:
        """The Langfuse page of a trace, None without a base URL."""
        if self.langfuse_base_url is None:
            return None
        trace = quote(trace_id, safe="")
        if self.langfuse_project_id is None:
            return f"{self.langfuse_base_url}/trace/{trace}"
        project = quote(self.langfuse_project_id, safe="")
        return f"{self.langfuse_base_url}/project/{project}/traces/{trace}"


class JudgementHistory:
    """The judgements seen per release, newest last, each kept as its summary."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._seen: dict[str, deque[dict[str, Any]]] = {}

    def observe(self, release: str, judgement: Judgement | None) -> None:
        if judgement is None:
            return
        with self._lock:
            seen = self._seen.setdefault(release, deque(maxlen=self._keep))
            if seen and seen[-1]["at"] >= judgement.at:
                return
            seen.append(judgement_summary(judgement))

    def of(self, release: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._seen.get(release, ()))


def mount_dashboard(
    app: FastAPI,
    controller: Controller,
    *,
    clock: Callable[[], float],
    settings: DashboardSettings,
    auth: Depends,
) -> None:
    """Serve the page and its assets openly, and the data behind ``auth``."""
    app.include_router(_page_routes(_load_assets()))
    app.include_router(_data_routes(controller, clock, settings), dependencies=[auth])


def _load_assets() -> dict[str, bytes]:
    folder = resources.files("controller") / "dashboard_assets"
    return {name: (folder / name).read_bytes() for name in (PAGE, *ASSETS)}


def _page_routes(assets: Mapping[str, bytes]) -> APIRouter:
    router = APIRouter()

    @router.get("/")
    async def page() -> Response:
        return Response(assets[PAGE], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @router.get("/dashboard/assets/{name}")
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no dashboard asset named {name!r}")
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        return Response(assets[name], media_type=ASSETS[name], headers=headers)

    return router


def _data_routes(
    controller: Controller, clock: Callable[[], float], settings: DashboardSettings
) -> APIRouter:
    router = APIRouter()
    history = JudgementHistory(settings.history)

    @router.get("/dashboard/data")
    def data() -> JSONResponse:
        now = clock()
        policies = controller.policies()
        releases = []
        for release in controller.state.releases():
            for judgement in controller.judgements(release.name):
                history.observe(release.name, judgement)
            releases.append(
                release_view(
                    controller,
                    release,
                    policy=policies.get(release.name),
                    settings=settings,
                    history=history,
                    now=now,
                )
            )
        body = {
            "now": now,
            "refreshSeconds": settings.refresh_seconds,
            "langfuseLinks": settings.langfuse_base_url is not None,
            "releases": releases,
            **reads_view(controller, now),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return router


def reads_view(controller: Controller, now: float) -> dict[str, Any]:
    """How Langfuse is read, for the block above the releases: the read health while a
    rollout runs (None otherwise, or for a source that does not say), and the score type
    mismatches of the running rollouts."""
    health = health_of(controller.source, now)
    running = [(r.name, r.judged_since) for r in controller.state.releases() if r.phase in RUNNING]
    reads = None if health is None or not running else reads_json(health.reads)
    return {"langfuseReads": reads, "scoreTypeMismatches": mismatches_of(health, running)}


# -- the view of one release ----------------------------------------------------------------


def release_view(
    controller: Controller,
    release: ReleaseState,
    *,
    policy: Policy | None,
    settings: DashboardSettings,
    history: JudgementHistory,
    now: float,
) -> dict[str, Any]:
    """One release as the page draws it."""
    decisions = controller.state.decisions(release.name)
    started = release.started_at
    current = [record for record in decisions if started is not None and record.at >= started]
    judgements = _judgements(current, history.of(release.name), started)
    weights = _weight_of_decisions(controller, release.name)
    return {
        "name": release.name,
        "phase": release.phase.value,
        "running": release.phase in RUNNING,
        "step": release.step + 1 if started is not None else None,
        "steps": None if policy is None else len(policy.steps),
        "canaryWeight": _number(release.canary_weight),
        "stableVersion": release.stable_version,
        "candidateVersion": release.candidate_version,
        "startedAt": started,
        "updatedAt": release.updated_at,
        "reason": release.reason,
        "rollout": release.rollout,
        "waiting": release.waiting or None,
        "ladder": None if policy is None else ladder_of(judged_by(release, policy)[0]),
        "rung": controller.rungs.view_of(release),
        "hasPolicy": policy is not None,
        "end": now if release.phase in RUNNING else max(release.updated_at, started or 0.0),
        "weights": weight_steps(current, weights),
        "metrics": metric_series(judgements, policy, settings),
        "decisions": [
            decision_row(record, weights.get(record.id), settings)
            for record in reversed(decisions[-settings.decisions :])
        ],
    }


def _judgements(
    decisions: Iterable[DecisionRecord], seen: Iterable[dict[str, Any]], since: float | None
) -> list[dict[str, Any]]:
    """Judgement summaries by time, one a time: logged ones, then the ones seen."""
    by_time: dict[float, dict[str, Any]] = {}
    for record in decisions:
        if record.evidence.get("metrics"):
            by_time.setdefault(float(record.evidence.get("at", record.at)), record.evidence)
    for summary in seen:
        if since is not None and summary["at"] >= since:
            by_time.setdefault(float(summary["at"]), summary)
    return [by_time[at] for at in sorted(by_time)]


def _weight_of_decisions(controller: Controller, release: str) -> dict[int, float]:
    """The canary weight each decision set, by decision id (its journalled action)."""
    return {
        action.decision_id: float(action.intent["weight"])
        for action in controller.state.actions(release)
        if action.kind is ActionKind.SET_WEIGHT and action.decision_id is not None
    }


def weight_steps(
    decisions: Iterable[DecisionRecord], weights: Mapping[int, float]
) -> list[dict[str, Any]]:
    """The canary weight after each decision of the current run, oldest first."""
    steps: list[dict[str, Any]] = []
    weight = 0.0
    for record in decisions:
        if record.id in weights:
            weight = weights[record.id]
        elif record.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
            weight = 0.0
        steps.append(
            {
                "at": record.at,
                "weight": weight,
                "decision": record.decision,
                "step": record.step + 1,
            }
        )
    return steps


def metric_series(
    judgements: list[dict[str, Any]], policy: Policy | None, settings: DashboardSettings
) -> list[dict[str, Any]]:
    """Per metric: its estimate and bounds at each judgement, and the lines to read them by."""
    names = [metric.name for metric in policy.analysis.metrics] if policy is not None else []
    for judgement in judgements:
        names.extend(m["name"] for m in judgement["metrics"] if m["name"] not in names)
    configured = {} if policy is None else {m.name: m for m in policy.analysis.metrics}
    series = []
    for name in names:
        found = [
            (judgement["at"], metric)
            for judgement in judgements
            for metric in judgement["metrics"]
            if metric["name"] == name
        ]
        latest = found[-1][1] if found else {}
        scale = latest.get("scale") or _scale_of(configured.get(name))
        neutral = 1.0 if scale == "ratio" else 0.0
        series.append(
            {
                "name": name,
                "scale": scale,
                "neutral": neutral,
                "tolerance": _tolerance_line(configured.get(name), neutral),
                "direction": _direction(configured.get(name)),
                "critical": bool(latest.get("critical", False)),
                "verdict": latest.get("verdict"),
                "reason": latest.get("reason"),
                "nBaseline": latest.get("nBaseline"),
                "nCanary": latest.get("nCanary"),
                "worstTraces": _links(latest.get("worstTraces", ()), settings),
                "points": [
                    {
                        "at": at,
                        "estimate": _number(metric.get("estimate")),
                        "lower": _number(metric.get("lower")),
                        "upper": _number(metric.get("upper")),
                        "verdict": metric.get("verdict"),
                    }
                    for at, metric in found
                ],
            }
        )
    return series


def decision_row(
    record: DecisionRecord, weight: float | None, settings: DashboardSettings
) -> dict[str, Any]:
    """One line of the decision log, with the worst canary traces of failing metrics."""
    traces = [
        {"metric": metric["name"], **link}
        for metric in record.evidence.get("metrics", ())
        if metric.get("verdict") == FAILED
        for link in _links(metric.get("worstTraces", ()), settings)
    ]
    return {
        "id": record.id,
        "at": record.at,
        "decision": record.decision,
        "actor": record.actor,
        "reason": record.reason,
        "phase": record.phase.value,
        "step": record.step + 1,
        "weight": weight,
        "traces": traces,
    }


def _links(trace_ids: Iterable[str], settings: DashboardSettings) -> list[dict[str, Any]]:
    return [{"traceId": str(trace), "url": settings.trace_url(str(trace))} for trace in trace_ids]


def _scale_of(metric: Metric | None) -> str:
    if metric is None:
        return "difference"
    ratio = metric.source is MetricSource.COST or (
        metric.source is MetricSource.LATENCY and metric.tolerance_percent is not None
    )
    return "ratio" if ratio else "difference"


def _direction(metric: Metric | None) -> str | None:
    return None if metric is None or metric.direction is None else metric.direction.value


def _tolerance_line(metric: Metric | None, neutral: float) -> float | None:
    """Where the canary starts being worse than tolerated, on the estimate's scale."""
    if metric is None or metric.direction is None:
        return None
    worse = 1.0 if metric.direction is Direction.LOWER else -1.0
    if neutral == 1.0:
        if metric.tolerance_percent is None:
            return None
        return 1.0 + worse * float(metric.tolerance_percent) / 100.0
    if metric.tolerance is None:
        return None
    return worse * float(metric.tolerance)


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no infinity: unbounded bounds become null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
