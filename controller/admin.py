"""The controller's admin API: release status for people and tools, and manual actions.

Every route but ``/healthz``, ``/readyz`` and the dashboard's page and assets (which
hold no data) needs ``Authorization: Bearer <token>``; the app refuses to be built
without a token, so the API never runs open. JSON field names
are camelCase, times are seconds since the epoch, steps are counted from 1, and every
error is ``{"error": {"code": ..., "message": ...}}``.

    GET  /releases                    every release, one line each, and how Langfuse is
                                      read (``langfuseReads``, ``scoreTypeMismatches``)
    GET  /releases/{name}             one release with its last judgement and its history,
                                      and the same two fields for it
    POST /releases/{name}/{action}    promote, rollback, pause, resume, abort or
                                      approve the current rollout, or start the next
                                      one; body optional: {"reason": "...", "by": "..."}
    GET  /                            the dashboard page (no data; its data calls need
                                      the token)
    GET  /dashboard/data              what the dashboard draws: releases, weight steps,
                                      metric estimates and bounds over time, decisions
    GET  /analysis/{name}             the verdict on the current rollout for an external
                                      rollout (Argo Rollouts' ``web`` metric provider):
                                      pass, fail, inconclusive or nodata, with the
                                      evidence; ``?version=`` and ``?step=`` narrow it
    POST /analysis/{name}/webhook/{gate}
                                      a Flagger webhook: ``rollout`` answers 200 unless
                                      the verdict is fail, ``promotion`` only on pass
                                      (else 409); the token also as ``metadata.token``
    GET  /healthz                     the process serves
    GET  /readyz                      the last poll of Langfuse succeeded recently, or no
                                      release is running
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.analysis import GATES, Question, analysis, gate_open
from controller.dashboard import DashboardSettings, mount_dashboard
from controller.errors import (
    ApiError,
    ManualActionError,
    ManualActionIncompleteError,
    NotLeaderError,
)
from controller.evidence_log import judgement_summary
from controller.judge import Verdict
from controller.lifecycle import ReleaseState, judged_by, ladder_of, policy_digest
from controller.loop import Controller
from controller.release_store import Action, DecisionRecord, LabelMove
from controller.source import health_of
from controller.source.status import mismatches_of, reads_json
from policies.domain import Phase
from policies.model import Policy

if TYPE_CHECKING:
    from policies.model import Step

ACTIONS: Final = ("promote", "rollback", "pause", "resume", "abort", "start", "approve")
ACTOR: Final = "admin-api"
RUNNING: Final = frozenset({Phase.CANARY, Phase.APPROVAL, Phase.PAUSED})
"""Phases whose samples the controller polls for (as the loop does)."""

DEFAULT_POLL_STALE_AFTER: Final = 300.0
"""Seconds after the last good poll when the controller stops being ready; a few of its
tick intervals."""


MAX_WEBHOOK_BODY: Final = 65_536
"""Bytes of a webhook body read at most (Flagger's payload is a few hundred)."""


class FlaggerPayload(BaseModel):
    """The body Flagger POSTs to a webhook. Fields Flagger adds in later versions are
    ignored rather than refused: a Flagger upgrade must not close every gate."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    """The Canary's name."""
    namespace: str | None = None
    phase: str | None = None
    """The Canary's phase (``Progressing`` during the analysis)."""
    checksum: str | None = None
    metadata: dict[str, str] | None = None
    """The webhook's ``metadata``; ``token`` there stands for the bearer token, as
    Flagger's webhooks cannot send headers."""


class ActionBody(BaseModel):
    """The optional body of a manual action."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000)
    """Why, for the decision log and notifications."""

    by: str = Field(default="", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    """Who asks, as they name themselves (the admin token is shared): recorded as the
    decision's and the label moves' actor, ``admin-api (NAME)``."""


def create_admin_app(
    controller: Controller,
    *,
    token: str | None,
    analysis_token: str | None = None,
    clock: Callable[[], float] = time.time,
    poll_stale_after: float = DEFAULT_POLL_STALE_AFTER,
    dashboard: DashboardSettings | None = None,
) -> FastAPI:
    """The admin app of one controller.

    ``token`` is required (ValueError without one); ``analysis_token``, if given, opens
    the analysis routes only (never manual actions). ``poll_stale_after``: seconds after
    the last successful poll when ``/readyz`` turns 503 while a release is running.
    ``dashboard``: where the dashboard links traces to (default: no links).
    """
    if not token:
        raise ValueError("the admin API needs a token: it never runs without authentication")
    app = FastAPI(
        title="coalmine admin API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    _install_error_handlers(app)
    app.include_router(_open_routes(controller, clock, poll_stale_after))
    app.include_router(_release_routes(controller, clock), dependencies=[Depends(_bearer(token))])
    readers = (token,) if not analysis_token else (token, analysis_token)
    app.include_router(_analysis_routes(controller), dependencies=[Depends(_bearer(*readers))])
    app.include_router(_webhook_routes(controller, readers))
    mount_dashboard(
        app,
        controller,
        clock=clock,
        settings=dashboard or DashboardSettings(),
        auth=Depends(_bearer(token)),
    )
    return app


# -- authentication -----------------------------------------------------------------------


def _bearer(*tokens: str) -> Callable[[str | None], Any]:
    """A check that the request's bearer token is one of ``tokens``."""
    expected = tuple(token.encode() for token in tokens)

    async def check(authorization: str | None = Header(default=None)) -> None:
        if not _bearer_matches(authorization, expected):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="coalmine"'},
            )

    return check


