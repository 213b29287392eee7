"""Pieces of the end-to-end tests: real coalmine processes on loopback (the Langfuse
emulator, the demo agent, one `coalmine run`, the demo evaluator), an echo application
that records the headers it receives, a recorder of the admin API, and waiting on a
condition with a deadline."""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx

from coalmine.demo.processes import Processes, Started, free_port, python
from coalmine.demo.stack import evaluator_command, run_command
from coalmine.emulator.settings import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY
from coalmine.shared.conventions import ARM_HEADER, PROMPT_LABEL_HEADER, TRACEPARENT_HEADER
from coalmine.shared.routing_tables.store import SqliteRoutingStore

T = TypeVar("T")

FINISHED = frozenset({"promoted", "rolled_back", "aborted"})
"""Phases a rollout ends in."""


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    within: float,
    every: float = 0.2,
    state: Callable[[], object] | None = None,
) -> T:
    """The first value ``probe`` returns that is not None, polled until ``within`` seconds
    have passed; then an AssertionError naming ``what`` and, if given, the ``state``."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            seen = "" if state is None else f"; last seen: {state()}"
            raise AssertionError(f"{what}: not within {within:g} s{seen}")
        time.sleep(every)


def place(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one step, so that a watcher never reads half a file."""
    partial = path.parent.parent / f".{path.name}.partial"
    partial.write_text(text)
    os.replace(partial, path)


class Background:
    """A thread that calls ``step`` every ``every`` seconds until ``stop``; a step that
    raises one of ``survives`` is kept in ``errors`` (for the test to read) and the next
    step comes anyway."""

    every: float = 0.2
    survives: tuple[type[BaseException], ...] = (Exception,)

    def step(self) -> None:
        raise NotImplementedError

    @property
    def errors(self) -> list[str]:
        kept: list[str] = self.__dict__.setdefault("_errors", [])
        return kept

    def start(self) -> None:
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._halt.wait(self.every):
            try:
                self.step()
            except self.survives as error:
                self.errors.append(repr(error))


def detail_if(
    stack: Stack, release: str, test: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The release's detail when ``test`` holds for it (None: not yet, or the admin API
    was too slow to answer this time)."""
    try:
        detail = stack.release(release)
    except httpx.TimeoutException:
        return None
    return detail if detail is not None and test(detail) else None


def rolled_back_at(
    stack: Stack, recorder: Recorder, release: str, rung: str, within: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait for rollout 1 of ``release`` to end, and check that the controller rolled it
    back at ``rung`` with nothing in between; its detail and the rollback's evidence."""
    ended = wait_for(
        "rollout 1 ending",
        lambda: detail_if(stack, release, lambda d: d["rollout"] == 1 and d["phase"] in FINISHED),
        within=within,
        every=0.5,
        state=lambda: recorder.latest(release),
    )
    assert ended["phase"] == "rolled_back", ended
    decisions = sorted(ended["decisions"], key=lambda d: d["id"])
    assert [(d["rollout"], d["decision"], d["actor"]) for d in decisions] == [
        (1, "start", "controller"),
        (1, "rollback", "controller"),
    ], decisions
    evidence: dict[str, Any] = decisions[-1]["evidence"]
    assert evidence["rung"] == rung, evidence
    return ended, evidence


