"""Pieces of the dataset gate's tests: an emulator and an application on loopback ports,
datasets made with the official SDK, a managed judge played against the emulator, and
waiting for a run's verdict."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import anyio
import httpx
import uvicorn
from langfuse.api import DatasetStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from coalmine.shared.retry import Backoff
from controller.ladder.dataset_gate import ArmEndpoint, DatasetGates, GateResult
from policies.domain import Arm
from policies.model import DatasetGate
from tests.emulator.emulator_support import (
    LiveEmulator,
    langfuse_client,
    sdk_emulator_settings,
    start_emulator,
)
from tests.quick_stop_server import QuickStopServer

FAST_RETRY = Backoff(attempts=4, first=0.01, factor=2.0, cap=0.05, jitter=0.0)
RELEASE = "support-bot"
T = TypeVar("T")
Answer = Callable[[str, Any], tuple[int, Any]]
"""What the application answers: (arm, input) -> (status, body)."""


def question(number: int) -> dict[str, Any]:
    return {"question": f"q{number}"}


def expected(number: int) -> str:
    return f"a{number}"


def right(arm: str, payload: Any) -> tuple[int, Any]:
    """Both arms answer every question right."""
    return 200, {"answer": "a" + payload["question"][1:]}


def exact(output: Any, expected_output: Any) -> float:
    """1 when the answer is the expected one, else 0."""
    answer = output.get("answer") if isinstance(output, dict) else output
    return float(answer == expected_output)


@dataclass
class Call:
    arm: str
    payload: Any
    headers: dict[str, str]


@dataclass
class FakeApp:
    """The application: answers each arm as ``answer`` says, on ``/chat``, and scores
    answers on ``/evaluate`` (the HTTP evaluator); records every call."""

    answer: Answer = right
    evaluate: Callable[[dict[str, Any]], tuple[int, Any]] | None = None
    calls: list[Call] = field(default_factory=list)
    evaluations: int = 0
    hold: threading.Event | None = None
    """When set, each call waits for it before answering."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arms_called(self) -> list[str]:
        with self.lock:
            return [call.arm for call in self.calls]

    async def chat(self, request: Request) -> Response:
        payload = await request.json()
        arm = request.headers.get("x-coalmine-arm", "")
        with self.lock:
            self.calls.append(Call(arm, payload, dict(request.headers)))
        if self.hold is not None:
            await anyio.to_thread.run_sync(self.hold.wait)
        status, body = self.answer(arm, payload)
        if isinstance(body, str):
            return PlainTextResponse(body, status_code=status)
        return JSONResponse(body, status_code=status)

    async def score(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.evaluations += 1
        if self.evaluate is not None:
            status, answer = self.evaluate(body)
            return JSONResponse(answer, status_code=status)
        return JSONResponse({"value": exact(body["output"], body["expectedOutput"])})


@dataclass
class Stack:
    emulator: LiveEmulator
    app: FakeApp
    app_url: str
    gates: DatasetGates
    clock: FakeClock

    def arms(self) -> dict[Arm, ArmEndpoint]:
        return {
            Arm.BASELINE: ArmEndpoint(
                self.app_url, (("x-coalmine-release", RELEASE), ("x-coalmine-arm", "baseline"))
            ),
            Arm.CANARY: ArmEndpoint(
                self.app_url, (("x-coalmine-release", RELEASE), ("x-coalmine-arm", "canary"))
            ),
        }

    def run(self, gate: DatasetGate, *, rollout: int = 1, attempt: int = 1) -> None:
        self.gates.ensure(RELEASE, rollout, attempt, gate, self.arms(), self.clock())

    def outcome(self, *, rollout: int = 1, attempt: int = 1, within: float = 60.0) -> GateResult:
        """The run's result once it has an outcome."""
        return wait_for(
            "the dataset run's verdict",
            lambda: _done(self.gates.result(RELEASE, rollout, attempt, self.clock())),
            within=within,
        )

    def http(self) -> httpx.Client:
        return self.emulator.client()


class FakeClock:
    """Seconds that move only when told."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def _done(result: GateResult | None) -> GateResult | None:
    assert result is not None, "the run is gone"
    return result if result.outcome is not None else None


def wait_for(what: str, probe: Callable[[], T | None], *, within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        time.sleep(0.02)


@contextmanager
def serve(app: FakeApp) -> Iterator[str]:
    """``app`` on a loopback port; its base URL."""
    routes = [
        Route("/chat", app.chat, methods=["POST"]),
        Route("/evaluate", app.score, methods=["POST"]),
    ]
    config = uvicorn.Config(
        Starlette(routes=routes), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = QuickStopServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("the application to listen", lambda: server.started or None, within=10)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if app.hold is not None:
            app.hold.set()
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def stack(app: FakeApp | None = None) -> Iterator[Stack]:
    """An emulator with keys of its own, the application, and the runner pointed at both;
    the emulator's answers must all have kept to the spec."""
    emulator = start_emulator(sdk_emulator_settings())
    app = app or FakeApp()
    clock = FakeClock()
    try:
        with serve(app) as url:
            gates = DatasetGates(
                base_url=emulator.base_url,
                public_key=emulator.settings.public_key,
                secret_key=emulator.settings.secret_key,
                clock=clock,
            )
            gates.api.retry = FAST_RETRY
            gates.poll_interval = 0.02
            try:
                yield Stack(emulator, app, url, gates, clock)
            finally:
                gates.close()
    finally:
        emulator.stop()
    assert not emulator.checked.violations, "\n".join(emulator.checked.violations)


def make_dataset(
    emulator: LiveEmulator, name: str, numbers: Sequence[int], *, archived: Sequence[int] = ()
) -> None:
    """A dataset of questions ``q<n>`` expecting ``a<n>``, made with the official SDK."""
    with langfuse_client(emulator) as langfuse:
        langfuse.create_dataset(name=name, description="golden questions")
        for number in numbers:
            # the SDK's enum reads as str to mypy
            status = cast(DatasetStatus, "ARCHIVED" if number in archived else "ACTIVE")
            langfuse.create_dataset_item(
                dataset_name=name,
                id=f"item-{number}",
                input=question(number),
                expected_output=expected(number),
                metadata={"topic": "billing" if number % 2 else "shipping"},
                status=status,
            )


def gate(**fields: Any) -> DatasetGate:
    """A gate on dataset ``golden-qa`` scored by a Python evaluator unless told."""
    body: dict[str, Any] = {
        "name": "golden-qa",
        "path": "/chat",
        "metric": {"score": "correctness", "tolerance": 0.05},
        "evaluator": {"python": "tests.ladder.sample_evaluators:exact_match"},
        "minPairs": 10,
        "concurrency": 4,
        "requestTimeout": "5s",
        "scoreTimeout": "60s",
    }
    body.update(fields)
    return DatasetGate.model_validate(body)


def since() -> str:
    return (datetime.now(UTC) - timedelta(hours=1)).isoformat()


def experiment_items(http: httpx.Client, experiment_id: str) -> list[dict[str, Any]]:
    """Every item of an experiment, as the emulator lists them."""
    return _all_items(http, experimentId=experiment_id, fields="core,dataset,io,scores")


def _all_items(http: httpx.Client, **query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params = {"fromStartTime": since(), "fields": "core,io", "limit": "100", **query}
    while True:
        response = http.get("/api/public/experiment-items", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["data"])
        cursor = body["meta"].get("cursor")
        if not cursor:
            return items
        params["cursor"] = cursor


class Judge:
    """A Langfuse-managed judge: scores each experiment item's task span (source EVAL)
    as it appears, with ``value(item)`` (None: leave that item unscored)."""

    def __init__(
        self, emulator: LiveEmulator, name: str, value: Callable[[dict[str, Any]], Any]
    ) -> None:
        self.emulator = emulator
        self.name = name
        self.value = value
        self.scored: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Judge:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        with self.emulator.client() as http:
            while not self._stop.wait(0.02):
                for item in _all_items(http):
                    if item["id"] in self.scored:
                        continue
                    self.scored.add(item["id"])
                    value = self.value(item)
                    if value is None:
                        continue
                    written = http.post(
                        "/emulator/eval-scores",
                        json={
                            "traceId": item["traceId"],
                            "observationId": item["id"],
                            "name": self.name,
                            "value": value,
                            "comment": "judged",
                        },
                    )
                    assert written.status_code == 200, written.text