# -- errors -------------------------------------------------------------------------------


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return _error(error.status, error.code, error.message, error.headers)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail), error.headers)

    async def invalid(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return _error(422, "invalid_request", message)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


# -- routes -------------------------------------------------------------------------------


def _open_routes(
    controller: Controller, clock: Callable[[], float], stale_after: float
) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        if not controller.is_leader():
            return JSONResponse({"status": "standby"})
        why = not_ready_reason(controller, clock(), stale_after)
        if why is not None:
            return _error(503, "not_ready", why)
        return JSONResponse({"status": "ready"})

    return router


def not_ready_reason(controller: Controller, now: float, stale_after: float) -> str | None:
    """Why the controller is not ready, None when it is: a release is running and the
    last poll failed, never succeeded, or succeeded longer than ``stale_after`` ago."""
    running = [release.name for release in controller.state.releases() if release.phase in RUNNING]
    if not running:
        return None
    if controller.last_poll_error is not None:
        return f"the last poll failed: {controller.last_poll_error}"
    last_ok = controller.last_poll_ok
    if last_ok is None:
        return f"no successful poll yet for running releases: {', '.join(running)}"
    age = now - last_ok
    if age > stale_after:
        return f"the last successful poll was {age:.0f}s ago (more than {stale_after:g}s)"
    return None


def _release_routes(controller: Controller, clock: Callable[[], float]) -> APIRouter:
    router = APIRouter()

    @router.get("/releases")
    def list_releases() -> JSONResponse:
        policies = controller.policies()
        states = controller.state.releases()
        releases = [release_summary(release, policies.get(release.name)) for release in states]
        return JSONResponse({"releases": releases, **source_status(controller, states, clock())})

    @router.get("/releases/{name}")
    def show_release(
        name: str,
        decisions: int = Query(default=50, ge=1, le=1000, description="Decisions to include."),
    ) -> JSONResponse:
        release = _known(controller, name)
        detail = release_detail(controller, release, decisions)
        return JSONResponse({**detail, **source_status(controller, [release], clock())})

    @router.post("/releases/{name}/{action}")
    def act(name: str, action: str, body: ActionBody | None = None) -> JSONResponse:
        # A sync route: FastAPI runs it in its thread pool, and the manual action waits
        # for the controller's lock and then moves labels over the network.
        if action not in ACTIONS:
            raise ApiError(
                404, "unknown_action", f"unknown action {action!r}: one of {', '.join(ACTIONS)}"
            )
        _known(controller, name)
        policy = controller.policies().get(name)
        if policy is None:
            raise ApiError(
                409,
                "conflict",
                f"release {name!r} has no policy in force (its file was removed or is invalid)",
            )
        reason = body.reason if body is not None else ""
        actor = f"{ACTOR} ({body.by})" if body is not None and body.by else ACTOR
        try:
            release = controller.manual(name, action, actor=actor, now=clock(), reason=reason)
        except NotLeaderError as error:
            raise ApiError(
                503,
                "not_leader",
                f"{error}; send it to the leader, {error.leader or 'not known yet'}",
                headers={"Retry-After": "2"},
            ) from None
        except ManualActionIncompleteError as error:
            raise ApiError(502, "action_incomplete", str(error)) from None
        except ManualActionError as error:
            raise ApiError(409, "conflict", str(error)) from None
        return JSONResponse(release_summary(release, policy))

    return router


def _analysis_routes(controller: Controller) -> APIRouter:
    router = APIRouter()

    @router.get("/analysis/{name}")
    def show_analysis(
        name: str,
        version: str | None = Query(
            default=None,
            min_length=1,
            max_length=200,
            description="The candidate version the caller rolls out: nodata until the "
            "current rollout judges it.",
        ),
        step: int | None = Query(
            default=None,
            ge=1,
            le=1000,
            description="A step counted from 1: pass once the rollout is past it.",
        ),
    ) -> JSONResponse:
        return JSONResponse(analysis_of(controller, name, Question(version, step)))

    return router


def _webhook_routes(controller: Controller, tokens: tuple[str, ...]) -> APIRouter:
    router = APIRouter()

    # the body is read and the token checked first, by the dependency; its fields
    # identify the Canary, which the release name in the path already does
    @router.post(
        "/analysis/{name}/webhook/{gate}", dependencies=[Depends(_webhook_payload(tokens))]
    )
    def webhook(
        name: str,
        gate: str,
        version: str | None = Query(default=None, min_length=1, max_length=200),
        step: int | None = Query(default=None, ge=1, le=1000),
    ) -> JSONResponse:
        if gate not in GATES:
            raise ApiError(404, "unknown_gate", f"unknown gate {gate!r}: one of {', '.join(GATES)}")
        answer = analysis_of(controller, name, Question(version, step))
        verdict = Verdict(answer["verdict"])
        reply = {
            "gate": gate,
            "open": gate_open(gate, verdict),
            "release": answer["release"],
            "rollout": answer["rollout"],
            "verdict": verdict.value,
            "reason": answer["reason"],
        }
        if reply["open"]:
            return JSONResponse(reply)
        code = "canary_failed" if verdict is Verdict.FAIL else "not_passed"
        message = f"{gate} gate closed: verdict {verdict.value}: {answer['reason']}"
        return JSONResponse({"error": {"code": code, "message": message}, **reply}, status_code=409)

    return router


def _webhook_payload(tokens: tuple[str, ...]) -> Callable[..., Any]:
    """Read a webhook's body (at most ``MAX_WEBHOOK_BODY`` bytes) and check the token,
    from ``Authorization: Bearer`` or the body's ``metadata.token``, before anything
    else: an unauthenticated caller learns nothing, not even whether its JSON parses."""
    expected = tuple(token.encode() for token in tokens)

    async def read(
        request: Request, authorization: str | None = Header(default=None)
    ) -> FlaggerPayload | None:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_WEBHOOK_BODY:
                raise ApiError(
                    413, "too_large", f"a webhook body has at most {MAX_WEBHOOK_BODY} bytes"
                )
        document: Any = None
        malformed = False
        if raw.strip():
            try:
                document = json.loads(raw)
            except ValueError:
                malformed = True
        if not (
            _bearer_matches(authorization, expected) or _metadata_token_matches(document, expected)
        ):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong token: send Authorization: Bearer, or metadata.token",
                {"WWW-Authenticate": 'Bearer realm="coalmine"'},
            )
        if malformed:
            raise ApiError(422, "invalid_request", "the body is not JSON")
        if document is None:
            return None
        try:
            return FlaggerPayload.model_validate(document)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise ApiError(422, "invalid_request", f"{where}: {first['msg']}") from None

    return read