# -- the echo application -----------------------------------------------------------------


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.name = name
        self.seen: list[dict[str, str]] = []
        self.lock = threading.Lock()


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._echo()

    def do_POST(self) -> None:
        self._echo()

    def _echo(self) -> None:
        server = cast(_EchoServer, self.server)
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = {key.lower(): value for key, value in self.headers.items()}
        with server.lock:
            server.seen.append(headers)
        body = json.dumps({"app": server.name, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@dataclass
class EchoApp:
    """An HTTP application, in a thread of the test, that answers every request with its
    name and the headers it received, and keeps those headers."""

    name: str
    _server: _EchoServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> str:
        self._server = _EchoServer(self.name)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def seen(self) -> list[dict[str, str]]:
        if self._server is None:
            return []
        with self._server.lock:
            return list(self._server.seen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- the stack of processes ---------------------------------------------------------------


class Stack:
    """The emulator, the demo agent as the application, one `coalmine run` and the
    evaluator, each on a free loopback port; leaving the ``with`` block stops them all."""

    def __init__(
        self,
        base: Path,
        *,
        policy_reload_interval: float,
        public_key: str = DEFAULT_PUBLIC_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
    ) -> None:
        self.base = base
        self.public_key = public_key
        self.secret_key = secret_key
        base.mkdir(parents=True, exist_ok=True)
        self.processes = Processes(base)
        self.token = secrets.token_hex(16)
        self.ports = {name: free_port() for name in ("emulator", "app", "proxy", "admin")}
        self.ports["metrics"] = free_port()
        self.emulator_url = f"http://127.0.0.1:{self.ports['emulator']}"
        self.app_url = f"http://127.0.0.1:{self.ports['app']}"
        self.proxy_url = f"http://127.0.0.1:{self.ports['proxy']}"
        self.admin_url = f"http://127.0.0.1:{self.ports['admin']}"
        self.env = {
            **os.environ,
            "LANGFUSE_BASE_URL": self.emulator_url,
            "LANGFUSE_PUBLIC_KEY": public_key,
            "LANGFUSE_SECRET_KEY": secret_key,
            "COALMINE_ADMIN_TOKEN": self.token,
            "COALMINE_APP_URL": self.app_url,
            "COALMINE_POLICY_RELOAD_INTERVAL": f"{policy_reload_interval:g}",
            "COALMINE_REQUESTS_PER_MINUTE": "100000",
            "COALMINE_TICK_SECONDS": "1",
            "COALMINE_TRACE_SETTLE_SECONDS": "2",
            # policies in seconds: a sampled trace's scores are first read 2 s old
            "COALMINE_SCORE_FIRST_READ_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
        }
        self.coalmine: Started | None = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.processes.stop_all()

    def start_emulator(self) -> None:
        emulator = self.processes.start(
            "emulator",
            [
                python(),
                "-m",
                "coalmine.cli",
                "langfuse-emulator",
                "--port",
                str(self.ports["emulator"]),
                "--public-key",
                self.public_key,
                "--secret-key",
                self.secret_key,
                "--log-level",
                "warning",
            ],
            self.env,
        )
        self.processes.wait_http(emulator, f"{self.emulator_url}/api/public/health")

    def api(self) -> httpx.Client:
        """A client of the emulator's public API with this stack's project keys."""
        auth = (self.public_key, self.secret_key)
        return httpx.Client(base_url=self.emulator_url, auth=auth, timeout=10.0)

    def start_app(self) -> None:
        """The demo agent: its answers' quality and error rate come from the prompt
        version the proxy's prompt label names."""
        app = self.processes.start(
            "app",
            [
                python(),
                "-m",
                "coalmine.demo.agent",
                "--port",
                str(self.ports["app"]),
                "--name",
                "app",
                "--llm-delay-ms",
                "20",
                "--prompt-cache-seconds",
                "1",
                "--log-level",
                "warning",
            ],
            self.env,
        )
        self.processes.wait_http(app, f"{self.app_url}/healthz")

    def start_coalmine(self, policies: Path) -> Started:
        self.coalmine = self.processes.start(
            "coalmine-run", run_command(policies, self.base / "state.db", self.ports), self.env
        )
        self.processes.wait_http(self.coalmine, f"{self.admin_url}/healthz")
        return self.coalmine

    def start_evaluator(self, *, delay_seconds: float) -> None:
        command = evaluator_command(delay_seconds=delay_seconds, lookback_seconds=120)
        self.processes.start("evaluator", command, self.env)

    # -- looking at it ----------------------------------------------------------------

    def release(self, name: str) -> dict[str, Any] | None:
        """The admin API's detail of a release, with its whole decision log; None while
        the controller has no such release."""
        response = httpx.get(
            f"{self.admin_url}/releases/{name}",
            params={"decisions": 1000},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10.0,
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        detail: dict[str, Any] = response.json()
        return detail

    def releases(self) -> dict[str, dict[str, Any]]:
        response = httpx.get(
            f"{self.admin_url}/releases",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10.0,
        )
        response.raise_for_status()
        return {release["name"]: release for release in response.json()["releases"]}

    def labels(self, prompt: str, names: tuple[str, ...]) -> dict[str, int | None]:
        """Which version of ``prompt`` holds each label, as the emulator says."""
        found: dict[str, int | None] = {}
        with self.api() as api:
            for label in names:
                response = api.get(f"/api/public/v2/prompts/{prompt}", params={"label": label})
                found[label] = response.json()["version"] if response.status_code == 200 else None
        return found

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m coalmine.cli ARGS --admin-url ...``, the admin token in the
        environment."""
        return subprocess.run(
            [python(), "-m", "coalmine.cli", *args, "--admin-url", self.admin_url],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def log_tail(self, lines: int = 60) -> str:
        if self.coalmine is None:
            return "(coalmine run not started)"
        try:
            text = self.coalmine.log.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])


def process_start_ticks(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22):
    a process that replaced it under the same pid would differ."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


# -- the admin API over time --------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One release as ``GET /releases`` listed it at ``at``."""

    at: float
    release: str
    rollout: int
    phase: str
    step: int | None
    canary_weight: float
    policy_digest: str | None
    policy_edited: bool


@dataclass
class Recorder:
    """Lists the releases every ``every`` seconds in a thread, keeping every snapshot."""

    stack: Stack
    every: float = 0.2
    snapshots: list[Snapshot] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def of(self, release: str) -> list[Snapshot]:
        with self._lock:
            return [s for s in self.snapshots if s.release == release]

    def latest(self, release: str) -> Snapshot | None:
        found = self.of(release)
        return found[-1] if found else None

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                listed = self.stack.releases()
            except (httpx.HTTPError, ValueError, KeyError) as error:
                self.errors.append(repr(error))
                continue
            at = time.time()
            with self._lock:
                self.snapshots.extend(
                    Snapshot(
                        at=at,
                        release=name,
                        rollout=int(release["rollout"]),
                        phase=str(release["phase"]),
                        step=release["step"],
                        canary_weight=float(release["canaryWeight"]),
                        policy_digest=release["policyDigest"],
                        policy_edited=bool(release["policyEdited"]),
                    )
                    for name, release in listed.items()
                )


# -- an application that answers by prompt label -------------------------------------------

QUESTIONS = tuple(
    f"How do I {task}?"
    for task in (
        "reset my password",
        "change my plan",
        "export my invoices",
        "add a team member",
        "delete my account",
        "update my card",
        "enable two-factor login",
        "rename my workspace",
        "cancel an order",
        "track a parcel",
    )
)
"""What the users and the dataset ask."""


@dataclass(frozen=True)
class Answer:
    """One request a ``PromptApp`` answered: the prompt version its label named and the
    quality of that version's answers (its ``config.quality``), with coalmine's headers."""

    label: str | None
    version: int | None
    quality: float | None
    arm: str | None
    trace_id: str | None
    """From the ``traceparent`` the request carried."""
    user: str | None
    question: str | None
    status: int
    at: float
    """When it was answered (seconds since the epoch)."""


class _PromptServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, prompt: str, api: httpx.Client) -> None:
        super().__init__(("127.0.0.1", port), _PromptHandler)
        self.prompt = prompt
        self.api = api
        self.answers: list[Answer] = []
        self.lock = threading.Lock()

    def version(self, label: str) -> tuple[int | None, float | None]:
        """The version the label is on and its answers' quality; (None, None) when
        Langfuse has no such label or cannot be read."""
        try:
            found = self.api.get(f"/api/public/v2/prompts/{self.prompt}", params={"label": label})
            if found.status_code != 200:
                return None, None
            prompt = found.json()
            return int(prompt["version"]), float(prompt["config"]["quality"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None, None


class _PromptHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        server = cast(_PromptServer, self.server)
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length)) if length else None
        except ValueError:
            body = None
        question = body.get("question") if isinstance(body, dict) else None
        label = self.headers.get(PROMPT_LABEL_HEADER)
        version, quality = server.version(label) if label else (None, None)
        status = 400 if not label else 200 if version is not None else 502
        traceparent = self.headers.get(TRACEPARENT_HEADER) or ""
        answer = Answer(
            label=label,
            version=version,
            quality=quality,
            arm=self.headers.get(ARM_HEADER),
            trace_id=traceparent.split("-")[1] if traceparent.count("-") == 3 else None,
            user=self.headers.get("x-user-id"),
            question=question if isinstance(question, str) else None,
            status=status,
            at=time.time(),
        )
        with server.lock:
            server.answers.append(answer)
        text = json.dumps(
            {"label": label, "version": version, "quality": quality, "question": answer.question}
        ).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@dataclass
class PromptApp:
    """An application, in a thread of the test, that answers each POST with the version
    of ``prompt`` that its ``x-coalmine-prompt-label`` names (read from Langfuse for
    every request) and keeps a record of every answer."""

    stack: Stack
    prompt: str
    port: int = 0
    _server: _PromptServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> str:
        self._server = _PromptServer(self.port, self.prompt, self.stack.api())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answers(self) -> list[Answer]:
        if self._server is None:
            return []
        with self._server.lock:
            return list(self._server.answers)

    def by_trace(self) -> dict[str, Answer]:
        return {answer.trace_id: answer for answer in self.answers() if answer.trace_id}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.api.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def judged(quality: float, question: str | None, key: str, *, noise: float = 0.03) -> float:
    """A judge's score of an answer: its quality, moved by how hard the question is (the
    same for both answers of a pair) and by a little noise drawn from ``key``."""
    digest = hashlib.sha256((question or "").encode()).digest()
    difficulty = (digest[0] % 21 - 10) / 100
    draw = random.Random(key).gauss(0.0, noise)
    return round(min(1.0, max(0.0, quality + difficulty + draw)), 6)


# -- users --------------------------------------------------------------------------------


@dataclass
class Users:
    """Users posting questions through the proxy at ``rate`` requests a second, each one
    always with the same ``x-user-id``; keeps each answer's status and prompt label."""

    proxy_url: str
    rate: float
    path: str = "/v1/answer"
    users: int = 300
    seed: int = 11
    answered: list[tuple[int, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, workers: int = 4) -> None:
        for index in range(workers):
            thread = threading.Thread(target=self._run, args=(index, workers), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def sent(self) -> int:
        with self._lock:
            return len(self.answered)

    def labels(self) -> dict[str | None, int]:
        """How many answers came from each prompt label (None: no answer)."""
        counts: dict[str | None, int] = {}
        with self._lock:
            for _, label in self.answered:
                counts[label] = counts.get(label, 0) + 1
        return counts

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
                user = f"user-{rng.randrange(self.users)}"
                body = {"question": rng.choice(QUESTIONS)}
                try:
                    response = client.post(self.path, json=body, headers={"x-user-id": user})
                    status = response.status_code
                    label = response.json().get("label") if status == 200 else None
                except (httpx.HTTPError, ValueError):
                    status, label = 0, None
                with self._lock:
                    self.answered.append((status, label))


# -- the routing table over time ----------------------------------------------------------


@dataclass(frozen=True)
class TableSnapshot:
    """A release's routing table as the state file held it at ``at``."""

    at: float
    version: int
    canary_weight: float
    shadow: str | None
    """The shadow route's upstream; None: no copies."""


@dataclass
class RoutingRecorder:
    """Reads a release's routing table from the state file every ``every`` seconds, in
    a thread, keeping each version it sees (the proxy reads the same file)."""

    state: Path
    release: str
    every: float = 0.1
    tables: list[TableSnapshot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def seen(self) -> list[TableSnapshot]:
        with self._lock:
            return list(self.tables)

    def latest(self) -> TableSnapshot | None:
        seen = self.seen()
        return seen[-1] if seen else None

    def _run(self) -> None:
        store = SqliteRoutingStore(self.state, readonly=True)
        try:
            while not self._stop.wait(self.every):
                self._look(store)
        finally:
            store.close()

    def _look(self, store: SqliteRoutingStore) -> None:
        try:
            table = store.read(self.release) if self.state.exists() else None
        except sqlite3.Error:
            return  # the file is being created
        if table is None:
            return
        with self._lock:
            if self.tables and self.tables[-1].version == table.version:
                return
            self.tables.append(
                TableSnapshot(
                    at=time.time(),
                    version=table.version,
                    canary_weight=table.canary_weight,
                    shadow=None if table.shadow is None else str(table.shadow.upstream),
                )
            )


def create_prompt(
    stack: Stack, name: str, quality: float, labels: tuple[str, ...], text: str
) -> int:
    """A text prompt version whose answers have ``quality`` (its ``config``), created
    over the public API; its version number."""
    with stack.api() as api:
        created = api.post(
            "/api/public/v2/prompts",
            json={
                "name": name,
                "type": "text",
                "prompt": text,
                "config": {"quality": quality},
                "labels": list(labels),
            },
        )
    assert created.status_code in (200, 201), created.text
    return int(created.json()["version"])


def project_keys(tag: str) -> tuple[str, str]:
    """A public and secret key of a project of its own: the Langfuse SDK keeps one client
    per public key in a process, so a test using the SDK against its own emulator needs a
    key no other test uses."""
    unique = f"{tag}-{secrets.token_hex(4)}"
    return f"pk-lf-{unique}", f"sk-lf-{unique}"