def _bearer_matches(authorization: str | None, expected: tuple[bytes, ...]) -> bool:
    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and _one_of(presented.strip(), expected)


def _metadata_token_matches(document: Any, expected: tuple[bytes, ...]) -> bool:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    presented = metadata.get("token") if isinstance(metadata, dict) else None
    return isinstance(presented, str) and _one_of(presented, expected)


def _one_of(presented: str, expected: tuple[bytes, ...]) -> bool:
    """Whether ``presented`` is one of the ``expected`` tokens, each compared in
    constant time (all of them, so the time does not say which one matched)."""
    matches = [hmac.compare_digest(presented.encode(), token) for token in expected]
    return any(matches)


def analysis_of(controller: Controller, name: str, question: Question) -> dict[str, Any]:
    """The verdict on release ``name``'s current rollout (404 for an unknown release),
    from its live judgement, else the newest evidence its decision log holds for it."""
    release = _known(controller, name)
    policy = controller.policies().get(name)
    judged = _rollout_policy(release, policy)
    live = controller.last_judgement(name)
    judgement: dict[str, Any] | None
    source: str | None
    if live is not None:
        judgement, source = judgement_summary(live), "live"
    else:
        # after a restart, on a standby, or once finished: the newest logged evidence of
        # this rollout (never an earlier rollout's)
        records = controller.state.decisions(name, 50)
        judgement = next(
            (
                record.evidence
                for record in reversed(records)
                if record.rollout == release.rollout and record.evidence.get("metrics")
            ),
            None,
        )
        source = "decision-log" if judgement is not None else None
    answer: dict[str, Any] = finite(analysis(release, judged, judgement, source, question))
    return answer


def _rollout_policy(release: ReleaseState, policy: Policy | None) -> Policy | None:
    """The policy the release's current rollout is judged by, None when there is none."""
    if policy is not None:
        return judged_by(release, policy)[0]
    if not release.rollout_policy:
        return None
    try:
        return Policy.model_validate_json(release.rollout_policy)
    except ValueError:
        return None


def _known(controller: Controller, name: str) -> ReleaseState:
    release = controller.state.release(name)
    if release is None:
        raise ApiError(404, "not_found", f"no release named {name!r}")
    return release


# -- JSON shapes --------------------------------------------------------------------------


def source_status(
    controller: Controller, releases: Iterable[ReleaseState], now: float
) -> dict[str, Any]:
    """``langfuseReads``: how the sample source keeps up reading Langfuse for the running
    rollouts among ``releases`` (None when none runs, as Langfuse is not read for them,
    or for a source that does not say); ``scoreTypeMismatches``: their scores whose type
    cannot serve the metric that reads them."""
    health = health_of(controller.source, now)
    running = [(r.name, r.judged_since) for r in releases if r.phase in RUNNING]
    return {
        "langfuseReads": None if health is None or not running else reads_json(health.reads),
        "scoreTypeMismatches": mismatches_of(health, running),
    }


def release_summary(release: ReleaseState, policy: Policy | None) -> dict[str, Any]:
    """One release, as ``GET /releases`` lists it."""
    return {
        "name": release.name,
        "phase": release.phase.value,
        "step": release.step + 1 if release.started_at is not None else None,
        "steps": len(policy.steps) if policy is not None else None,
        "canaryWeight": release.canary_weight,
        "startedAt": release.started_at,
        "updatedAt": release.updated_at,
        "reason": release.reason,
        "rollout": release.rollout,
        "waiting": release.waiting or None,
        "policyDigest": release.policy_digest,
        "policyEdited": policy is not None
        and release.running
        and policy_digest(policy) != release.policy_digest,
        "approval": approval_summary(release, policy),
        "ladder": None if policy is None else ladder_of(judged_by(release, policy)[0]),
        "rungSince": release.rung_since,
    }


def approval_summary(release: ReleaseState, policy: Policy | None) -> dict[str, Any] | None:
    """Since when a rollout waits for approval, until when, and what then (None: it
    does not wait)."""
    since = release.approval_since
    waits = Phase.APPROVAL in (release.phase, release.resume_phase)
    if not waits or since is None or policy is None or not release.running:
        return None
    judged, _ = judged_by(release, policy)
    if judged.approval is None:
        return None
    queue = judged.approval.queue
    return {
        "since": since,
        "timeoutAt": since + judged.approval.timeout,
        "onTimeout": judged.approval.on_timeout.value,
        "queue": None if queue is None else queue.name,
        "reviewTraces": len(release.review_traces),
    }


def release_detail(controller: Controller, release: ReleaseState, limit: int) -> dict[str, Any]:
    """One release with its last judgement, decisions, label moves and pending actions."""
    policy = controller.policies().get(release.name)
    decisions = controller.state.decisions(release.name, limit)
    live = controller.last_judgement(release.name)
    judgement: dict[str, Any] | None
    judged_by: str | None
    if live is not None:
        judgement, judged_by = judgement_summary(live), "live"
    else:
        # after a restart or once finished, the newest logged evidence is the last word
        judgement = next(
            (record.evidence for record in reversed(decisions) if record.evidence.get("metrics")),
            None,
        )
        judged_by = "decision-log" if judgement is not None else None
    detail = release_summary(release, policy)
    detail.update(
        {
            "stableVersion": release.stable_version,
            "candidateVersion": release.candidate_version,
            "candidate": release.candidate_ref,
            "stepStartedAt": release.step_started_at,
            "resumePhase": None if release.resume_phase is None else release.resume_phase.value,
            "policySteps": None if policy is None else [_step(step) for step in policy.steps],
            "analysisInterval": None if policy is None else policy.analysis.interval,
            "judgement": judgement,
            "judgementSource": judged_by,
            "traffic": controller.traffic_of(release.name),
            "rung": controller.rungs.view_of(release),
            "decisions": [_decision(record) for record in decisions],
            "labelMoves": [
                _label_move(move) for move in controller.state.label_moves(release.name)
            ],
            "pendingActions": [
                _action(action) for action in controller.state.pending_actions(release.name)
            ],
        }
    )
    cleaned: dict[str, Any] = finite(detail)
    return cleaned


def _step(step: Step) -> dict[str, Any]:
    return {
        "weight": step.weight,
        "minDuration": step.min_duration,
        "maxDuration": step.max_duration,
        "minSamples": step.min_samples,
    }


def _decision(record: DecisionRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": record.at,
        "decision": record.decision,
        "actor": record.actor,
        "reason": record.reason,
        "phase": record.phase.value,
        "step": record.step + 1,
        "rollout": record.rollout,
        "evidence": record.evidence,
    }


def _label_move(move: LabelMove) -> dict[str, Any]:
    return {
        "prompt": move.prompt,
        "label": move.label,
        "fromVersion": move.from_version,
        "toVersion": move.to_version,
        "at": move.at,
        "actor": move.actor,
        "reason": move.reason,
        "rollout": move.rollout,
    }


def _action(action: Action) -> dict[str, Any]:
    return {
        "id": action.id,
        "kind": action.kind.value,
        "intent": action.intent,
        "status": action.status.value,
        "decisionId": action.decision_id,
        "error": action.error,
    }


def finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float replaced by None: confidence bounds can
    be unbounded, and JSON has no infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
